import pytest
from shrinkc.ir.text import graph_diff


def test_structure_removes_identity_ops(ir, apply):
    before = ir("""
    graph "g" (%x: f32[2,4]) {
      %one: f32[] = const 1.0
      %zero: f32[4] = const [0.0, 0.0, 0.0, 0.0]
      %a: f32[2,4] = dropout(%x) {p=0.1}
      %b: f32[2,4] = reshape(%a) {shape=[2, 4]}
      %c: f32[2,4] = permute(%b) {perm=[0, 1]}
      %d: f32[2,4] = mul(%c, %one)
      %e: f32[2,4] = add(%zero, %d)
      %f: f32[2,4] = slice(%e) {axis=1, start=0, end=100}
      %g: f32[2,4] = identity(%f)
      %h: f32[2,4] = concat(%g) {axis=0}
      %relu: f32[2,4] = relu(%h)
      %i: f32[2,4] = flatten(%relu) {start_dim=1}
      %out: f32[2,4] = tanh(%i)
      return %out
    }""")
    after, result = apply(before, "remove-identity")
    expected = ir("""
    graph "g" (%x: f32[2,4]) {
      %relu: f32[2,4] = relu(%x)
      %out: f32[2,4] = tanh(%relu)
      return %out
    }""")
    assert graph_diff(after, expected) is None
    assert result.stats["removed"] == 9 and result.stats["constants_removed"] == 2


def test_removed_node_defining_a_graph_output_keeps_the_output_name(ir, apply):
    before = ir("""
    graph "g" (%x: f32[1,4]) {
      %r: f32[1,4] = relu(%x)
      %y: f32[1,4] = dropout(%r)
      return %y
    }""")
    after, result = apply(before, "remove-identity")
    expected = ir("""
    graph "g" (%x: f32[1,4]) {
      %y: f32[1,4] = relu(%x)
      return %y
    }""")
    assert graph_diff(after, expected) is None and result.stats["removed_dropout"] == 1


@pytest.mark.parametrize("text", [
    # the input is a graph input and the output a graph output: nothing can take its place
    'graph "g" (%x: f32[1,4]) {\n %y: f32[1,4] = identity(%x)\n return %y\n}',
    # the forwarded value is itself a graph output
    ('graph "g" (%x: f32[1,4]) {\n %r: f32[1,4] = relu(%x)\n %y: f32[1,4] = dropout(%r)\n'
     ' return %r, %y\n}'),
])
def test_must_not_fire_when_an_output_name_would_be_lost(text, ir, apply):
    before = ir(text)
    after, result = apply(before, "remove-identity")
    assert graph_diff(before, after) is None and not result.changed
    assert result.stats["kept_graph_output"] == 1


def test_must_not_fire_on_ops_that_do_something(ir, apply):
    before = ir("""
    graph "g" (%x: f32[2,4]) {
      %two: f32[] = const 2.0
      %zeros: f32[3,2,4] = const #1
      %a: f32[4,2] = reshape(%x) {shape=[4, 2]}
      %b: f32[2,4] = permute(%a) {perm=[1, 0]}
      %c: f32[2,2] = slice(%b) {axis=1, start=0, end=2}
      %d: f32[2,2] = mul(%c, %two)
      %e: f32[2,2] = sub(%two, %d)
      %f: f32[3,2,4] = add(%x, %zeros)
      return %e, %f
    }""")
    after, result = apply(before, "remove-identity")
    assert graph_diff(before, after) is None and not result.changed
    assert result.stats == {"removed": 0, "kept_graph_output": 0, "constants_removed": 0}


def test_numerics_on_a_reference_model(reference_graphs, apply, assert_same_outputs):
    _, x, graph = reference_graphs("vgg11_bn")  # has two dropouts
    after, result = apply(graph, "remove-identity")
    assert result.stats["removed_dropout"] == 2
    assert not any(n.op == "dropout" for n in after.nodes)
    assert_same_outputs(graph, after, inputs=[x])


def test_stats_per_op(ir, apply):
    _, result = apply(ir("""
    graph "g" (%x: f32[1,4]) {
      %a: f32[1,4] = dropout(%x)
      %b: f32[1,4] = dropout(%a)
      %c: f32[1,4] = identity(%b)
      %out: f32[1,4] = relu(%c)
      return %out
    }"""), "remove-identity")
    assert result.stats == {"removed": 3, "kept_graph_output": 0, "removed_dropout": 2,
                            "removed_identity": 1, "constants_removed": 0}
