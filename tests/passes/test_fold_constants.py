import numpy as np
import pytest
from shrinkc.ir.text import graph_diff


def test_structure_folds_a_chain_and_keeps_names(ir, apply):
    before = ir("""
    graph "g" (%x: f32[1,4]) {
      %a: f32[4] = const [1.0, 2.0, 3.0, 4.0]
      %b: f32[] = const 0.5
      %scaled: f32[4] = mul(%a, %b)
      %neg: f32[4] = neg(%scaled)
      %out: f32[1,4] = add(%x, %neg)
      return %out
    }""")
    after, result = apply(before, "fold-constants")
    expected = ir("""
    graph "g" (%x: f32[1,4]) {
      %neg: f32[4] = const [-0.5, -1.0, -1.5, -2.0]
      %out: f32[1,4] = add(%x, %neg)
      return %out
    }""")
    assert graph_diff(after, expected) is None  # data included: the exact folded values
    # %a, %b and the intermediate %scaled (folded, then folded into %neg) are gone
    assert result.stats == {"folded": 2, "skipped_size": 0, "skipped_quantized": 0,
                            "constants_removed": 3}


def test_multi_output_and_graph_output_keep_their_names(ir, apply):
    before = ir("""
    graph "g" (%x: f32[2]) {
      %a: f32[4] = const [1.0, 2.0, 3.0, 4.0]
      %lo: f32[2], %hi: f32[2] = split(%a) {axis=0, sizes=[2, 2]}
      %y: f32[2] = add(%x, %lo)
      return %y, %hi
    }""")
    after, _ = apply(before, "fold-constants")
    assert after.nodes[0].op == "add" and len(after.nodes) == 1
    assert after.outputs[1].name == "hi" and after.outputs[1].is_constant
    np.testing.assert_array_equal(after.constants["lo"].data, [1.0, 2.0])
    np.testing.assert_array_equal(after.constants["hi"].data, [3.0, 4.0])


def test_numerics_match(ir, apply, assert_same_outputs):
    before = ir("""
    graph "g" (%x: f32[1,3,8,8]) {
      %w: f32[4,3,3,3] = const #1
      %s: f32[] = const 0.25
      %t: f32[3,4,3,3] = permute(%w) {perm=[1, 0, 2, 3]}
      %ws: f32[3,4,3,3] = mul(%t, %s)
      %wt: f32[4,3,3,3] = permute(%ws) {perm=[1, 0, 2, 3]}
      %y: f32[1,4,6,6] = conv2d(%x, %wt)
      return %y
    }""")
    after, result = apply(before, "fold-constants")
    assert [n.op for n in after.nodes] == ["conv2d"] and result.stats["folded"] == 3
    assert_same_outputs(before, after, bitwise=True)  # the same torch reference


GROWS = """
graph "g" (%x: f32[1,4,8,8]) {
  %c: f32[] = const 2.0
  %big: f32[1,4,8,8] = expand(%c) {shape=[1, 4, 8, 8]}
  %y: f32[1,4,8,8] = mul(%x, %big)
  return %y
}
"""


def test_must_not_fire_when_the_result_grows(ir, apply):
    before = ir(GROWS)
    after, result = apply(before, "fold-constants")
    assert graph_diff(before, after) is None and not result.changed
    assert result.stats["skipped_size"] == 1
    # a larger max_growth lets it through
    after, result = apply(before, "fold-constants(max_growth=1000.0)")
    assert [n.op for n in after.nodes] == ["mul"] and after.constants["big"].shape == (1, 4, 8, 8)


def test_must_not_fire_on_dequantize_or_non_constant_inputs(ir, apply):
    before = ir("""
    graph "g" (%x: f32[4]) {
      %q: i8[4] = const [1, -2, 3, -4]
      %s: f32[] = const 0.5
      %z: i8[] = const 0
      %w: f32[4] = dequantize(%q, %s, %z)
      %y: f32[4] = add(%x, %w)
      return %y
    }""")
    after, result = apply(before, "fold-constants(max_growth=100.0)")
    assert graph_diff(before, after) is None and not result.changed
    assert result.stats == {"folded": 0, "skipped_size": 0, "skipped_quantized": 1,
                            "constants_removed": 0}


def test_option_validation():
    from shrinkc.passes import PipelineError, parse_pipeline

    with pytest.raises(PipelineError, match="max_growth: must be >= 1.0, got 0.5"):
        parse_pipeline("fold-constants(max_growth=0.5)")
