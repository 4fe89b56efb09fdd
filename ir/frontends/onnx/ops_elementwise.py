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
          "Erf": "erf", "Sqrt": "sqrt", "Exp": "exp", "Neg": "neg", "Abs": "abs", "Log": "log",
          "Softsign": "softsign", "Not": "logical_not"}


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


@fused("Rsqrt")
def _rsqrt(c: Ctx, n: gs.Node) -> None:
    """Made by the ``Reciprocal(Sqrt(x))`` fusion."""
    c.emit("rsqrt", [c.x()], out=n.outputs[0])


@maps("Reciprocal")
def _reciprocal(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    c.emit("div", [c.scalar(1.0, x.dtype, "one"), x], out=n.outputs[0])


@maps("LeakyRelu")
def _leaky_relu(c: Ctx, n: gs.Node) -> None:
    c.emit("leaky_relu", [c.x()], {"negative_slope": f32(n.attrs.get("alpha", 0.01))},
           out=n.outputs[0])


@maps("Elu")
def _elu(c: Ctx, n: gs.Node) -> None:
    c.emit("elu", [c.x()], {"alpha": f32(n.attrs.get("alpha", 1.0))}, out=n.outputs[0])


_SELU_ALPHA, _SELU_GAMMA = 1.6732632423543772, 1.0507009873554805  # torch's (f32 in ONNX)


@maps("Selu")
def _selu(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    alpha, gamma = f32(n.attrs.get("alpha", _SELU_ALPHA)), f32(n.attrs.get("gamma", _SELU_GAMMA))
    if f32(_SELU_ALPHA) == alpha and f32(_SELU_GAMMA) == gamma:
        c.emit("selu", [x], out=n.outputs[0])
        return
    y = c.emit("elu", [x], {"alpha": alpha}, suffix="elu")
    c.emit("mul", [y, c.scalar(gamma, x.dtype, "gamma")], out=n.outputs[0])


@maps("Softplus")
def _softplus(c: Ctx, n: gs.Node) -> None:
    # log(1 + exp(x)); torch's threshold 20 changes nothing in float32 below exp's overflow
    c.emit("softplus", [c.x()], {"beta": 1.0, "threshold": 20.0}, out=n.outputs[0])


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


_COMPARE = {"Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
            "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or"}


@maps(*_COMPARE)
def _compare(c: Ctx, n: gs.Node) -> None:
    c.emit(_COMPARE[n.op], [c.v(n.inputs[0]), c.v(n.inputs[1])], out=n.outputs[0])


@fused("Ne")
def _ne(c: Ctx, n: gs.Node) -> None:
    """Made by the ``Not(Equal(a, b))`` fusion."""
    c.emit("ne", [c.v(n.inputs[0]), c.v(n.inputs[1])], out=n.outputs[0])


_VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}


@maps(*_VARIADIC)
def _variadic(c: Ctx, n: gs.Node) -> None:
    """Max / Min / Sum / Mean of any number of operands: a chain of binary ops."""
    xs = [c.v(t) for t in n.inputs if t.name != ""]
    if not xs:
        c.fail("needs at least one operand")
    op, out = _VARIADIC[n.op], n.outputs[0]
    if len(xs) == 1:
        c.alias(out, xs[0])
        return
    y = xs[0]
    for i, x in enumerate(xs[1:]):
        last = i == len(xs) - 2 and n.op != "Mean"
        y = c.emit(op, [y, x], out=out if last else None, suffix=f"{op}{i}")
    if n.op == "Mean":
        c.emit("div", [y, c.scalar(float(len(xs)), y.dtype, "count")], out=out)


@maps("PRelu")
def _prelu(c: Ctx, n: gs.Node) -> None:
    x, s_t = c.x(), n.inputs[1]
    slope = c.v(s_t)
    try:
        np.broadcast_shapes(x.shape, slope.shape)
    except ValueError:
        # models converted from opset < 7 (the ONNX node tests among them) give one slope per
        # channel as a 1-D [C] tensor, which does not broadcast against [N, C, ...]
        if not (slope.type.rank == 1 and x.type.rank >= 2 and slope.shape[0] == x.shape[1]):
            c.fail(f"slope {slope.type} does not broadcast to {x.type}")
        shape = (x.shape[1],) + (1,) * (x.type.rank - 2)
        slope = (c.v(s_t, lambda a: a.reshape(shape), "per_channel")
                 if isinstance(s_t, gs.Constant) else
                 c.emit("reshape", [slope], {"shape": shape}, suffix="slope"))
    c.emit("prelu", [x, slope], out=n.outputs[0])


@maps("Where")
def _where(c: Ctx, n: gs.Node) -> None:
    c.emit("where", [c.v(t) for t in n.inputs[:3]], out=n.outputs[0])


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


