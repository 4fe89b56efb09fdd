"""int8 on TVM (backends/tvm_int8.py): QDQ conv2d / linear / matmul lowered to integer
compute, checked against the IR interpreter's QDQ reference (to one quantization step), the
lowered Relax module checked for u8/i8 × i8 → int32 conv2d / matmul, and the fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shrinkc.backends import tvm as btvm
from shrinkc.backends import tvm_int8
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run
from shrinkc.ir.text import parse_graph
from shrinkc.tools.bench_int8 import make_qdq

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

INT8 = ("uint8", "int8")


def _float_graph() -> Graph:
    """Independent branches, one per case, each its own output (one TVM build for all)."""
    rng = np.random.default_rng(0)
    g = Graph("cases")

    def c(*shape):
        return g.add_constant((rng.standard_normal(shape) * 0.3).astype(np.float32))

    x = g.add_input(TensorType("f32", (1, 4, 9, 9)), "x")
    s = g.add_input(TensorType("f32", (2, 5, 8)), "s")
    outs = []
    conv = lambda loc, w, b, **at: outs.append(g.add_node(  # noqa: E731
        "conv2d", [x, w] + ([b] if b is not None else []), at, loc=loc).output)
    conv("conv_s2", c(6, 4, 3, 3), c(6), stride=(2, 2), padding=(1, 1))
    conv("conv_dw", c(4, 1, 3, 3), c(4), padding=(1, 1), groups=4)
    conv("conv_dw_i8", c(8, 1, 3, 3), c(8), stride=(2, 2), padding=(2, 1), groups=4)
    conv("conv_nobias", c(5, 4, 1, 1), None)
    conv("conv_i8_pt", c(6, 4, 3, 3), c(6), padding=(1, 1))
    for loc, extra in (("linear_u8", {}), ("linear_i8", {})):
        outs.append(g.add_node("linear", [s, c(6, 8), c(6)], loc=loc, **extra).output)
    outs.append(g.add_node("matmul", [s, c(8, 3)], loc="matmul_u8").output)
    outs.append(g.add_node("matmul", [s, c(2, 8, 3)], loc="matmul_batched_i8").output)
    outs.append(g.add_node("conv2d", [x, c(3, 4, 3, 3)], {"padding": (1, 1)},
                           loc="conv_asym").output)
    g.outputs = outs
    return g


#: per-case options of make_qdq (defaults: u8, per-channel weights, int32 bias, output q)
OVERRIDES = {
    "conv_dw": {"quantize_outputs": False},
    "conv_dw_i8": {"act_dtype": "i8", "int_bias": False},
    "conv_nobias": {"per_channel": False, "quantize_outputs": False},
    "conv_i8_pt": {"act_dtype": "i8", "per_channel": False},
    "linear_i8": {"act_dtype": "i8", "per_channel": False, "quantize_outputs": False,
                  "int_bias": False},
    "matmul_batched_i8": {"act_dtype": "i8", "quantize_outputs": False},
}


@pytest.fixture(scope="module")
def case():
    g = _float_graph()
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal(v.shape).astype(np.float32) * 2 for v in g.inputs]
             for _ in range(2)]
    q = make_qdq(g, calib, overrides=OVERRIDES)
    # one fallback: asymmetric weights (weight zero point != 0) must stay float
    q.constants["conv_asym.weight_zero_point"].data[:] = 3
    lowered = btvm.lower(q)
    module = btvm.build_lowered(lowered, name=q.name)
    x = calib[0]
    return q, lowered, module.run(x), [t.numpy() for t in run(q, x)]


def _tol(q: Graph, loc: str) -> float:
    """One quantization step of the output; for f32 outputs, a tenth of sx*sw (float
    rounding only: an f32 bias is added in float, an int32 one exactly)."""
    k = q.constants
    if f"{loc}.y.scale" in k:
        return float(k[f"{loc}.y.scale"].data) * 1.0001
    return float(k[f"{loc}.x.scale"].data) * float(np.max(k[f"{loc}.weight_scale"].data)) * 0.1


def test_int8_equals_the_qdq_reference_to_one_step(case):
    q, _, outs, refs = case
    locs = [o.producer.meta.get("loc") or o.producer.inputs[0].producer.inputs[0]
            .producer.meta["loc"] for o in q.outputs]
    assert len(locs) == len(outs) == 10
    for loc, out, ref in zip(locs, outs, refs):
        err = np.abs(out.astype(np.float64) - ref).max()
        assert err <= _tol(q, loc) + 1e-5 * np.abs(ref).max(), (loc, err, _tol(q, loc))
    # most quantized outputs agree exactly (only round-half ties may differ)
    exact = sum(np.array_equal(o, r) for o, r in zip(outs, refs))
    assert exact >= 4


def test_lowered_module_computes_in_integers(case):
    q, lowered, _, _ = case
    calls = tvm_int8.compute_calls(lowered.mod)
    ints = tvm_int8.integer_ops(lowered.mod)
    # every case but the asymmetric-weight fallback is u8/i8 × i8 → int32
    assert len(ints) == 9, calls
    assert {c[0] for c in ints} == {"relax.nn.conv2d", "relax.matmul"}
    assert {c[1][0] for c in ints} == set(INT8)
    floats = [c for c in calls if c not in ints]
    assert floats == [("relax.nn.conv2d", ("float32", "float32"), "float32")]
    # the QDQ graph without the int8 lowering: all float
    plain = tvm_int8.compute_calls(btvm.lower(q, int8=False).mod)
    assert all(c[2] == "float32" for c in plain) and len(plain) == 10


QDQ_TEXT = """\
graph "qlinear" (%x: u8[2,8]) {
  %sx: f32[] = const 0.05
  %zx: u8[] = const 128
  %wq: i8[4,8] = const #0123abcd
  %sw: f32[4] = const [0.01, 0.02, 0.015, 0.03]
  %zw: i8[4] = const [0, 0, 0, 0]
  %bq: i32[4] = const [100, -200, 37, 0]
  %sb: f32[4] = const [0.0005, 0.001, 0.00075, 0.0015]
  %zb: i32[4] = const [0, 0, 0, 0]
  %sy: f32[] = const 0.1
  %zy: i8[] = const -3
  %xd: f32[2,8] = dequantize(%x, %sx, %zx) {axis=none}
  %wd: f32[4,8] = dequantize(%wq, %sw, %zw) {axis=0}
  %bd: f32[4] = dequantize(%bq, %sb, %zb) {axis=0}
  %y: f32[2,4] = linear(%xd, %wd, %bd)
  %yq: i8[2,4] = quantize(%y, %sy, %zy) {dtype="i8", axis=none}
  return %yq
}
"""


def test_text_qdq_linear_lowers_to_integers_without_float_weights():
    g = parse_graph(QDQ_TEXT, missing_weights="random")
    lowered = btvm.lower(g)
    assert tvm_int8.compute_calls(lowered.mod) == [("relax.matmul", INT8, "int32")]
    text = lowered.mod.script()
    assert 'R.Tensor((4, 8), dtype="float32")' not in text  # no dequantized weight
    assert 'R.Tensor((8, 4), dtype="float32")' not in text
    x = np.random.default_rng(2).integers(0, 256, (2, 8)).astype(np.uint8)
    out = btvm.build_lowered(lowered).run([x])[0]
    ref = run(g, [x])[0].numpy()
    assert out.dtype == np.int8 and np.abs(out.astype(int) - ref).max() <= 1
    # keep_params: the weight is a parameter, transposed in the module, still int8
    kept = btvm.lower(g, keep_params=True)
    assert tvm_int8.integer_ops(kept.mod) == [("relax.matmul", INT8, "int32")]


@pytest.mark.parametrize("edit, why", [
    (lambda t: t.replace("%zw: i8[4] = const [0, 0, 0, 0]", "%zw: i8[4] = const [0, 1, 0, 0]"),
     "asymmetric"),
    (lambda t: t.replace("%x: u8[2,8]", "%x: u8[2,8], %xs: f32[]").replace(
        "dequantize(%x, %sx, %zx)", "dequantize(%x, %xs, %zx)").replace(
        "%sx: f32[] = const 0.05\n", ""), "not constants"),
    (lambda t: t.replace("%sx: f32[] = const 0.05", "%sx: f32[8] = const [0.05, 0.05, 0.05, "
                         "0.05, 0.05, 0.05, 0.05, 0.05]").replace(
        "%zx: u8[] = const 128", "%zx: u8[8] = const [1, 1, 1, 1, 1, 1, 1, 1]").replace(
        "dequantize(%x, %sx, %zx) {axis=none}", "dequantize(%x, %sx, %zx) {axis=1}"),
     "per channel"),
])
def test_unsupported_patterns_stay_float_and_say_why(edit, why, caplog):
    g = parse_graph(edit(QDQ_TEXT), missing_weights="random")
    with caplog.at_level(logging.DEBUG, logger="shrinkc.backends.tvm_int8"):
        lowered = btvm.lower(g)
    assert tvm_int8.integer_ops(lowered.mod) == []
    assert any("stays float" in r.message and why in r.message for r in caplog.records), \
        [r.message for r in caplog.records]


def test_chained_convs_share_one_quantization():
    """conv → conv with nothing between (MobileNetV2's projection into the next expansion):
    make_qdq reuses the first conv's output quantization as the second's input, and both
    lower to integer convs that match the interpreter's QDQ reference to one step."""
    rng = np.random.default_rng(3)
    g = Graph("chain")
    x = g.add_input(TensorType("f32", (1, 4, 6, 6)), "x")
    w1 = g.add_constant((rng.standard_normal((8, 4, 1, 1)) * 0.3).astype(np.float32))
    w2 = g.add_constant((rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32))
    b2 = g.add_constant((rng.standard_normal(8) * 0.1).astype(np.float32))
    y1 = g.add_node("conv2d", [x, w1], loc="c1").output
    g.outputs = [g.add_node("conv2d", [y1, w2, b2], {"padding": (1, 1)}, loc="c2").output]
    calib = [[rng.standard_normal((1, 4, 6, 6)).astype(np.float32)] for _ in range(2)]
    q = make_qdq(g, calib, quantize_outputs=True)
    convs = [n for n in q.nodes if n.op == "conv2d"]
    assert [n.inputs[0].producer.op for n in convs] == ["dequantize", "dequantize"]
    assert convs[1].inputs[0].producer.inputs[1] is q.constants["c1.y.scale"]
    assert not any(n.op == "dequantize" and n.inputs[0].producer is not None
                   and n.inputs[0].producer.op == "dequantize" for n in q.nodes)
    lowered = btvm.lower(q)
    assert len(tvm_int8.integer_ops(lowered.mod)) == 2
    out = btvm.build_lowered(lowered, name=q.name).run(calib[0])[0]
    ref = run(q, calib[0])[0].numpy()
    step = float(q.constants["c2.y.scale"].data)
    assert np.abs(out.astype(np.float64) - ref).max() <= step * 1.0001
