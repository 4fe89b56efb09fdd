"""svd-linear: linear / 1x1 conv / matmul by a constant, exactness, ranks, refusals."""

import numpy as np
import pytest
import torch
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.text import graph_diff
from shrinkc.passes import PassContext, PassManager
from shrinkc.passes.analyses import rank as R
from shrinkc.tools import zoo
from suite import as_f64, assert_close

FULL = "svd-linear(rank=full, break_even=false, min_params=0)"

CASES = {
    "linear_2d": """
    graph "g" (%x: f64[4,64]) {
      %fc.weight: f64[48,64] = const #1
      %fc.bias: f64[48] = const #2
      %fc: f64[4,48] = linear(%x, %fc.weight, %fc.bias) loc("fc")
      return %fc
    }""",
    "linear_tokens_no_bias": """
    graph "g" (%x: f64[2,7,64]) {
      %fc.weight: f64[96,64] = const #1
      %fc: f64[2,7,96] = linear(%x, %fc.weight) loc("fc")
      return %fc
    }""",
    "conv_1x1_strided_padded": """
    graph "g" (%x: f64[1,32,9,9]) {
      %pw.weight: f64[48,32,1,1] = const #1
      %pw.bias: f64[48] = const #2
      %pw: f64[1,48,6,6] = conv2d(%x, %pw.weight, %pw.bias) {stride=[2, 2], padding=[1, 1]} loc("pw")
      return %pw
    }""",
    "conv_1x1_grouped": """
    graph "g" (%x: f64[1,32,5,5]) {
      %pw.weight: f64[64,8,1,1] = const #1
      %pw: f64[1,64,5,5] = conv2d(%x, %pw.weight) {groups=4} loc("pw")
      return %pw
    }""",
    "matmul_right": """
    graph "g" (%x: f64[2,7,64]) {
      %m: f64[64,40] = const #1
      %y: f64[2,7,40] = matmul(%x, %m) loc("mm")
      return %y
    }""",
    "matmul_left": """
    graph "g" (%x: f64[3,64,5]) {
      %m: f64[40,64] = const #1
      %y: f64[3,40,5] = matmul(%m, %x) loc("mm")
      return %y
    }""",
}


def _ranks(graph):
    return [n.inputs[1].shape[0] if n.op != "matmul" else n.outputs[0].shape[-1]
            for n in graph.nodes if n.outputs[0].name.endswith(".svd_in")]


# ---------------------------------------------------------------------------- structure
def test_structure_linear(ir, apply):
    before = ir("""
    graph "g" (%x: f32[2,7,64]) {
      %fc.weight: f32[48,64] = const #1
      %fc.bias: f32[48] = const #2
      %fc: f32[2,7,48] = linear(%x, %fc.weight, %fc.bias) loc("blocks.0.mlp.fc1")
      %act: f32[2,7,48] = gelu(%fc)
      return %act
    }""")
    after, result = apply(before, "svd-linear(rank=8, min_params=0)")
    expected = ir("""
    graph "g" (%x: f32[2,7,64]) {
      %fc.bias: f32[48] = const #2
      %fc.svd_in.weight: f32[8,64] = const #3
      %fc.svd_out.weight: f32[48,8] = const #4
      %fc.svd_in: f32[2,7,8] = linear(%x, %fc.svd_in.weight) loc("blocks.0.mlp.fc1")
      %fc: f32[2,7,48] = linear(%fc.svd_in, %fc.svd_out.weight, %fc.bias) loc("blocks.0.mlp.fc1")
      %act: f32[2,7,48] = gelu(%fc)
      return %act
    }""")
    assert graph_diff(after, expected, data=False) is None
    assert result.stats["decomposed"] == 1


