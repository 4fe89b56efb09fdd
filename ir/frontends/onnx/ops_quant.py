"""ONNX handlers: QuantizeLinear and DequantizeLinear (per tensor or per channel),
DynamicQuantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ...graph import Value
from ...onnx_common import ONNX_DTYPES
from ...types import dtype_from_numpy, to_numpy_dtype
from .context import Ctx, const_of, maps


# ---------------------------------------------------------------------------- quantization
def _qparams(c: Ctx, n: gs.Node, x: Value, q_dtype: str | None) -> tuple[Value, Value, int | None]:
    if int(n.attrs.get("block_size", 0)):
        c.fail("blocked quantization (block_size) is not supported")
    s_t, z_t = n.inputs[1], c.inp(2)
    s_arr = const_of(s_t)
    scalar = s_arr is not None and s_arr.size == 1 and s_arr.ndim > 0
    scale = c.v(s_t, lambda a: a.reshape(()), "scalar") if scalar else c.v(s_t)
    if scale.dtype != "f32":
        c.fail(f"scale must be f32, got {scale.type}")
    if z_t is None:
        dtype = q_dtype or "u8"
        zp = c.g.add_constant(np.zeros(scale.shape, to_numpy_dtype(dtype)),
                              c.fresh(f"{n.outputs[0].name}_zero_point"))
    else:
        z_arr = const_of(z_t)
        zp = c.v(z_t, lambda a: a.reshape(()), "scalar") if (
            z_arr is not None and z_arr.size == 1 and z_arr.ndim > 0) else c.v(z_t)
    axis = None if scale.type.rank == 0 else c.axis(int(n.attrs.get("axis", 1)), x.type.rank)
    return scale, zp, axis


@maps("QuantizeLinear")
def _quantize(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    z_t = c.inp(2)
    if z_t is not None:
        dtype = c.v(z_t).dtype if not isinstance(z_t, gs.Constant) else dtype_from_numpy(
            np.asarray(z_t.values).dtype)
    else:
        dtype = ONNX_DTYPES.get(int(n.attrs.get("output_dtype", 0)) or TensorProto.UINT8)
    if dtype not in ("i8", "u8", "i16"):
        c.fail(f"quantizing to {dtype} is not supported (i8, u8, i16)")
    scale, zp, axis = _qparams(c, n, x, dtype)
    c.emit("quantize", [x, scale, zp], {"dtype": dtype, "axis": axis}, out=n.outputs[0])


@maps("DequantizeLinear")
def _dequantize(c: Ctx, n: gs.Node) -> None:
    q = c.x()
    if q.type.is_float:
        c.fail(f"dequantizing {q.type} (float8?) is not supported")
    scale, zp, axis = _qparams(c, n, q, q.dtype)
    c.emit("dequantize", [q, scale, zp], {"axis": axis}, out=n.outputs[0])




@maps("DynamicQuantizeLinear")
def _dynamic_quantize(c: Ctx, n: gs.Node) -> None:
    c.emit_multi("dynamic_quantize", [c.x()], {"dtype": "u8"}, list(n.outputs))
