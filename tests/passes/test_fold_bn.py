import numpy as np
import pytest
import torch
from shrinkc.ir.interpreter import run
from shrinkc.ir.text import graph_diff
from shrinkc.tools import zoo

BN = """
  %bn.weight: f32[4] = const [1.0, 2.0, 0.5, 1.5]
  %bn.bias: f32[4] = const [0.0, 0.1, -0.2, 0.3]
  %bn.running_mean: f32[4] = const [0.1, -0.1, 0.2, 0.0]
  %bn.running_var: f32[4] = const [1.0, 0.5, 2.0, 1.5]
"""
BN_ARGS = "%bn.weight, %bn.bias, %bn.running_mean, %bn.running_var"

CONV_BN = f"""
graph "g" (%x: f32[1,3,8,8]) {{
  %conv.weight: f32[4,3,3,3] = const #1
  {BN}
  %conv: f32[1,4,8,8] = conv2d(%x, %conv.weight) {{padding=[1, 1]}} loc("conv")
  %bn: f32[1,4,8,8] = batch_norm(%conv, {BN_ARGS}) {{eps=0.001}} loc("bn")
  %relu: f32[1,4,8,8] = relu(%bn)
  return %relu
}}
"""


def test_structure_conv_without_bias_gets_a_bias(ir, apply):
    after, result = apply(ir(CONV_BN), "fold-bn")
    expected = ir("""
    graph "g" (%x: f32[1,3,8,8]) {
      %conv.weight: f32[4,3,3,3] = const #1
      %conv.bias: f32[4] = const [0.0, 0.0, 0.0, 0.0]
      %conv: f32[1,4,8,8] = conv2d(%x, %conv.weight, %conv.bias) {padding=[1, 1]} loc("conv")
      %relu: f32[1,4,8,8] = relu(%conv)
      return %relu
    }""")
    assert graph_diff(after, expected, data=False) is None
    assert result.changed and result.stats["folded"] == 1


def test_folded_values_are_the_formula(ir, apply):
    before = ir(CONV_BN)
    after, _ = apply(before, "fold-bn")
    gamma, beta, mean, var = (before.constants[n].data.astype(np.float64) for n in (
        "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"))
    s = gamma / np.sqrt(var + 1e-3)
    w = before.constants["conv.weight"].data.astype(np.float64)
    np.testing.assert_allclose(after.constants["conv.weight"].data, w * s[:, None, None, None],
                               rtol=1e-6)
    np.testing.assert_allclose(after.constants["conv.bias"].data, beta - mean * s, rtol=1e-6,
                               atol=1e-7)
    assert after.constants["conv.weight"].dtype == "f32"


def test_structure_conv_with_bias_keeps_its_names(ir, apply):
    before = ir(f"""
    graph "g" (%x: f32[1,3,8,8]) {{
      %conv.weight: f32[4,3,3,3] = const #1
      %conv.bias: f32[4] = const [0.5, -0.5, 0.25, 1.0]
      {BN}
      %conv: f32[1,4,8,8] = conv2d(%x, %conv.weight, %conv.bias) loc("conv")
      %bn: f32[1,4,6,6] = batch_norm(%conv, {BN_ARGS})
      return %bn
    }}""".replace("f32[1,4,8,8] = conv2d", "f32[1,4,6,6] = conv2d"))
    after, _ = apply(before, "fold-bn")
    # the batch norm's output was the graph output: the folded conv takes its name
    expected = ir("""
    graph "g" (%x: f32[1,3,8,8]) {
      %conv.weight: f32[4,3,3,3] = const #1
      %conv.bias: f32[4] = const [0.0, 0.0, 0.0, 0.0]
      %bn: f32[1,4,6,6] = conv2d(%x, %conv.weight, %conv.bias) loc("conv")
      return %bn
    }""")
    assert graph_diff(after, expected, data=False) is None


@pytest.mark.parametrize("case", ["conv", "conv_bias", "grouped_conv", "linear",
                                  "conv_transpose", "grouped_conv_transpose"])