def test_structure_matmul_left_and_conv(ir, apply):
    after, _ = apply(ir(CASES["matmul_left"]), "svd-linear(rank=8, min_params=0)")
    assert [(n.op, [v.name for v in n.inputs]) for n in after.nodes] == [
        ("matmul", ["m.svd_in.weight", "x"]), ("matmul", ["m.svd_out.weight", "y.svd_in"])]
    after, _ = apply(ir(CASES["conv_1x1_strided_padded"]), "svd-linear(rank=8, min_params=0)")
    first, second = after.nodes
    assert first.attrs["stride"] == (2, 2) and first.attrs["padding"] == (1, 1)
    assert second.attrs["stride"] == (1, 1) and second.attrs["padding"] == (0, 0)
    assert [v.name for v in second.inputs] == ["pw.svd_in", "pw.svd_out.weight", "pw.bias"]


def test_factors_are_the_balanced_truncated_svd(ir, apply):
    before = ir(CASES["linear_2d"])
    after, _ = apply(before, "svd-linear(rank=8, min_params=0)")
    w = before.constants["fc.weight"].data
    v, u = after.constants["fc.svd_in.weight"].data, after.constants["fc.svd_out.weight"].data
    s = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(np.linalg.svd(u @ v, compute_uv=False)[:8], s[:8], rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(u, axis=0), np.sqrt(s[:8]), rtol=1e-10)
    assert np.linalg.norm(w - u @ v) ** 2 == pytest.approx(np.sum(s[8:] ** 2))


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("case", list(CASES))
def test_exact_at_full_rank(case, ir, apply):
    before = ir(CASES[case])
    after, result = apply(before, FULL)
    assert result.stats["decomposed"] == 1
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        assert_close(run(after, xs), run(before, xs))


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_exact_at_full_rank_on_every_reference_model(name, reference_graphs, apply):
    _, x, graph = reference_graphs(name)
    before = as_f64(graph)
    after, result = apply(before, FULL)
    layers = [n for n in graph.nodes if n.op == "linear" and n.inputs[1].is_constant
              or n.op == "conv2d" and n.inputs[1].shape[2:] == (1, 1)
              and not (n.attrs["groups"] > 1 and n.inputs[1].shape[1] == 1)
              or n.op == "matmul" and sum(v.is_constant for v in n.inputs) == 1]
    assert result.stats["decomposed"] == len(layers) > 0, result.stats
    with torch.no_grad():
        assert_close(run(after, [x.double()]), run(before, [x.double()]))


def test_exact_at_the_rank_of_a_low_rank_weight(ir, apply):
    before = ir(CASES["linear_tokens_no_bias"])
    rng = np.random.default_rng(0)
    before.constants["fc.weight"].data = rng.standard_normal((96, 5)) @ rng.standard_normal(
        (5, 64))
    after, result = apply(before, "svd-linear(rank=5, min_params=0)")
    assert result.stats["max_error"] < 1e-12
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        assert_close(run(after, xs), run(before, xs))


# ---------------------------------------------------------------------------- ranks
def test_rank_options(ir, apply):
    g = ir(CASES["linear_tokens_no_bias"])
    w = g.constants["fc.weight"].data
    s = np.linalg.svd(w, compute_uv=False)
    assert _ranks(apply(g, "svd-linear(rank=13, min_params=0, break_even=false)")[0]) == [13]
    assert _ranks(apply(g, "svd-linear(energy=0.5, min_params=0)")[0]) == [
        R.round_rank(R.energy_rank(s, 0.5), 64, 8)]
    after, result = apply(g, "svd-linear(ratio=0.3, min_params=0)")
    (r,) = _ranks(after)
    assert r % 8 == 0 and r * (96 + 64) <= 0.3 * 96 * 64 < (r + 8) * (96 + 64)


