"""Graph verbs for physical rewrites: changes that may change a value's type.

Compression rewrites weights into other shapes (a pruned conv's weight, its bias, its batch
norm's statistics, the next layer's input channels) and adds or drops operands (a bias for
a conv that had none). These verbs do that in place and keep the graph consistent; the
``Graph`` methods of the same names delegate here:

* ``replace_constants(graph, {value: array, ...})`` / ``replace_constant(graph, value,
  array)`` — new data of any shape or dtype for constants (the ``Value`` objects, their
  names and uses stay); an encoding is kept when the new data still satisfies it, else an
  IRError, or dropped with ``drop_encoding=True``;
* ``add_operand(graph, node, value, index=None)`` / ``remove_operand(graph, node, index)``
  — insert (append by default) or remove one operand without rebuilding the node;
* ``set_attrs(graph, node, attrs)`` — update attributes, checked against the op table;
* ``reinfer(graph, *starts)`` — re-infer output types from nodes (or from the users of
  values) forward; every node whose operand types changed is re-inferred in graph order.

Each of the first four takes ``reinfer=True`` (the default): it then re-infers forward from
what it changed and is atomic — when a node downstream cannot take its new operand types,
the verb raises one ``IRError`` naming that node (``Node.describe()``) and leaves the graph
exactly as it was before the call. With ``reinfer=False`` nothing is re-inferred (for a
multi-step edit that calls ``reinfer`` once at the end); until then the graph may not
verify, and the verifier names the first node whose types do not fit. ``reinfer`` itself
restores the types it changed when it fails, and says so.

Operand indices: ``Value.use_sites`` lists ``(node, operand_index)`` for every use; it is
derived from ``Value.uses`` (one entry per operand occurrence) and the users' operands, so
it is exact whenever the use-lists are, which every verb keeps and the verifier checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import ops
from .errors import IRError
from .types import TensorType

if TYPE_CHECKING:
    from .graph import Graph, Node, Value

__all__ = ["add_operand", "reinfer", "remove_operand", "replace_constant", "replace_constants",
           "set_attrs"]


def reinfer(graph: Graph, *starts: Node | Value) -> list[Node]:
    """Re-infer the output types of the ``starts`` (a ``Value`` stands for its users) and of
    every node downstream whose operand types change. Returns the nodes whose output types
    changed, in graph order. On an op that cannot take its new operands: restores every type
    this call changed and raises IRError naming the node."""
    dirty: set[int] = set()
    for s in starts:
        if hasattr(s, "op"):
            dirty.add(id(s))
        else:
            dirty.update(id(u) for u in s.uses)
    changed: list[tuple[Node, list[TensorType]]] = []
    for node in graph.nodes:
        if id(node) not in dirty:
            continue
        try:
            new = ops.get(node.op).infer([v.type for v in node.inputs], node.attrs)
            if len(new) != len(node.outputs):
                raise IRError(f"op {node.op} infers {len(new)} outputs, the node has "
                              f"{len(node.outputs)}")
        except IRError as e:
            for n, old in reversed(changed):
                for o, t in zip(n.outputs, old):
                    o.type = t
            undone = f"; the types of {len(changed)} node(s) re-inferred before it were " \
                     f"restored" if changed else ""
            raise IRError(f"cannot re-infer types: node {node.describe()}: {e}{undone}") from None
        if new != [o.type for o in node.outputs]:
            changed.append((node, [o.type for o in node.outputs]))
            for o, t in zip(node.outputs, new):
                o.type = t
                dirty.update(id(u) for u in o.uses)
    return [n for n, _ in changed]


def _atomic(graph: Graph, do: Callable[[], None], undo: Callable[[], None],
            starts: Iterable[Any], run_reinfer: bool) -> list[Node]:
    """Apply ``do``; re-infer from ``starts`` if asked; on failure ``undo`` and re-raise."""
    do()
    if not run_reinfer:
        return []
    try:
        return reinfer(graph, *starts)
    except IRError:
        undo()
        raise


def replace_constants(graph: Graph, arrays: Mapping[Value, Any], *, drop_encoding: bool = False,
                      reinfer: bool = True) -> list[Node]:
    """Give each constant in ``arrays`` new data, of any shape and dtype; its type follows.

    Each value keeps its identity, name and uses. An encoding (``Value.encoding``) is kept
    when the new data still satisfies it; otherwise IRError, unless ``drop_encoding`` (then
    the value is stored dense). With ``reinfer`` the users' types are re-inferred forward,
    atomically (see the module docstring). Returns the nodes whose output types changed.
    """
    plan = []
    for v, a in arrays.items():
        if not v.is_constant or graph.constants.get(v.name) is not v:
            raise IRError(f"replace_constant: %{v.name} is not a constant of graph {graph.name}")
        arr = np.asarray(a)  # (np.ascontiguousarray alone would make a 0-d array 1-d)
        arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        enc = v.encoding
        if enc is not None:
            reason = enc.check(arr)
            if reason and not drop_encoding:
                raise IRError(f"replace_constant: new data for %{v.name} ({TensorType.of(arr)}) "
                              f"breaks its encoding {enc}: {reason} (drop_encoding=True "
                              f"stores it dense)")
            enc = None if reason else enc
        plan.append((v, arr, TensorType.of(arr), enc, (v.data, v.type, v.encoding)))

    def do():
        for v, arr, t, enc, _ in plan:
            v.data, v.type, v.encoding = arr, t, enc

    def undo():
        for v, *_, old in plan:
            v.data, v.type, v.encoding = old

    return _atomic(graph, do, undo, [v for v, *_ in plan], reinfer)


def replace_constant(graph: Graph, value: Value, array: Any, *, drop_encoding: bool = False,
                     reinfer: bool = True) -> list[Node]:
    """``replace_constants`` for one constant."""
    return replace_constants(graph, {value: array}, drop_encoding=drop_encoding,
                             reinfer=reinfer)


def _check_defined_before(graph: Graph, node: Node, value: Value) -> None:
    if value.producer is None:
        if value.is_constant and graph.constants.get(value.name) is value:
            return
        if any(v is value for v in graph.inputs):
            return
    elif value.producer in graph.nodes:
        if graph.nodes.index(value.producer) < graph.nodes.index(node):
            return
        raise IRError(f"node {node.describe()}: operand %{value.name} is defined by "
                      f"{value.producer.describe()}, which comes after the node")
    raise IRError(f"node {node.describe()}: operand %{value.name} is not defined in graph "
                  f"{graph.name}")


def _check_node(graph: Graph, node: Node) -> None:
    if not any(n is node for n in graph.nodes):
        raise IRError(f"node {node.describe()} is not in graph {graph.name}")


def add_operand(graph: Graph, node: Node, value: Value, index: int | None = None, *,
                reinfer: bool = True) -> list[Node]:
    """Insert ``value`` as operand ``index`` of ``node`` (append when None); later operands
    move up by one. ``value`` must be defined before ``node``. Returns the nodes whose output
    types changed (with ``reinfer``; atomic)."""
    _check_node(graph, node)
    _check_defined_before(graph, node, value)
    i = len(node.inputs) if index is None else index
    if not 0 <= i <= len(node.inputs):
        raise IRError(f"node {node.describe()}: cannot insert operand at {i}: it has "
                      f"{len(node.inputs)} operands")

    def do():
        node.inputs.insert(i, value)
        value.uses.append(node)

    def undo():
        del node.inputs[i]
        value.uses.remove(node)

    return _atomic(graph, do, undo, [node], reinfer)


def remove_operand(graph: Graph, node: Node, index: int, *, reinfer: bool = True) -> Value:
    """Remove operand ``index`` of ``node`` (later operands move down by one) and return the
    value that was there (a constant left unused stays in the graph: ``dce`` removes it).
    With ``reinfer`` the op table must accept the node without it (atomic)."""
    _check_node(graph, node)
    if not -len(node.inputs) <= index < len(node.inputs):
        raise IRError(f"node {node.describe()}: no operand {index} (it has "
                      f"{len(node.inputs)})")
    i = index % len(node.inputs)
    value = node.inputs[i]

    def do():
        del node.inputs[i]
        value.uses.remove(node)

    def undo():
        node.inputs.insert(i, value)
        value.uses.append(node)

    _atomic(graph, do, undo, [node], reinfer)
    return value


def set_attrs(graph: Graph, node: Node, attrs: Mapping[str, Any], *,
              reinfer: bool = True) -> list[Node]:
    """Update attributes of ``node`` (others keep their values). The result is checked and
    canonicalised by the op table (unknown names, wrong kinds: IRError naming the node).
    Returns the nodes whose output types changed (with ``reinfer``; atomic)."""
    _check_node(graph, node)
    new = ops.get(node.op).complete_attrs({**node.attrs, **attrs}, where=f"node {node.describe()}")
    old = node.attrs

    def do():
        node.attrs = new

    def undo():
        node.attrs = old

    return _atomic(graph, do, undo, [node], reinfer)
