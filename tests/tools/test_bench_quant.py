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
                    "shrinkc dynamic per-tensor", "shrinkc dynamic+weights",
                    "ORT quantize_dynamic", "ORT quantize_dynamic per-channel"):
        assert f"| {variant} |" in out, variant
    rows = [ln for ln in out.splitlines() if ln.startswith(("| lenet5", "| vit", "| bert"))]
    assert len(rows) == 17
    bert = [ln for ln in rows if ln.startswith("| bert")]
    assert all("| - | - | - |" in ln for ln in bert)  # no labels: cosine only
    assert "2 disjoint set(s) of 4 calibration images" in out
    quantized = [ln for ln in rows if ln.startswith("| lenet5") and "fp32" not in ln]
    assert all("–" in ln.split("|")[3] for ln in quantized)  # mean (min–max) of the 2 sets
    for goal in ("lenet5: within 1 % of fp32:", "lenet5: at least as accurate as "
                 "quantize_static:", "lenet5: equalize no worse than without:",
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
