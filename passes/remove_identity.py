"""``remove-identity``: remove nodes that return their input unchanged (exact).

The rules are data: ``RULES[op](node)`` returns the operand the node forwards, or None.
Every rule also needs the node's output type to equal that operand's type.

* ``identity``, ``dropout`` (inference), ``cast`` to the same dtype;
* ``reshape`` / ``flatten`` / ``expand`` to the same shape, ``permute`` by the identity
  permutation, ``slice`` of a whole axis (step 1, or an axis of size <= 1);
* ``concat`` of one operand, ``split`` into one piece;
* ``mean`` / ``sum`` over axes of size 1 with ``keepdim``; ``max_pool2d`` / ``avg_pool2d``
  with a 1x1 kernel, stride 1 and no padding; ``adaptive_avg_pool2d`` to the input's size;
* ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1``, ``x ** 1`` where the
  0 / 1 is a constant (of any broadcastable shape).

Graph outputs keep their names: when the removed node defines a graph output, the value it
forwards is renamed to the output's name. That is impossible when the forwarded value is a
graph input, a constant or another graph output (``%y = identity(%x); return %y`` with
``%x`` an input): such nodes are kept (``kept_graph_output``).

Constants left unused (the 0 of ``x + 0``) are removed. No options. Stats: ``removed``
(total), ``removed_<op>`` per op, ``kept_graph_output``, ``constants_removed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node, Value
from .base import Pass, PassContext, PassResult
from .registry import register_pass
from .rewrite import remove_unused_constants


def _first(node: Node) -> Value:
    return node.inputs[0]


def _same_shape(node: Node) -> Value | None:
    return node.inputs[0] if node.outputs[0].shape == node.inputs[0].shape else None


def _permute(node: Node) -> Value | None:
    rank = node.inputs[0].type.rank
    return node.inputs[0] if [d % max(rank, 1) for d in node.attrs["perm"]] == list(range(rank)) \
        else None


def _slice(node: Node) -> Value | None:
    x = node.inputs[0]
    axis_size = x.shape[node.attrs["axis"] % x.type.rank]
    whole = node.outputs[0].shape == x.shape and (node.attrs["step"] == 1 or axis_size <= 1)
    return x if whole else None


def _single_operand(node: Node) -> Value | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


def _single_piece(node: Node) -> Value | None:
    return node.inputs[0] if len(node.outputs) == 1 else None


def _cast(node: Node) -> Value | None:
    return node.inputs[0] if node.outputs[0].dtype == node.inputs[0].dtype else None


def _reduce(node: Node) -> Value | None:
    return _same_shape(node) if node.attrs["keepdim"] else None


def _pool(node: Node) -> Value | None:
    a = node.attrs
    trivial = (tuple(a["kernel"]) == (1, 1) and tuple(a["stride"]) == (1, 1)
               and tuple(a["padding"]) == (0, 0))
    return _same_shape(node) if trivial else None


def _is_const(v: Value, value: float) -> bool:
    return v.is_constant and v.data.size > 0 and bool(np.all(v.data == value))


def _neutral(value: float, right_only: bool) -> Callable[[Node], Value | None]:
    """``x op c`` (and ``c op x`` unless ``right_only``) where c is all ``value``."""

    def rule(node: Node) -> Value | None:
        a, b = node.inputs
        if _is_const(b, value):
            return a
        if not right_only and _is_const(a, value):
            return b
        return None

    return rule


RULES: dict[str, Callable[[Node], Value | None]] = {
    "identity": _first,
    "dropout": _first,
    "cast": _cast,
    "reshape": _same_shape,
    "flatten": _same_shape,
    "expand": _same_shape,
    "permute": _permute,
    "slice": _slice,
    "concat": _single_operand,
    "split": _single_piece,
    "mean": _reduce,
    "sum": _reduce,
    "max_pool2d": _pool,
    "avg_pool2d": _pool,
    "adaptive_avg_pool2d": _same_shape,
    "add": _neutral(0.0, right_only=False),
    "sub": _neutral(0.0, right_only=True),
    "mul": _neutral(1.0, right_only=False),
    "div": _neutral(1.0, right_only=True),
    "pow": _neutral(1.0, right_only=True),
}


@register_pass("remove-identity")
@dataclass
class RemoveIdentity(Pass):
    """Remove dropout, identity and ops that return their input (no-op reshape, x*1, ...)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int | float] = {"removed": 0, "kept_graph_output": 0}
        operands: list[Value] = []
        for node in list(graph.nodes):
            rule = RULES.get(node.op)
            src = rule(node) if rule is not None else None
            if src is None or len(node.outputs) != 1 or node.outputs[0].type != src.type:
                continue
            out = node.outputs[0]
            if out in graph.outputs:
                if src.producer is None or src in graph.outputs:
                    stats["kept_graph_output"] += 1
                    continue
                name = out.name
                graph.replace_all_uses(out, src)
                graph.erase(node)
                graph.rename(src, name)
            else:
                graph.replace_all_uses(out, src)
                graph.erase(node)
            operands.extend(node.inputs)
            stats["removed"] += 1
            stats[f"removed_{node.op}"] = stats.get(f"removed_{node.op}", 0) + 1
        stats["constants_removed"] = remove_unused_constants(graph, operands)
        return PassResult(stats["removed"] > 0, stats)
