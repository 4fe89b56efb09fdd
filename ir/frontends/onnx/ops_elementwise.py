"""ONNX handlers: activations, arithmetic, casts and constants."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ...onnx_common import ONNX_DTYPES
from .context import Ctx, f32, fused, maps

# ---------------------------------------------------------------------------- activations
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish",
          "Erf": "erf", "Sqrt": "sqrt", "Exp": "exp", "Neg": "neg"}


@maps(*_UNARY)
def _unary(c: Ctx, n: gs.Node) -> None:
    c.emit(_UNARY[n.op], [c.x()], out=n.outputs[0])


@maps("Gelu")
@fused("Gelu")
def _gelu(c: Ctx, n: gs.Node) -> None:
    approx = n.attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx not in ("none", "tanh"):
        c.fail(f"approximate={approx!r}")
    c.emit("gelu", [c.x()], {"approximate": approx}, out=n.outputs[0])


@fused("Silu")
def _silu(c: Ctx, n: gs.Node) -> None:
    """Made by the ``x * Sigmoid(x)`` fusion."""
    c.emit("silu", [c.x()], out=n.outputs[0])


@maps("HardSigmoid")
def _hardsigmoid(c: Ctx, n: gs.Node) -> None:
    alpha, beta = f32(n.attrs.get("alpha", 0.2)), f32(n.attrs.get("beta", 0.5))
    x = c.x()
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6):
        c.emit("hardsigmoid", [x], out=n.outputs[0])
        return
    y = c.emit("mul", [x, c.scalar(alpha, x.dtype, "alpha")], suffix="alpha")
    y = c.emit("add", [y, c.scalar(beta, x.dtype, "beta")], suffix="beta")
    c.emit("hardtanh", [y], {"min_val": 0.0, "max_val": 1.0}, out=n.outputs[0])


@maps("Clip")
def _clip(c: Ctx, n: gs.Node) -> None:
    bounds = []
    for i, attr in ((1, "min"), (2, "max")):
        t = c.inp(i)
        if t is not None:
            bounds.append(f32(c.array(t, f"Clip {attr}").reshape(-1)[0]))
        elif attr in n.attrs:
            bounds.append(f32(n.attrs[attr]))
        else:
            bounds.append(None)
    lo, hi = bounds
    if lo == 0.0 and hi is None:
        c.emit("relu", [c.x()], out=n.outputs[0])
    elif lo is None and hi is None:
        c.alias(n.outputs[0], c.x())
    else:
        c.emit("hardtanh", [c.x()], {"min_val": -math.inf if lo is None else lo,
                                     "max_val": math.inf if hi is None else hi}, out=n.outputs[0])


@maps("Softmax", "LogSoftmax")
def _softmax(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axis = int(n.attrs.get("axis", -1))
    c.axis(axis, x.type.rank)
    c.emit("softmax" if n.op == "Softmax" else "log_softmax", [x], {"axis": axis},
           out=n.outputs[0])


@maps("Identity")
def _identity(c: Ctx, n: gs.Node) -> None:
    c.alias(n.outputs[0], c.x())


@maps("Dropout")
def _dropout(c: Ctx, n: gs.Node) -> None:
    t = c.inp(2)
    if t is not None and bool(c.array(t, "training_mode").reshape(-1)[0]):
        c.fail("training_mode=true is not supported")
    c.unused(1, "mask")
    r = c.inp(1)
    p = f32(c.array(r, "ratio").reshape(-1)[0]) if r is not None else f32(
        n.attrs.get("ratio", 0.5))
    c.emit("dropout", [c.x()], {"p": p}, out=n.outputs[0])


# ---------------------------------------------------------------------------- arithmetic
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow"}


@maps(*_BINARY)
def _binary(c: Ctx, n: gs.Node) -> None:
    a, b = c.v(n.inputs[0]), c.v(n.inputs[1])
    if n.op == "Div" and not a.type.is_float and not b.type.is_float:
        c.fail(f"integer Div ({a.type} / {b.type}) is not supported: the IR's div is true "
               f"division")
    c.emit(_BINARY[n.op], [a, b], out=n.outputs[0])


@maps("Cast")
def _cast(c: Ctx, n: gs.Node) -> None:
    to = int(n.attrs["to"])
    if to not in ONNX_DTYPES:
        c.fail(f"cast to {TensorProto.DataType.Name(to)}, which the IR does not have")
    x = c.x()
    if x.dtype == ONNX_DTYPES[to]:
        c.alias(n.outputs[0], x)
    else:
        c.emit("cast", [x], {"dtype": ONNX_DTYPES[to]}, out=n.outputs[0])


@maps("Constant")
def _constant(c: Ctx, n: gs.Node) -> None:
    a = n.attrs
    if "value" in a:
        arr = np.asarray(a["value"].values if isinstance(a["value"], gs.Constant) else a["value"])
    elif "value_float" in a:
        arr = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        arr = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        arr = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        arr = np.array(a["value_ints"], np.int64)
    else:
        c.fail(f"unsupported Constant attribute(s) {sorted(a)}")
    c.v(gs.Constant(n.outputs[0].name, arr))
    c.env[n.outputs[0].name] = c.consts[(n.outputs[0].name, "")]


