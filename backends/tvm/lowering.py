"""The lowering core: IR graph → Relax ``IRModule``, one lowering per op, and hooks for
lowerings of patterns that span several nodes.

``lower(graph)`` builds one function ``main`` with ``relax.BlockBuilder``: its parameters
are the graph inputs (then, with ``keep_params=True``, the weights, bound separately at run
time; otherwise weights are Relax constants). Each node is lowered by

1. the plans of the pattern lowerings (``PATTERN_LOWERINGS``, registered with
   ``@lowers_pattern(name)``), in registration order: a plan made for the graph may lower
   the node (and nodes around it) itself — the int8 lowering (``int8.py``) turns
   ``dequantize → conv2d → quantize`` into integer compute this way; else
2. its op's entry in ``LOWERINGS`` (registered with ``@lowers(op)``; the table is
   ``ops.py``).

Every result goes through ``lower_node``, which checks its Relax type against the IR type,
so a wrong lowering fails at the node that made it. Importing ``backends.tvm.ops`` fills
the table; ``backends.tvm.lower`` is this ``lower`` with the table filled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

import tvm
from tvm import relax

from ...ir.graph import Graph, IRError, Node, Value
from ...ir.types import TensorType, to_numpy_dtype
from .errors import LoweringError, StaticShapeError

DTYPE_TO_TVM: dict[str, str] = {
    "f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16", "i8": "int8",
    "u8": "uint8", "i16": "int16", "i32": "int32", "i64": "int64", "bool": "bool",
}
TVM_TO_DTYPE: dict[str, str] = {v: k for k, v in DTYPE_TO_TVM.items()}


class Lowerer:
    """State while lowering one graph: the BlockBuilder and the Relax expr of each value."""

    def __init__(self, bb: Any):
        self.bb = bb
        self.env: dict[int, Any] = {}
        self.node: Node | None = None

    def emit(self, expr: Any) -> Any:
        return self.bb.emit(expr)

    def value(self, v: Value) -> Any:
        """The Relax expr of IR value ``v`` (lowered earlier)."""
        return self.env[id(v)]

    def has(self, v: Value) -> bool:
        return id(v) in self.env

    def const(self, data: Any, dtype: str) -> Any:
        """A Relax constant in IR dtype ``dtype``."""
        arr = np.asarray(data, dtype=to_numpy_dtype(dtype))
        return relax.const(arr, DTYPE_TO_TVM[dtype])

    @staticmethod
    def constant(expr: Any) -> np.ndarray | None:
        """The value of a Relax constant, else None (operands that are weights)."""
        return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        """``reshape``, done here for constants (FoldConstant would compile a kernel each)."""
        c = self.constant(x)
        if c is not None:
            return relax.const(np.asarray(c.reshape(shape), order="C"), str(c.dtype))
        return self.emit(relax.op.reshape(x, shape))

    def astype(self, x: Any, have: str, want: str) -> Any:
        if have == want:
            return x
        c = self.constant(x)
        if c is not None:
            return self.const(c.astype(to_numpy_dtype(want)), want)
        return self.emit(relax.op.astype(x, DTYPE_TO_TVM[want]))

    def clamp(self, x: Any, lo: float | None, hi: float | None, dtype: str) -> Any:
        """``clip(x, lo, hi)`` (IR dtype ``dtype``) that keeps NaN, as PyTorch and onnxruntime
        do, and that the NHWC layout conversion moves through.

        TVM lowers ``maximum(a, b)`` to ``a > b ? a : b`` (and ``minimum`` to
        ``a < b ? a : b``), so the operand order decides NaN: Relax's ``relu(x)`` / ``clip``
        are ``max(x, 0)`` and give 0 for NaN, while ``max(0, x)`` gives NaN. Constant
        first, then: the same single compare and select, and element-wise ops that
        ConvertLayout has rules for (it has none for ``clip`` or ``where``: each would be
        wrapped in transposes back to NCHW, and an int8 requantize split from its conv into a
        task of its own). The NaN tests of ``tests/backends/test_nan_propagation.py`` guard
        the order."""
        y = x
        if hi is not None:
            y = self.emit(relax.op.minimum(self.const(hi, dtype), y))
        if lo is not None:
            y = relax.op.maximum(self.const(lo, dtype), y)
        return y

    def out_type(self, i: int = 0) -> TensorType:
        return self.node.outputs[i].type

    def in_type(self, i: int) -> TensorType:
        return self.node.inputs[i].type


Lowering = Callable[[Lowerer, Node, list], Any]
#: One lowering per IR op, keyed by the op table's names (filled by ``ops.py``).
LOWERINGS: dict[str, Lowering] = {}


def lowers(*names: str) -> Callable[[Lowering], Lowering]:
    """Register a lowering for the IR ops ``names``: ``fn(lowerer, node, operands) -> expr``
    (or a list of exprs, one per output)."""
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            LOWERINGS[n] = fn
        return fn

    return deco


class PatternPlan(Protocol):
    """What a pattern lowering made for one graph."""

    def lower(self, lw: Lowerer, node: Node) -> bool:
        """Lower ``node`` (through ``lower_node``) and return True, or return False to leave
        it to ``LOWERINGS``."""


#: Pattern lowerings by name: ``plan(graph) -> PatternPlan | None`` (None: nothing to do).
PATTERN_LOWERINGS: dict[str, Callable[[Graph], PatternPlan | None]] = {}


def lowers_pattern(name: str) -> Callable[[Callable[[Graph], PatternPlan | None]],
                                          Callable[[Graph], PatternPlan | None]]:
    """Register ``plan(graph)`` as the pattern lowering ``name`` (``lower(patterns=...)``)."""
    def deco(fn: Callable[[Graph], PatternPlan | None]) -> Callable[[Graph], PatternPlan | None]:
        PATTERN_LOWERINGS[name] = fn
        return fn

    return deco


@dataclass
class Lowered:
    """A Relax module for a graph, and the weights to bind when ``keep_params``."""

    mod: Any  # tvm.IRModule
    params: dict[str, np.ndarray]  # parameter name -> array, in the function's order
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]


def relax_types(expr: Any) -> list[tuple[str, tuple[int, ...] | None]]:
    """(TVM dtype, static shape or None) of a Relax expr, one per tuple field."""
    ty = expr.ty
    if isinstance(ty, relax.TupleType):
        return [t for f in ty.fields for t in _relax_types_of(f)]
    return _relax_types_of(ty)


def _relax_types_of(ty: Any) -> list[tuple[str, tuple[int, ...] | None]]:
    try:
        shape = tuple(int(s) for s in ty.shape)
    except (TypeError, AttributeError):
        shape = None
    return [(str(ty.dtype), shape)]


def dtype_of(expr: Any) -> str:
    """The IR dtype of a (tensor) Relax expr."""
    (dtype, _), = relax_types(expr)
    return TVM_TO_DTYPE[dtype]


def check_static(graph: Graph) -> None:
    """Raise ``StaticShapeError`` naming the first value whose shape is not static ints."""
    for v in list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]:
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in v.type.shape):
            raise StaticShapeError(f"graph {graph.name}: %{v.name} has shape {v.type.shape}, "
                                   f"which is not static; TVM needs static input shapes")


def lower(graph: Graph, keep_params: bool = False, int8: bool = True,
          patterns: Sequence[str] | None = None) -> Lowered:
    """IR graph → Relax ``IRModule`` with one function ``main``.

    ``keep_params``: weights (constants of rank ≥ 1) become parameters of ``main`` after the
    inputs (``num_input`` attribute set), returned in ``Lowered.params``; otherwise they are
    constants in the module. Scalars are always constants.

    ``patterns``: the pattern lowerings to use (default: every registered one);
    ``int8=False`` leaves out ``int8`` (QDQ conv2d / linear / matmul then run in float like
    other ops).
    """
    check_static(graph)
    missing = sorted({n.op for n in graph.nodes if n.op not in LOWERINGS})
    if missing:
        where = {op: next(n.describe() for n in graph.nodes if n.op == op) for op in missing}
        raise LoweringError("no TVM lowering for op(s) " + ", ".join(
            f"{op} (e.g. node {where[op]})" for op in missing)
            + " in backends/tvm/ops.py LOWERINGS")
    names = list(PATTERN_LOWERINGS) if patterns is None else list(patterns)
    unknown = [n for n in names if n not in PATTERN_LOWERINGS]
    if unknown:
        raise LoweringError(f"unknown pattern lowering(s) {', '.join(unknown)}; registered: "
                            f"{', '.join(PATTERN_LOWERINGS) or 'none'}")
    if not int8:
        names = [n for n in names if n != "int8"]
    bb = relax.BlockBuilder()
    lw = Lowerer(bb)
    args = []
    for v in graph.inputs:
        var = relax.Var(v.name, relax.TensorType(v.shape, DTYPE_TO_TVM[v.dtype]))
        lw.env[id(v)] = var
        args.append(var)
    params: dict[str, np.ndarray] = {}
    for name, v in graph.constants.items():
        if keep_params and v.type.rank > 0:
            var = relax.Var(name, relax.TensorType(v.shape, DTYPE_TO_TVM[v.dtype]))
            lw.env[id(v)] = var
            args.append(var)
            params[name] = np.asarray(v.data, order="C")
        else:
            lw.env[id(v)] = relax.const(np.asarray(v.data, order="C"), DTYPE_TO_TVM[v.dtype])
    attrs = {"num_input": len(graph.inputs)} if keep_params else None
    with bb.function("main", args, attrs=attrs):
        with bb.dataflow():
            plans = [p for p in (PATTERN_LOWERINGS[n](graph) for n in names) if p is not None]
            for node in graph.nodes:
                if not any(p.lower(lw, node) for p in plans):
                    lower_node(lw, node)
            outs = [lw.env[id(v)] for v in graph.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv)
    return Lowered(bb.get(), params, [(v.name, v.type) for v in graph.inputs],
                   [(v.name, v.type) for v in graph.outputs])


def lower_node(lw: Lowerer, node: Node, lowering: Callable[[Lowerer], Any] | None = None,
               outputs: Sequence[Value] | None = None) -> None:
    """Lower ``node`` with its ``LOWERINGS`` entry — or with ``lowering(lw)``, which reads
    its operands itself (a pattern lowering: operands it fuses are never lowered) — and
    check the result types against ``node.outputs`` (or ``outputs``: a pattern lowering
    may produce a later node's output, e.g. a fused quantize's)."""
    lw.node = node
    outputs = node.outputs if outputs is None else outputs
    try:
        if lowering is None:
            result = LOWERINGS[node.op](lw, node, [lw.env[id(v)] for v in node.inputs])
        else:
            result = lowering(lw)
    except KeyError:
        raise LoweringError(f"no TVM lowering for op {node.op} (node {node.describe()})"
                            ) from None
    except IRError:
        raise
    except Exception as e:  # a Relax type error, made to name the node
        msg = str(e).strip().splitlines()
        raise LoweringError(f"node {node.describe()}: lowering {node.op} to Relax failed: "
                            f"{msg[-1] if msg else type(e).__name__}") from e
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(outputs):
        raise LoweringError(f"node {node.describe()}: lowering of {node.op} gave "
                            f"{len(results)} results for {len(outputs)} outputs")
    for out, expr in zip(outputs, results):
        if not isinstance(expr, (relax.Var, tvm.ir.expr.Constant)):
            expr = lw.emit(expr)
        (dtype, shape), = relax_types(expr)
        want = (DTYPE_TO_TVM[out.dtype], out.shape)
        if (dtype, shape) != want:
            raise LoweringError(
                f"node {node.describe()}: TVM lowering of {node.op} gives "
                f"{dtype}{list(shape or ())} but the IR says %{out.name}: {out.type}")
        lw.env[id(out)] = expr


__all__ = [
    "DTYPE_TO_TVM",
    "LOWERINGS",
    "PATTERN_LOWERINGS",
    "TVM_TO_DTYPE",
    "Lowered",
    "Lowerer",
    "Lowering",
    "PatternPlan",
    "check_static",
    "dtype_of",
    "lower",
    "lower_node",
    "lowers",
    "lowers_pattern",
    "relax_types",
]