def test_vbmf_finds_a_planted_rank(ir, apply):
    g = ir(CASES["linear_2d"].replace("f64", "f32"))
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 6)) @ rng.standard_normal((6, 64)) + 0.01 * rng.standard_normal(
        (48, 64))
    g.constants["fc.weight"].data = w.astype(np.float32)
    assert _ranks(apply(g, "svd-linear(vbmf=true, min_params=0, round_to=1)")[0]) == [6]
    assert _ranks(apply(g, "svd-linear(min_params=0)")[0]) == [8]  # default vbmf, rounded up


def test_target_macs_on_a_mlp(ir, apply):
    g = ir("""
    graph "g" (%x: f32[8,256]) {
      %w1: f32[512,256] = const #1
      %w2: f32[128,512] = const #2
      %h: f32[8,512] = linear(%x, %w1) loc("fc1")
      %r: f32[8,512] = relu(%h)
      %y: f32[8,128] = linear(%r, %w2) loc("fc2")
      return %y
    }""")
    total = graph_cost(g).total.macs
    after, result = apply(g, "svd-linear(target_macs=0.4)")
    assert graph_cost(after).total.macs <= 0.4 * total
    assert all(r % 8 == 0 for r in _ranks(after))
    # the SVD error estimate is exact: the reported error is what the allocator planned for
    assert result.stats["target_macs"] == int(0.4 * total)


def test_costs_are_what_the_op_table_counts(ir, apply):
    for case, text in CASES.items():
        before = ir(text)
        after, result = apply(before, "svd-linear(rank=3, min_params=0, break_even=false)")
        assert graph_cost(after).total.macs == result.stats["macs_after"], case
        assert graph_cost(before).total.macs == result.stats["macs_before"], case
        assert after.num_params == result.stats["params_after"], case


# ---------------------------------------------------------------------------- must not fire
MUST_NOT_FIRE = {
    "skipped_kernel": """
    graph "g" (%x: f32[1,32,8,8]) {
      %w: f32[64,32,3,3] = const #1
      %y: f32[1,64,6,6] = conv2d(%x, %w)
      return %y
    }""",
    "skipped_depthwise": """
    graph "g" (%x: f32[1,64,8,8]) {
      %w: f32[64,1,1,1] = const #1
      %y: f32[1,64,8,8] = conv2d(%x, %w) {groups=64}
      return %y
    }""",
    "skipped_activations": """
    graph "g" (%q: f32[2,16,32], %k: f32[2,32,16]) {
      %y: f32[2,16,16] = matmul(%q, %k)
      return %y
    }""",
    "skipped_layout": """
    graph "g" (%x: f32[4,7,64]) {
      %w: f32[4,64,48] = const #1
      %y: f32[4,7,48] = matmul(%x, %w)
      return %y
    }""",
    "skipped_tiny": """
    graph "g" (%x: f32[4,16]) {
      %w: f32[10,16] = const #1
      %y: f32[4,10] = linear(%x, %w)
      return %y
    }""",
    "skipped_break_even": """
    graph "g" (%x: f32[4,256]) {
      %w: f32[8,256] = const #1
      %y: f32[4,8] = linear(%x, %w)
      return %y
    }""",
}


@pytest.mark.parametrize("reason", list(MUST_NOT_FIRE))
def test_must_not_fire(reason, ir, apply):
    before = ir(MUST_NOT_FIRE[reason])
    opts = "min_params=0, rank=full" if reason == "skipped_break_even" else ""
    after, result = apply(before, f"svd-linear({opts})")
    assert graph_diff(before, after) is None
    assert not result.changed and result.stats[reason] == 1


def test_report_is_per_layer(ir):
    g = ir(CASES["linear_2d"].replace("f64", "f32"))
    ctx = PassContext()
    PassManager("svd-linear(rank=8, min_params=0)", ctx).run(g)
    (row,) = ctx.artifacts["svd-linear"]
    assert row["rank"] == "8" and row["params"] == (48 * 64 + 48, 8 * 64 + 48 * 8 + 48)
    assert row["macs"] == (4 * 48 * 64, 4 * (8 * 64 + 48 * 8))
