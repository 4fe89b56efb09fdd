import numpy as np
import pytest
import torch
from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.encoding import Codebook
from shrinkc.ir.graph import Value
from shrinkc.ir.interpreter import random_inputs, run_numpy
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
    with pytest.raises(IRError, match="unknown op 'conv4d'"):
        g.add_node("conv4d", [x, w])
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


def test_to_networkx_has_one_edge_per_operand_with_its_index():
    g, x, w, conv, relu = small_graph()
    add = g.add_node("add", [relu.output, relu.output])
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {x, w, conv, relu, add}
    assert [nxg.nodes[v]["kind"] for v in (x, w, conv)] == ["input", "constant", "node"]
    assert nxg.nodes[conv]["op"] == "conv2d"
    assert nxg.number_of_edges(conv, relu) == 1 and nxg.number_of_edges(relu, add) == 2
    assert sorted(nxg[relu][add]) == [0, 1]  # keyed by operand index
    assert nxg.edges[w, conv, 1] == {"value": w, "index": 1}
    assert nxg.edges[x, conv, 0]["value"] is x
    assert nxg.graph["outputs"] == [relu.output]


def test_to_networkx_without_values_has_nodes_only():
    g, x, w, conv, relu = small_graph()
    nxg = g.to_networkx(values=False)
    assert set(nxg.nodes) == {conv, relu} and list(nxg.edges(keys=True)) == [(conv, relu, 0)]


def test_printing_is_readable():
    g, *_ = small_graph()
    text = print_graph(g)
    assert 'graph "g" (%x: f32[1,3,8,8]) {' in text
    assert ("%conv2d: f32[1,4,8,8] = conv2d(%x, %w) {stride=[1, 1], padding=[1, 1], "
            'dilation=[1, 1], groups=1} loc("conv1")') in text
    assert text.strip().endswith("return %relu\n}")


# ============================================================== uses with operand indices
def assert_use_sites_exact(g):
    for v in g.values():
        want = {(id(n), i) for n in g.nodes for i, u in enumerate(n.inputs) if u is v}
        got = [(id(n), i) for n, i in v.use_sites]
        assert len(got) == len(set(got)) == len(v.uses) and set(got) == want, v.name


def test_use_sites_give_operand_indices():
    g, x, w, conv, relu = small_graph()
    add = g.add_node("add", [relu.output, relu.output])
    assert w.use_sites == [(conv, 1)] and x.use_sites == [(conv, 0)]
    assert relu.output.use_sites == [(add, 0), (add, 1)]
    assert_use_sites_exact(g)


def test_use_sites_stay_exact_under_every_verb():
    g, x, w, conv, relu = small_graph()
    add = g.add_node("add", [relu.output, relu.output])
    g.outputs = [add.output]
    sig = g.add_node("sigmoid", [relu.output], after=relu)
    g.set_input(add, 1, sig.output)
    assert relu.output.use_sites == [(add, 0), (sig, 0)]
    assert_use_sites_exact(g)
    g.replace_all_uses(relu.output, sig.output, exclude=[sig])
    assert sig.output.use_sites == [(add, 0), (add, 1)]
    assert_use_sites_exact(g)
    b = g.add_constant(np.zeros(4, np.float32), "b")
    g.add_operand(conv, b)
    assert b.use_sites == [(conv, 2)]
    assert_use_sites_exact(g)
    assert g.remove_operand(conv, 2) is b and b.use_sites == []
    assert_use_sites_exact(g)
    g.add_node("tanh", [x])
    g.dce()
    assert x.use_sites == [(conv, 0)]
    assert_use_sites_exact(g)
    verify(g)


