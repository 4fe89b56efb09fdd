"""Quantization ops: quantize, dequantize (per-tensor or per-channel), fake_quantize,
dynamic_quantize, cast.

``quantize(x, scale, zero_point) {dtype, axis}``: ``clamp(round(x / scale) + zp)`` in the
integer dtype (round half to even, as ONNX QuantizeLinear). ``scale`` is f32 and
``zero_point`` has the target dtype; both are 0-d (per tensor, ``axis`` none) or 1-d along
``axis`` (per channel). ``dequantize`` is ``(q - zp) * scale`` in f32.

``fake_quantize(x, scale, zero_point) {dtype, axis, qmin, qmax}`` is ``dequantize(quantize(x))``
in one f32 op, clamped to ``[qmin, qmax]`` (default: the dtype's range; 7-bit weights use
±64), with a straight-through gradient: d/dx is 1 where ``round(x / scale) + zp`` lies in
``[qmin, qmax]`` and 0 where it is clamped (as ``torch.fake_quantize_per_tensor_affine``), and
nothing flows to the scale or zero point. It is what quantization-aware fine-tuning trains
through, in the interpreter and in ``to_torch`` alike.

``dynamic_quantize(x) {dtype="u8"}`` is ONNX DynamicQuantizeLinear: the range of this very
tensor, ``[min(0, min x), max(0, max x)]``, mapped onto u8 — outputs ``(q, scale,
zero_point)`` with a 0-d f32 scale (1 when the range is empty, as onnxruntime) and a 0-d u8
zero point ``clamp(round(-min / scale))``.
"""

from __future__ import annotations

import torch

from ..types import TensorType, to_torch_dtype
from . import Attr, OpDef, register

#: The integer range of every quantized dtype: the one table (backends and passes read it).
QRANGES = {"i8": (-128, 127), "u8": (0, 255), "i16": (-32768, 32767),
           "i32": (-(2 ** 31), 2 ** 31 - 1)}


def _bcast(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x, scale, zero_point, *, dtype, axis):
    lo, hi = QRANGES[dtype]
    s, z = _bcast(scale, x, axis), _bcast(zero_point, x, axis)
    q = torch.round(x / s) + z.to(x.dtype)
    # ints above 2**24 are not exact in f32: clamp in f64 for i32
    q = torch.clamp(q.double() if dtype == "i32" else q, lo, hi)
    return q.to(to_torch_dtype(dtype))


def dequantize(q, scale, zero_point, *, axis):
    s, z = _bcast(scale, q, axis), _bcast(zero_point, q, axis)
    return ((q.to(torch.int32) - z.to(torch.int32)).to(torch.float32)) * s


def _range(dtype: str, qmin: int | None, qmax: int | None) -> tuple[int, int]:
    lo, hi = QRANGES[dtype]
    return (lo if qmin is None else qmin), (hi if qmax is None else qmax)


def fake_quantize(x, scale, zero_point, *, dtype, axis, qmin=None, qmax=None):
    lo, hi = _range(dtype, qmin, qmax)
    s, z = _bcast(scale, x, axis), _bcast(zero_point, x, axis)
    s, z = s.detach().to(x.dtype), z.detach().to(x.dtype)
    r = torch.round(x / s) + z
    inside = (r >= lo) & (r <= hi)
    y = (torch.clamp(r, lo, hi) - z) * s
    # forward: exactly y (xs - xs.detach() is 0); backward: 1 inside the range, 0 where
    # clamped (straight-through)
    xs = torch.where(inside, x, x.detach())
    return y.detach() + (xs - xs.detach())


def dynamic_quantize(x, *, dtype):
    lo, hi = QRANGES[dtype]
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    xmin, xmax = torch.minimum(x.min(), zero), torch.maximum(x.max(), zero)
    scale = (xmax - xmin) / (hi - lo)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.clamp(torch.round(lo - xmin / scale), lo, hi)
    q = torch.clamp(torch.round(x / scale) + zp, lo, hi)
    tdt = to_torch_dtype(dtype)
    return q.to(tdt), scale.to(torch.float32), zp.to(tdt)


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
    check_fn=lambda ts, a: (f"dtype must be one of {sorted(QRANGES)}" if a["dtype"] not in QRANGES
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
def _fake_check(ts, a) -> str | None:
    if a["dtype"] not in ("i8", "u8", "i16"):
        return f"dtype must be i8, u8 or i16, got {a['dtype']}"
    if not ts[0].is_float:
        return f"input must be float, got {ts[0]}"
    lo, hi = _range(a["dtype"], a["qmin"], a["qmax"])
    dlo, dhi = QRANGES[a["dtype"]]
    if not dlo <= lo < hi <= dhi:
        return f"[qmin, qmax] = [{lo}, {hi}] must be a range inside {a['dtype']}'s [{dlo}, {dhi}]"
    return _qcheck(ts, a, a["dtype"])


register(OpDef(
    "fake_quantize", ("x", "scale", "zero_point"), fake_quantize, kind="quant", roles=_QPARAMS,
    attrs={"dtype": Attr("dtype", "i8"), "axis": Attr("int", None, optional=True),
           "qmin": Attr("int", None, optional=True), "qmax": Attr("int", None, optional=True)},
    check_fn=_fake_check, infer_fn=lambda ts, a: [ts[0]],
    flops_fn=lambda i, o, a: 2 * o[0].numel,
    doc="dequantize(quantize(x)) in f32 with a straight-through gradient (training)."))
register(OpDef(
    "dynamic_quantize", ("x",), dynamic_quantize, kind="quant",
    attrs={"dtype": Attr("dtype", "u8")},
    check_fn=lambda ts, a: ("only u8 (ONNX DynamicQuantizeLinear)" if a["dtype"] != "u8"
                            else (None if ts[0].dtype == "f32"
                                  else f"input must be f32, got {ts[0]}")),
    infer_fn=lambda ts, a: [TensorType(a["dtype"], ts[0].shape), TensorType("f32", ()),
                            TensorType(a["dtype"], ())],
    flops_fn=lambda i, o, a: 3 * o[0].numel,
    doc="float -> (u8, scale, zero point) from this tensor's own range (run time)."))
register(OpDef("cast", ("x",), cast, kind="unary", attrs={"dtype": Attr("dtype")},
               doc="convert the element type."))
