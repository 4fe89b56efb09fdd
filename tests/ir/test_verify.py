import numpy as np
import pytest

from shrinkc.ir import Graph, TensorType
from shrinkc.ir.graph import Node, Value
from shrinkc.ir.verify import VerificationError, verify
from shrinkc.tools import zoo


def chain():
    g = Graph("v")
    x = g.add_input(TensorType("f32", (1, 8)), "x")
    w = g.add_constant(np.ones((4, 8), np.float32), "w")
    fc = g.add_node("linear", [x, w], loc="fc")
    act = g.add_node("relu", [fc.output], loc="act")
    out = g.add_node("sigmoid", [act.output], loc="head")
    g.outputs = [out.output]
    return g, fc, act, out


def test_valid_graph_passes():
    verify(chain()[0])


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_reference_models_verify(name, reference_graphs):
    verify(reference_graphs(name)[2])


def test_wrong_shape_names_the_node():
    g, fc, act, out = chain()
    act.outputs[0].type = TensorType("f32", (1, 5))
    with pytest.raises(VerificationError, match=r"node relu \(act\): relu output types "
                                                r"f32\[1,5\] do not match inferred f32\[1,4\]"):
        verify(g)


def test_dangling_use_names_the_node():
    g, fc, act, out = chain()
    ghost = Value("ghost", TensorType("f32", (1, 4)))
    out.inputs[0] = ghost
    ghost.uses.append(out)
    with pytest.raises(VerificationError, match=r"node sigmoid \(head\): operand 0 %ghost is not "
                                                r"defined in this graph \(dangling use\)"):
        verify(g)


def test_use_by_node_outside_graph():
    g, fc, act, out = chain()
    stray = Node("relu", [act.outputs[0]], [Value("stray", act.outputs[0].type)])
    act.outputs[0].uses.append(stray)
    with pytest.raises(VerificationError, match="used by stray, which is not in the graph"):
        verify(g)


def test_cycle_is_reported():
    g, fc, act, out = chain()
    g.set_input(act, 0, out.outputs[0])  # relu <- sigmoid <- relu
    out.outputs[0].type = act.outputs[0].type
    with pytest.raises(VerificationError, match=r"node relu \(act\): operand 0 %sigmoid is produced "
                                                r"later by sigmoid \(head\) \(a cycle\)"):
        verify(g)


def test_out_of_order_without_cycle():
    g, fc, act, out = chain()
    g.nodes = [fc, out, act]
    with pytest.raises(VerificationError, match="not in topological order"):
        verify(g)


def test_stale_use_list_and_bad_attrs():
    g, fc, act, out = chain()
    act.outputs[0].uses.clear()
    with pytest.raises(VerificationError, match="does not list this node as a use"):
        verify(g)
    g, fc, act, out = chain()
    out.attrs["axis"] = 1
    with pytest.raises(VerificationError, match=r"sigmoid \(head\): sigmoid: unknown attribute"):
        verify(g)


def test_ssa_violation_and_missing_output():
    g, fc, act, out = chain()
    out.outputs[0].name = "relu"
    with pytest.raises(VerificationError, match="%relu is defined twice"):
        verify(g)
    g, *_ = chain()
    g.outputs = []
    with pytest.raises(VerificationError, match="no outputs"):
        verify(g)
