from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
from shrinkc.ir.graph import IRError
from shrinkc.ir.text import graph_diff, print_graph
from shrinkc.passes import (
    Pass,
    PassContext,
    PassError,
    PassInstrument,
    PassManager,
    PassResult,
    PipelineError,
    optimize,
    register_pass,
    unregister_pass,
)

GRAPH = """
graph "g" (%x: f32[1,4]) {
  %w: f32[4,4] = const #1
  %fc: f32[1,4] = linear(%x, %w) loc("fc")
  %act: f32[1,4] = relu(%fc) loc("act")
  %drop: f32[1,4] = dropout(%act)
  return %drop
}
"""


@pytest.fixture
def temp_passes():
    """``temp_passes(cls, ...)`` registers test-only passes (kebab name from the class);
    they are unregistered after the test."""
    names = []

    def add(*classes):
        for cls in classes:
            name = "".join("-" + c.lower() if c.isupper() else c for c in cls.__name__)[1:]
            register_pass(name)(cls)
            names.append(name)

    yield add
    for n in names:
        unregister_pass(n)


@dataclass
class FailOnRelu(Pass):
    """Fails on the first relu, as a pass reports a node it cannot handle."""

    exact = True
    why: str = "relu is not supported"

    def run(self, graph, ctx):
        for n in graph.nodes:
            if n.op == "relu":
                raise PassError(self.why, node=n)
        return PassResult(False)


@dataclass
class CrashPass(Pass):
    """Raises a plain Python error."""

    exact = True

    def run(self, graph, ctx):
        return {}["missing"]


@dataclass
class LiarPass(Pass):
    """Changes the graph but reports that it did not."""

    exact = True

    def run(self, graph, ctx):
        graph.rename(graph.node("act").outputs[0], "renamed")
        return PassResult(False)


@dataclass
class SneakyDataPass(Pass):
    """Writes into a constant's array in place and reports no change."""

    exact = True

    def run(self, graph, ctx):
        graph.constants["w"].data = graph.constants["w"].data + 1
        return PassResult(False)


@dataclass
class BreakTypes(Pass):
    """Leaves an output type the op table disagrees with."""

    exact = True

    def run(self, graph, ctx):
        from shrinkc.ir.types import TensorType

        graph.node("act").outputs[0].type = TensorType("f32", (1, 5))
        return PassResult(True)


@dataclass
class NoResult(Pass):
    """Forgets to return a PassResult."""

    exact = True

    def run(self, graph, ctx):
        return None


@dataclass
class DrawRandom(Pass):
    """Records one number from ctx.rng under its tag."""

    exact = True
    tag: str = "a"

    def run(self, graph, ctx):
        ctx.artifacts.setdefault(self.tag, []).append(float(ctx.rng.random()))
        return PassResult(False)


@dataclass
class CountBatches(Pass):
    """Counts the calibration batches it sees."""

    exact = True

    def run(self, graph, ctx):
        ctx.artifacts.setdefault("batches", []).append(len(list(ctx.calibration)))
        return PassResult(False)


def test_optimize_works_on_a_copy(ir):
    g = ir(GRAPH)
    before = print_graph(g, inline_limit=0)
    out = optimize(g, "remove-identity,dce")
    assert print_graph(g, inline_limit=0) == before
    assert out is not g and [n.op for n in out.nodes] == ["linear", "relu"]
    assert out.constants["w"].data is not g.constants["w"].data


def test_canonical_pipeline_is_logged(ir, caplog):
    with caplog.at_level(logging.INFO, logger="shrinkc.passes"):
        optimize(ir(GRAPH), "fold-constants(max_growth=3),dce")
    assert "pipeline: fold-constants(max_growth=3.0),dce" in caplog.text


def test_a_pass_error_names_pass_options_history_and_node(ir, temp_passes):
    temp_passes(FailOnRelu)
    with pytest.raises(PassError) as e:
        optimize(ir(GRAPH), "dce,fail-on-relu(why='no relu here'),remove-identity")
    err = e.value
    assert str(err) == ("pass 'fail-on-relu(why=\"no relu here\")' failed on node act (act): "
                        "no relu here [pass 2 of 3; already run: dce]")
    assert (err.pass_spec, err.index, err.total, err.done) == (
        'fail-on-relu(why="no relu here")', 2, 3, ["dce"])
    assert isinstance(err, IRError)


def test_a_python_error_in_a_pass_is_wrapped(ir, temp_passes):
    temp_passes(CrashPass)
    with pytest.raises(PassError, match=r"pass 'crash-pass' failed: KeyError: 'missing' "
                                        r"\[pass 1 of 1; already run: none\]") as e:
        optimize(ir(GRAPH), "crash-pass")
    assert isinstance(e.value.__cause__, KeyError)


@pytest.mark.parametrize("cls", [LiarPass, SneakyDataPass])
def test_unchanged_claim_is_checked(cls, ir, temp_passes):
    temp_passes(cls)
    with pytest.raises(PassError, match="reported changed=False but changed the graph: line"):
        optimize(ir(GRAPH), cls.name)


def test_verify_each_catches_an_invalid_result(ir, temp_passes):
    temp_passes(BreakTypes)
    with pytest.raises(PassError, match=r"pass 'break-types' failed: the graph it produced does "
                                        r"not verify: .*node act \(act\)"):
        optimize(ir(GRAPH), "dce,break-types")
    # without verify-each the broken graph goes through
    out = optimize(ir(GRAPH), "break-types", verify_each=False)
    assert out.node("act").outputs[0].shape == (1, 5)


