import numpy as np
import pytest

from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.text import graph_diff, parse_graph, print_graph
from shrinkc.ir.verify import verify
from shrinkc.tools import zoo

TEXT = """\
graph "tiny" (%x: f32[1,3,4,4]) {
  %w: f32[6,3,1,1] = const #0123abcd
  %half: f32[] = const 0.5
  %idx: i64[2] = const [3, -1]
  %conv2d: f32[1,6,4,4] = conv2d(%x, %w) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("block.conv")
  %a: f32[1,3,4,4], %b: f32[1,3,4,4] = split(%conv2d) {axis=1, sizes=[3, 3]}
  %mul: f32[1,3,4,4] = mul(%a, %half)
  %"odd name": f32[1,6,4,4] = concat(%mul, %b) {axis=1}
  return %"odd name"
}
"""


def test_parse_print_round_trip_text():
    g = parse_graph(TEXT, missing_weights="random")
    verify(g)
    assert g.node("block.conv").op == "conv2d"
    assert g.constants["idx"].data.tolist() == [3, -1]
    again = print_graph(g)
    # identical except the digest, which now is the random data's real digest
    assert again.replace(g.constants["w"].digest(), "0123abcd") == TEXT
    g2 = parse_graph(again, {"w": g.constants["w"].data})
    assert graph_diff(g, g2) is None


@pytest.mark.parametrize("dtype", ["f32", "f64", "f16"])
def test_floats_are_exact(dtype):
    g = Graph("f")
    x = g.add_input(TensorType(dtype, (5,)), "x")
    vals = np.array([0.1, 1 / 3, 1e-30 if dtype != "f16" else 1e-5, np.nan, -np.inf],
                    dtype={"f32": np.float32, "f64": np.float64, "f16": np.float16}[dtype])
    c = g.add_constant(vals, "c")
    g.outputs = [g.add_node("add", [x, c]).output]
    g2 = parse_graph(print_graph(g))
    assert g2.constants["c"].data.tobytes() == vals.tobytes()
    assert graph_diff(g, g2) is None


def test_attr_floats_are_exact():
    g = Graph("f")
    x = g.add_input(TensorType("f32", (1, 3, 2, 2)), "x")
    p = [g.add_constant(np.full(3, 0.7, np.float32)) for _ in range(4)]
    g.outputs = [g.add_node("batch_norm", [x, *p], {"eps": 1.0000000000000001e-07}).output]
    g2 = parse_graph(print_graph(g))
    assert g2.nodes[0].attrs["eps"] == g.nodes[0].attrs["eps"]


@pytest.mark.parametrize("bad, message", [
    (TEXT.replace("conv2d(%x", "conv9(%x"), "line 5: unknown op 'conv9'"),
    (TEXT.replace("mul(%a, %half)", "mul(%a, %nope)"), "line 7: %nope is used before"),
    (TEXT.replace("return %\"odd name\"", ""), "graph has no return"),
    (TEXT.replace("sizes=[3, 3]", "sizes=[3, 2]"), "line 6: .*do not add up"),
    (TEXT.replace("%mul: f32[1,3,4,4]", "%mul: f32[1,3,4,5]"), "line 7: declared f32\\[1,3,4,5\\] but mul gives"),
    (TEXT.replace("f32[1,6,4,4] = conv2d", "f32[1,6,4,4 = conv2d"), "line 5: expected"),
    (TEXT.replace("%half: f32[] = const 0.5", "%half: f32[2] = const 0.5"), "1 values for type"),
])
def test_parse_errors_name_the_line(bad, message):
    with pytest.raises(IRError, match=message):
        parse_graph(bad, missing_weights="random")


def test_missing_and_mismatched_weights():
    with pytest.raises(IRError, match="%w is #0123abcd but no weights"):
        parse_graph(TEXT)
    with pytest.raises(IRError, match="do not match digest"):
        parse_graph(TEXT, {"w": np.zeros((6, 3, 1, 1), np.float32)})
    with pytest.raises(IRError, match="expected f32\\[6,3,1,1\\]"):
        parse_graph(TEXT, {"w": np.zeros((2, 3), np.float32)})


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_reference_models_round_trip(name, reference_graphs):
    _, _, g = reference_graphs(name)
    text = print_graph(g)
    g2 = parse_graph(text, {k: v.data for k, v in g.constants.items()})
    assert graph_diff(g, g2) is None, name
    assert print_graph(g2) == text
    verify(g2)
