from __future__ import annotations

import shlex
import sys
import tempfile
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
from shrinkc.ir.serialize import load
from shrinkc.ir.text import graph_diff, parse_graph
from shrinkc.passes import (
    DumpDir,
    NumericDiff,
    Pass,
    PassError,
    PassResult,
    PrintIR,
    Reproducer,
    Stats,
    TimePasses,
    VerifyEach,
    load_plugin,
    optimize,
    register_pass,
    unregister_pass,
)
from shrinkc.passes.instruments import compare_outputs

GRAPH = """
graph "g" (%x: f32[2,3,8,8]) {
  %conv.weight: f32[4,3,3,3] = const #1
  %bn.weight: f32[4] = const [1.0, 2.0, 0.5, 1.5]
  %bn.bias: f32[4] = const [0.0, 0.1, -0.2, 0.3]
  %bn.running_mean: f32[4] = const [0.1, -0.1, 0.2, 0.0]
  %bn.running_var: f32[4] = const [1.0, 0.5, 2.0, 1.5]
  %conv: f32[2,4,8,8] = conv2d(%x, %conv.weight) {padding=[1, 1]} loc("conv")
  %bn: f32[2,4,8,8] = batch_norm(%conv, %bn.weight, %bn.bias, %bn.running_mean, %bn.running_var)
  %pool: f32[2,4,1,1] = adaptive_avg_pool2d(%bn) {output_size=[1, 1]}
  %logits: f32[2,4] = flatten(%pool) {start_dim=1}
  return %logits
}
"""


@pytest.fixture
def g(ir):
    return ir(GRAPH)


# ---------------------------------------------------------------------------- PrintIR
def test_print_after_all_prints_graphs_that_parse_back(g):
    out: list[str] = []
    result = optimize(g, "fold-bn,dce", instruments=[PrintIR(write=out.append)])
    assert [s.splitlines()[0] for s in out] == ["// IR after 001_fold-bn fold-bn",
                                                "// IR after 002_dce dce"]
    printed = parse_graph(out[1], missing_weights="random")
    assert graph_diff(printed, result, data=False) is None


def test_print_before_named_pass_only(g):
    out: list[str] = []
    optimize(g, "fold-bn,dce", instruments=[PrintIR(before=True, after=False, passes={"dce"},
                                                    write=out.append)])
    assert len(out) == 1 and out[0].startswith("// IR before 002_dce dce\n")
    assert graph_diff(parse_graph(out[0], missing_weights="random"), optimize(g, "fold-bn"),
                      data=False) is None


def test_print_changed_prints_input_then_only_changes(g):
    out: list[str] = []
    optimize(g, "fold-bn,dce", instruments=[PrintIR(after=False, only_changed=True,
                                                    write=out.append)])
    assert [s.splitlines()[0] for s in out] == ["// IR of the input",
                                                "// IR after 001_fold-bn fold-bn",
                                                "// 002_dce dce: no change"]


# ---------------------------------------------------------------------------- VerifyEach
def test_verify_each_is_on_by_default_and_can_be_given_explicitly(g):
    from shrinkc.passes import PassManager

    assert isinstance(PassManager("dce").instruments()[0], VerifyEach)
    assert not PassManager("dce", verify_each=False).instruments()
    pm = PassManager("dce")
    pm.ctx.instruments.append(VerifyEach())
    assert sum(isinstance(i, VerifyEach) for i in pm.instruments()) == 1


# ---------------------------------------------------------------------------- NumericDiff
@dataclass
class ScaleOutput(Pass):
    """Multiplies the graph's output by a factor (a stand-in for a lossy pass)."""

    exact = False
    factor: float = 2.0

    def run(self, graph, ctx):
        out = graph.outputs[0]
        c = graph.add_constant(np.array(self.factor, np.float32), graph.fresh_name("factor"))
        node = graph.add_node("mul", [out, c])
        graph.outputs = [node.outputs[0]]
        return PassResult(True, {"scaled": 1})


@dataclass
class BadExact(Pass):
    """Claims to be exact but moves the output."""

    exact = True

    def run(self, graph, ctx):
        return ScaleOutput(factor=1.5).run(graph, ctx)