def test_numerics_match_before_and_after(case, ir, apply, assert_same_outputs):
    layer = {
        "conv": ("f32[1,4,8,8]", "f32[4,4,3,3]", "conv2d(%x, %w) {padding=[1, 1]}"),
        "conv_bias": ("f32[1,4,8,8]", "f32[4,4,3,3]", "conv2d(%x, %w, %b) {padding=[1, 1]}"),
        "grouped_conv": ("f32[1,4,8,8]", "f32[4,2,3,3]",
                         "conv2d(%x, %w, %b) {padding=[1, 1], groups=2}"),
        "linear": ("f32[2,4]", "f32[4,4]", "linear(%x, %w, %b)"),
        "conv_transpose": ("f32[1,4,8,8]", "f32[4,4,3,3]",
                           "conv_transpose2d(%x, %w, %b) {padding=[1, 1]}"),
        "grouped_conv_transpose": ("f32[1,4,8,8]", "f32[4,2,3,3]",
                                   "conv_transpose2d(%x, %w) {padding=[1, 1], groups=2}"),
    }[case]
    xt, wt, call = layer
    before = ir(f"""
    graph "g" (%x: {xt}) {{
      %w: {wt} = const #1
      %b: f32[4] = const [0.5, -0.5, 0.25, 1.0]
      {BN}
      %y: {xt} = {call}
      %bn: {xt} = batch_norm(%y, {BN_ARGS})
      %out: {xt} = relu(%bn)
      return %out
    }}""")
    after, _ = apply(before, "fold-bn,dce")
    assert [n.op for n in after.nodes] == [call.split("(")[0], "relu"]
    assert_same_outputs(before, after)


def test_shared_weight_is_not_overwritten(ir, apply, assert_same_outputs):
    before = ir(f"""
    graph "g" (%x: f32[1,4,8,8]) {{
      %w: f32[4,4,1,1] = const #1
      {BN}
      %c1: f32[1,4,8,8] = conv2d(%x, %w)
      %b1: f32[1,4,8,8] = batch_norm(%c1, {BN_ARGS})
      %c2: f32[1,4,8,8] = conv2d(%x, %w)
      %out: f32[1,4,8,8] = add(%b1, %c2)
      return %out
    }}""")
    after, result = apply(before, "fold-bn")
    assert result.stats["folded"] == 1
    assert after.node("c1").inputs[1].name == "w_1"  # a new constant, %w still feeds %c2
    np.testing.assert_array_equal(after.node("c2").inputs[1].data, before.constants["w"].data)
    assert_same_outputs(before, after)


MUST_NOT_FIRE = {
    # the conv output has another user: folding would change what %other sees
    "skipped_shared": f"""
    graph "g" (%x: f32[1,3,8,8]) {{
      %w: f32[4,3,1,1] = const #1
      {BN}
      %conv: f32[1,4,8,8] = conv2d(%x, %w)
      %bn: f32[1,4,8,8] = batch_norm(%conv, {BN_ARGS})
      %other: f32[1,4,8,8] = relu(%conv)
      %out: f32[1,4,8,8] = add(%bn, %other)
      return %out
    }}""",
    # the conv output is itself a graph output
    "skipped_shared ": f"""
    graph "g" (%x: f32[1,3,8,8]) {{
      %w: f32[4,3,1,1] = const #1
      {BN}
      %conv: f32[1,4,8,8] = conv2d(%x, %w)
      %bn: f32[1,4,8,8] = batch_norm(%conv, {BN_ARGS})
      return %bn, %conv
    }}""",
    # batch-norm statistics that are not constants
    "skipped_nonconstant": f"""
    graph "g" (%x: f32[1,3,8,8], %gamma: f32[4]) {{
      %w: f32[4,3,1,1] = const #1
      {BN}
      %conv: f32[1,4,8,8] = conv2d(%x, %w)
      %bn: f32[1,4,8,8] = batch_norm(%conv, %gamma, %bn.bias, %bn.running_mean, %bn.running_var)
      return %bn
    }}""",
    # linear with a 3-D output: batch_norm's dim 1 is not the feature axis
    "skipped_layout": f"""
    graph "g" (%x: f32[2,4,3]) {{
      %w: f32[3,3] = const #1
      {BN}
      %fc: f32[2,4,3] = linear(%x, %w)
      %bn: f32[2,4,3] = batch_norm(%fc, {BN_ARGS})
      return %bn
    }}""",
    # pre-activation batch norm (DenseNet): nothing to fold into
    "unmatched": f"""
    graph "g" (%x: f32[1,4,8,8]) {{
      %w: f32[4,4,1,1] = const #1
      {BN}
      %relu: f32[1,4,8,8] = relu(%x)
      %bn: f32[1,4,8,8] = batch_norm(%relu, {BN_ARGS})
      %conv: f32[1,4,8,8] = conv2d(%bn, %w)
      return %conv
    }}""",
}


