"""int8 on TVM (backends/tvm/int8.py): QDQ conv2d / linear / matmul lowered to integer
compute, checked against the IR interpreter's QDQ reference (to one quantization step), the
lowered Relax module checked for u8/i8 × i8 → int32 conv2d / matmul, and the fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from shrinkc.backends import tvm as btvm
from shrinkc.backends.tvm import int8 as tvm_int8
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run
from shrinkc.ir.text import parse_graph
from shrinkc.passes import optimize

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

INT8 = ("uint8", "int8")


#: Each case is its own branch on its own input (an input is quantized once, for every
#: reader, so variants need inputs of their own), quantized by the ``quantize`` run of its
#: group. A branch ending in a ReLU gets its layer's output quantized (the requantize fused
#: into the integer op); one that ends at the layer keeps an f32 output.
GROUPS = {
    "quantize": ("conv_s2", "conv_dw", "linear_u8", "matmul_u8"),
    "quantize(activations=int8)": ("conv_dw_i8", "matmul_batched_i8"),
    "quantize(per_channel=false)": ("conv_nobias",),
    "quantize(activations=int8, per_channel=false)": ("conv_i8_pt", "linear_i8"),
    "quantize(symmetric_weights=false)": ("conv_asym",),  # asymmetric weights stay float
}
WITH_RELU = {"conv_s2", "conv_dw_i8", "conv_i8_pt", "linear_u8"}


def _float_graph() -> Graph:
    """Independent branches, one per case, each its own output (one TVM build for all)."""
    rng = np.random.default_rng(0)
    g = Graph("cases")

    def c(*shape):
        return g.add_constant((rng.standard_normal(shape) * 0.3).astype(np.float32))

    outs = []

    def branch(loc, op, shape, w, b=None, **at):
        x = g.add_input(TensorType("f32", shape), f"{loc}.in")
        y = g.add_node(op, [x, w] + ([b] if b is not None else []), at, loc=loc).output
        if loc in WITH_RELU:
            y = g.add_node("relu", [y], loc=f"{loc}.relu").output
        outs.append(y)

    img, seq = (1, 4, 9, 9), (2, 5, 8)
    branch("conv_s2", "conv2d", img, c(6, 4, 3, 3), c(6), stride=(2, 2), padding=(1, 1))
    branch("conv_dw", "conv2d", img, c(4, 1, 3, 3), c(4), padding=(1, 1), groups=4)
    branch("conv_dw_i8", "conv2d", img, c(8, 1, 3, 3), c(8), stride=(2, 2), padding=(2, 1),
           groups=4)
    branch("conv_nobias", "conv2d", img, c(5, 4, 1, 1))
    branch("conv_i8_pt", "conv2d", img, c(6, 4, 3, 3), c(6), padding=(1, 1))
    branch("linear_u8", "linear", seq, c(6, 8), c(6))
    branch("linear_i8", "linear", seq, c(6, 8), c(6))
    branch("matmul_u8", "matmul", seq, c(8, 3))
    branch("matmul_batched_i8", "matmul", seq, c(2, 8, 3))
    branch("conv_asym", "conv2d", img, c(3, 4, 3, 3), padding=(1, 1))
    g.outputs = outs
    return g


def _quantized(g: Graph, calib: list) -> Graph:
    every = {loc for locs in GROUPS.values() for loc in locs}
    for pipeline, locs in GROUPS.items():
        others = sorted(every - set(locs))
        opts = f"exclude={others!r}"
        pipeline = (pipeline[:-1] + f", {opts})") if "(" in pipeline else f"{pipeline}({opts})"
        g = optimize(g, pipeline, calibration=calib)
    return g


@pytest.fixture(scope="module")
def case():
    g = _float_graph()
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal(v.shape).astype(np.float32) * 2 for v in g.inputs]
             for _ in range(2)]
    q = _quantized(g, calib)
    lowered = btvm.lower(q)
    module = btvm.build_lowered(lowered, name=q.name)
    x = calib[0]
    return q, lowered, module.run(x), [t.numpy() for t in run(q, x)]


def _layer(out) -> object:
    """The conv / linear / matmul behind a branch's output."""
    n = out.producer
    while n.op not in ("conv2d", "linear", "matmul"):
        n = n.inputs[0].producer
    return n


def _tol(out) -> float:
    """One quantization step of the layer's quantized output (a ReLU branch); for f32
    outputs, a tenth of sx*sw (float rounding only: the int32 bias is added exactly)."""
    layer = _layer(out)
    y = layer.outputs[0]
    if len(y.uses) == 1 and y.uses[0].op == "quantize":
        return float(y.uses[0].inputs[1].data) * 1.0001
    sx = float(layer.inputs[0].producer.inputs[1].data)
    sw = float(np.max(layer.inputs[1].producer.inputs[1].data))
    return sx * sw * 0.1