@dataclass
class NanExact(Pass):
    """Claims to be exact but makes one output element NaN (it multiplies by a factor that
    is 1 everywhere but there)."""

    exact = True

    def run(self, graph, ctx):
        out = graph.outputs[0]
        factor = np.ones(out.shape, np.float32)
        factor.flat[1] = np.nan
        c = graph.add_constant(factor, graph.fresh_name("poison"))
        graph.outputs = [graph.add_node("mul", [out, c]).outputs[0]]
        return PassResult(True)


@pytest.fixture
def scale_passes():
    register_pass("scale-output")(ScaleOutput)
    register_pass("bad-exact")(BadExact)
    register_pass("nan-exact")(NanExact)
    yield
    unregister_pass("scale-output")
    unregister_pass("bad-exact")
    unregister_pass("nan-exact")


def test_compare_outputs_metrics():
    got = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    ref = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    d = compare_outputs(got, ref)
    assert d.max_abs == 2.0 and d.top1 == 0.5
    assert d.rel_l2 == pytest.approx(np.sqrt(8) / np.sqrt(28))
    assert d.cosine == pytest.approx(np.dot(got.ravel(), ref.ravel()) / 28.0)
    assert compare_outputs(np.float32(1.0), np.float32(1.0)).top1 is None


def test_numeric_diff_of_exact_passes_is_zero(g):
    out: list[str] = []
    nd = NumericDiff(write=out.append)
    optimize(g, "fold-bn,dce", instruments=[nd])
    assert [r.label for r in nd.records] == ["001_fold-bn", "002_dce"]
    for r in nd.records:
        [o] = r.outputs
        assert o.max_abs < 1e-5 and o.cosine == pytest.approx(1.0) and o.top1 == 1.0
    assert out[0].startswith("numeric-diff 001_fold-bn") and "top1=100.0%" in out[0]
    assert not any("<<" in line for line in out)


def test_numeric_diff_compares_with_the_original_graph(g, scale_passes):
    out: list[str] = []
    nd = NumericDiff(write=out.append)
    optimize(g, "scale-output(factor=2.0),fold-bn,scale-output(factor=0.5)",
             instruments=[nd])
    rel = [r.outputs[0].rel_l2 for r in nd.records]
    # x2 moves the output by 100%; fold-bn keeps that; x0.5 brings it back to the original
    assert rel[0] == pytest.approx(1.0, rel=1e-5) and rel[1] == pytest.approx(1.0, rel=1e-5)
    assert rel[2] < 1e-6
    assert all(r.outputs[0].top1 == 1.0 for r in nd.records)  # scaling keeps the argmax
    # a lossy pass may move the output; fold-bn (exact) did not move it further
    assert not any("<<" in line for line in out)


def test_numeric_diff_flags_an_exact_pass_that_moves_the_output(g, scale_passes):
    out: list[str] = []
    optimize(g, "dce,bad-exact", instruments=[NumericDiff(write=out.append)])
    assert "<<" not in out[0]
    assert out[1].startswith("numeric-diff 002_bad-exact")
    assert "<< exact pass moved the output (rel_l2 > 0.0001)" in out[1]


def test_compare_outputs_counts_nonfinite_values_as_a_change():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    got = ref.copy()
    got[0, 1] = np.nan
    d = compare_outputs(got, ref)
    assert d.nonfinite == 1 and d.top1 == 0.5  # the NaN row no longer agrees
    assert d.max_abs == 0.0 and d.rel_l2 == 0.0  # over the values finite in both
    both_nan = compare_outputs(got, got)
    assert both_nan.nonfinite == 0 and both_nan.top1 == 1.0  # the same NaN is no change
    assert compare_outputs(np.array([np.inf]), np.array([-np.inf])).nonfinite == 1


