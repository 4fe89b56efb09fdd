"""The op table: one ``OpDef`` per op, read by everything that needs to know about ops.

For each op: its operands, attributes (kinds and defaults), shape/dtype inference, cost
(MACs; params and bytes follow from the types), and a reference implementation in torch
(``ref(*tensors, **attrs)``). The interpreter, verifier, cost model, printer and the
torch backend all read this one table; every other backend keys its lowerings by the same
names. Inference runs the reference on meta tensors unless the op gives its own, so the
two can never disagree.

Op modules: ``nn`` (conv, linear, norms, pools), ``elementwise`` (activations and
broadcasting arithmetic), ``shape`` (reshape, concat, split, …), ``quant`` (quantize,
dequantize, cast).

Operand roles say what a constant operand *is* — the one place that decides which values
training may change (``backends/torch.to_torch``) and which it must leave alone; see
``ROLES`` and ``constant_roles``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import IRError
from ..types import DTYPES, TensorType, dtype_from_torch, to_torch_dtype

_REQUIRED = object()

#: What a constant operand is, most restrictive first: a constant used in several roles
#: takes the most restrictive one. Only ``weight`` is trained.
#: ``index``: integer positions (embedding indices); ``qparam``: quantization scale / zero
#: point; ``statistic``: running statistics (batch-norm mean / variance); ``constant``: a
#: fixed number that is not learned; ``weight``: a learned parameter (conv / linear weight
#: and bias, norm affine, embedding table); ``input``: a data operand — a float constant
#: there is a weight (a learned position embedding, a layer scale) unless it is 0-d: the
#: torch frontend makes a Python number (the 0.5 of ``x * 0.5``) a 0-d constant.
ROLES = ("index", "qparam", "statistic", "constant", "weight", "input")
TRAINABLE_ROLE = "weight"
ATTR_KINDS = ("int", "float", "bool", "str", "ints", "floats", "dtype")


@dataclass(frozen=True)
class Attr:
    """An attribute's kind and default (``REQUIRED`` when it has none)."""

    kind: str
    default: Any = _REQUIRED
    optional: bool = False  # None is allowed

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any, where: str) -> Any:
        """The canonical form of ``value`` (ints as tuples, floats as float) or an IRError."""
        if value is None:
            if self.optional:
                return None
            raise IRError(f"{where}: must not be none")
        k = self.kind
        try:
            if k == "int" and isinstance(value, (int,)) and not isinstance(value, bool):
                return int(value)
            if k == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if k == "bool" and isinstance(value, bool):
                return value
            if k == "str" and isinstance(value, str):
                return value
            if k == "dtype" and value in DTYPES:
                return value
            if k == "ints" and isinstance(value, (list, tuple)) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in value):
                return tuple(int(x) for x in value)
            if k == "floats" and isinstance(value, (list, tuple)) and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
                return tuple(float(x) for x in value)
        except (TypeError, ValueError):
            pass
        raise IRError(f"{where}: expected {k}, got {value!r}")


def _meta_infer(ref: Callable) -> Callable[[list[TensorType], dict], list[TensorType]]:
    def infer(types: list[TensorType], attrs: dict) -> list[TensorType]:
        try:
            key = tuple(sorted(attrs.items()))
            hash(key)
        except TypeError:  # a non-canonical attribute (a list): no memo
            return list(_run_meta(ref, tuple(types), tuple(sorted(attrs.items()))))
        return list(_run_meta_memo(ref, tuple(types), key))

    return infer


def _run_meta(ref: Callable, types: tuple[TensorType, ...], attrs: tuple) -> tuple[TensorType, ...]:
    args = [torch.empty(t.shape, dtype=to_torch_dtype(t.dtype), device="meta") for t in types]
    out = ref(*args, **dict(attrs))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(TensorType(dtype_from_torch(o.dtype), tuple(o.shape)) for o in outs)


# Meta-tensor inference costs milliseconds per call (torch's Python decompositions); the
# verifier re-infers every node after every pass, and networks repeat the same shapes.
_run_meta_memo = functools.lru_cache(maxsize=8192)(_run_meta)


