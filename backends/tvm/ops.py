"""The lowering table: one Relax lowering per IR op (``LOWERINGS``, keyed by the op
table's names; a test checks that every op has one).

A lowering is ``fn(lowerer, node, operands) -> expr`` (a list for several outputs),
registered with ``@lowers(op, ...)``; ``lowering.lower_node`` checks its result type
against the IR. Batch-norm statistics and bias reshapes are folded here in numpy
(Relax's FoldConstant compiles a kernel per constant: 77 s for MobileNetV2). ``quantize``
/ ``dequantize`` / ``cast`` are float arithmetic, round, clip and ``astype``; the QDQ
patterns around conv2d / linear / matmul are lowered to integer compute by the ``int8``
pattern lowering (``int8.py``), which importing this module registers too.

Importing this module fills the table; ``lower`` (from ``lowering.py``) is re-exported here
so that ``from .ops import lower`` is a lower with every lowering present.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tvm import relax

from ...ir import ops as irops
from ...ir.graph import Node
from ...ir.ops.quant import QRANGES
from ...ir.types import FLOAT_DTYPES, TensorType
from .errors import LoweringError
from .lowering import DTYPE_TO_TVM, LOWERINGS, Lowering, dtype_of, lower, lowers
from .lowering import Lowerer as _Lowerer


def _astype(lw: _Lowerer, x: Any, have: str, want: str) -> Any:
    return lw.astype(x, have, want)


def _bias_add(lw: _Lowerer, y: Any, bias: Any, rank: int) -> Any:
    return relax.op.add(y, lw.reshape(bias, [1, -1] + [1] * (rank - 2)))


# ---------------------------------------------------------------------------- nn
@lowers("conv2d")
def _conv2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    y = lw.emit(relax.op.nn.conv2d(
        a[0], a[1], strides=at["stride"], padding=at["padding"], dilation=at["dilation"],
        groups=at["groups"], data_layout="NCHW", kernel_layout="OIHW",
        out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return _bias_add(lw, y, a[2], 4) if len(a) > 2 else y


@lowers("circulant_matmul")
def _circulant_matmul(lw: _Lowerer, node: Node, a: list) -> Any:
    """Exact, without an FFT (Relax has none): a convolution over the circularly extended
    input, ``concat(x[..., 1:], x) * reverse(c)`` (see ir/ops/structured.py)."""
    p, q, k = lw.in_type(1).shape
    xt = lw.in_type(0)
    n = xt.numel // (q * k)
    x = lw.reshape(a[0], (n, q, 1, k))
    tail = lw.emit(relax.op.strided_slice(x, axes=[3], begin=[1], end=[k], assume_inbound=True))
    xe = lw.emit(relax.op.concat([tail, x], axis=3))
    c = lw.constant(a[1])
    if c is not None:
        w = lw.const(np.ascontiguousarray(c[..., ::-1].reshape(p, q, 1, k)), lw.in_type(1).dtype)
    else:
        w = lw.emit(relax.op.flip(a[1], axis=2))
        w = lw.reshape(w, (p, q, 1, k))
    y = lw.emit(relax.op.nn.conv2d(xe, w, data_layout="NCHW", kernel_layout="OIHW",
                                   out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return relax.op.reshape(y, lw.out_type().shape)


@lowers("conv_transpose2d")
def _conv_transpose2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    y = lw.emit(relax.op.nn.conv2d_transpose(
        a[0], a[1], strides=at["stride"], padding=at["padding"],
        output_padding=at["output_padding"], dilation=at["dilation"], groups=at["groups"],
        data_layout="NCHW", kernel_layout="IOHW", out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return _bias_add(lw, y, a[2], 4) if len(a) > 2 else y


@lowers("linear")
def _linear(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.linear(a[0], a[1], a[2] if len(a) > 2 else None)


@lowers("matmul")
def _matmul(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.matmul(a[0], a[1])


@lowers("batch_norm")
def _batch_norm(lw: _Lowerer, node: Node, a: list) -> Any:
    # x * scale + shift with scale = w / sqrt(var + eps); FoldConstant folds scale and shift
    # when the statistics are constants, FuseOps fuses the rest into the producer (conv).
    x, w, b, mean, var = a
    dt = lw.in_type(4).dtype
    shape = [1, -1] + [1] * (lw.in_type(0).rank - 2)
    stats = [lw.constant(v) for v in a[1:]]
    if all(c is not None for c in stats):  # the usual case: fold here, in float64
        cw, cb, cm, cv = (c.astype(np.float64) for c in stats)
        scale = cw / np.sqrt(cv + node.attrs["eps"])
        shift = cb - cm * scale
        return relax.op.add(relax.op.multiply(x, lw.const(scale.reshape(shape), dt)),
                            lw.const(shift.reshape(shape), dt))
    scale = lw.emit(relax.op.multiply(
        w, relax.op.rsqrt(relax.op.add(var, lw.const(node.attrs["eps"], dt)))))
    shift = lw.emit(relax.op.subtract(b, relax.op.multiply(mean, scale)))
    return relax.op.add(relax.op.multiply(x, lw.reshape(scale, shape)), lw.reshape(shift, shape))


def _norm_affine(lw: _Lowerer, a: list, shape: Sequence[int], dtype: str) -> tuple[Any, Any]:
    gamma = a[1] if len(a) > 1 else lw.const(np.ones(shape), dtype)
    beta = a[2] if len(a) > 2 else lw.const(np.zeros(shape), dtype)
    return gamma, beta


@lowers("layer_norm")
def _layer_norm(lw: _Lowerer, node: Node, a: list) -> Any:
    shape = node.attrs["normalized_shape"]
    gamma, beta = _norm_affine(lw, a, shape, lw.in_type(0).dtype)
    axes = list(range(-len(shape), 0))
    return relax.op.nn.layer_norm(a[0], gamma, beta, axes=axes, epsilon=node.attrs["eps"])


@lowers("group_norm")
def _group_norm(lw: _Lowerer, node: Node, a: list) -> Any:
    t = lw.in_type(0)
    gamma, beta = _norm_affine(lw, a, (t.shape[1],), t.dtype)
    return relax.op.nn.group_norm(a[0], gamma, beta, num_groups=node.attrs["num_groups"],
                                  channel_axis=1, axes=list(range(2, t.rank)),
                                  epsilon=node.attrs["eps"])


@lowers("softmax")
def _softmax(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.softmax(a[0], axis=node.attrs["axis"])


@lowers("log_softmax")
def _log_softmax(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.log_softmax(a[0], axis=node.attrs["axis"])


def _pool_padding(lw: _Lowerer, node: Node) -> tuple[tuple[int, int, int, int], bool]:
    """Padding (top, left, bottom, right) and ceil_mode for TVM's pool.

    With ``ceil_mode`` PyTorch drops a last window that would start in the right padding;
    TVM does not. Instead of ceil_mode we pad the bottom/right by just enough to produce the
    IR's output size, and keep ceil_mode off."""
    at = node.attrs
    (ph, pw), (sh, sw) = at["padding"], at["stride"]
    kh, kw = at["kernel"]
    dh, dw = at.get("dilation", (1, 1))
    _, _, h, w = lw.in_type(0).shape
    _, _, oh, ow = lw.out_type().shape
    extra_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    return (ph, pw, ph + extra_h, pw + extra_w), bool(extra_h or extra_w)


