"""bench_recipes: the recipes run end to end, the report's numbers are the run's, every
recipe is in the plots, and recipes whose passes do not exist are listed as such."""

from __future__ import annotations

import json

import pytest
import torch

from shrinkc.tools import bench_recipes as br
from shrinkc.tools import benchkit as bk
from shrinkc.tools.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = br.run_recipes(["fold", "prune-50", "int8", "structured-fc"], ["lenet5"],
                                 backends=["torch", "onnxruntime"], repeat=2, warmup=1,
                                 quick=True, trained=False, train_images=64, test_images=40)
        out = tmp_path_factory.mktemp("report")
        text = br.report(results, ["torch", "onnxruntime"], threads=1, repeat=2, warmup=1,
                         quick=True, output=out)
    finally:
        torch.set_num_threads(prev)
    return results, text, out


def test_references_and_recipes_are_measured(run):
    results, text, _ = run
    entries = {e.name: e for e in results["lenet5"]}
    assert [e.kind for e in results["lenet5"]][:3] == ["reference"] * 3
    for name in (br.EAGER, br.ORT_FP32, br.ORT_INT8, "fold", "prune-50", "int8"):
        e = entries[name]
        assert e.ok, (name, e.status)
        assert 0.0 <= e.accuracy <= 1.0 and e.params > 0 and e.size > 0
        assert all(len(t.runs_ms) == 2 for t in e.latency.values()) and e.latency
    assert set(entries["fold"].latency) == {"torch", "onnxruntime"}
    assert entries["prune-50"].params < entries[br.EAGER].params
    assert entries["prune-50"].macs < entries[br.EAGER].macs
    assert entries["int8"].onnx_bytes < entries[br.ORT_FP32].onnx_bytes
    assert entries["prune-50"].extra["recovery"][0][0]["epoch"] == 1  # quick: one epoch
    assert "recover(epochs=1" in entries["prune-50"].pipeline
    assert entries["structured-fc"].ok, entries["structured-fc"].status
    assert entries["structured-fc"].params < entries[br.EAGER].params
    assert "goal (" in text


def test_report_files_hold_the_runs_numbers(run):
    results, _, out = run
    data = json.loads((out / "report.json").read_text())
    by = {e["name"]: e for e in data["entries"]}
    for e in results["lenet5"]:
        d = by[e.name]
        assert d["status"] == e.status and d["params"] == e.params
        for b, t in e.latency.items():
            assert d["latency"][b]["runs_ms"] == t.runs_ms
            assert d["latency"][b]["median_ms"] == t.median
    fold = by["fold"]
    r = bk.ratios(next(e for e in results["lenet5"] if e.name == "fold"),
                  next(e for e in results["lenet5"] if e.name == br.EAGER))
    assert data["goals"]["lenet5"]["fold"]["params"] == r["params"]
    assert fold["best_backend"] in ("torch", "onnxruntime")
    md = (out / "report.md").read_text()
    for e in results["lenet5"]:
        assert f"| {e.name} |" in md
    for png in ("lenet5_accuracy_vs_speedup.png", "lenet5_accuracy_vs_size.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_has_a_point_per_measured_entry(run, tmp_path, monkeypatch):
    import matplotlib.axes

    results, _, _ = run
    seen = []
    orig = matplotlib.axes.Axes.annotate
    def annotate(self, text, *a, **k):
        seen.append(text)
        return orig(self, text, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", annotate)
    entries = results["lenet5"]
    bk.plot(entries, entries[0], entries[2], tmp_path / "a.png", tmp_path / "b.png")
    measured = [e.label or e.name for e in entries if e.ok]
    assert seen == measured + measured  # both plots, every recipe with numbers


def test_cli_lists_recipes_and_refuses_unknown_ones(capsys):
    assert main(["bench", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    for name in br.RECIPES:
        assert name in out
    assert "structured-fc(" in out and "not available" not in out
    assert main(["bench", "--recipes", "nope", "zoo:lenet5", "--quick"]) == 2
    assert "unknown recipe(s) ['nope']" in capsys.readouterr().err


def test_goal_holds_at_exactly_the_allowed_drop():
    ref = bk.Entry("original", accuracy=0.976, params=703_578, macs=28_573_184,
                   latency={"torch": bk.Timing([1.0])})
    ort8 = bk.Entry("ort int8", accuracy=0.976, params=703_578, macs=28_573_184,
                    latency={"onnxruntime": bk.Timing([0.85])})
    e = bk.Entry("prune-70", accuracy=0.966, params=66_582, macs=2_777_542,
                 latency={"onnxruntime": bk.Timing([0.333])})
    got = br.goal_met(e, ref, ort8)
    assert got["accuracy_delta"] == -1.0 and got["all"], got
    e.accuracy = 0.965
    assert not br.goal_met(e, ref, ort8)["accuracy"]


def test_quick_mode_shortens_cp_by_its_work_budget_not_the_clock():
    """cp-conv's ALS is bounded by a work budget (reproducible); quick mode takes a tenth
    of it and sets no wall-clock budget (its default is none: min(None, 0.5) failed)."""
    full = br.recipe_passes(br.RECIPES["cp"].pipeline)
    quick = br.recipe_passes(br.RECIPES["cp"].pipeline, quick=True)
    assert full[0].name == quick[0].name == "cp-conv"
    assert quick[0].work_budget == full[0].work_budget / 10
    assert quick[0].time_budget is None