# ============================================================== physical rewrites
def chain(dtype=np.float32):
    """x -> conv1(w1, b1) -> bn1 -> relu -> conv2(w2) -> flatten: the pruning example."""
    rng = np.random.default_rng(0)
    g = Graph("chain")
    x = g.add_input(TensorType("f64" if dtype == np.float64 else "f32", (1, 3, 6, 6)), "x")

    def const(name, *shape, positive=False):
        a = rng.standard_normal(shape)
        return g.add_constant((np.abs(a) + 0.5 if positive else a).astype(dtype), name)

    w1, b1 = const("conv1.weight", 8, 3, 3, 3), const("conv1.bias", 8)
    bn = [const("bn1.weight", 8, positive=True), const("bn1.bias", 8),
          const("bn1.running_mean", 8), const("bn1.running_var", 8, positive=True)]
    w2 = const("conv2.weight", 5, 8, 3, 3)
    c1 = g.add_node("conv2d", [x, w1, b1], {"padding": [1, 1]}, loc="conv1")
    n1 = g.add_node("batch_norm", [c1.output, *bn], loc="bn1")
    r1 = g.add_node("relu", [n1.output], loc="relu1")
    c2 = g.add_node("conv2d", [r1.output, w2], loc="conv2")
    f = g.add_node("flatten", [c2.output], {"start_dim": 1})
    g.outputs = [f.output]
    return g


def state(g):
    """Everything about the graph, constants' bytes included: equal iff nothing changed."""
    return print_graph(g, inline_limit=0)


def test_replace_constant_changes_shape_and_dtype_and_reinfers():
    g = chain()
    w2 = g.constants["conv2.weight"]
    changed = g.replace_constant(w2, np.ones((7, 8, 3, 3), np.float32))
    assert w2.type == TensorType("f32", (7, 8, 3, 3)) and w2.name == "conv2.weight"
    assert [n.loc or n.op for n in changed] == ["conv2", "flatten"]
    assert g.outputs[0].type == TensorType("f32", (1, 7 * 4 * 4))
    verify(g)
    b1 = g.constants["conv1.bias"]
    g.replace_constant(b1, np.zeros(8, np.float16), reinfer=False)
    assert b1.type == TensorType("f16", (8,))


def test_replace_constant_keeps_a_0d_constant_0d():
    """np.ascontiguousarray makes 0-d arrays 1-d; a scalar (a quantization scale) must stay
    a scalar, or write_back of a quantized graph breaks its quantize ops."""
    g = Graph("s")
    x = g.add_input(TensorType("f32", (2,)), "x")
    s = g.add_constant(np.float32(0.5), "s")
    g.outputs = [g.add_node("mul", [x, s]).output]
    g.replace_constant(s, np.asarray(np.float32(0.25)))
    assert s.type == TensorType("f32", ()) and s.data.shape == ()


def test_replace_constant_refuses_a_non_constant():
    g = chain()
    with pytest.raises(IRError, match="%x is not a constant"):
        g.replace_constant(g.inputs[0], np.zeros(3))


def test_replace_constant_that_does_not_fit_names_the_node_and_changes_nothing():
    g = chain()
    before = state(g)
    with pytest.raises(IRError, match=r"cannot re-infer types: node batch_norm \(bn1\): .*"
                                      r"weight f32\[8\] does not match 6 channels.*"
                                      r"1 node\(s\) re-inferred before it were restored"):
        g.replace_constants({g.constants["conv1.weight"]: np.ones((6, 3, 3, 3), np.float32),
                             g.constants["conv1.bias"]: np.ones(6, np.float32)})
    assert state(g) == before
    verify(g)


def test_replace_constant_keeps_an_encoding_that_still_holds():
    g = chain()
    w2 = g.constants["conv2.weight"]
    w2.data = np.where(w2.data > 0, 1.0, -1.0).astype(np.float32)
    w2.encoding = Codebook(bits=1)
    g.replace_constant(w2, np.ones((5, 6, 3, 3), np.float32), reinfer=False)
    assert w2.encoding == Codebook(bits=1)
    three = np.arange(5 * 6 * 9, dtype=np.float32).reshape(5, 6, 3, 3) % 3
    with pytest.raises(IRError, match=r"new data for %conv2.weight \(f32\[5,6,3,3\]\) breaks "
                                      r"its encoding codebook\(bits=1\): has 3 distinct values"):
        g.replace_constant(w2, three, reinfer=False)
    assert w2.encoding == Codebook(bits=1) and np.all(w2.data == 1)
    g.replace_constant(w2, three, drop_encoding=True, reinfer=False)
    assert w2.encoding is None and np.array_equal(w2.data, three)