def test_numeric_diff_flags_an_exact_pass_whose_output_became_nan(g, scale_passes):
    """It used to print max_abs=nan ... top1=100.0% and no flag."""
    out: list[str] = []
    nd = NumericDiff(write=out.append)
    optimize(g, "dce,nan-exact,dce", instruments=[nd])
    assert "<<" not in out[0]
    assert out[1].startswith("numeric-diff 002_nan-exact")
    assert "nonfinite=4" in out[1]  # one element in each of the 4 random batches
    assert "<< exact pass turned 4 output values to or from NaN/Inf" in out[1]
    assert "=nan" not in out[1]  # the other measures stay numbers
    assert nd.records[1].nonfinite == 4 and nd.records[1].outputs[0].top1 < 1.0
    assert "<<" not in out[2]  # dce changed nothing further (the NaN is not new)


def test_numeric_diff_uses_the_example_inputs(g):
    import torch

    nd = NumericDiff(write=lambda s: None)
    x = torch.randn(2, 3, 8, 8)
    optimize(g, "dce", example_inputs=x, instruments=[nd])
    assert len(nd._inputs) == 1 and torch.equal(nd._inputs[0][0], x)


# ---------------------------------------------------------------------------- time / stats
def test_time_passes_table(g):
    out: list[str] = []
    tp = TimePasses(write=out.append)
    optimize(g, "fold-bn,dce", instruments=[tp])
    assert len(out) == 1
    lines = out[0].splitlines()
    assert lines[0] == "time-passes:" and lines[1].split() == ["pass", "ms", "%"]
    assert [ln.split()[0] for ln in lines[2:]] == ["001_fold-bn", "002_dce", "total"]
    assert [t[0] for t in tp.times] == ["001_fold-bn", "002_dce"]
    assert all(t[2] >= 0 for t in tp.times)


def test_stats_report_deltas_and_counters(g):
    out: list[str] = []
    st = Stats(write=out.append)
    optimize(g, "fold-bn,dce", instruments=[st])
    r = st.records[0]
    assert (r.before.nodes, r.after.nodes) == (4, 3)
    assert r.after.params - r.before.params == 4 - 16  # a conv bias in, 4 BN vectors out
    assert r.counters["folded"] == 1 and r.counters["skipped_shared"] == 0
    assert out[0].startswith("stats 001_fold-bn: nodes 4 -> 3 (-1), params 124 -> 112 (-12)")
    assert out[0].endswith("; folded=1")  # zero counters are not printed
    assert out[1] == ("stats 002_dce: nodes 3, params 112, macs 13,824, flops 28,160, "
                      "param_bytes 448")
    assert out[2].startswith("stats total: nodes 4 -> 3 (-1)")


def test_stats_print_a_pass_s_per_layer_rows_as_a_table(g):
    @register_pass("two-rows")
    @dataclass
    class TwoRows(Pass):
        """Reports two layers without changing anything."""

        exact = True

        def run(self, graph, ctx):
            return PassResult(False, {"n": 2}, layers=[
                {"node": "conv", "status": "done", "macs": (1000, 250), "error": 0.0123},
                {"node": "fc_long_name", "status": "skipped_tiny", "macs": None}])

    try:
        out: list[str] = []
        st = Stats(write=out.append)
        optimize(g, "two-rows", instruments=[st])
        head, *table = out[0].splitlines()
        assert head.endswith("; n=2")
        assert [ln.split() for ln in table] == [
            ["node", "status", "macs", "error"],
            ["conv", "done", "1,000", "->", "250", "0.0123"],
            ["fc_long_name", "skipped_tiny", "-", "-"]]
        assert table[1].index("done") == table[0].index("status")  # aligned columns
        assert st.records[0].layers[1]["node"] == "fc_long_name"
    finally:
        unregister_pass("two-rows")


# ---------------------------------------------------------------------------- DumpDir
def test_dump_dir_files_load_back(g, tmp_path):
    (tmp_path / "007_old-pass.shrk").write_text("stale")
    (tmp_path / "notes.txt").write_text("mine")
    dd = DumpDir(tmp_path)
    result = optimize(g, "fold-bn,dce", instruments=[dd])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["000_input.safetensors", "000_input.shrk", "001_fold-bn.safetensors",
                     "001_fold-bn.shrk", "002_dce.safetensors", "002_dce.shrk", "notes.txt",
                     "pipeline.txt"]
    assert graph_diff(load(tmp_path / "000_input.shrk"), g) is None
    assert graph_diff(load(tmp_path / "001_fold-bn.shrk"), optimize(g, "fold-bn")) is None
    assert graph_diff(load(tmp_path / "002_dce.shrk"), result) is None
    assert (tmp_path / "pipeline.txt").read_text() == "fold-bn,dce\n"