def test_invalid_input_is_reported_before_any_pass(ir):
    g = ir(GRAPH)
    g.nodes.reverse()
    with pytest.raises(IRError, match="input graph does not verify"):
        optimize(g, "dce")


def test_a_pass_must_return_a_pass_result(ir, temp_passes):
    temp_passes(NoResult)
    with pytest.raises(PassError, match="run\\(\\) returned NoneType, not a PassResult"):
        optimize(ir(GRAPH), "no-result")


def test_bad_pipeline_fails_before_any_work(ir):
    with pytest.raises(PipelineError, match="unknown pass 'nope'"):
        optimize(ir(GRAPH), "dce,nope")


def test_stop_after(ir):
    pm = PassManager("remove-identity,dce,fold-constants", stop_after="dce")
    assert pm.pipeline == "remove-identity,dce"
    g = ir(GRAPH)
    pm.run(g)
    assert [s.spec for s in pm.steps] == ["remove-identity", "dce"]
    with pytest.raises(PipelineError, match="stop-after: no pass 'fold-bn' in the pipeline "
                                            r"\(its passes: dce\)"):
        PassManager("dce", stop_after="fold-bn")


def test_rng_depends_on_seed_and_pass_not_position(ir, temp_passes):
    temp_passes(DrawRandom)
    a: dict = {}
    optimize(ir(GRAPH), "draw-random(tag=a),draw-random(tag=b)", seed=3, artifacts=a)
    b: dict = {}
    optimize(ir(GRAPH), "dce,draw-random(tag=b)", seed=3, artifacts=b)
    c: dict = {}
    optimize(ir(GRAPH), "draw-random(tag=b)", seed=4, artifacts=c)
    assert a["a"] != a["b"]  # different passes, different streams
    assert a["b"] == b["b"]  # same pass and seed: same numbers wherever it runs
    assert c["b"] != b["b"]
    assert PassContext(seed=5).rng.random() == np.random.default_rng(5).random()


def test_a_calibration_generator_is_seen_whole_by_every_pass(ir, temp_passes):
    temp_passes(CountBatches)
    out: dict = {}
    batches = (np.zeros((1, 4), np.float32) for _ in range(3))
    optimize(ir(GRAPH), "count-batches,count-batches", calibration=batches, artifacts=out)
    assert out["batches"] == [3, 3]


def test_instrument_hooks_run_in_order(ir, temp_passes):
    temp_passes(FailOnRelu)
    events = []

    class Record(PassInstrument):
        def enter_pipeline(self, graph, passes, ctx):
            events.append(("enter", [p.name for p in passes]))

        def before_pass(self, graph, step, ctx):
            events.append(("before", step.label))

        def after_pass(self, graph, step, ctx):
            events.append(("after", step.label, step.result.changed))

        def pass_failed(self, before, step, error, ctx):
            events.append(("failed", step.label, error.reason))

        def exit_pipeline(self, graph, ctx):
            events.append(("exit",))

    optimize(ir(GRAPH), "remove-identity,dce", instruments=[Record()])
    assert events == [("enter", ["remove-identity", "dce"]), ("before", "001_remove-identity"),
                      ("after", "001_remove-identity", True), ("before", "002_dce"),
                      ("after", "002_dce", False), ("exit",)]
    events.clear()
    with pytest.raises(PassError):
        optimize(ir(GRAPH), "dce,fail-on-relu", instruments=[Record()])
    assert events[-2:] == [("before", "002_fail-on-relu"),
                           ("failed", "002_fail-on-relu", "relu is not supported")]


def test_pass_manager_runs_in_place_and_keeps_steps(ir):
    g = ir(GRAPH)
    pm = PassManager("remove-identity,dce")
    assert pm.run(g) is g
    assert [(s.index, s.total, s.label, s.done) for s in pm.steps] == [
        (1, 2, "001_remove-identity", []), (2, 2, "002_dce", ["remove-identity"])]
    assert pm.steps[0].result.stats["removed_dropout"] == 1
    assert graph_diff(g, ir(GRAPH)) is not None


def test_an_instrument_failure_names_the_instrument(ir):
    class Boom(PassInstrument):
        def after_pass(self, graph, step, ctx):
            raise OSError("disk full")

    with pytest.raises(PassError, match=r"pass 'dce' failed: in instrument Boom after the pass: "
                                        r"OSError: disk full \[pass 1 of 1"):
        optimize(ir(GRAPH), "dce", instruments=[Boom()])


def test_public_api_delegates(ir):
    import shrinkc

    g = ir(GRAPH)
    out = shrinkc.optimize(g, "remove-identity", seed=1)
    assert [n.op for n in out.nodes] == ["linear", "relu"] and len(g.nodes) == 3


def test_inputs_for_uses_example_inputs_or_seeded_random(ir):
    import torch

    g = ir(GRAPH)
    x = torch.ones(1, 4)
    assert torch.equal(PassContext(example_inputs=x).inputs_for(g)[0], x)
    a, b = PassContext(seed=2).inputs_for(g), PassContext(seed=2).inputs_for(g)
    assert torch.equal(a[0], b[0]) and a[0].shape == (1, 4)
    assert not torch.equal(a[0], PassContext(seed=3).inputs_for(g)[0])