def test_add_operand_gives_a_conv_a_bias(assert_close):
    g = chain()
    c2 = g.node("conv2")
    b2 = g.add_constant(np.ones(5, np.float32), "conv2.bias")
    before = run_numpy(g, random_inputs(g))[0]
    assert g.add_operand(c2, b2) == []  # types unchanged
    assert c2.inputs[2] is b2 and b2.uses == [c2]
    verify(g)
    assert_close(run_numpy(g, random_inputs(g))[0], before + 1, depth=g)


def test_add_operand_misuse_names_the_node_and_changes_nothing():
    g = chain()
    c2, r1 = g.node("conv2"), g.node("relu1")
    bad = g.add_constant(np.ones(4, np.float32), "bad")
    before = state(g)
    with pytest.raises(IRError, match=r"cannot re-infer types: node conv2d_1 \(conv2\): op "
                                      r"conv2d: bias f32\[4\] does not match 5 output channels"):
        g.add_operand(c2, bad)
    assert state(g) == before and bad.uses == []
    with pytest.raises(IRError, match=r"node relu \(relu1\): operand %flatten is defined by "
                                      r"flatten, which comes after the node"):
        g.add_operand(r1, g.outputs[0])
    with pytest.raises(IRError, match=r"node conv2d_1 \(conv2\): cannot insert operand at 5"):
        g.add_operand(c2, bad, 5)
    with pytest.raises(IRError, match=r"node conv2d_1 \(conv2\): operand %ghost is not defined"):
        g.add_operand(c2, Value("ghost", TensorType("f32", (5,))))
    with pytest.raises(IRError, match=r"node relu \(relu1\): op relu takes 1 operands"):
        g.add_operand(r1, bad)
    assert state(g) == before
    verify(g)


def test_add_operand_inserts_at_an_index():
    g = Graph("cat")
    a = g.add_input(TensorType("f32", (1, 2)), "a")
    b = g.add_input(TensorType("f32", (1, 3)), "b")
    cat = g.add_node("concat", [a, a], {"axis": 1})
    g.outputs = [cat.output]
    assert g.add_operand(cat, b, 1) == [cat]
    assert cat.inputs == [a, b, a] and cat.output.shape == (1, 7)
    assert a.use_sites == [(cat, 0), (cat, 2)] and b.use_sites == [(cat, 1)]
    verify(g)


def test_remove_operand_drops_a_bias_and_refuses_a_weight():
    g = chain()
    c1 = g.node("conv1")
    b1 = g.constants["conv1.bias"]
    before = state(g)
    with pytest.raises(IRError, match=r"node conv2d \(conv1\): op conv2d: expects NCHW input "
                                      r"and OIHW weight, got f32\[1,3,6,6\] and f32\[8\]"):
        g.remove_operand(c1, 1)
    assert state(g) == before
    with pytest.raises(IRError, match=r"node conv2d \(conv1\): no operand 3"):
        g.remove_operand(c1, 3)
    assert g.remove_operand(c1, -1) is b1 and len(c1.inputs) == 2 and b1.uses == []
    verify(g)
    assert g.dce() == 1 and "conv1.bias" not in g.constants


def test_set_attrs_checks_the_op_table_and_reinfers():
    g = chain()
    c1, c2 = g.node("conv1"), g.node("conv2")
    changed = g.set_attrs(c1, {"padding": [0, 0]})
    assert c1.attrs["padding"] == (0, 0) and c1.output.shape == (1, 8, 4, 4)
    assert [n.op for n in changed] == ["conv2d", "batch_norm", "relu", "conv2d", "flatten"]
    assert g.outputs[0].shape == (1, 5 * 2 * 2)
    verify(g)
    before = state(g)
    with pytest.raises(IRError, match=r"node conv2d_1 \(conv2\): unknown attribute.*'pad'"):
        g.set_attrs(c2, {"pad": [1, 1]})
    with pytest.raises(IRError, match=r"node conv2d_1 \(conv2\): attribute stride: expected "
                                      r"ints, got 2.5"):
        g.set_attrs(c2, {"stride": 2.5})
    with pytest.raises(IRError, match=r"cannot re-infer types: node conv2d_1 \(conv2\)"):
        g.set_attrs(c1, {"stride": [3, 3]})  # conv1 gives 2x2, too small for conv2's 3x3
    assert state(g) == before


