"""Conversion state and helpers shared by the per-op handlers.

``Ctx`` holds what converting one graphsurgeon graph needs (the IR graph being built, ONNX
tensor name → IR value, the current node and its loc) and the verbs the handlers use: ``v``
(an operand; constants made on first use), ``emit`` / ``emit_multi`` / ``alias`` (results),
``fail`` (an ``OnnxImportError`` naming the node). Handlers register with ``@maps("OpType")``
into ``ONNX_MAP``, or ``@fused("Op")`` into ``FUSED_MAP`` for the ops the fuser makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import Graph, IRError, Value
from ...types import to_numpy_dtype

#: ops made by the fusions (``fuse.py``) exist only inside this frontend, in this domain
FUSED_DOMAIN = "ai.shrinkc"


class OnnxImportError(IRError):
    """An ONNX model that cannot be brought into the IR."""


def f32(x: Any) -> float:
    """A float stored as float32 in ONNX, as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06), so IR → ONNX → IR keeps attributes such as ``eps`` unchanged."""
    return float(str(np.float32(x)))


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def const_of(t: gs.Tensor) -> np.ndarray | None:
    """The value of a graphsurgeon constant, else None."""
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


Handler = Callable[["Ctx", gs.Node], None]
#: ONNX op type (default domain) → handler.
ONNX_MAP: dict[str, Handler] = {}
#: Ops made by the fuser (domain ``ai.shrinkc``) → handler; they never leave this package.
FUSED_MAP: dict[str, Handler] = {}


def maps(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            ONNX_MAP[op] = fn
        return fn

    return deco


def fused(*ops: str) -> Callable[[Handler], Handler]:
    """Register the handler of an op the fuser makes (``FUSED_DOMAIN``)."""
    def deco(fn: Handler) -> Handler:
        for op in ops:
            FUSED_MAP[op] = fn
        return fn

    return deco


def transposed(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


class Ctx:
    """State while converting one graphsurgeon graph."""

    def __init__(self, g: Graph, gsg: gs.Graph, locs: dict[str, str | None], opset: int,
                 what: str):
        self.g, self.gsg, self.locs, self.opset, self.what = g, gsg, locs, opset, what
        self.env: dict[str, Value] = {}
        self.consts: dict[tuple[str, str], Value] = {}
        self.outputs = {id(t) for t in gsg.outputs}
        self.reserved = {t.name for t in gsg.tensors().values()}
        self.node: gs.Node | None = None
        self.loc: str | None = None

    # ------------------------------------------------------------------ errors, names
    def fail(self, msg: str) -> NoReturn:
        n = self.node
        where = f"node {n.name!r} ({n.op})" if n is not None else "graph"
        raise OnnxImportError(f"{self.what}: {where}: {msg}")

    def fresh(self, base: str) -> str:
        name, i = self.g.fresh_name(base), 0
        while name in self.reserved:
            i += 1
            name = self.g.fresh_name(f"{base}_{i}")
        return name

    # ------------------------------------------------------------------ operands
    def inp(self, i: int) -> gs.Tensor | None:
        """Input ``i`` of the current node, None when absent (optional inputs)."""
        ins = self.node.inputs
        return ins[i] if i < len(ins) and ins[i].name != "" else None

    def v(self, t: gs.Tensor, transform: Callable[[np.ndarray], np.ndarray] | None = None,
          tag: str = "") -> Value:
        """The IR value of a tensor; constants are made on first use (``transform``ed data
        under the tensor's own name the first time it is asked for, ``name_tag`` later)."""
        if isinstance(t, gs.Constant):
            key = (t.name, tag)
            if key not in self.consts:
                data = np.asarray(t.values)
                if transform is not None:
                    data = transform(data)
                taken = any(k[0] == t.name for k in self.consts)
                name = self.fresh(f"{t.name}_{tag or 'c'}") if taken or not t.name else t.name
                try:
                    self.consts[key] = self.g.add_constant(data, name)
                except TypeError as e:
                    self.fail(f"constant {t.name!r}: {e}")
            return self.consts[key]
        if t.name not in self.env:
            self.fail(f"input {t.name!r} is not computed (unsupported producer?)")
        return self.env[t.name]

    def array(self, t: gs.Tensor | None, what: str) -> np.ndarray:
        a = const_of(t) if t is not None else None
        if a is None:
            self.fail(f"{what} must be a constant (after constant folding), got "
                      f"{'nothing' if t is None else repr(t.name)}")
        return a

    def ints(self, t: gs.Tensor | None, what: str) -> list[int]:
        return [int(i) for i in self.array(t, what).reshape(-1)]

    def attr_or_input(self, attr: str, i: int) -> list[int] | None:
        if attr in self.node.attrs:
            return [int(a) for a in self.node.attrs[attr]]
        t = self.inp(i)
        return None if t is None else self.ints(t, attr)

    def scalar(self, value: float, dtype: str, what: str) -> Value:
        return self.g.add_constant(np.array(value, dtype=to_numpy_dtype(dtype)),
                                   self.fresh(f"{self.node.outputs[0].name}_{what}"))

    # ------------------------------------------------------------------ results
    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None, *,
             out: gs.Tensor | None = None, suffix: str = "tmp") -> Value:
        """One IR node; named after ``out`` (an ONNX output) or a fresh ``<out0>_<suffix>``."""
        name = out.name if out is not None else self.fresh(f"{self.node.outputs[0].name}_{suffix}")
        try:
            node = self.g.add_node(op, inputs, attrs or {}, names=[name], loc=self.loc)
        except IRError as e:
            self.fail(str(e))
        if out is not None:
            self.env[out.name] = node.output
        return node.output

    def emit_multi(self, op: str, inputs: list[Value], attrs: dict[str, Any],
                   outs: list[gs.Tensor]) -> None:
        try:
            node = self.g.add_node(op, inputs, attrs, names=[t.name for t in outs], loc=self.loc)
        except IRError as e:
            self.fail(str(e))
        for t, v in zip(outs, node.outputs):
            self.env[t.name] = v

    def alias(self, out: gs.Tensor, value: Value) -> None:
        """``out`` is ``value`` (no IR node) — unless it is a graph output (kept by name)."""
        if id(out) in self.outputs:
            self.emit("identity", [value], out=out)
        else:
            self.env[out.name] = value

    def unused(self, i: int, what: str) -> None:
        outs = self.node.outputs
        if i < len(outs) and outs[i].name and (outs[i].outputs or id(outs[i]) in self.outputs):
            self.fail(f"output {i} ({what}) is used; only inference outputs are supported")

    def x(self) -> Value:
        return self.v(self.node.inputs[0])

    def axis(self, axis: int, rank: int) -> int:
        if not -max(rank, 1) <= axis < max(rank, 1):
            self.fail(f"axis {axis} is out of range for rank {rank}")
        return axis % max(rank, 1)