def test_int8_equals_the_qdq_reference_to_one_step(case):
    q, _, outs, refs = case
    assert len(q.outputs) == len(outs) == 10
    for v, out, ref in zip(q.outputs, outs, refs):
        loc = _layer(v).loc
        err = np.abs(out.astype(np.float64) - ref).max()
        assert err <= _tol(v) + 1e-5 * np.abs(ref).max(), (loc, err, _tol(v))
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


def test_f32_bias_is_added_after_scaling():
    """A float bias (not int32 at sx*sw) is added in float after the accumulator is scaled:
    no rounding to the accumulator's step."""
    text = QDQ_TEXT.replace("  %bd: f32[4] = dequantize(%bq, %sb, %zb) {axis=0}\n", "").replace(
        "  %bq: i32[4] = const [100, -200, 37, 0]\n",
        "  %bd: f32[4] = const [0.0123, -0.2, 0.0371, 0.0]\n")
    g = parse_graph(text, missing_weights="random")
    lowered = btvm.lower(g)
    assert tvm_int8.compute_calls(lowered.mod) == [("relax.matmul", INT8, "int32")]
    x = np.random.default_rng(4).integers(0, 256, (2, 8)).astype(np.uint8)
    out = btvm.build_lowered(lowered).run([x])[0]
    assert np.abs(out.astype(int) - run(g, [x])[0].numpy()).max() <= 1


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
    with caplog.at_level(logging.DEBUG, logger="shrinkc.backends.tvm.int8"):
        lowered = btvm.lower(g)
    assert tvm_int8.integer_ops(lowered.mod) == []
    assert any("stays float" in r.message and why in r.message for r in caplog.records), \
        [r.message for r in caplog.records]


def test_chained_convs_share_one_quantization():
    """conv → conv with nothing between (MobileNetV2's projection into the next expansion):
    the first conv's output quantization is the second's input, and both lower to integer
    convs that match the interpreter's QDQ reference."""
    rng = np.random.default_rng(3)
    g = Graph("chain")
    x = g.add_input(TensorType("f32", (1, 4, 6, 6)), "x")
    w1 = g.add_constant((rng.standard_normal((8, 4, 1, 1)) * 0.3).astype(np.float32))
    w2 = g.add_constant((rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32))
    b2 = g.add_constant((rng.standard_normal(8) * 0.1).astype(np.float32))
    y1 = g.add_node("conv2d", [x, w1], loc="c1").output
    g.outputs = [g.add_node("conv2d", [y1, w2, b2], {"padding": (1, 1)}, loc="c2").output]
    calib = [[rng.standard_normal((1, 4, 6, 6)).astype(np.float32)] for _ in range(2)]
    q = optimize(g, "quantize", calibration=calib)
    convs = [n for n in q.nodes if n.op == "conv2d"]
    assert [n.inputs[0].producer.op for n in convs] == ["dequantize", "dequantize"]
    y1q = convs[0].outputs[0].uses[0]
    assert y1q.op == "quantize" and convs[1].inputs[0].producer.inputs[0] is y1q.output
    assert not any(n.op == "dequantize" and n.inputs[0].producer is not None
                   and n.inputs[0].producer.op == "dequantize" for n in q.nodes)
    lowered = btvm.lower(q)
    assert len(tvm_int8.integer_ops(lowered.mod)) == 2
    out = btvm.build_lowered(lowered, name=q.name).run(calib[0])[0]
    ref = run(q, calib[0])[0].numpy()
    assert np.abs(out.astype(np.float64) - ref).max() <= _tol(q.outputs[0])


def test_dynamic_quantization_lowers_to_integer_matmuls(reference_graphs):
    """quantize(activations=dynamic): the scale and zero point of each input are computed at
    run time (dynamic_quantize) and go into the integer matmul's epilogue."""
    _, x, g = reference_graphs("vit")
    q = optimize(g, "quantize(activations=dynamic)")
    lowered = btvm.lower(q)
    ints = tvm_int8.integer_ops(lowered.mod)
    assert len(ints) == sum(n.op == "linear" for n in q.nodes)
    assert {c[1] for c in ints} == {INT8}
    out = btvm.build_lowered(lowered, name="vit_dyn").run([x.numpy()])[0]
    ref = run(q, [x])[0].numpy()
    # integer accumulation vs the interpreter's float matmul of the same dequantized values
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


POOL_TEXT = """\
graph "qpool" (%x: u8[1,4,9,9]) {
  %s: f32[] = const 0.0625
  %z: u8[] = const 7
  %xd: f32[1,4,9,9] = dequantize(%x, %s, %z) {axis=none}
  %p: f32[1,4,5,5] = max_pool2d(%xd) {kernel=[3, 3], stride=[2, 2], padding=[1, 1], dilation=[1, 1], ceil_mode=false}
  %pq: u8[1,4,5,5] = quantize(%p, %s, %z) {dtype="u8", axis=none}
  %p2: f32[1,4,4,4] = max_pool2d(%xd) {kernel=[2, 2], stride=[3, 3], padding=[1, 1], dilation=[1, 1], ceil_mode=true}
  return %pq, %p2
}
"""


