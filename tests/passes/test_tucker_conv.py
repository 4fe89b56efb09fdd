"""tucker-conv: structure, exactness at full rank, rank options, refusals, stats."""

import numpy as np
import pytest
import torch
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.graph import Graph
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.text import graph_diff
from shrinkc.ir.types import TensorType
from shrinkc.passes import PassContext, PassManager, PipelineError, parse_pipeline
from shrinkc.passes.analyses import rank as R
from shrinkc.passes.analyses.decompose import tucker_to_tensor
from shrinkc.tools import zoo
from suite import as_f64, assert_close

FULL = "tucker-conv(rank=full, break_even=false, min_params=0)"

BEFORE = """
graph "g" (%x: f32[1,16,8,8]) {
  %conv.weight: f32[32,16,3,3] = const #1
  %conv.bias: f32[32] = const #2
  %conv: f32[1,32,4,4] = conv2d(%x, %conv.weight, %conv.bias) {stride=[2, 2], padding=[1, 1]} loc("layer1.conv")
  %relu: f32[1,32,4,4] = relu(%conv)
  return %relu
}
"""


def conv_graph(c_in=16, c_out=24, k=(3, 3), hw=(9, 9), dtype="f64", bias=True, seed=0,
               **attrs) -> Graph:
    """x -> conv2d(attrs) -> output, random weights of ``dtype``."""
    rng = np.random.default_rng(seed)
    np_dt = np.float64 if dtype == "f64" else np.float32
    g = Graph("conv")
    x = g.add_input(TensorType(dtype, (1, c_in, *hw)), "x")
    groups = attrs.get("groups", 1)
    w = g.add_constant(rng.standard_normal((c_out, c_in // groups, *k)).astype(np_dt),
                       "conv.weight")
    ins = [x, w] + ([g.add_constant(rng.standard_normal(c_out).astype(np_dt), "conv.bias")]
                    if bias else [])
    g.outputs = [g.add_node("conv2d", ins, attrs, names=["conv"], loc="conv").outputs[0]]
    return g


#: Conv shapes the full-rank chain must reproduce exactly.
CONVS = {
    "stride2": dict(stride=(2, 2), padding=(1, 1)),
    "dilation2": dict(dilation=(2, 2), padding=(2, 2)),
    "non_square_kernel": dict(k=(3, 5), padding=(1, 2), stride=(2, 1)),
    "per_axis_attrs": dict(k=(5, 3), stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    "no_padding_no_bias": dict(bias=False),
    "grouped": dict(groups=2, padding=(1, 1)),
    "grouped_4_strided": dict(c_in=16, c_out=32, groups=4, stride=(2, 2)),
}


def _full_rank_fires(after) -> None:
    assert [n.op for n in after.nodes] == ["conv2d"] * 3


# ---------------------------------------------------------------------------- structure
def test_structure_of_the_chain(ir, apply):
    after, result = apply(ir(BEFORE), "tucker-conv(rank=(8, 4), min_params=0)")
    expected = ir("""
    graph "g" (%x: f32[1,16,8,8]) {
      %conv.bias: f32[32] = const #2
      %conv.tucker_in.weight: f32[8,16,1,1] = const #3
      %conv.tucker_core.weight: f32[4,8,3,3] = const #4
      %conv.tucker_out.weight: f32[32,4,1,1] = const #5
      %conv.tucker_in: f32[1,8,8,8] = conv2d(%x, %conv.tucker_in.weight) loc("layer1.conv")
      %conv.tucker_core: f32[1,4,4,4] = conv2d(%conv.tucker_in, %conv.tucker_core.weight) {stride=[2, 2], padding=[1, 1]} loc("layer1.conv")
      %conv: f32[1,32,4,4] = conv2d(%conv.tucker_core, %conv.tucker_out.weight, %conv.bias) loc("layer1.conv")
      %relu: f32[1,32,4,4] = relu(%conv)
      return %relu
    }""")
    assert graph_diff(after, expected, data=False) is None
    assert result.changed and result.stats["decomposed"] == 1


def test_grouped_chain_is_grouped(apply):
    before = conv_graph(c_in=16, c_out=32, groups=4, dtype="f32")
    after, _ = apply(before, "tucker-conv(rank=(2, 3), min_params=0)")
    ops = [(n.op, n.inputs[1].shape, n.attrs["groups"]) for n in after.nodes]
    assert ops == [("conv2d", (8, 4, 1, 1), 4), ("conv2d", (12, 2, 3, 3), 4),
                   ("conv2d", (32, 3, 1, 1), 4)]


def test_weights_are_the_tucker_factors(ir):
    before = ir(BEFORE)
    after, ctx = before.clone(), PassContext()
    PassManager("tucker-conv(rank=(8, 4), min_params=0)", ctx).run(after)
    c = after.constants
    assert all(v.dtype == "f32" for v in c.values())
    u_in = c["conv.tucker_in.weight"].data[:, :, 0, 0].T.astype(np.float64)
    core = c["conv.tucker_core.weight"].data.astype(np.float64)
    u_out = c["conv.tucker_out.weight"].data[:, :, 0, 0].astype(np.float64)
    np.testing.assert_allclose(u_in.T @ u_in, np.eye(8), atol=1e-6)  # orthonormal (HOOI)
    w = before.constants["conv.weight"].data.astype(np.float64)
    err = np.linalg.norm(w - tucker_to_tensor(core, u_out, u_in)) / np.linalg.norm(w)
    # the reported error is the reconstruction error (up to the float32 storage)
    assert ctx.artifacts["tucker-conv"][0]["error"] == pytest.approx(err, rel=1e-4)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("case", list(CONVS))
def test_exact_at_full_rank_on_conv_shapes(case, apply):
    before = conv_graph(**CONVS[case])
    after, result = apply(before, FULL)
    _full_rank_fires(after)
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        assert_close(run(after, xs), run(before, xs))  # float64 on both sides
    assert result.stats["max_error"] < 1e-12


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_exact_at_full_rank_on_every_reference_model(name, reference_graphs, apply):
    _, x, graph = reference_graphs(name)
    before = as_f64(graph)
    after, result = apply(before, FULL)
    kxk = [n for n in graph.nodes if n.op == "conv2d" and n.inputs[1].shape[2:] != (1, 1)
           and not (n.attrs["groups"] > 1 and n.inputs[1].shape[1] == 1)]  # not depthwise
    assert result.stats["decomposed"] == len(kxk), result.stats
    xs = [x.double()]
    with torch.no_grad():
        assert_close(run(after, xs), run(before, xs))


def test_exact_when_the_kernel_has_that_multilinear_rank(apply):
    """Lossy at a lower rank in general, exact when the weight already has the structure."""
    g = conv_graph(c_in=16, c_out=24, padding=(1, 1))
    rng = np.random.default_rng(5)
    w = tucker_to_tensor(rng.standard_normal((8, 4, 3, 3)), rng.standard_normal((24, 8)),
                         rng.standard_normal((16, 4)))
    g.constants["conv.weight"].data = w
    after, result = apply(g, "tucker-conv(rank=(4, 8), min_params=0)")
    assert result.stats["decomposed"] == 1 and result.stats["max_error"] < 1e-10
    xs = random_inputs(g, seed=2)
    with torch.no_grad():
        assert_close(run(after, xs), run(g, xs))


# ---------------------------------------------------------------------------- ranks
def _ranks(graph):
    """(R_in, R_out) of each decomposed conv: the core's weight shape."""
    return [n.inputs[1].shape[1::-1] for n in graph.nodes
            if n.outputs[0].name.endswith(".tucker_core")]


def test_rank_options(apply):
    g = conv_graph(c_in=64, c_out=96, dtype="f32", padding=(1, 1))
    assert _ranks(apply(g, "tucker-conv(rank=16)")[0]) == [(16, 16)]
    assert _ranks(apply(g, "tucker-conv(rank=(12, 20))")[0]) == [(12, 20)]  # not rounded
    # energy: per mode, the smallest rank with that energy, rounded up to 8
    w = g.constants["conv.weight"].data
    r_in = R.round_rank(R.energy_rank(R.singular_values(R.unfold(w, 1)), 0.5), 64, 8)
    r_out = R.round_rank(R.energy_rank(R.singular_values(R.unfold(w, 0)), 0.5), 96, 8)
    assert _ranks(apply(g, "tucker-conv(energy=0.5)")[0]) == [(r_in, r_out)]
    # ratio: at most that fraction of the parameters, ranks in proportion to the channels
    after, result = apply(g, "tucker-conv(ratio=0.25)")
    (r_in, r_out), = _ranks(after)
    assert r_in % 8 == 0 and r_out % 8 == 0 and r_in < r_out
    assert result.stats["params_after"] <= 0.25 * result.stats["params_before"]


def test_vbmf_finds_planted_ranks(apply):
    """A kernel of multilinear rank (R_out=24, R_in=16) plus small noise: EVBMF on the two
    unfoldings gives those ranks, and it is the default rule."""
    g = conv_graph(c_in=64, c_out=96, dtype="f32", padding=(1, 1))
    rng = np.random.default_rng(6)
    w = tucker_to_tensor(rng.standard_normal((24, 16, 3, 3)), rng.standard_normal((96, 24)),
                         rng.standard_normal((64, 16)))
    w += 0.01 * np.abs(w).max() * rng.standard_normal(w.shape)
    g.constants["conv.weight"].data = w.astype(np.float32)
    assert _ranks(apply(g, "tucker-conv(vbmf=true)")[0]) == [(16, 24)]
    assert _ranks(apply(g, "tucker-conv")[0]) == [(16, 24)]


def test_round_to(apply):
    g = conv_graph(c_in=64, c_out=96, dtype="f32", padding=(1, 1))
    assert _ranks(apply(g, "tucker-conv(ratio=0.3, round_to=16)")[0])[0][0] % 16 == 0
    r = _ranks(apply(g, "tucker-conv(ratio=0.3, round_to=1)")[0])[0]
    assert r[0] % 8 or r[1] % 8  # exactly the largest rank in budget, not a multiple of 8


def test_chain_costs_are_what_the_op_table_counts(apply):
    for case in CONVS:
        before = conv_graph(**CONVS[case], dtype="f32")
        after, result = apply(before, "tucker-conv(rank=(4, 6), min_params=0, break_even=false)")
        assert graph_cost(after).total.macs == result.stats["macs_after"], case
        assert graph_cost(before).total.macs == result.stats["macs_before"], case
        assert after.num_params == result.stats["params_after"], case
        assert before.num_params == result.stats["params_before"], case


# ---------------------------------------------------------------------------- must not fire
MUST_NOT_FIRE = {
    "skipped_depthwise": (dict(c_in=16, c_out=16, groups=16), ""),
    "skipped_pointwise": (dict(k=(1, 1)), ""),
    "skipped_tiny": (dict(c_in=4, c_out=8), "min_params=1024"),
    # full rank has more MACs than the layer
    "skipped_break_even": (dict(), "rank=full, min_params=0"),
    "skipped_excluded": (dict(), "min_params=0, exclude=\"co*\""),
    "skipped_excluded ": (dict(), "min_params=0, include=[\"layer*\", \"fc\"]"),
}


@pytest.mark.parametrize("reason", list(MUST_NOT_FIRE))
def test_must_not_fire(reason, apply):
    shape, opts = MUST_NOT_FIRE[reason]
    before = conv_graph(dtype="f32", **shape)
    after, result = apply(before, f"tucker-conv({opts})")
    assert graph_diff(before, after) is None
    assert not result.changed and result.stats[reason.strip()] == 1
    assert result.stats["decomposed"] == 0


def test_must_not_fire_on_shared_or_nonconstant_weights(ir, apply):
    g = ir("""
    graph "g" (%x: f32[1,16,8,8], %wx: f32[32,16,3,3]) {
      %w: f32[32,16,3,3] = const #1
      %a: f32[1,32,6,6] = conv2d(%x, %w)
      %b: f32[1,32,6,6] = conv2d(%x, %w)
      %c: f32[1,32,6,6] = conv2d(%x, %wx)
      return %a, %b, %c
    }""")
    after, result = apply(g, "tucker-conv(rank=4, min_params=0)")
    assert graph_diff(g, after) is None
    assert result.stats["skipped_shared_weight"] == 2 and result.stats["skipped_nonconstant"] == 1


def test_include_selects_by_loc(ir, apply):
    g = ir("""
    graph "g" (%x: f32[1,16,8,8]) {
      %w1: f32[32,16,3,3] = const #1
      %w2: f32[32,32,3,3] = const #2
      %a: f32[1,32,8,8] = conv2d(%x, %w1) {padding=[1, 1]} loc("layer1.0.conv1")
      %b: f32[1,32,8,8] = conv2d(%a, %w2) {padding=[1, 1]} loc("layer2.0.conv1")
      return %b
    }""")
    after, result = apply(g, "tucker-conv(rank=4, min_params=0, include=\"layer2.*\")")
    assert [n.loc for n in after.nodes] == ["layer1.0.conv1"] + ["layer2.0.conv1"] * 3
    assert result.stats["skipped_excluded"] == 1
    after, _ = apply(g, "tucker-conv(rank=4, min_params=0, exclude=[\"layer2.*\"])")
    assert [n.loc for n in after.nodes] == ["layer1.0.conv1"] * 3 + ["layer2.0.conv1"]


# ---------------------------------------------------------------------------- options, report
@pytest.mark.parametrize("text,words", [
    ("tucker-conv(rank=4, energy=0.9)", "give one of"),
    ("tucker-conv(rank=(1, 2, 3))", "takes 2 values"),
    ("tucker-conv(energy=1.5)", "<= 1"),
    ("tucker-conv(target_macs=3.0)", "as an int"),
    ("tucker-conv(rank=half)", "expected"),
])
def test_bad_options_name_the_problem(text, words):
    with pytest.raises(PipelineError, match=words.replace("(", r"\(")):
        parse_pipeline(text)


def test_canonical_text_round_trips():
    p, = parse_pipeline("tucker-conv(rank=(8, 16), include=layer1)")
    again, = parse_pipeline(p.spec())
    assert again == p and again.rank == (8, 16)


def test_per_layer_report():
    g = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    ctx = PassContext()
    PassManager("tucker-conv(rank=8)", ctx).run(g)
    (row,) = ctx.artifacts["tucker-conv"]
    assert row["status"] == "decomposed" and row["rank"] == "8x8" and row["loc"] == "conv"
    assert row["params"] == (32 * 32 * 9 + 32, 8 * 32 + 8 * 8 * 9 + 32 * 8 + 32)
    assert row["macs"][1] < row["macs"][0] and 0 < row["error"] < 1 and row["seconds"] >= 0


def test_target_macs_meets_the_whole_graph_budget(ir, apply):
    g = ir("""
    graph "g" (%x: f32[1,32,8,8]) {
      %w1: f32[64,32,3,3] = const #1
      %w2: f32[64,64,3,3] = const #2
      %a: f32[1,64,8,8] = conv2d(%x, %w1) {padding=[1, 1]} loc("a")
      %r: f32[1,64,8,8] = relu(%a)
      %b: f32[1,64,8,8] = conv2d(%r, %w2) {padding=[1, 1]} loc("b")
      return %b
    }""")
    total = graph_cost(g).total.macs
    for frac in (0.8, 0.5, 0.2):
        after, result = apply(g, f"tucker-conv(target_macs={frac})")
        assert graph_cost(after).total.macs <= frac * total
        assert result.stats["target_macs"] == int(frac * total)
        assert all(r % 8 == 0 for rank in _ranks(after) for r in rank)
    after, result = apply(g, f"tucker-conv(target_macs={total // 3})")  # an absolute count
    assert graph_cost(after).total.macs <= total // 3


def test_target_macs_out_of_reach_decomposes_as_far_as_it_can(ir, apply, caplog):
    g = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    after, result = apply(g, "tucker-conv(target_macs=10)")
    assert result.stats["target_unmet"] == 1 and _ranks(after) == [(8, 8)]
    assert "not reachable" in caplog.text
