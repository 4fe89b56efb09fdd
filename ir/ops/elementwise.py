"""Element-wise ops: activations (unary), broadcasting arithmetic and comparisons (binary),
and ``where``.

A scalar operand is a 0-d constant (``f32[]``), so ``x * 0.5`` is ``mul(%x, %c)``.
Comparisons (``eq ne lt le gt ge``) and ``logical_*`` give ``bool``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Attr, OpDef, register


def _numel(i, o, a):
    return o[0].numel


def _same_type(types, attrs):
    return [types[0]]


def _unary(name: str, fn, doc: str, **attrs) -> None:
    # same type out as in: no need to run the reference on meta tensors (it is slow)
    register(OpDef(name, ("x",), fn, attrs=attrs, kind="unary", flops_fn=_numel,
                   infer_fn=_same_type, doc=doc))


def relu(x):
    return torch.relu(x)


def hardtanh(x, *, min_val, max_val):
    return torch.clamp(x, min_val, max_val)


def gelu(x, *, approximate):
    return F.gelu(x, approximate=approximate)


def silu(x):
    return F.silu(x)


def sigmoid(x):
    return torch.sigmoid(x)


def tanh(x):
    return torch.tanh(x)


def hardswish(x):
    return F.hardswish(x)


def hardsigmoid(x):
    return F.hardsigmoid(x)


def identity(x):
    return x


def dropout(x, *, p):
    return x  # inference: dropout is the identity


def neg(x):
    return torch.neg(x)


def sqrt(x):
    return torch.sqrt(x)


def exp(x):
    return torch.exp(x)


def erf(x):
    return torch.erf(x)


_unary("relu", relu, "max(x, 0).")
_unary("hardtanh", hardtanh, "clamp(x, min_val, max_val); relu6 is hardtanh(0, 6).",
       min_val=Attr("float", -1.0), max_val=Attr("float", 1.0))
_unary("gelu", gelu, "GELU; approximate is 'none' (erf) or 'tanh'.",
       approximate=Attr("str", "none"))
_unary("silu", silu, "x * sigmoid(x).")
_unary("sigmoid", sigmoid, "1 / (1 + exp(-x)).")
_unary("tanh", tanh, "tanh(x).")
_unary("hardswish", hardswish, "x * relu6(x + 3) / 6.")
_unary("hardsigmoid", hardsigmoid, "relu6(x + 3) / 6.")
_unary("identity", identity, "x.")
_unary("dropout", dropout, "the identity at inference (p kept for the record).",
       p=Attr("float", 0.5))
_unary("neg", neg, "-x.")
_unary("sqrt", sqrt, "sqrt(x).")
_unary("exp", exp, "exp(x).")
_unary("erf", erf, "the error function.")


def abs_(x):
    return torch.abs(x)


abs_.__name__ = "abs"


def log(x):
    return torch.log(x)


def rsqrt(x):
    return torch.rsqrt(x)


def leaky_relu(x, *, negative_slope):
    return F.leaky_relu(x, negative_slope)


def elu(x, *, alpha):
    return F.elu(x, alpha)


def selu(x):
    return F.selu(x)


def softplus(x, *, beta, threshold):
    return F.softplus(x, beta, threshold)


def softsign(x):
    return F.softsign(x)


def logical_not(x):
    return torch.logical_not(x)


_unary("abs", abs_, "|x|.")
_unary("log", log, "natural logarithm.")
_unary("rsqrt", rsqrt, "1 / sqrt(x).")
_unary("leaky_relu", leaky_relu, "x if x >= 0 else negative_slope * x.",
       negative_slope=Attr("float", 0.01))
_unary("elu", elu, "x if x > 0 else alpha * (exp(x) - 1).", alpha=Attr("float", 1.0))
_unary("selu", selu, "scale * elu(x, alpha) with the SELU constants (torch's).")
_unary("softplus", softplus, "log(1 + exp(beta * x)) / beta; x where beta * x > threshold.",
       beta=Attr("float", 1.0), threshold=Attr("float", 20.0))
_unary("softsign", softsign, "x / (1 + |x|).")
register(OpDef("logical_not", ("x",), logical_not, kind="unary", flops_fn=_numel,
               infer_fn=lambda ts, a: [ts[0].with_dtype("bool")],
               doc="not x (bool)."))


def add(a, b):
    return torch.add(a, b)


def sub(a, b):
    return torch.sub(a, b)


def mul(a, b):
    return torch.mul(a, b)


def div(a, b):
    return torch.div(a, b)


def pow_(a, b):
    # a constant 0-d exponent goes in as a python number, as eager ``x ** 2`` does: torch's
    # scalar-exponent kernel computes x*x for 2 (and sqrt for 0.5, …), while the tensor
    # exponent path calls pow — 1 ulp apart in float32 (T5's layer norm differs by 2e-7)
    if (b.dim() == 0 and not b.requires_grad and b.device.type != "meta"
            and a.dtype.is_floating_point):
        return torch.pow(a, b.item())
    return torch.pow(a, b)


pow_.__name__ = "pow"

for _name, _fn, _doc in (("add", add, "a + b"), ("sub", sub, "a - b"), ("mul", mul, "a * b"),
                         ("div", div, "a / b (true division)"), ("pow", pow_, "a ** b")):
    register(OpDef(_name, ("a", "b"), _fn, kind="binary", flops_fn=_numel,
                   doc=f"{_doc}, numpy broadcasting."))


def maximum(a, b):
    return torch.maximum(a, b)


def minimum(a, b):
    return torch.minimum(a, b)


def prelu(x, slope):
    return torch.where(x >= 0, x, x * slope)


for _name, _fn, _doc in (("maximum", maximum, "the larger of a and b"),
                         ("minimum", minimum, "the smaller of a and b"),
                         ("prelu", prelu, "x if x >= 0 else slope * x (slope broadcasts to x)")):
    register(OpDef(_name, ("a", "b") if _name != "prelu" else ("x", "slope"), _fn,
                   kind="binary", flops_fn=_numel, doc=f"{_doc}, numpy broadcasting.",
                   roles={"slope": "weight"} if _name == "prelu" else {}))


def _compare(name: str, fn, doc: str) -> None:
    register(OpDef(name, ("a", "b"), fn, kind="binary", flops_fn=_numel,
                   doc=f"{doc}, numpy broadcasting; bool result."))


def eq(a, b):
    return torch.eq(a, b)


def ne(a, b):
    return torch.ne(a, b)


def lt(a, b):
    return torch.lt(a, b)


def le(a, b):
    return torch.le(a, b)


def gt(a, b):
    return torch.gt(a, b)


def ge(a, b):
    return torch.ge(a, b)


def logical_and(a, b):
    return torch.logical_and(a, b)


def logical_or(a, b):
    return torch.logical_or(a, b)


for _name, _fn, _doc in (("eq", eq, "a == b"), ("ne", ne, "a != b"), ("lt", lt, "a < b"),
                         ("le", le, "a <= b"), ("gt", gt, "a > b"), ("ge", ge, "a >= b"),
                         ("logical_and", logical_and, "a and b"),
                         ("logical_or", logical_or, "a or b")):
    _compare(_name, _fn, _doc)


def where(cond, a, b):
    return torch.where(cond, a, b)


register(OpDef("where", ("cond", "a", "b"), where, kind="other", flops_fn=_numel,
               check_fn=lambda ts, a: (None if ts[0].dtype == "bool"
                                       else f"condition must be bool, got {ts[0]}"),
               doc="a where cond else b (cond bool), numpy broadcasting of all three."))
