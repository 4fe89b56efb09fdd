"""``remove-identity``: remove nodes that return their input unchanged (exact).

The rules are data (``RULES``, rules of the rewrite toolkit ``passes/patterns.py``): each
matches one op whose operand ``x`` it forwards, with the conditions below as named
predicates; every rule also needs the node's output type to equal ``x``'s type.

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
from .patterns import Match, Pat, Rule, apply_rules
from .registry import register_pass
from .rewrite import remove_unused_constants

X = Pat(name="x")  # the operand the node forwards


def same_shape(node: Node) -> bool:
    return node.outputs[0].shape == node.inputs[0].shape


def identity_perm(node: Node) -> bool:
    rank = node.inputs[0].type.rank
    return [d % max(rank, 1) for d in node.attrs["perm"]] == list(range(rank))


def whole_axis(node: Node) -> bool:
    x = node.inputs[0]
    axis_size = x.shape[node.attrs["axis"] % x.type.rank]
    return node.outputs[0].shape == x.shape and (node.attrs["step"] == 1 or axis_size <= 1)


def one_piece(node: Node) -> bool:
    return len(node.outputs) == 1


def same_dtype(node: Node) -> bool:
    return node.outputs[0].dtype == node.inputs[0].dtype


def keepdim(node: Node) -> bool:
    return bool(node.attrs["keepdim"])


def trivial_window(node: Node) -> bool:
    a = node.attrs
    return (tuple(a["kernel"]) == (1, 1) and tuple(a["stride"]) == (1, 1)
            and tuple(a["padding"]) == (0, 0))


def _all(value: float) -> Callable[[Value], bool]:
    def pred(v: Value) -> bool:
        return v.data.size > 0 and bool(np.all(v.data == value))

    pred.__name__ = f"all_{value:g}"
    return pred


def _keeps_type(i: int) -> Callable[[Node], bool]:
    def pred(node: Node) -> bool:
        return len(node.outputs) == 1 and node.outputs[0].type == node.inputs[i].type

    pred.__name__ = f"output_type_is_operand_{i}_type"
    return pred


def _forwarding(op: str, *where: Callable[[Node], bool], neutral: float | None = None,
                left: bool = False) -> Rule:
    """The rule removing ``op`` nodes that forward operand ``x`` (``x op c`` / ``c op x``
    when ``neutral`` is the constant c's value, all of it)."""
    if neutral is None:
        inputs, i = [X, ...], 0
    else:
        c = Pat(const=True, where=_all(neutral))
        inputs, i = ([c, X], 1) if left else ([X, c], 0)
    return Rule(f"remove-identity:{op}{'-left' if left else ''}",
                Pat(op, inputs, where=(*where, _keeps_type(i))),
                check=_check, rewrite=_forward, counter=f"removed_{op}")


def _check(graph: Graph, m: Match) -> str | None:
    node, src = m.root, m["x"]
    if node.outputs[0] in graph.outputs and (src.producer is None or src in graph.outputs):
        return "kept_graph_output"
    return None


def _forward(graph: Graph, m: Match) -> None:
    node, src = m.root, m["x"]
    out = node.outputs[0]
    name = out.name if out in graph.outputs else None
    graph.replace_all_uses(out, src)
    graph.erase(node)
    if name is not None:
        graph.rename(src, name)


RULES: list[Rule] = [
    _forwarding("identity"),
    _forwarding("dropout"),
    _forwarding("cast", same_dtype),
    *(_forwarding(op, same_shape) for op in ("reshape", "flatten", "expand",
                                             "adaptive_avg_pool2d")),
    _forwarding("permute", identity_perm),
    _forwarding("slice", whole_axis),
    Rule("remove-identity:concat", Pat("concat", [X], where=_keeps_type(0)), check=_check,
         rewrite=_forward, counter="removed_concat"),
    _forwarding("split", one_piece),
    *(_forwarding(op, keepdim, same_shape) for op in ("mean", "sum")),
    *(_forwarding(op, trivial_window, same_shape) for op in ("max_pool2d", "avg_pool2d")),
    _forwarding("add", neutral=0.0), _forwarding("add", neutral=0.0, left=True),
    _forwarding("sub", neutral=0.0),
    _forwarding("mul", neutral=1.0), _forwarding("mul", neutral=1.0, left=True),
    _forwarding("div", neutral=1.0),
    _forwarding("pow", neutral=1.0),
]


@register_pass("remove-identity")
@dataclass
class RemoveIdentity(Pass):
    """Remove dropout, identity and ops that return their input (no-op reshape, x*1, ...)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = apply_rules(graph, RULES)
        removed = {k: v for k, v in result.stats.items() if k.startswith("removed_") and v}
        stats: dict[str, int | float] = {"removed": sum(removed.values()),
                                         "kept_graph_output": result.stats.get(
                                             "kept_graph_output", 0), **removed}
        operands = [v for n in result.rewritten for v in n.inputs]
        stats["constants_removed"] = remove_unused_constants(graph, operands)
        return PassResult(result.changed, stats)
