"""Element-wise ops: activations (unary) and broadcasting arithmetic (binary).

A scalar operand is a 0-d constant (``f32[]``), so ``x * 0.5`` is ``mul(%x, %c)``.
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


def add(a, b):
    return torch.add(a, b)


def sub(a, b):
    return torch.sub(a, b)


def mul(a, b):
    return torch.mul(a, b)


def div(a, b):
    return torch.div(a, b)


def pow_(a, b):
    return torch.pow(a, b)


pow_.__name__ = "pow"

for _name, _fn, _doc in (("add", add, "a + b"), ("sub", sub, "a - b"), ("mul", mul, "a * b"),
                         ("div", div, "a / b (true division)"), ("pow", pow_, "a ** b")):
    register(OpDef(_name, ("a", "b"), _fn, kind="binary", flops_fn=_numel,
                   doc=f"{_doc}, numpy broadcasting."))