@lowers("max_pool2d")
def _max_pool2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, _ = _pool_padding(lw, node)

    def pool(x: Any) -> Any:
        return relax.op.nn.max_pool2d(x, pool_size=at["kernel"], strides=at["stride"],
                                      padding=pad, dilation=at["dilation"], ceil_mode=False,
                                      layout="NCHW")

    return _keeping_nan(lw, a[0], pool)


def _keeping_nan(lw: _Lowerer, x: Any, reduce: Callable[[Any], Any],
                 reduce_max: Callable[[Any], Any] | None = None) -> Any:
    """``reduce(x)`` — a max or min over windows or axes — with NaN wherever it reads one.

    TVM's max / min reductions drop NaN (the combiner is ``acc > x ? acc : x``); the IR
    (PyTorch) gives NaN. The max over the same windows / axes (``reduce_max``; default
    ``reduce``) of the NaN mask (0/1) says which outputs read one; ``sqrt(-that)`` is -0
    or NaN, added to the result. Only element-wise ops and the reduction itself, so the
    NHWC conversion moves through (``where`` would stop it: ConvertLayout has no rule for
    it)."""
    dtype = dtype_of(x)
    if dtype not in FLOAT_DTYPES:
        return reduce(x)
    return relax.op.add(lw.emit(reduce(x)), _nan_or_zero(lw, relax.op.isnan(x), dtype,
                                                          reduce=reduce_max or reduce))