def test_reinfer_after_a_raw_edit_and_its_failure():
    g = chain()
    w2 = g.constants["conv2.weight"]
    g.replace_constant(w2, np.ones((2, 8, 3, 3), np.float32), reinfer=False)
    with pytest.raises(IRError, match=r"node conv2d_1 \(conv2\): conv2d output types "):
        verify(g)
    assert [n.op for n in g.reinfer(w2)] == ["conv2d", "flatten"]
    verify(g)
    g.replace_constant(g.constants["conv1.weight"], np.ones((4, 3, 3, 3), np.float32),
                       reinfer=False)
    with pytest.raises(IRError, match=r"node conv2d \(conv1\): op conv2d: bias f32\[8\] does "
                                      r"not match 4 output channels$"):
        g.reinfer(g.node("conv1"))
    assert g.node("conv1").output.shape == (1, 8, 6, 6)  # left as it was


# ============================================================== the pruning example
def prune_conv1(g, keep, *, w2=True):
    """Keep output channels ``keep`` of conv1 with the verbs: its weight and bias, the
    batch norm's four vectors and (unless ``w2`` is False) conv2's input channels."""
    c = g.constants
    arrays = {c["conv1.weight"]: c["conv1.weight"].data[keep],
              c["conv1.bias"]: c["conv1.bias"].data[keep]}
    for k in ("weight", "bias", "running_mean", "running_var"):
        arrays[c[f"bn1.{k}"]] = c[f"bn1.{k}"].data[keep]
    if w2:
        arrays[c["conv2.weight"]] = c["conv2.weight"].data[:, keep]
    return arrays


def test_pruning_conv_output_channels_with_the_verbs(assert_close):
    g = chain(np.float64)
    ref = g.clone()
    keep = np.array([0, 2, 3, 6, 7])
    changed = g.replace_constants(prune_conv1(g, keep))
    assert [n.loc for n in changed] == ["conv1", "bn1", "relu1"]  # conv2's output is as it was
    assert g.node("conv1").output.shape == (1, 5, 6, 6)
    assert g.constants["conv2.weight"].shape == (5, 5, 3, 3)
    verify(g)
    # the original with the pruned channels zeroed (conv1's and conv2's ends) is the same
    drop = np.setdiff1d(np.arange(8), keep)
    for name, axis in (("conv1.weight", 0), ("conv1.bias", 0), ("conv2.weight", 1)):
        a = ref.constants[name].data.copy()
        np.moveaxis(a, axis, 0)[drop] = 0
        ref.replace_constant(ref.constants[name], a)
    x = random_inputs(g)
    assert x[0].dtype == torch.float64
    assert_close(run_numpy(g, x)[0], run_numpy(ref, x)[0])  # float64 on both sides


def test_pruning_without_the_consumer_is_refused_and_named():
    g = chain(np.float64)
    before = state(g)
    keep = np.array([0, 2, 3, 6, 7])
    with pytest.raises(IRError, match=r"cannot re-infer types: node conv2d_1 \(conv2\): op "
                                      r"conv2d: groups=1: input channels 5 and weight "
                                      r"f64\[5,8,3,3\] do not match.*3 node\(s\) re-inferred "
                                      r"before it were restored"):
        g.replace_constants(prune_conv1(g, keep, w2=False))
    assert state(g) == before
    # the same edit without re-inference: the verifier names the first node that no longer fits
    g.replace_constants(prune_conv1(g, keep, w2=False), reinfer=False)
    with pytest.raises(IRError, match=r"node conv2d \(conv1\): conv2d output types "
                                      r"f64\[1,8,6,6\] do not match inferred f64\[1,5,6,6\]"):
        verify(g)
    with pytest.raises(IRError, match=r"node conv2d_1 \(conv2\)"):
        g.reinfer(g.node("conv1"))
    g.replace_constant(g.constants["conv2.weight"], g.constants["conv2.weight"].data[:, keep],
                       reinfer=False)
    g.reinfer(g.node("conv1"))
    verify(g)
