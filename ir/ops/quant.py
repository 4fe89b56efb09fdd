"""Quantization ops: quantize, dequantize (per-tensor or per-channel), cast.

``quantize(x, scale, zero_point) {dtype, axis}``: ``clamp(round(x / scale) + zp)`` in the
integer dtype (round half to even, as ONNX QuantizeLinear). ``scale`` is f32 and
``zero_point`` has the target dtype; both are 0-d (per tensor, ``axis`` none) or 1-d along
``axis`` (per channel). ``dequantize`` is ``(q - zp) * scale`` in f32.
"""

from __future__ import annotations

import torch

from ..types import to_torch_dtype
from . import Attr, OpDef, register

_RANGES = {"i8": (-128, 127), "u8": (0, 255), "i16": (-32768, 32767),
           "i32": (-(2 ** 31), 2 ** 31 - 1)}


def _bcast(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x, scale, zero_point, *, dtype, axis):
    lo, hi = _RANGES[dtype]
    s, z = _bcast(scale, x, axis), _bcast(zero_point, x, axis)
    q = torch.round(x / s) + z.to(x.dtype)
    # ints above 2**24 are not exact in f32: clamp in f64 for i32
    q = torch.clamp(q.double() if dtype == "i32" else q, lo, hi)
    return q.to(to_torch_dtype(dtype))


def dequantize(q, scale, zero_point, *, axis):
    s, z = _bcast(scale, q, axis), _bcast(zero_point, q, axis)
    return ((q.to(torch.int32) - z.to(torch.int32)).to(torch.float32)) * s


def cast(x, *, dtype):
    return x.to(to_torch_dtype(dtype))


def _qcheck(ts, a, target: str | None):
    x, s, z = ts
    if s.dtype != "f32":
        return f"scale must be f32, got {s}"
    if target is not None and z.dtype != target:
        return f"zero_point {z} must have the quantized dtype {target}"
    if s.shape != z.shape or s.rank > 1:
        return f"scale {s} and zero_point {z} must have the same 0-d or 1-d shape"
    if s.rank == 1:
        if a["axis"] is None:
            return "per-channel scale needs an axis"
        if x.shape[a["axis"]] != s.shape[0]:
            return f"{s.shape[0]} scales for dim {a['axis']} of {x}"
    return None


_QPARAMS = {"scale": "qparam", "zero_point": "qparam"}
register(OpDef(
    "quantize", ("x", "scale", "zero_point"), quantize, kind="quant", roles=_QPARAMS,
    attrs={"dtype": Attr("dtype", "i8"), "axis": Attr("int", None, optional=True)},
    check_fn=lambda ts, a: (f"dtype must be one of {sorted(_RANGES)}" if a["dtype"] not in _RANGES
                            else (f"input must be float, got {ts[0]}" if not ts[0].is_float
                                  else _qcheck(ts, a, a["dtype"]))),
    flops_fn=lambda i, o, a: o[0].numel,
    doc="float -> integer: clamp(round(x / scale) + zero_point)."))
register(OpDef(
    "dequantize", ("q", "scale", "zero_point"), dequantize, kind="quant", roles=_QPARAMS,
    attrs={"axis": Attr("int", None, optional=True)},
    check_fn=lambda ts, a: (f"input must be an integer tensor, got {ts[0]}" if ts[0].is_float
                            else _qcheck(ts, a, ts[0].dtype)),
    flops_fn=lambda i, o, a: o[0].numel,
    doc="integer -> f32: (q - zero_point) * scale."))
register(OpDef("cast", ("x",), cast, kind="unary", attrs={"dtype": Attr("dtype")},
               doc="convert the element type."))