def _pools(mod) -> list[str]:
    """The input dtypes of the ``max_pool2d`` calls of a lowered module's ``main``."""
    return [str(b.value.args[0].ty.dtype) for block in mod["main"].body.blocks
            for b in block.bindings
            if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.max_pool2d"]


def test_max_pool_of_a_dequantize_runs_on_the_integers():
    """max_pool(dequantize(x)) = dequantize(max_pool(x)) (a dequantize is monotone): both
    pools run on the u8 values, without the float NaN handling; the one followed by the
    same quantize gives its u8 directly (the quantize is the identity), the other is
    dequantized after pooling (ceil_mode's overhanging window included). Bit-exact."""
    g = parse_graph(POOL_TEXT)
    lowered = btvm.lower(g)
    assert _pools(lowered.mod) == ["uint8", "uint8"]
    assert "R.isnan" not in lowered.mod.script()
    # the padding (the dtype's minimum) never wins over a real element, even at value 0
    x = np.random.default_rng(5).integers(0, 256, (1, 4, 9, 9)).astype(np.uint8)
    x[0, 0, :3, :3] = 0
    got = btvm.build_lowered(lowered).run([x])
    want = [t.numpy() for t in run(g, [x])]
    assert got[0].dtype == np.uint8
    for y, w in zip(got, want):
        np.testing.assert_array_equal(y, w)
    # without the int8 lowering: a float pool (and its NaN handling) on the dequantized input
    assert _pools(btvm.lower(g, int8=False).mod) == ["float32"] * 4


def test_max_pool_requantized_to_another_scale_is_dequantized_after_pooling():
    text = POOL_TEXT.replace("quantize(%p, %s, %z)", "quantize(%p, %s2, %z)").replace(
        "  %z: u8[] = const 7\n", "  %z: u8[] = const 7\n  %s2: f32[] = const 0.125\n")
    g = parse_graph(text)
    lowered = btvm.lower(g)
    assert _pools(lowered.mod) == ["uint8", "uint8"]
    x = np.random.default_rng(6).integers(0, 256, (1, 4, 9, 9)).astype(np.uint8)
    for y, w in zip(btvm.build_lowered(lowered).run([x]), [t.numpy() for t in run(g, [x])]):
        np.testing.assert_array_equal(y, w)


def test_requantization_multiplier_is_rounded_as_onnxruntime_rounds_it(tmp_path):
    """The requantize multiplier is ``sx·sw`` rounded to float32, then ``/ sy`` rounded —
    onnxruntime's order — not the exact quotient rounded once. For these scales the two
    differ by one ulp (2.074258e-05 vs 2.0742582e-05), which moves these accumulators
    across a rounding tie: 3,880,906 · m is 80 one way and 81 the other. One flipped step
    grows through the layers after it (int8 MobileNetV2: 10 steps 20 layers on)."""
    import onnxruntime as ort
    from shrinkc import to_onnx

    sx, sw, sy = np.float32(0.011487487), np.float32(0.00083194324), np.float32(0.46074)
    acc = np.array([3880906, 3977326, 4073746, 4170166], np.int32)
    g = Graph("tie")

    def c(a, dtype):
        return g.add_constant(np.asarray(a, dtype=dtype))

    x = g.add_input(TensorType("f32", (1, 1, 1, 1)), "x")
    xq = g.add_node("quantize", [x, c(sx, np.float32), c(0, np.uint8)], {"dtype": "u8"}).output
    xd = g.add_node("dequantize", [xq, c(sx, np.float32), c(0, np.uint8)]).output
    wd = g.add_node("dequantize", [c(np.ones((4, 1, 1, 1)), np.int8), c([sw] * 4, np.float32),
                                   c(np.zeros(4), np.int8)], {"axis": 0}).output
    bd = g.add_node("dequantize", [c(acc, np.int32), c([sx * sw] * 4, np.float32),
                                   c(np.zeros(4), np.int32)], {"axis": 0}).output
    y = g.add_node("conv2d", [xd, wd, bd], {}).output
    g.outputs = [g.add_node("quantize", [y, c(sy, np.float32), c(0, np.uint8)],
                            {"dtype": "u8"}).output]
    feed = np.zeros((1, 1, 1, 1), np.float32)  # the accumulator is the bias alone
    lowered = btvm.lower(g)
    assert tvm_int8.compute_calls(lowered.mod) == [("relax.nn.conv2d", INT8, "int32")]
    got = btvm.build_lowered(lowered).run([feed])[0].ravel()
    sess = ort.InferenceSession(to_onnx(g, tmp_path / "tie.onnx").read_bytes(),
                                providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: feed})[0].ravel()
    np.testing.assert_array_equal(want, [80, 82, 84, 86])
    np.testing.assert_array_equal(got, want)