# ---------------------------------------------------------------------------- Reproducer
PLUGIN = '''
from dataclasses import dataclass

from shrinkc.passes import Pass, PassError, PassResult, register_pass


@register_pass("fail-on-bias")
@dataclass
class FailOnBias(Pass):
    """Fails on a conv2d with a bias (so: only after fold-bn gave it one)."""

    exact = True
    limit: int = 0

    def run(self, graph, ctx):
        for n in graph.nodes:
            if n.op == "conv2d" and len(n.inputs) == 3:
                raise PassError(f"conv with a bias (limit={self.limit})", node=n)
        return PassResult(False)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "repro_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugin("repro_plugin")
    yield "repro_plugin"
    unregister_pass("fail-on-bias")
    sys.modules.pop("repro_plugin", None)


def test_reproducer_reruns_the_failing_pass_the_same_way(g, tmp_path, plugin, monkeypatch,
                                                          capsys):
    from shrinkc.tools.cli import main

    rdir = tmp_path / "repro"
    with pytest.raises(PassError) as e:
        optimize(g, "fold-bn,fail-on-bias(limit=3),dce", seed=7,
                 instruments=[Reproducer(rdir)])
    err = e.value
    assert (err.pass_spec, err.node, err.reason) == (
        "fail-on-bias(limit=3)", "conv (conv)", "conv with a bias (limit=3)")
    shrk = (rdir / "reproducer.shrk").resolve()
    cmd = f"{shlex.quote(sys.executable)} -m shrinkc.tools.cli opt"  # runs without the venv on PATH
    assert err.reproducer == (f"{cmd} {shrk} --passes='fail-on-bias(limit=3)' --seed 7 "
                              f"--load-plugin repro_plugin")
    assert f"reproduce with: {err.reproducer}" in str(err)
    script = (rdir / "reproducer.sh").read_text()
    assert script.splitlines()[-1] == err.reproducer
    assert "conv with a bias (limit=3)" in script.splitlines()[1]
    # the IR before the failing pass: the graph after fold-bn, with its weights
    assert graph_diff(load(shrk), optimize(g, "fold-bn")) is None

    # 1. the saved IR and the pass alone fail the same way
    with pytest.raises(PassError) as again:
        optimize(load(shrk), "fail-on-bias(limit=3)", seed=7)
    assert (again.value.pass_spec, again.value.node, again.value.reason) == (
        err.pass_spec, err.node, err.reason)

    # 2. the command itself, with the plugin found only through --load-plugin
    unregister_pass("fail-on-bias")
    sys.modules.pop("repro_plugin")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its own reproducer goes here
    argv = shlex.split(err.reproducer)
    assert argv[:4] == [sys.executable, "-m", "shrinkc.tools.cli", "opt"]
    assert main(argv[3:]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == ("shrinkc: error: pass 'fail-on-bias(limit=3)' failed on node conv "
                        "(conv): conv with a bias (limit=3) [pass 1 of 1; already run: none]")
    assert lines[1].startswith(f"  reproduce with: {cmd} ")


def test_no_reproducer_when_nothing_fails(g, tmp_path):
    r = Reproducer(tmp_path / "repro")
    optimize(g, "fold-bn", instruments=[r])
    assert r.path is None and not (tmp_path / "repro").exists()


def test_a_plugin_loaded_from_a_file_is_named_by_its_path(tmp_path):
    from shrinkc.passes import PASSES
    from shrinkc.passes.instruments import plugin_of

    path = tmp_path / "file_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN).replace("fail-on-bias", "fail-on-bias-file")
                    .replace("class FailOnBias", "class FailOnBiasFile"))
    try:
        load_plugin(str(path))
        assert plugin_of(PASSES["fail-on-bias-file"]) == str(path.resolve())
        assert plugin_of(PASSES["fold-bn"]) is None
    finally:
        unregister_pass("fail-on-bias-file")
        sys.modules.pop("file_plugin", None)
