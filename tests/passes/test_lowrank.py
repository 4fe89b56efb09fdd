"""The frame shared by the low-rank passes (passes/lowrank.py): layer selection, rank rules,
the whole-graph MAC target, rewriting and the per-layer report."""

import pytest
import torch
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.text import parse_graph, print_graph
from shrinkc.passes import PASSES, PassContext, PassManager
from shrinkc.passes.lowrank import BLAS_THREADS, LowRankPass
from suite import assert_close

LOW_RANK = ["tucker-conv", "cp-conv", "svd-linear"]

NET = """
graph "net" (%x: f32[1,16,8,8]) {
  %c1.weight: f32[32,16,3,3] = const #1
  %c2.weight: f32[32,32,3,3] = const #2
  %fc.weight: f32[64,2048] = const #3
  %fc.bias: f32[64] = const #4
  %c1: f32[1,32,8,8] = conv2d(%x, %c1.weight) {padding=[1, 1]} loc("features.0")
  %r1: f32[1,32,8,8] = relu(%c1)
  %c2: f32[1,32,8,8] = conv2d(%r1, %c2.weight) {padding=[1, 1]} loc("features.1")
  %r2: f32[1,32,8,8] = relu(%c2)
  %f: f32[1,2048] = flatten(%r2) {start_dim=1, end_dim=-1}
  %fc: f32[1,64] = linear(%f, %fc.weight, %fc.bias) loc("classifier")
  return %fc, %c2
}
"""


def test_the_frame_is_not_a_pass_and_the_three_use_it():
    assert all(issubclass(PASSES[n], LowRankPass) for n in LOW_RANK)
    assert LowRankPass not in PASSES.values()
    assert all(not PASSES[n].exact for n in LOW_RANK)


@pytest.mark.parametrize("name", LOW_RANK)
def test_shared_options_are_the_same_everywhere(name):
    base = {f for f in LowRankPass.__dataclass_fields__}
    assert base <= set(PASSES[name].__dataclass_fields__)


def test_pipeline_of_all_three_keeps_names_and_outputs():
    g = parse_graph(NET, missing_weights="random")
    after = g.clone()
    ctx = PassContext()
    pm = PassManager("tucker-conv(rank=8),svd-linear(rank=16)", ctx)
    pm.run(after)
    # the per-layer rows: in the result (for --stats) and in the artifacts (for the API)
    assert pm.steps[0].result.layers == ctx.artifacts["tucker-conv"]
    # graph outputs keep their names, the last op of each chain has the layer's name
    assert [v.name for v in after.outputs] == ["fc", "c2"]
    assert after.node("c2").outputs[0].name == "c2"
    locs = [n.loc for n in after.nodes if n.op in ("conv2d", "linear")]
    assert locs == ["features.0"] * 3 + ["features.1"] * 3 + ["classifier"] * 2
    assert [r["status"] for r in ctx.artifacts["tucker-conv"]] == ["decomposed"] * 2
    # svd-linear saw the chains' 1x1 convs (too small) and not their cores (no row)
    assert [r["status"] for r in ctx.artifacts["svd-linear"]] == ["skipped_tiny"] * 4 + [
        "decomposed"]
    assert not [c for c in after.constants if c in ("c1.weight", "c2.weight", "fc.weight")]
    xs = random_inputs(g, seed=0)
    with torch.no_grad():
        got = run(after, xs)
    assert [t.shape for t in got] == [torch.Size([1, 64]), torch.Size([1, 32, 8, 8])]


def test_output_value_meta_is_kept():
    g = parse_graph(NET, missing_weights="random")
    g.node("c1").outputs[0].meta["batch_dim"] = 0
    after = g.clone()
    PassManager("tucker-conv(rank=8)", PassContext()).run(after)
    assert all(o.meta.get("batch_dim") == 0 for n in after.nodes[:3] for o in n.outputs)


def test_include_and_exclude_match_loc_or_name():
    g = parse_graph(NET, missing_weights="random")
    for opts, want in [("include=\"features.*\"", 2), ("include=\"c1\"", 1),
                       ("exclude=\"features.1\"", 1), ("include=[\"c1\", \"c2\"], exclude=c2", 1),
                       ("exclude=\"*\"", 0)]:
        after = g.clone()
        ctx = PassContext()
        pm = PassManager(f"tucker-conv(rank=8, {opts})", ctx)
        pm.run(after)
        assert pm.steps[0].result.stats["decomposed"] == want, opts
        assert pm.steps[0].result.stats["skipped_excluded"] == 2 - want, opts


def test_target_macs_leaves_layers_it_does_not_need(apply):
    g = parse_graph(NET, missing_weights="random")
    total = graph_cost(g).total.macs
    after, result = apply(g, "tucker-conv(target_macs=0.9)")
    assert graph_cost(after).total.macs <= 0.9 * total
    assert result.stats["decomposed"] + result.stats["skipped_budget"] == 2
    assert result.stats["skipped_budget"] >= 1  # 10% is reachable with one of the two


def test_target_already_met_changes_nothing(apply):
    g = parse_graph(NET, missing_weights="random")
    after, result = apply(g, f"svd-linear(target_macs={graph_cost(g).total.macs})")
    assert print_graph(after) == print_graph(g) and not result.changed


def test_blas_threads_are_restored():
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    g = parse_graph(NET, missing_weights="random")
    PassManager("svd-linear(rank=8)", PassContext()).run(g)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    assert BLAS_THREADS == 1


@pytest.mark.parametrize("name", LOW_RANK)
def test_lossy_pass_error_is_bounded_by_what_it_reports(name, apply):
    """The reported weight errors are what the rewrite did: rank full gives ~0 error and
    the same outputs; a low rank reports a large error and moves the outputs."""
    g = parse_graph(NET.replace("f32", "f64"), missing_weights="random")
    xs = random_inputs(g, seed=0)
    after, result = apply(g, f"{name}(rank=full, break_even=false, min_params=0)")
    assert result.stats["max_error"] < 1e-12
    with torch.no_grad():
        assert_close(run(after, xs), run(g, xs))
    after, result = apply(g, f"{name}(rank=2, min_params=0, max_iter=2)" if name != "svd-linear"
                          else f"{name}(rank=2, min_params=0)")
    assert result.stats["max_error"] > 0.3
