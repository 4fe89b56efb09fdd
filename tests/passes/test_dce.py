from shrinkc.ir.text import graph_diff

BEFORE = """
graph "g" (%x: f32[1,4], %unused: f32[1,4]) {
  %w: f32[4,4] = const #1
  %dead_w: f32[4,4] = const #2
  %orphan: f32[4] = const [1.0, 2.0, 3.0, 4.0]
  %fc: f32[1,4] = linear(%x, %w)
  %dead1: f32[1,4] = linear(%x, %dead_w)
  %dead2: f32[1,4] = relu(%dead1)
  %out: f32[1,4] = relu(%fc)
  return %out
}
"""


def test_structure_removes_dead_nodes_and_constants_keeps_inputs(ir, apply):
    after, _ = apply(ir(BEFORE), "dce")
    expected = ir("""
    graph "g" (%x: f32[1,4], %unused: f32[1,4]) {
      %w: f32[4,4] = const #1
      %fc: f32[1,4] = linear(%x, %w)
      %out: f32[1,4] = relu(%fc)
      return %out
    }""")
    assert graph_diff(after, expected, data=False) is None


def test_numerics_unchanged(ir, apply, assert_same_outputs):
    before = ir(BEFORE)
    after, _ = apply(before, "dce")
    assert_same_outputs(before, after)


def test_must_not_fire_on_a_live_graph(ir, apply):
    before = ir("""
    graph "g" (%x: f32[1,4]) {
      %w: f32[4,4] = const #1
      %fc: f32[1,4] = linear(%x, %w)
      %side: f32[1,4] = relu(%x)
      return %fc, %side
    }""")
    after, result = apply(before, "dce")
    assert graph_diff(before, after) is None
    assert not result.changed and result.stats == {"nodes_removed": 0, "constants_removed": 0}


def test_stats(ir, apply):
    _, result = apply(ir(BEFORE), "dce")
    assert result.changed
    assert result.stats == {"nodes_removed": 2, "constants_removed": 2}
