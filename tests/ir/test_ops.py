"""The op table: every op has inference, cost and a reference, and they agree."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shrinkc.ir import Graph, IRError, TensorType, ops
from shrinkc.ir.cost import graph_cost, node_macs
from shrinkc.ir.types import to_torch_dtype


def T(shape, dtype="f32"):
    return TensorType(dtype, tuple(shape))


# One sample invocation per op: operand types and attributes.
SAMPLES = {
    "conv2d": ([T((1, 4, 9, 9)), T((6, 2, 3, 3)), T((6,))],
               {"stride": (2, 2), "padding": (1, 1), "groups": 2}),
    "conv_transpose2d": ([T((1, 4, 5, 5)), T((4, 3, 3, 3)), T((3,))],
                         {"stride": (2, 2), "padding": (1, 1), "output_padding": (1, 1)}),
    "linear": ([T((2, 5, 8)), T((3, 8)), T((3,))], {}),
    "matmul": ([T((2, 4, 5)), T((5, 6))], {}),
    "batch_norm": ([T((1, 3, 4, 4))] + [T((3,))] * 4, {"eps": 1e-3}),
    "layer_norm": ([T((2, 5, 8)), T((8,)), T((8,))], {"normalized_shape": (8,)}),
    "group_norm": ([T((1, 6, 4, 4)), T((6,)), T((6,))], {"num_groups": 3}),
    "softmax": ([T((2, 7))], {"axis": -1}),
    "log_softmax": ([T((2, 7))], {"axis": 1}),
    "max_pool2d": ([T((1, 2, 9, 9))], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}),
    "avg_pool2d": ([T((1, 2, 8, 8))], {"kernel": (2, 2), "stride": (2, 2)}),
    "adaptive_avg_pool2d": ([T((1, 2, 8, 8))], {"output_size": (1, 1)}),
    "embedding": ([T((2, 3), "i64"), T((10, 4))], {}),
    "circulant_matmul": ([T((2, 3, 12)), T((2, 3, 4))], {}),
    "relu": ([T((3, 4))], {}), "hardtanh": ([T((3, 4))], {"min_val": 0.0, "max_val": 6.0}),
    "gelu": ([T((3, 4))], {"approximate": "tanh"}), "silu": ([T((3, 4))], {}),
    "sigmoid": ([T((3, 4))], {}), "tanh": ([T((3, 4))], {}), "hardswish": ([T((3, 4))], {}),
    "hardsigmoid": ([T((3, 4))], {}), "identity": ([T((3, 4))], {}),
    "dropout": ([T((3, 4))], {"p": 0.1}), "neg": ([T((3, 4))], {}), "sqrt": ([T((3, 4))], {}),
    "exp": ([T((3, 4))], {}), "erf": ([T((3, 4))], {}),
    "add": ([T((2, 3, 4)), T((4,))], {}), "sub": ([T((2, 1, 4)), T((3, 1))], {}),
    "mul": ([T((2, 3)), T(())], {}), "div": ([T((2, 3)), T((2, 3))], {}),
    "pow": ([T((2, 3)), T(())], {}),
    "reshape": ([T((2, 3, 4))], {"shape": (6, 4)}),
    "flatten": ([T((2, 3, 4, 5))], {"start_dim": 1}),
    "permute": ([T((2, 3, 4))], {"perm": (0, 2, 1)}),
    "concat": ([T((1, 2, 4)), T((1, 3, 4))], {"axis": 1}),
    "split": ([T((1, 5, 4))], {"axis": 1, "sizes": (2, 3)}),
    "slice": ([T((1, 10, 4))], {"axis": 1, "start": 1, "end": 9, "step": 3}),
    "expand": ([T((1, 3, 1))], {"shape": (2, 3, 4)}),
    "mean": ([T((2, 3, 4, 4))], {"axes": (2, 3), "keepdim": True}),
    "sum": ([T((2, 3, 4))], {"axes": (1,)}),
    "quantize": ([T((1, 3, 2, 2)), T((3,)), T((3,), "i8")], {"dtype": "i8", "axis": 1}),
    "dequantize": ([T((1, 3, 2, 2), "u8"), T(()), T((), "u8")], {}),
    "fake_quantize": ([T((1, 3, 2, 2)), T((3,)), T((3,), "i8")],
                      {"dtype": "i8", "axis": 1, "qmin": -64, "qmax": 64}),
    "dynamic_quantize": ([T((2, 5))], {}),
    "cast": ([T((3, 4))], {"dtype": "i32"}),
    "abs": ([T((3, 4))], {}), "log": ([T((3, 4))], {}), "rsqrt": ([T((3, 4))], {}),
    "leaky_relu": ([T((3, 4))], {"negative_slope": 0.2}), "elu": ([T((3, 4))], {"alpha": 0.5}),
    "selu": ([T((3, 4))], {}), "softplus": ([T((3, 4))], {"beta": 2.0}),
    "softsign": ([T((3, 4))], {}), "logical_not": ([T((3, 4), "bool")], {}),
    "maximum": ([T((2, 3)), T((3,))], {}), "minimum": ([T((2, 3)), T(())], {}),
    "prelu": ([T((1, 3, 2, 2)), T((3, 1, 1))], {}),
    "eq": ([T((2, 3)), T((3,))], {}), "ne": ([T((2, 3), "i64"), T((), "i64")], {}),
    "lt": ([T((2, 3)), T((2, 3))], {}), "le": ([T((2, 3)), T((2, 3))], {}),
    "gt": ([T((2, 3)), T((2, 3))], {}), "ge": ([T((2, 3)), T((2, 3))], {}),
    "logical_and": ([T((2, 3), "bool"), T((3,), "bool")], {}),
    "logical_or": ([T((2, 3), "bool"), T((2, 3), "bool")], {}),
    "where": ([T((2, 3), "bool"), T((2, 3)), T(())], {}),
    "max": ([T((2, 3, 4))], {"axes": (1,), "keepdim": True}),
    "min": ([T((2, 3, 4))], {"axes": (0, 2)}),
    "cumsum": ([T((2, 5))], {"axis": 1}),
    "pad": ([T((1, 2, 4, 4))], {"pads": (0, 0, 1, 2, 0, 0, 2, 1), "mode": "reflect"}),
    "tile": ([T((2, 3))], {"repeats": (2, 1)}),
    "gather": ([T((5, 4)), T((2, 3), "i64")], {"axis": 0}),
    "gather_elements": ([T((4, 5)), T((4, 2), "i64")], {"axis": 1}),
    "conv3d": ([T((1, 4, 5, 5, 5)), T((6, 2, 3, 3, 3)), T((6,))],
               {"stride": (1, 2, 1), "padding": (1, 1, 0), "groups": 2}),
    "max_pool3d": ([T((1, 2, 5, 5, 5))], {"kernel": (2, 2, 2), "stride": (2, 2, 2)}),
    "avg_pool3d": ([T((1, 2, 5, 5, 5))], {"kernel": (3, 3, 3), "stride": (2, 2, 2),
                                          "padding": (1, 1, 1)}),
    "lrn": ([T((1, 6, 3, 3))], {"size": 3}),
    "scaled_dot_product_attention": ([T((1, 4, 5, 8)), T((1, 2, 6, 8)), T((1, 2, 6, 3)),
                                      T((1, 1, 5, 6), "bool")], {"causal": True}),
    "upsample": ([T((1, 2, 3, 4))], {"size": (6, 8), "mode": "bilinear"}),
}


def sample_tensor(t: TensorType, gen: torch.Generator) -> torch.Tensor:
    if t.dtype in ("f32", "f64", "f16", "bf16"):
        return (torch.rand(t.shape, generator=gen) + 0.5).to(to_torch_dtype(t.dtype))
    return torch.randint(0, 4, t.shape, generator=gen).to(to_torch_dtype(t.dtype))


def test_samples_cover_every_op():
    assert set(SAMPLES) == set(ops.OPS), "add a sample for new ops"


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_op_has_inference_cost_and_reference(name):
    opdef = ops.get(name)
    assert opdef.doc and callable(opdef.ref) and opdef.kind
    types, attrs = SAMPLES[name]
    attrs = opdef.complete_attrs(attrs)
    inferred = opdef.infer(types, attrs)
    gen = torch.Generator().manual_seed(0)
    out = opdef.ref(*[sample_tensor(t, gen) for t in types], **attrs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    assert [TensorType.of(o) for o in outs] == inferred
    assert opdef.macs(types, inferred, attrs) >= 0
    for k, spec in opdef.attrs.items():
        assert spec.kind in ops.ATTR_KINDS, f"{name}.{k}"


def _graph_with(op, types, attrs):
    g = Graph("t")
    vals = [g.add_input(types[0], "x")] + [g.add_constant(np.ones(t.shape, np.float32))
                                            for t in types[1:]]
    n = g.add_node(op, vals, attrs)
    g.outputs = list(n.outputs)
    return g, n


def test_conv2d_macs_textbook_formula():
    # MACs = H_out * W_out * C_out * (C_in / groups) * K_h * K_w (per batch element)
    g, n = _graph_with("conv2d", [T((2, 8, 16, 16)), T((12, 4, 3, 5))],
                       {"stride": (2, 1), "padding": (1, 2), "groups": 2})
    (_, c, h, w) = n.output.shape
    assert (c, h, w) == (12, 8, 16)
    assert node_macs(n) == 2 * h * w * 12 * 4 * 3 * 5
    cost = graph_cost(g)
    assert cost.total.flops == 2 * node_macs(n) and cost.params == 12 * 4 * 3 * 5


def test_linear_macs_textbook_formula():
    g, n = _graph_with("linear", [T((4, 7, 32)), T((10, 32)), T((10,))], {})
    assert node_macs(n) == 4 * 7 * 10 * 32
    assert graph_cost(g).params == 10 * 32 + 10


def test_shared_weight_counted_once():
    g = Graph("t")
    x = g.add_input(T((1, 8)), "x")
    w = g.add_constant(np.ones((8, 8), np.float32), "w")
    a = g.add_node("linear", [x, w])
    b = g.add_node("linear", [a.output, w])
    g.outputs = [b.output]
    c = graph_cost(g)
    assert c.total.params == 64 and c.nodes[1].cost.params == 0 and c.total.macs == 128


def test_references_match_torch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 6, generator=gen)
    w = torch.randn(4, 1, 3, 3, generator=gen)
    ref = ops.get("conv2d").ref(x, w, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=4)
    torch.testing.assert_close(ref, F.conv2d(x, w, None, 1, 1, 1, 4))
    bn = [torch.rand(4, generator=gen) + 0.5 for _ in range(4)]
    torch.testing.assert_close(
        ops.get("batch_norm").ref(x, *bn, eps=1e-5),
        F.batch_norm(x, bn[2], bn[3], bn[0], bn[1], False, 0.0, 1e-5))


def test_quantize_dequantize_per_channel():
    x = torch.tensor([[0.0, 0.26, -1.0], [10.0, -10.0, 0.5]])
    scale = torch.tensor([0.1, 0.05])
    zp = torch.tensor([0, 3], dtype=torch.int8)
    q = ops.get("quantize").ref(x, scale, zp, dtype="i8", axis=0)
    assert q.dtype == torch.int8
    assert q.tolist() == [[0, 3, -10], [127, -128, 13]]  # round-half-even, clamped
    d = ops.get("dequantize").ref(q, scale, zp, axis=0)
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.3, -1.0], [6.2, -6.55, 0.5]]))


def test_fake_quantize_is_qdq_with_a_straight_through_gradient():
    x = torch.tensor([[0.0, 0.26, -1.0, 9.0], [10.0, -10.0, 0.5, 0.024]], requires_grad=True)
    scale = torch.tensor([0.1, 0.05])
    zp = torch.tensor([0, 3], dtype=torch.int8)
    y = ops.get("fake_quantize").ref(x, scale, zp, dtype="i8", axis=0, qmin=-64, qmax=64)
    q = torch.clamp(ops.get("quantize").ref(x.detach(), scale, zp, dtype="i8", axis=0), -64, 64)
    assert torch.equal(y.detach(), ops.get("dequantize").ref(q.to(torch.int8), scale, zp, axis=0))
    y.sum().backward()
    # 9.0 / 0.1 = 90 and 10 / 0.05 + 3 = 203, -10 / 0.05 + 3 = -197 are clamped: no gradient
    assert x.grad.tolist() == [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]


def test_dynamic_quantize_is_onnx_dynamicquantizelinear():
    # range [min(0, -1), max(0, 4)] = [-1, 4] onto 0..255
    x = torch.tensor([-1.0, 0.5, 4.0, 2.5 * (5 / 255)])
    q, scale, zp = ops.get("dynamic_quantize").ref(x, dtype="u8")
    assert scale.dtype == torch.float32 and scale.shape == () and zp.dtype == torch.uint8
    assert float(scale) == pytest.approx(5 / 255) and int(zp) == 51  # round(1 / (5/255))
    assert q.tolist() == [0, 77, 255, 53]  # 2.5 steps rounds half to even: 2 + 51
    q0, s0, z0 = ops.get("dynamic_quantize").ref(torch.zeros(3), dtype="u8")
    assert float(s0) == 1.0 and int(z0) == 0 and q0.tolist() == [0, 0, 0]  # as onnxruntime


def test_invalid_invocations_name_the_problem():
    with pytest.raises(IRError, match="input .* does not match weight"):
        ops.get("linear").infer([T((2, 5)), T((3, 4))], {})
    with pytest.raises(IRError, match="sizes \\[2, 2\\] do not add up"):
        ops.get("split").infer([T((1, 5))], {"axis": 1, "sizes": (2, 2)})
    with pytest.raises(IRError, match="cannot reshape"):
        ops.get("reshape").infer([T((2, 3))], {"shape": (4, 2)})
    with pytest.raises(IRError, match="per-channel scale needs an axis"):
        ops.get("quantize").infer([T((3, 2)), T((3,)), T((3,), "i8")],
                                  {"dtype": "i8", "axis": None})
    with pytest.raises(IRError, match="expected ints"):
        ops.get("conv2d").complete_attrs({"stride": 2})
    with pytest.raises(IRError, match="needs attribute normalized_shape"):
        ops.get("layer_norm").complete_attrs({})


def test_operand_roles_are_declared_in_the_table():
    from shrinkc.ir import ops

    assert ops.get("batch_norm").role(3) == "statistic" and ops.get("conv2d").role(1) == "weight"
    assert ops.get("quantize").role(1) == "qparam" and ops.get("add").role(0) == "input"
    assert ops.get("concat").role(5) == "input"  # variadic
    with pytest.raises(ValueError, match="role mean='stats' names no operand or no role"):
        ops.OpDef("bad", ("x", "mean"), lambda x, m: x, roles={"mean": "stats"})


# ---------------------------------------------------------------------------- issue 19's ops
def test_pad_gather_tile_references_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    t = torch.from_numpy(x)
    pads = (0, 0, 1, 2, 0, 0, 2, 1)
    width = [(pads[d], pads[4 + d]) for d in range(4)]
    for mode, np_mode in (("reflect", "reflect"), ("replicate", "edge")):
        got = ops.get("pad").ref(t, pads=pads, mode=mode, value=0.0).numpy()
        np.testing.assert_array_equal(got, np.pad(x, width, mode=np_mode))
    got = ops.get("pad").ref(t, pads=(0, 0, -1, 1, 0, 1, 0, 0), mode="constant", value=2.5)
    np.testing.assert_array_equal(got.numpy(), np.pad(x[:, :, 1:], [(0, 0), (0, 1), (0, 0),
                                                                   (1, 0)], constant_values=2.5))
    idx = np.array([[0, -1], [3, 1]])
    got = ops.get("gather").ref(t, torch.from_numpy(idx), axis=2).numpy()
    np.testing.assert_array_equal(got, np.take(x, idx, axis=2))
    idx = rng.integers(-5, 5, (2, 3, 4, 2))
    got = ops.get("gather_elements").ref(t, torch.from_numpy(idx), axis=3).numpy()
    np.testing.assert_array_equal(got, np.take_along_axis(x, idx % 5, axis=3))
    got = ops.get("tile").ref(t, repeats=(1, 2, 1, 3)).numpy()
    np.testing.assert_array_equal(got, np.tile(x, (1, 2, 1, 3)))


def test_lrn_and_attention_references_follow_their_formulas():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 2, 2, generator=gen, dtype=torch.float64)
    size, alpha, beta, bias = 3, 0.1, 0.75, 2.0
    sq = torch.nn.functional.pad(x * x, (0, 0, 0, 0, 1, 1))
    window = sum(sq[:, j:j + 6] for j in range(size))
    want = x / (bias + alpha / size * window) ** beta
    torch.testing.assert_close(ops.get("lrn").ref(x, size=size, alpha=alpha, beta=beta,
                                                  bias=bias), want)
    q, k, v = (torch.randn(1, 4, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    kv = k[:, :2], v[:, :2]
    mask = torch.rand(1, 1, 5, 5, generator=gen) > 0.3
    mask[..., 0] = True  # every row keeps something
    keep = mask & torch.ones(5, 5, dtype=torch.bool).tril()
    scores = q @ kv[0].repeat_interleave(2, dim=1).transpose(-1, -2) * 0.5
    want = torch.softmax(scores.masked_fill(~keep, -torch.inf), -1) @ kv[1].repeat_interleave(
        2, dim=1)
    got = ops.get("scaled_dot_product_attention").ref(q, *kv, mask, causal=True, scale=0.5)
    torch.testing.assert_close(got, want)


def test_new_ops_refuse_invalid_invocations():
    with pytest.raises(IRError, match="pads .* must have 2 x rank"):
        ops.get("pad").infer([T((2, 3))], {"pads": (1, 1), "mode": "constant", "value": 0.0})
    with pytest.raises(IRError, match="reflect padding .* must be smaller"):
        ops.get("pad").infer([T((1, 2, 3))], {"pads": (0, 0, 3, 0, 0, 0), "mode": "reflect",
                                              "value": 0.0})
    with pytest.raises(IRError, match="query heads are not a multiple"):
        ops.get("scaled_dot_product_attention").infer(
            [T((1, 3, 5, 8)), T((1, 2, 5, 8)), T((1, 2, 5, 8))], {"causal": False, "scale": None})
    with pytest.raises(IRError, match="condition must be bool"):
        ops.get("where").infer([T((2,)), T((2,)), T((2,))], {})
    with pytest.raises(IRError, match="indices must be i32 or i64"):
        ops.get("gather").infer([T((4, 2)), T((3,))], {"axis": 0})


def test_batch_relative_reshape_and_expand():
    """-1 in a reshape takes the rest (one at most); in an expand it keeps the input's dim."""
    f = TensorType("f32", (3, 4, 5))
    assert ops.get("reshape").infer([f], {"shape": (-1, 20)}) == [TensorType("f32", (3, 20))]
    assert ops.get("reshape").infer([f], {"shape": (3, -1, 2)})[0].shape == (3, 10, 2)
    for bad, msg in (((-1, -1), "one -1"), ((-1, 7), "cannot reshape"), ((-2, 30), "one -1")):
        with pytest.raises(IRError, match=msg):
            ops.get("reshape").infer([f], {"shape": bad})
    col = TensorType("f32", (3, 1, 5))
    assert ops.get("expand").infer([col], {"shape": (-1, 4, -1)})[0].shape == (3, 4, 5)
    assert ops.get("expand").infer([col], {"shape": (2, -1, 4, 5)})[0].shape == (2, 3, 4, 5)
    with pytest.raises(IRError, match="-1 .* is allowed only for dims of"):
        ops.get("expand").infer([col], {"shape": (-1, 3, 4, 5)})
    # with like: a 0 takes like's size in that dim (expand to the batch)
    row, like = TensorType("f32", (1, 1, 5)), TensorType("f32", (7, 2))
    assert ops.get("expand").infer([row, like], {"shape": (0, 4, 5)})[0].shape == (7, 4, 5)
    got = ops.get("expand").ref(torch.ones(1, 1, 5), torch.zeros(7, 2), shape=(0, 4, -1))
    assert got.shape == (7, 4, 5)
    with pytest.raises(IRError, match="the 0 in dim 2 takes that dim of like"):
        ops.get("expand").infer([row, like], {"shape": (0, 4, 0)})