@pytest.mark.parametrize("reason", list(MUST_NOT_FIRE))
def test_must_not_fire(reason, ir, apply):
    before = ir(MUST_NOT_FIRE[reason])
    after, result = apply(before, "fold-bn")
    assert graph_diff(before, after) is None
    assert not result.changed
    assert result.stats["folded"] == 0 and result.stats[reason.strip()] == 1


def test_stats_count_folded_and_skipped(ir, apply):
    g = ir(f"""
    graph "g" (%x: f32[1,3,8,8]) {{
      %w1: f32[4,3,1,1] = const #1
      %w2: f32[4,4,1,1] = const #2
      {BN}
      %c1: f32[1,4,8,8] = conv2d(%x, %w1)
      %b1: f32[1,4,8,8] = batch_norm(%c1, {BN_ARGS})
      %c2: f32[1,4,8,8] = conv2d(%b1, %w2)
      %b2: f32[1,4,8,8] = batch_norm(%c2, {BN_ARGS})
      %r: f32[1,4,8,8] = relu(%b2)
      %b3: f32[1,4,8,8] = batch_norm(%r, {BN_ARGS})
      return %b3
    }}""")
    after, result = apply(g, "fold-bn")
    assert result.stats == {"folded": 2, "skipped_shared": 0, "skipped_nonconstant": 0,
                            "skipped_dtype": 0, "skipped_layout": 0, "skipped_encoded": 0,
                            "unmatched": 1}
    # the statistics are still used by %b3, so they stay; nothing else is left behind. A
    # weight not named *.weight gives the new bias the layer's name
    assert sorted(after.constants) == sorted(["w1", "w2", "c1.bias", "c2.bias", "bn.weight",
                                              "bn.bias", "bn.running_mean", "bn.running_var"])


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_exact_on_every_reference_model(name, reference_graphs, apply, assert_exact,
                                       assert_matches_model, f64):
    model, x, graph = reference_graphs(name)
    after, result = apply(graph, "fold-bn")
    assert_matches_model(graph, model, [x])  # both in float64: see tests/conftest.py
    assert_exact(graph, after, [x])  # float32 weights: their rounding bounds the difference
    g64 = f64.graph(graph)
    assert_exact(g64, apply(g64, "fold-bn")[0], [x])  # folded in float64: to 1e-9
    left = [n for n in after.nodes if n.op == "batch_norm"]
    if name == "densenet":
        # DenseNet-BC is pre-activation: its batch norms follow concat / avg_pool, or the
        # stem conv whose output also feeds the first concat
        assert left, "densenet has batch norms that are not after a conv"
        for bn in left:
            p = bn.inputs[0].producer
            assert p.op in ("concat", "avg_pool2d") or len(p.outputs[0].uses) > 1, bn.describe()
        assert result.stats["folded"] == sum(1 for n in graph.nodes if n.op == "batch_norm") \
            - len(left)
    else:
        assert not left, f"{name}: batch_norm left at {[n.describe() for n in left]}"
    assert result.changed == any(n.op == "batch_norm" for n in graph.nodes)
