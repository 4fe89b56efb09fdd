"""tools/bench_quant.py runs end to end (untrained models, a few images): every row has an
accuracy, a size and timings; the table has a line per row, the goal lines compare the
means over the calibration sets, and no temporary directory is left behind."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from shrinkc.tools import bench_quant


def test_bench_quant_smoke(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert bench_quant.main(["--models", "lenet5", "--equalize-models", "lenet5",
                             "--bias-correct", "--transformers", "vit,bert", "--smoke",
                             "--untrained", "--calib-images", "4", "--calib-seeds", "2",
                             "--test-images", "20"]) == 0
    out = capsys.readouterr().out
    for variant in ("fp32", "shrinkc minmax", "shrinkc equalize+minmax",
                    "shrinkc minmax+bias-correct", "ORT MinMax", "shrinkc dynamic",
                    "shrinkc dynamic per-tensor", "shrinkc dynamic+weights", "shrinkc dynamic+conv",
                    "ORT quantize_dynamic", "ORT quantize_dynamic per-channel"):
        assert f"| {variant} |" in out, variant
    rows = [ln for ln in out.splitlines() if ln.startswith(("| lenet5", "| vit", "| bert"))]
    assert len(rows) == 18  # dynamic+conv for the ViT only (BERT has no conv)
    assert not [ln for ln in rows if ln.startswith("| bert | shrinkc dynamic+conv")]
    bert = [ln for ln in rows if ln.startswith("| bert")]
    assert all("| - | - | - |" in ln for ln in bert)  # no labels: cosine only
    assert "2 disjoint set(s) of 4 calibration images" in out
    # how it was timed: per model, rounds of blocks (each row first once at --repeat 2)
    assert "the row order rotated by one per round" in out
    assert "lenet5 5 rows, 5 blocks × 1 run; vit 7 rows, 7 blocks × 1 run" in out
    assert "without thread spinning, every row alike" in out
    quantized = [ln for ln in rows if ln.startswith("| lenet5") and "fp32" not in ln]
    assert all("–" in ln.split("|")[3] for ln in quantized)  # mean (min–max) of the 2 sets
    for goal in ("lenet5: within 1 % of fp32:",
                 "lenet5: at least as accurate as quantize_static:",
                 "lenet5: equalize no worse than without:",
                 "bert: shrinkc dynamic per-tensor vs ORT quantize_dynamic:",
                 "bert: shrinkc dynamic vs ORT quantize_dynamic per-channel:"):
        assert goal in out, goal
    assert not list(tmp_path.glob("shrinkc-bench-quant-*"))


def test_calibration_subsets_are_disjoint_and_the_first_is_the_old_sample():
    from shrinkc.tools import data

    sets = bench_quant.calibration_subsets(16, 3)
    assert [len(s) for s in sets] == [16, 16, 16]
    flat = np.concatenate([s.reshape(len(s), -1) for s in sets])
    assert len(np.unique(flat, axis=0)) == 48  # no image twice
    old = data.calibration_batches("mnist", n=16, batch_size=16)[0].numpy()
    np.testing.assert_array_equal(sets[0], old)


def _row(variant: str, accs: list[float], agree: list[float], model: str = "m"
         ) -> bench_quant.QuantRow:
    r = bench_quant.QuantRow(model, variant, float(np.mean(accs)), 1, 0.0,
                             accuracies=accs, agreements=agree)
    return r


@pytest.mark.parametrize(("ours", "met"), [([0.975, 0.977], True), ([0.974, 0.975], False)])
def test_goal_compares_means_calibrator_for_calibrator(ours, met):
    rows = [_row("fp32", [0.976], [1.0]), _row("shrinkc minmax", ours, [0.99, 0.99]),
            _row("ORT MinMax", [0.976, 0.976], [0.98, 0.98])]
    lines = bench_quant.goal_lines(rows)
    line = next(ln for ln in lines if "quantize_static" in ln)
    assert line.startswith("m: at least as accurate as quantize_static: "
                           + ("met" if met else "NOT met"))
    assert "agreement +1.00 pt" in line


def _outcomes(n_right: int, n: int = 1000, sets: int = 4, shift: int = 0) -> list[np.ndarray]:
    """``sets`` arrays of n 0/1 outcomes, ``n_right`` of them 1 (starting at ``shift``)."""
    out = []
    for _ in range(sets):
        x = np.zeros(n, bool)
        x[shift:shift + n_right] = True
        out.append(x)
    return out


def test_paired_interval_known_answers():
    same = _outcomes(970)
    assert bench_quant.paired_interval(same, same) == (0.0, 0.0, 0.0)
    # one image more right in every set: +0.1 pt, and the interval holds 0
    d, lo, hi = bench_quant.paired_interval(_outcomes(971), same)
    assert d == pytest.approx(0.001) and lo <= 0.0 <= hi
    # 30 images more, the same 970 right in both: outside the noise
    d, lo, hi = bench_quant.paired_interval(_outcomes(1000), same)
    assert d == pytest.approx(0.03) and 0.015 < lo < d < hi < 0.045
    # pairing: the same accuracy, but on different images, is a 0 difference with a wide
    # interval; paired with itself it is exactly 0
    d, lo, hi = bench_quant.paired_interval(_outcomes(970, shift=30), same)
    assert d == 0.0 and lo < -0.01 and hi > 0.01
    # fp32 has one array: paired with every set; unpaired shapes are refused
    assert bench_quant.paired_interval(same, same[:1]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        bench_quant.paired_interval(same, same[:2])


def test_latency_ratio_resamples_rounds_pairwise():
    from shrinkc.tools.bench import Timing

    rng = np.random.default_rng(0)
    load = rng.uniform(1.0, 3.0, 200)  # the shared machine's load, round by round
    a, b = Timing(list(0.10 * load)), Timing(list(0.11 * load))
    r, lo, hi = bench_quant.latency_ratio(a, b)
    assert r == pytest.approx(0.10 / 0.11) and lo <= r <= hi < 1.0
    r, lo, hi = bench_quant.latency_ratio(a, a)
    assert (r, lo, hi) == (1.0, 1.0, 1.0)


def test_latency_ratio_resamples_whole_blocks():
    """Blocks of 5 runs whose load differs block by block: the ratio is exact, and resampling
    whole blocks (not runs) keeps the pairing."""
    from shrinkc.tools.bench import Timing

    load = np.repeat(np.random.default_rng(0).uniform(1.0, 3.0, 12), 5)
    a, b = Timing(list(0.10 * load)), Timing(list(0.11 * load))
    r, lo, hi = bench_quant.latency_ratio(a, b, [5] * 12)
    assert r == pytest.approx(0.10 / 0.11) and lo <= r <= hi < 1.0
    assert bench_quant.latency_ratio(a, a, [5] * 12) == (1.0, 1.0, 1.0)
    assert bench_quant.latency_ratio(a, b, [4, 6] * 6)[0] == pytest.approx(r)
    with pytest.raises(ValueError):
        bench_quant.latency_ratio(a, b, [5] * 11)


class _Recorder:
    """Stands in for an onnxruntime session: ``session.run`` records which row ran."""

    def __init__(self, name: str, calls: list[str]):
        self.session, self.name, self.calls = self, name, calls

    def run(self, outputs, feeds):
        self.calls.append(self.name)


@pytest.mark.parametrize("repeat", [1, 5, 13])
def test_rows_are_timed_per_model_in_blocks_whose_order_rotates(repeat):
    """Model by model: every row once per round, in a block of 1 untimed + n timed runs; the
    order rotates by one per round, so every row is first in equally many rounds; every row
    of a model has the same blocks. No clock is asserted."""
    calls: list[str] = []
    rows = [bench_quant.QuantRow(m, v, 0.0, 1, 0.0)
            for m, v in [("a", "fp32"), ("a", "x"), ("a", "y"), ("b", "fp32"), ("b", "x")]]
    sessions = [(r, _Recorder(f"{r.model}/{r.variant}", calls), {}) for r in rows]
    bench_quant.time_rows(sessions, warmup=1, repeat=repeat, block=2, pause=0.0)
    pos = 0
    for model in ("a", "b"):
        names = [f"{r.model}/{r.variant}" for r in rows if r.model == model]
        n = len(names)
        assert calls[pos:pos + n] == names  # the warm-up, model by model
        pos += n
        blocks = next(r.blocks for r in rows if r.model == model)
        assert all(r.blocks == blocks for r in rows if r.model == model)
        assert len(blocks) % n == 0 and sum(blocks) >= repeat and max(blocks) <= 2
        firsts = []
        for k, runs in enumerate(blocks):
            order = []
            for _ in range(n):
                block = calls[pos:pos + runs + 1]
                assert len(set(block)) == 1  # one row's block: 1 untimed + `runs` timed
                order.append(block[0])
                pos += runs + 1
            assert order == names[k % n:] + names[:k % n]  # rotated by one per round
            firsts.append(order[0])
        assert sorted(firsts) == sorted(names * (len(blocks) // n))  # first equally often
        for r in rows:
            if r.model == model:
                assert len(r.timing.runs_ms) == sum(blocks)
    assert pos == len(calls)


def _paired_row(variant: str, right: int, model: str = "m", agree: int = 1000
                ) -> bench_quant.QuantRow:
    correct, agrees = _outcomes(right), _outcomes(agree)
    return bench_quant.QuantRow(model, variant, right / 1000, 1, 0.0,
                                accuracies=[right / 1000] * 4, agreements=[agree / 1000] * 4,
                                correct=correct, agree=agrees)


@pytest.mark.parametrize(("right", "verdict"), [
    (970, "met"),
    (969, "NOT met on the means, within noise"),
    (940, "NOT met ("),  # 3 pt: not noise
])
def test_goal_says_whether_a_miss_is_within_noise(right, verdict):
    fp = _paired_row("fp32", 970)
    fp.correct, fp.agree = fp.correct[:1], fp.agree[:1]
    rows = [fp, _paired_row("shrinkc minmax", right), _paired_row("ORT MinMax", 970),
            _paired_row("shrinkc equalize+minmax", right)]
    lines = bench_quant.goal_lines(rows)
    ort = next(ln for ln in lines if "quantize_static" in ln)
    assert ort.startswith("m: at least as accurate as quantize_static: " + verdict), ort
    assert "[" in ort  # the interval is printed
    eq = next(ln for ln in lines if "equalize" in ln)
    assert eq.startswith("m: equalize no worse than without: met")  # same as without
    assert any(ln.startswith("(brackets: 95% paired bootstrap") for ln in lines)


def test_sqnr_interval_known_answers():
    rng = np.random.default_rng(0)
    err = [rng.exponential(1.0, 1000) for _ in range(4)]
    assert bench_quant.sqnr_interval(err, err) == (0.0, 0.0, 0.0)
    # half the error everywhere: +3.01 dB, and every replicate says so
    d, lo, hi = bench_quant.sqnr_interval([e / 2 for e in err], err)
    assert d == pytest.approx(10 * np.log10(2)) and lo == pytest.approx(d) == hi
    # a row 5 % better on average but noisier per image: an interval around +0.2 dB
    other = [e * rng.uniform(0.5, 1.4, 1000) for e in err]
    d, lo, hi = bench_quant.sqnr_interval(other, err)
    assert lo < d < hi and lo < 0.5 and hi > 0.0
    with pytest.raises(ValueError):
        bench_quant.sqnr_interval(err, err[:2])


def test_goal_lines_give_the_logit_sqnr_beside_the_accuracy():
    rows = [_paired_row("fp32", 970), _paired_row("shrinkc minmax", 970),
            _paired_row("ORT MinMax", 970)]
    rows[0].correct, rows[0].agree = rows[0].correct[:1], rows[0].agree[:1]
    rng = np.random.default_rng(1)
    theirs = [rng.exponential(1.0, 1000) for _ in range(4)]
    rows[1].sq_err, rows[2].sq_err = [e / 10 for e in theirs], theirs
    for r in rows[1:]:
        r.sq_ref = np.full(1000, 100.0)
    assert rows[1].sqnr == pytest.approx(10 * np.log10(100 / np.mean(theirs) * 10))
    line = next(ln for ln in bench_quant.goal_lines(rows) if "quantize_static" in ln)
    assert "logit SQNR +10.00 dB [+10.00, +10.00]" in line
    table = bench_quant.markdown(rows, threads=1, calib_images=1)
    assert f"| {rows[1].sqnr:.2f} dB |" in table