def _nan_or_zero(lw: _Lowerer, isnan: Any, dtype: str, reduce: Callable[[Any], Any] | None
                 = None) -> Any:
    """-0 where the bool ``isnan`` (reduced by ``reduce``, a max, if given) is false, NaN
    where it is true: what a NaN-propagating result adds."""
    mask = relax.op.astype(isnan, DTYPE_TO_TVM[dtype])
    if reduce is not None:
        mask = lw.emit(reduce(mask))
    return relax.op.sqrt(relax.op.negative(mask))


@lowers("avg_pool2d")
def _avg_pool2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, extended = _pool_padding(lw, node)
    if not (extended and at["count_include_pad"]):
        return relax.op.nn.avg_pool2d(a[0], pool_size=at["kernel"], strides=at["stride"],
                                      padding=pad, ceil_mode=False,
                                      count_include_pad=at["count_include_pad"], layout="NCHW")
    # ceil_mode windows that overhang the symmetric padding: PyTorch divides by the window
    # clipped to the padded input. Sum-pool (avg * k without padding counted) and divide by
    # that count, computed here as a constant.
    kh, kw = at["kernel"]
    summed = lw.emit(relax.op.multiply(
        relax.op.nn.avg_pool2d(a[0], pool_size=at["kernel"], strides=at["stride"],
                               padding=pad, ceil_mode=False, count_include_pad=True,
                               layout="NCHW"),
        lw.const(kh * kw, lw.in_type(0).dtype)))
    _, _, h, w = lw.in_type(0).shape
    _, _, oh, ow = lw.out_type().shape
    (ph, pw), (sh, sw) = at["padding"], at["stride"]

    def counts(n_out: int, size: int, k: int, s: int, p: int) -> np.ndarray:
        start = np.arange(n_out) * s - p
        end = np.minimum(start + k, size + p)
        return (end - start).astype(np.float64)

    div = np.outer(counts(oh, h, kh, sh, ph), counts(ow, w, kw, sw, pw))
    return relax.op.divide(summed, lw.const(div, lw.in_type(0).dtype))


@lowers("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.adaptive_avg_pool2d(a[0], output_size=node.attrs["output_size"],
                                           layout="NCHW")


@lowers("embedding")
def _embedding(lw: _Lowerer, node: Node, a: list) -> Any:
    idx = _astype(lw, a[0], lw.in_type(0).dtype, "i32")
    return relax.op.take(a[1], idx, axis=0)