def pair2(values: Sequence[int] | None, default: int, c: Ctx, what: str) -> tuple[int, int]:
    return ints_n(values, default, 2, c, what)


def ints_n(values: Sequence[int] | None, default: int, nd: int, c: Ctx,
           what: str) -> tuple[int, ...]:
    """``nd`` ints (one per spatial dim), ``default`` each when absent."""
    if values is None:
        return (default,) * nd
    values = tuple(int(v) for v in values)
    if len(values) != nd:
        c.fail(f"{what} {list(values)}: expected {nd} values (one per spatial dim)")
    return values


def spatial_pads(c: Ctx, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(begins, ends) padding of each spatial dim from ``pads`` / ``auto_pad``."""
    a = c.node.attrs
    nd = len(spatial)
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return (0,) * nd, (0,) * nd
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return tuple(begins), tuple(ends)
    if auto != "NOTSET":
        c.fail(f"auto_pad={auto} is not supported")
    p = [int(v) for v in a.get("pads", [0] * (2 * nd))]
    if len(p) != 2 * nd:
        c.fail(f"pads {p}: expected {2 * nd} values for {nd} spatial dims")
    return tuple(p[:nd]), tuple(p[nd:])


def conv_pads(c: Ctx, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> tuple[int, ...]:
    """Symmetric padding from ``pads`` / ``auto_pad``; asymmetric padding is refused (the
    callers that can, pad explicitly with ``spatial_pads`` instead)."""
    begins, ends = spatial_pads(c, spatial, kernel, strides, dilations)
    if begins != ends:
        c.fail(f"asymmetric pads (begin {list(begins)} != end {list(ends)}) are not supported "
               f"here")
    return begins


def need_4d(c: Ctx, x: Value) -> None:
    if x.type.rank != 4:
        c.fail(f"only 2-D (4-D NCHW input) is supported, got {x.type}")