def _no_macs(ins: list[TensorType], outs: list[TensorType], attrs: dict) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    """Everything shrinkc knows about one op."""

    name: str
    operands: tuple[str, ...]  # names; "name?" optional (trailing), "*name" variadic
    ref: Callable[..., Any]  # torch reference: ref(*tensors, **attrs)
    attrs: dict[str, Attr] = field(default_factory=dict)
    kind: str = "other"  # unary | binary | nn | norm | pool | reduce | shape | quant | other
    macs_fn: Callable[[list[TensorType], list[TensorType], dict], int] = _no_macs
    # FLOPs besides 2*MACs: element-wise work (activations, norms, pools, reductions)
    flops_fn: Callable[[list[TensorType], list[TensorType], dict], int] = _no_macs
    infer_fn: Callable[[list[TensorType], dict], list[TensorType]] | None = None
    check_fn: Callable[[list[TensorType], dict], str | None] | None = None  # a readable reason
    doc: str = ""
    roles: dict[str, str] = field(default_factory=dict)  # operand name -> ROLES; else "input"

    def __post_init__(self) -> None:
        names = {o.strip("*?") for o in self.operands}
        for k, r in self.roles.items():
            if k not in names or r not in ROLES:
                raise ValueError(f"op {self.name}: role {k}={r!r} names no operand or no role "
                                 f"(operands {self.operands}, roles {ROLES})")

    def role(self, index: int) -> str:
        """The declared role of operand ``index`` (a variadic operand's for all the rest)."""
        names = [o.strip("*?") for o in self.operands]
        name = names[min(index, len(names) - 1)] if names else ""
        return self.roles.get(name, "input")

    @property
    def arity(self) -> tuple[int, int | None]:
        """(min, max) number of operands; max None = variadic."""
        if any(o.startswith("*") for o in self.operands):
            return (0, None)
        required = sum(1 for o in self.operands if not o.endswith("?"))
        return (required, len(self.operands))

    def complete_attrs(self, attrs: dict[str, Any], where: str = "") -> dict[str, Any]:
        where = where or self.name
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(f"{where}: unknown attribute(s) {sorted(unknown)} for op {self.name} "
                          f"(known: {', '.join(self.attrs) or 'none'})")
        out = {}
        for name, spec in self.attrs.items():
            if name in attrs:
                out[name] = spec.check(attrs[name], f"{where}: attribute {name}")
            elif spec.required:
                raise IRError(f"{where}: op {self.name} needs attribute {name} ({spec.kind})")
            else:
                out[name] = spec.default
        return out

    def infer(self, types: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        """Output types, or an IRError saying why the operands/attrs are invalid."""
        lo, hi = self.arity
        if len(types) < lo or (hi is not None and len(types) > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else ''}"
            raise IRError(f"op {self.name} takes {want} operands "
                          f"({', '.join(self.operands)}), got {len(types)}")
        if self.check_fn is not None:
            reason = self.check_fn(list(types), attrs)
            if reason:
                raise IRError(f"op {self.name}: {reason}")
        fn = self.infer_fn or _meta_infer(self.ref)
        try:
            return fn(list(types), attrs)
        except IRError:
            raise
        except Exception as e:  # torch's own shape checks, made readable
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shapes = ", ".join(str(t) for t in types)
            raise IRError(f"op {self.name} cannot take ({shapes}) with {attrs}: {msg}") from None

    def macs(self, ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict) -> int:
        """Multiply-accumulates (conv, linear, matmul); 0 for other ops."""
        return int(self.macs_fn(list(ins), list(outs), attrs))

    def flops(self, ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict) -> int:
        """Floating-point operations: 2 per MAC plus the op's element-wise work."""
        return 2 * self.macs(ins, outs, attrs) + int(self.flops_fn(list(ins), list(outs), attrs))


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise IRError(f"unknown op {name!r} (known: {', '.join(sorted(OPS))})") from None


def constant_roles(graph) -> dict[str, str]:
    """The role of every constant of ``graph`` (name -> one of ``ROLES`` but ``input``).

    Each use declares a role (the op's ``roles``); a constant used in several roles takes
    the most restrictive. ``input`` resolves to ``weight`` for a float constant with at
    least one dimension and to ``constant`` otherwise; a non-float ``weight`` (there is no
    gradient for integers) is a ``constant``, and an unused constant is a ``constant``.
    """
    rank = {r: i for i, r in enumerate(ROLES)}
    out: dict[str, str] = {}
    for name, v in graph.constants.items():
        best = None
        for node in dict.fromkeys(v.uses):
            opdef = get(node.op)
            for i, x in enumerate(node.inputs):
                if x is v:
                    r = opdef.role(i)
                    if r == "input":
                        r = "weight" if v.type.is_float and v.type.rank > 0 else "constant"
                    if best is None or rank[r] < rank[best]:
                        best = r
        if best is None or (best == TRAINABLE_ROLE and not v.type.is_float):
            best = "constant"
        out[name] = best
    return out


from . import elementwise, nn, quant, shape, structured  # noqa: E402,F401  (fill the table)

__all__ = ["ATTR_KINDS", "OPS", "ROLES", "TRAINABLE_ROLE", "Attr", "OpDef", "constant_roles",
           "get", "register"]