# ---------------------------------------------------------------------------- elementwise
def _simple(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        fn = relax.op
        for part in fn_name.split("."):
            fn = getattr(fn, part)
        return fn(a[0])

    return lower


def _clip(lw: _Lowerer, x: Any, lo: float | None, hi: float | None, dtype: str) -> Any:
    """``clip(x, lo, hi)`` (``relu`` is lo=0) keeping NaN: ``Lowerer.clamp``."""
    return lw.clamp(x, lo, hi, dtype)


@lowers("relu")
def _relu(lw: _Lowerer, node: Node, a: list) -> Any:
    return _clip(lw, a[0], 0, None, lw.in_type(0).dtype)


for _op, _fn in (("silu", "nn.silu"), ("sigmoid", "sigmoid"),
                 ("tanh", "tanh"), ("neg", "negative"), ("sqrt", "sqrt"), ("exp", "exp"),
                 ("erf", "erf")):
    LOWERINGS[_op] = _simple(_fn)


@lowers("identity", "dropout")
def _identity(lw: _Lowerer, node: Node, a: list) -> Any:
    return a[0]


@lowers("hardtanh")
def _hardtanh(lw: _Lowerer, node: Node, a: list) -> Any:
    return _clip(lw, a[0], node.attrs["min_val"], node.attrs["max_val"], lw.in_type(0).dtype)


#: float32 GELU (the erf form) through ``topi.fast_erf`` instead of ``erf``: LLVM has no
#: vector erf, so ``erf`` is a scalar ``erff`` call per element, which made a 64 × 256 →
#: 1024 linear + GELU 0.51 ms against 0.17 for the linear alone (Zen 5, 2 threads).
#: ``fast_erf`` (TVM's rational approximation, clamped to ±4) is within 4.2e-7 of erf
#: (7 ulp; measured on 2^20 points in [-6, 6] against scipy in float64), and it is
#: element-wise arithmetic the epilogue of the matmul kernel vectorizes. NaN and ±Inf:
#: GELU multiplies by x, so NaN stays NaN, +Inf gives +Inf and -Inf gives NaN, as the
#: ``erf`` form. False keeps ``relax.op.nn.gelu``.
FAST_GELU = True


@lowers("gelu")
def _gelu(lw: _Lowerer, node: Node, a: list) -> Any:
    approx = node.attrs["approximate"]
    dtype = lw.in_type(0).dtype
    if approx == "none" and FAST_GELU and dtype == "f32":
        from tvm import topi

        half = lw.emit(relax.op.multiply(a[0], lw.const(0.5, dtype)))
        scaled = lw.emit(relax.op.multiply(a[0], lw.const(0.7071067811865476, dtype)))
        erf = lw.bb.emit_te(topi.fast_erf, scaled, primfunc_name_hint="fast_erf")
        return relax.op.multiply(half, relax.op.add(erf, lw.const(1.0, dtype)))
    if approx == "none":
        return relax.op.nn.gelu(a[0])
    if approx == "tanh":
        return relax.op.nn.gelu_tanh(a[0])
    raise LoweringError(f"node {node.describe()}: gelu approximate={approx!r} has no TVM "
                        f"lowering (known: 'none', 'tanh')")


def _relu6_plus3(lw: _Lowerer, x: Any, dtype: str) -> Any:
    shifted = lw.emit(relax.op.add(x, lw.const(3, dtype)))
    return relax.op.divide(_clip(lw, shifted, 0, 6, dtype), lw.const(6, dtype))


@lowers("hardsigmoid")
def _hardsigmoid(lw: _Lowerer, node: Node, a: list) -> Any:
    return _relu6_plus3(lw, a[0], lw.in_type(0).dtype)


@lowers("hardswish")
def _hardswish(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.multiply(a[0], _relu6_plus3(lw, a[0], lw.in_type(0).dtype))


def _binary(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        # the IR's output dtype is torch's promotion result (int / int is float, …)
        want = lw.out_type().dtype
        x = _astype(lw, a[0], lw.in_type(0).dtype, want)
        y = _astype(lw, a[1], lw.in_type(1).dtype, want)
        return getattr(relax.op, fn_name)(x, y)

    return lower


for _op, _fn in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("div", "divide"),
                 ("pow", "power")):
    LOWERINGS[_op] = _binary(_fn)


# ---------------------------------------------------------------------------- shape
@lowers("reshape", "flatten")
def _reshape(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.reshape(a[0], lw.out_type().shape)


@lowers("permute")
def _permute(lw: _Lowerer, node: Node, a: list) -> Any:
    rank = lw.in_type(0).rank
    return relax.op.permute_dims(a[0], [d % rank for d in node.attrs["perm"]])


@lowers("concat")
def _concat(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.concat(list(a), axis=node.attrs["axis"] % lw.in_type(0).rank)


@lowers("split")
def _split(lw: _Lowerer, node: Node, a: list) -> list:
    sizes = node.attrs["sizes"]
    if len(sizes) == 1:
        return [a[0]]
    cuts = list(np.cumsum(sizes[:-1]).tolist())
    parts = lw.emit(relax.op.split(a[0], cuts, axis=node.attrs["axis"] % lw.in_type(0).rank))
    return [lw.emit(relax.TupleGetItem(parts, i)) for i in range(len(sizes))]


@lowers("slice")
def _slice(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    axis = at["axis"] % lw.in_type(0).rank
    start, stop, step = slice(at["start"], at["end"], at["step"]).indices(
        lw.in_type(0).shape[axis])
    stop = max(stop, start)
    return relax.op.strided_slice(a[0], axes=[axis], begin=[start], end=[stop], strides=[step],
                                  assume_inbound=True)


@lowers("expand")
def _expand(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.broadcast_to(a[0], lw.out_type().shape)


def _reduce(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        rank = lw.in_type(0).rank
        axes = [d % rank for d in node.attrs["axes"]] or None  # () = all dims, as torch
        x = _astype(lw, a[0], lw.in_type(0).dtype, lw.out_type().dtype)  # sum(i32) is i64
        return getattr(relax.op, fn_name)(x, axis=axes, keepdims=node.attrs["keepdim"])

    return lower


LOWERINGS["mean"] = _reduce("mean")
LOWERINGS["sum"] = _reduce("sum")


# ---------------------------------------------------------------------------- quant

def _per_axis(lw: _Lowerer, p: Any, p_type: TensorType, x_type: TensorType,
              axis: int | None) -> Any:
    if axis is None or p_type.rank == 0:
        return p
    shape = [1] * x_type.rank
    shape[axis % x_type.rank] = -1
    return lw.reshape(p, shape)


@lowers("quantize")
def _quantize(lw: _Lowerer, node: Node, a: list) -> Any:
    # clamp(round_half_even(x / scale) + zero_point), as the op table's reference; TVM's
    # round is LLVM nearbyint (half to even).
    x_t, s_t, z_t = (lw.in_type(i) for i in range(3))
    dtype, axis = node.attrs["dtype"], node.attrs["axis"]
    ft = "f64" if x_t.dtype == "f64" else "f32"
    x = _astype(lw, a[0], x_t.dtype, ft)
    s = _astype(lw, _per_axis(lw, a[1], s_t, x_t, axis), s_t.dtype, ft)
    z = _astype(lw, _per_axis(lw, a[2], z_t, x_t, axis), z_t.dtype, ft)
    q = lw.emit(relax.op.add(relax.op.round(relax.op.divide(x, s)), z))
    if dtype == "i32":  # ints above 2**24 are not exact in f32: clamp in f64
        q = _astype(lw, q, ft, "f64")
    lo, hi = QRANGES[dtype]
    return relax.op.astype(lw.clamp(q, lo, hi, "f64" if dtype == "i32" else ft),
                           DTYPE_TO_TVM[dtype])


@lowers("dequantize")
def _dequantize(lw: _Lowerer, node: Node, a: list) -> Any:
    q_t, s_t, z_t = (lw.in_type(i) for i in range(3))
    axis = node.attrs["axis"]
    q = _astype(lw, a[0], q_t.dtype, "i32")
    z = _astype(lw, _per_axis(lw, a[2], z_t, q_t, axis), z_t.dtype, "i32")
    s = _per_axis(lw, a[1], s_t, q_t, axis)
    return relax.op.multiply(relax.op.astype(relax.op.subtract(q, z), "float32"), s)


@lowers("fake_quantize")
def _fake_quantize(lw: _Lowerer, node: Node, a: list) -> Any:
    # (clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale, in the input's float type
    x_t, s_t, z_t = (lw.in_type(i) for i in range(3))
    at = node.attrs
    lo, hi = QRANGES[at["dtype"]]
    lo = lo if at["qmin"] is None else at["qmin"]
    hi = hi if at["qmax"] is None else at["qmax"]
    ft = "f64" if x_t.dtype == "f64" else "f32"
    x = _astype(lw, a[0], x_t.dtype, ft)
    s = _astype(lw, _per_axis(lw, a[1], s_t, x_t, at["axis"]), s_t.dtype, ft)
    z = _astype(lw, _per_axis(lw, a[2], z_t, x_t, at["axis"]), z_t.dtype, ft)
    q = lw.clamp(lw.emit(relax.op.add(relax.op.round(relax.op.divide(x, s)), z)), lo, hi, ft)
    return _astype(lw, lw.emit(relax.op.multiply(relax.op.subtract(q, z), s)), ft, x_t.dtype)


@lowers("dynamic_quantize")
def _dynamic_quantize(lw: _Lowerer, node: Node, a: list) -> list:
    # ONNX DynamicQuantizeLinear: the range [min(0, min x), max(0, max x)] onto u8
    lo, hi = QRANGES[node.attrs["dtype"]]
    x = a[0]
    zero = relax.const(0.0, "float32")
    xmin = lw.emit(relax.op.minimum(relax.op.min(x), zero))
    xmax = lw.emit(relax.op.maximum(relax.op.max(x), zero))
    scale = lw.emit(relax.op.divide(relax.op.subtract(xmax, xmin),
                                    relax.const(float(hi - lo), "float32")))
    scale = lw.emit(relax.op.where(relax.op.equal(scale, zero), relax.const(1.0, "float32"),
                                   scale))
    zp = lw.emit(relax.op.clip(relax.op.round(relax.op.subtract(
        relax.const(float(lo), "float32"), relax.op.divide(xmin, scale))), lo, hi))
    q = relax.op.clip(relax.op.add(relax.op.round(relax.op.divide(x, scale)), zp), lo, hi)
    tdt = DTYPE_TO_TVM[node.attrs["dtype"]]
    return [lw.emit(relax.op.astype(q, tdt)), scale, lw.emit(relax.op.astype(zp, tdt))]


@lowers("cast")
def _cast(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.astype(a[0], DTYPE_TO_TVM[node.attrs["dtype"]])


# ---------------------------------------------------------------------------- more element-wise
for _op, _fn in (("abs", "abs"), ("log", "log"), ("rsqrt", "rsqrt"), ("selu", "nn.selu"),
                 ("logical_not", "logical_not")):
    LOWERINGS[_op] = _simple(_fn)


@lowers("leaky_relu")
def _leaky_relu(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.leakyrelu(a[0], node.attrs["negative_slope"])


@lowers("elu")
def _elu(lw: _Lowerer, node: Node, a: list) -> Any:
    dt = lw.in_type(0).dtype
    neg = relax.op.multiply(lw.const(node.attrs["alpha"], dt),
                            relax.op.subtract(relax.op.exp(a[0]), lw.const(1.0, dt)))
    return relax.op.where(relax.op.greater(a[0], lw.const(0.0, dt)), a[0], neg)


@lowers("softplus")
def _softplus(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.softplus(a[0], node.attrs["beta"], node.attrs["threshold"])


@lowers("softsign")
def _softsign(lw: _Lowerer, node: Node, a: list) -> Any:
    dt = lw.in_type(0).dtype
    return relax.op.divide(a[0], relax.op.add(lw.const(1.0, dt), relax.op.abs(a[0])))


@lowers("prelu")
def _prelu(lw: _Lowerer, node: Node, a: list) -> Any:
    dt = lw.out_type().dtype
    x = _astype(lw, a[0], lw.in_type(0).dtype, dt)
    s = _astype(lw, a[1], lw.in_type(1).dtype, dt)
    return relax.op.where(relax.op.greater_equal(x, lw.const(0, dt)), x, relax.op.multiply(x, s))


def _promoted(lw: _Lowerer, a: list) -> tuple[list, str]:
    """The operands cast to torch's promotion of their dtypes (comparisons: the result is
    bool, so the output type does not say)."""
    import torch

    from ...ir.types import dtype_from_torch, to_torch_dtype

    t = to_torch_dtype(lw.in_type(0).dtype)
    for i in range(1, len(a)):
        t = torch.promote_types(t, to_torch_dtype(lw.in_type(i).dtype))
    want = dtype_from_torch(t)
    return [_astype(lw, x, lw.in_type(i).dtype, want) for i, x in enumerate(a)], want


def _compare(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        xs, _ = _promoted(lw, a)
        return getattr(relax.op, fn_name)(*xs)

    return lower


for _op, _fn in (("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal"),
                 ("gt", "greater"), ("ge", "greater_equal"), ("logical_and", "logical_and"),
                 ("logical_or", "logical_or")):
    LOWERINGS[_op] = _compare(_fn)


@lowers("ne")
def _ne(lw: _Lowerer, node: Node, a: list) -> Any:
    # TVM's not_equal is the ordered compare (false for NaN); torch: NaN != anything
    xs, _ = _promoted(lw, a)
    return relax.op.logical_not(relax.op.equal(*xs))


@lowers("maximum", "minimum")
def _maximum_minimum(lw: _Lowerer, node: Node, a: list) -> Any:
    """NaN if either operand is (torch.maximum / minimum). TVM's ``maximum(a, b)`` is
    ``a > b ? a : b``, NaN only from ``b`` (see ``_clip``): a NaN-free constant goes
    first; two tensors get the NaN mask of both added (``_nan_or_zero``)."""
    want = lw.out_type().dtype
    x, y = (_astype(lw, v, lw.in_type(i).dtype, want) for i, v in enumerate(a))
    fn = relax.op.maximum if node.op == "maximum" else relax.op.minimum
    if want not in FLOAT_DTYPES:
        return fn(x, y)
    cx, cy = lw.constant(x), lw.constant(y)
    if cx is not None and not np.isnan(cx).any():
        return fn(x, y)
    if cy is not None and not np.isnan(cy).any():
        return fn(y, x)
    either = relax.op.logical_or(relax.op.isnan(x), relax.op.isnan(y))
    return relax.op.add(lw.emit(fn(x, y)), _nan_or_zero(lw, either, want))


@lowers("where")
def _where(lw: _Lowerer, node: Node, a: list) -> Any:
    want = lw.out_type().dtype
    return relax.op.where(a[0], _astype(lw, a[1], lw.in_type(1).dtype, want),
                          _astype(lw, a[2], lw.in_type(2).dtype, want))


@lowers("max", "min")
def _reduce_max_min(lw: _Lowerer, node: Node, a: list) -> Any:
    rank = lw.in_type(0).rank
    axes = [d % rank for d in node.attrs["axes"]] or None
    keep = node.attrs["keepdim"]
    fn = relax.op.max if node.op == "max" else relax.op.min
    return _keeping_nan(lw, a[0], lambda x: fn(x, axis=axes, keepdims=keep),
                        lambda m: relax.op.max(m, axis=axes, keepdims=keep))


@lowers("cumsum")
def _cumsum(lw: _Lowerer, node: Node, a: list) -> Any:
    axis = node.attrs["axis"] % lw.in_type(0).rank
    return relax.op.cumsum(a[0], axis=axis, dtype=DTYPE_TO_TVM[lw.out_type().dtype])


# ---------------------------------------------------------------------------- pad, tile, gather
_TVM_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "replicate"}


@lowers("pad")
def _pad(lw: _Lowerer, node: Node, a: list) -> Any:
    """Negative pads (constant mode) crop: a strided slice first, then the positive pads."""
    t = lw.in_type(0)
    r, p = t.rank, node.attrs["pads"]
    x = a[0]
    if min(p) < 0:
        begin = [max(-p[d], 0) for d in range(r)]
        end = [t.shape[d] - max(-p[r + d], 0) for d in range(r)]
        x = lw.emit(relax.op.strided_slice(x, axes=list(range(r)), begin=begin, end=end,
                                           assume_inbound=True))
    width = []
    for d in range(r):
        width += [max(p[d], 0), max(p[r + d], 0)]
    if not any(width):
        return x
    return relax.op.nn.pad(x, width, _TVM_PAD_MODES[node.attrs["mode"]], node.attrs["value"])


@lowers("tile")
def _tile(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.tile(a[0], list(node.attrs["repeats"]))


def _wrapped_indices(lw: _Lowerer, idx: Any, itype: TensorType, dim: int) -> Any:
    """Indices with negative ones counted from the end (as ONNX), in int32 or int64."""
    c = lw.constant(idx)
    if c is not None:
        return lw.const(np.where(c < 0, c + dim, c), itype.dtype)
    neg = relax.op.less(idx, lw.const(0, itype.dtype))
    return lw.emit(relax.op.where(neg, relax.op.add(idx, lw.const(dim, itype.dtype)), idx))


@lowers("gather")
def _gather(lw: _Lowerer, node: Node, a: list) -> Any:
    t = lw.in_type(0)
    axis = node.attrs["axis"] % t.rank
    idx = _wrapped_indices(lw, a[1], lw.in_type(1), t.shape[axis])
    return relax.op.take(a[0], idx, axis=axis)


@lowers("gather_elements")
def _gather_elements(lw: _Lowerer, node: Node, a: list) -> Any:
    t = lw.in_type(0)
    axis = node.attrs["axis"] % t.rank
    idx = _wrapped_indices(lw, a[1], lw.in_type(1), t.shape[axis])
    return relax.op.gather_elements(a[0], idx, axis=axis)


# ---------------------------------------------------------------------------- 3-D, LRN
@lowers("conv3d")
def _conv3d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    y = lw.emit(relax.op.nn.conv3d(
        a[0], a[1], strides=at["stride"], padding=at["padding"], dilation=at["dilation"],
        groups=at["groups"], data_layout="NCDHW", kernel_layout="OIDHW",
        out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return _bias_add(lw, y, a[2], 5) if len(a) > 2 else y


def _pool3d_padding(lw: _Lowerer, node: Node) -> tuple[list[int], bool]:
    """As ``_pool_padding`` for 3-D: ceil_mode as extra padding at the end of each dim."""
    at = node.attrs
    ins, outs = lw.in_type(0).shape[2:], lw.out_type().shape[2:]
    dil = at.get("dilation", (1, 1, 1))
    extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (i + 2 * p))
             for i, o, s, d, k, p in zip(ins, outs, at["stride"], dil, at["kernel"],
                                         at["padding"])]
    pads = list(at["padding"]) + [p + e for p, e in zip(at["padding"], extra)]
    return pads, any(extra)


@lowers("max_pool3d")
def _max_pool3d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, _ = _pool3d_padding(lw, node)
    return _keeping_nan(lw, a[0], lambda x: relax.op.nn.max_pool3d(
        x, pool_size=at["kernel"], strides=at["stride"], padding=pad, dilation=at["dilation"],
        ceil_mode=False, layout="NCDHW"))


@lowers("avg_pool3d")
def _avg_pool3d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, extended = _pool3d_padding(lw, node)
    if extended and at["count_include_pad"]:
        raise LoweringError(f"node {node.describe()}: avg_pool3d with ceil_mode windows past "
                            f"the padding and count_include_pad has no TVM lowering")
    return relax.op.nn.avg_pool3d(a[0], pool_size=at["kernel"], strides=at["stride"],
                                  padding=pad, ceil_mode=False,
                                  count_include_pad=at["count_include_pad"], layout="NCDHW")


@lowers("lrn")
def _lrn(lw: _Lowerer, node: Node, a: list) -> Any:
    """x / (bias + alpha / size * window sum of x^2) ^ beta; the window sum over channels is
    ``size`` shifted slices of the zero-padded squares (torch's window: size // 2 before)."""
    t = lw.in_type(0)
    size, dt = node.attrs["size"], t.dtype
    sq = lw.emit(relax.op.multiply(a[0], a[0]))
    width = [0, 0, size // 2, (size - 1) // 2] + [0, 0] * (t.rank - 2)
    padded = lw.emit(relax.op.nn.pad(sq, width))
    c = t.shape[1]
    total = None
    for j in range(size):
        part = lw.emit(relax.op.strided_slice(padded, axes=[1], begin=[j], end=[j + c],
                                              assume_inbound=True))
        total = part if total is None else lw.emit(relax.op.add(total, part))
    at = node.attrs
    div = relax.op.power(relax.op.add(lw.const(at["bias"], dt), relax.op.multiply(
        lw.const(at["alpha"] / size, dt), total)), lw.const(at["beta"], dt))
    return relax.op.divide(a[0], lw.emit(div))


# ---------------------------------------------------------------------------- attention
@lowers("scaled_dot_product_attention")
def _sdpa(lw: _Lowerer, node: Node, a: list) -> Any:
    """softmax(q kᵀ · scale + mask) v with matmul and softmax (Relax's attention op wants
    [batch, seq, heads, dim] and no bool mask); k / v heads are repeated for grouped queries."""
    q_t, k_t = lw.in_type(0), lw.in_type(1)
    dt, r = q_t.dtype, q_t.rank
    L, S, E = q_t.shape[-2], k_t.shape[-2], q_t.shape[-1]
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / np.sqrt(E)
    q, k, v = a[:3]
    if k_t.shape[-3] != q_t.shape[-3]:
        g = q_t.shape[-3] // k_t.shape[-3]
        k = lw.emit(relax.op.repeat(k, g, axis=r - 3))
        v = lw.emit(relax.op.repeat(v, g, axis=r - 3))
    kt = lw.emit(relax.op.permute_dims(k, list(range(r - 2)) + [r - 1, r - 2]))
    s = lw.emit(relax.op.multiply(relax.op.matmul(q, kt), lw.const(scale, dt)))
    if len(a) > 3:
        if lw.in_type(3).dtype == "bool":
            s = lw.emit(relax.op.where(a[3], s, lw.const(-np.inf, dt)))
        else:
            s = lw.emit(relax.op.add(s, a[3]))
    if node.attrs["causal"]:
        tri = np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf)
        s = lw.emit(relax.op.add(s, lw.const(tri, dt)))
    p = lw.emit(relax.op.nn.softmax(s, axis=-1))
    return relax.op.matmul(p, v)


# ---------------------------------------------------------------------------- upsample
@lowers("upsample")
def _upsample(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    if at["mode"] == "nearest":
        return relax.op.image.resize2d(a[0], list(at["size"]), layout="NCHW",
                                       method="nearest_neighbor",
                                       coordinate_transformation_mode="asymmetric",
                                       rounding_method="floor")
    return relax.op.image.resize2d(a[0], list(at["size"]), layout="NCHW", method="linear",
                                   coordinate_transformation_mode="align_corners"
                                   if at["align_corners"] else "pytorch_half_pixel")


def missing_lowerings() -> list[str]:
    """Ops in the op table with no TVM lowering (should be empty)."""
    return sorted(set(irops.OPS) - set(LOWERINGS))


from . import int8  # noqa: F401, E402 - registers the int8 pattern lowering

__all__ = ["LOWERINGS", "lower", "lowers", "missing_lowerings"]
