import numpy as np
import pytest

from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.text import graph_diff, print_graph
from shrinkc.ir.verify import verify


def small_graph():
    g = Graph("g")
    x = g.add_input(TensorType("f32", (1, 3, 8, 8)), "x")
    w = g.add_constant(np.ones((4, 3, 3, 3), np.float32), "w")
    conv = g.add_node("conv2d", [x, w], {"padding": [1, 1]}, loc="conv1")
    relu = g.add_node("relu", [conv.output], loc="act")
    g.outputs = [relu.output]
    return g, x, w, conv, relu


def test_add_node_infers_types_and_completes_attrs():
    g, x, w, conv, relu = small_graph()
    assert conv.output.type == TensorType("f32", (1, 4, 8, 8))
    assert conv.attrs == {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    assert conv.output.producer is conv and x.uses == [conv] and w.uses == [conv]
    assert conv.describe() == "conv2d (conv1)"
    verify(g)


def test_add_node_rejects_bad_attrs_and_operands():
    g, x, w, *_ = small_graph()
    with pytest.raises(IRError, match="unknown attribute.*strides.*known: stride"):
        g.add_node("conv2d", [x, w], {"strides": [1, 1]})
    with pytest.raises(IRError, match="groups=2"):
        g.add_node("conv2d", [x, w], {"groups": 2})
    with pytest.raises(IRError, match="unknown op 'conv3d'"):
        g.add_node("conv3d", [x, w])
    with pytest.raises(IRError, match="takes 2..3 operands"):
        g.add_node("conv2d", [x])
    with pytest.raises(IRError, match="already defined"):
        g.add_node("relu", [x], names=["x"])


def test_replace_all_uses_updates_operands_uses_and_outputs():
    g, x, w, conv, relu = small_graph()
    sig = g.add_node("sigmoid", [conv.output], after=conv)
    g.replace_all_uses(conv.output, sig.output, exclude=[sig])
    assert relu.inputs[0] is sig.output and sig.output.uses == [relu]
    assert sig.inputs[0] is conv.output and conv.output.uses == [sig]
    g.replace_all_uses(relu.output, sig.output)
    assert g.outputs == [sig.output]
    verify(g)


def test_erase_refuses_used_values_and_dce_removes_dead_code():
    g, x, w, conv, relu = small_graph()
    with pytest.raises(IRError, match="cannot erase conv2d.*used by relu"):
        g.erase(conv)
    dead = g.add_node("tanh", [conv.output])
    g.add_constant(np.zeros(3, np.float32), "unused")
    assert g.dce() == 2
    assert dead not in g.nodes and "unused" not in g.constants and conv.output.uses == [relu]
    verify(g)


def test_clone_is_deep_and_equal():
    g, *_ = small_graph()
    c = g.clone()
    assert graph_diff(g, c) is None
    c.constants["w"].data[...] = 5
    assert g.constants["w"].data[0, 0, 0, 0] == 1
    c.nodes[0].attrs["groups"] = 1
    assert c.nodes[0] is not g.nodes[0] and c.inputs[0] is not g.inputs[0]
    verify(c)


def test_fresh_name_is_unique():
    g, *_ = small_graph()
    assert g.fresh_name("conv2d") == "conv2d_1"
    assert g.fresh_name("new") == "new"
    assert g.fresh_name("a b/c") == "a_b_c"
    g.add_node("relu", [g.inputs[0]], names=["conv2d_1"])
    assert g.fresh_name("conv2d") == "conv2d_2"


def test_toposort_restores_order_and_reports_cycles():
    g, x, w, conv, relu = small_graph()
    g.nodes.reverse()
    g.toposort()
    assert g.nodes == [conv, relu]
    verify(g)
    a = g.add_node("relu", [relu.output])
    b = g.add_node("relu", [a.output])
    g.set_input(a, 0, b.output)  # a <- b <- a
    with pytest.raises(IRError, match="cycle"):
        g.toposort()


def test_to_networkx_has_one_edge_per_use():
    g, x, w, conv, relu = small_graph()
    add = g.add_node("add", [relu.output, relu.output])
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {conv, relu, add}
    assert nxg.number_of_edges(conv, relu) == 1 and nxg.number_of_edges(relu, add) == 2
    assert nxg.nodes[conv]["op"] == "conv2d"


def test_printing_is_readable():
    g, *_ = small_graph()
    text = print_graph(g)
    assert 'graph "g" (%x: f32[1,3,8,8]) {' in text
    assert ("%conv2d: f32[1,4,8,8] = conv2d(%x, %w) {stride=[1, 1], padding=[1, 1], "
            'dilation=[1, 1], groups=1} loc("conv1")') in text
    assert text.strip().endswith("return %relu\n}")
