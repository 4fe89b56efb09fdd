"""The verifier: checks a graph's invariants and names the node that breaks one.

SSA (every value defined once), use-lists consistent with operands (so ``Value.use_sites``,
derived from them, is exact), nodes in topological
order (a cycle is reported as such), every operand defined in this graph, ops known,
attributes valid, and every output type equal to what the op table infers. A
batch-polymorphic graph's marks are proven again (``ir/batch.py``: types re-inferred at two
other batches).
"""

from __future__ import annotations

from collections import Counter

from . import batch, ops
from .graph import Graph, IRError, Node


class VerificationError(IRError):
    """A graph that breaks an IR invariant."""


def _fail(graph: Graph, node: Node | None, msg: str) -> None:
    where = f"node {node.describe()}: " if node is not None else ""
    raise VerificationError(f"graph {graph.name}: {where}{msg}")


def verify(graph: Graph) -> None:
    """Raise ``VerificationError`` naming the first broken invariant, else return None."""
    defined: set[int] = set()
    names: set[str] = set()
    in_graph = {id(n) for n in graph.nodes}
    producers = {id(o): n for n in graph.nodes for o in n.outputs}

    def define(v, node=None):
        if v.name in names:
            _fail(graph, node, f"value %{v.name} is defined twice")
        names.add(v.name)
        defined.add(id(v))

    for v in graph.inputs:
        if v.producer is not None or v.data is not None:
            _fail(graph, None, f"input %{v.name} has a producer or data")
        define(v)
    for name, v in graph.constants.items():
        if v.data is None:
            _fail(graph, None, f"constant %{name} has no data")
        if name != v.name:
            _fail(graph, None, f"constant table key {name} != value name %{v.name}")
        if tuple(v.data.shape) != v.type.shape:
            _fail(graph, None, f"constant %{name} data shape {v.data.shape} != type {v.type}")
        if v.encoding is not None:
            reason = v.encoding.check(v.data)
            if reason:
                _fail(graph, None, f"constant %{name} stored as {v.encoding} {reason}")
        define(v)

    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if id(v) not in defined:
                if id(v) in producers:
                    p = producers[id(v)]
                    order = graph.nodes.index(p) > graph.nodes.index(node)
                    _fail(graph, node, f"operand {i} %{v.name} is produced later by "
                          f"{p.describe()}" + (" (a cycle)" if _on_cycle(graph, node) else
                                               " (nodes not in topological order)")
                          if order else f"operand {i} %{v.name} is not defined")
                _fail(graph, node, f"operand {i} %{v.name} is not defined in this graph "
                      f"(dangling use)")
            if node not in v.uses:
                _fail(graph, node, f"operand %{v.name} does not list this node as a use")
        for o in node.outputs:
            if o.producer is not node:
                _fail(graph, node, f"output %{o.name} does not name this node as producer")
            define(o, node)
        try:
            opdef = ops.get(node.op)
            attrs = opdef.complete_attrs(node.attrs, where=node.op)
            if attrs != node.attrs:
                _fail(graph, node, f"attributes {node.attrs} are not canonical ({attrs})")
            inferred = opdef.infer([v.type for v in node.inputs], node.attrs)
        except VerificationError:
            raise
        except IRError as e:
            _fail(graph, node, str(e))
        got = [o.type for o in node.outputs]
        if inferred != got:
            _fail(graph, node, f"{node.op} output types {', '.join(map(str, got))} do not match "
                  f"inferred {', '.join(map(str, inferred))}")

    for v in graph.values():
        counts = Counter(id(n) for n in v.uses)
        for n in v.uses:
            if id(n) not in in_graph:
                _fail(graph, None, f"value %{v.name} is used by {n.describe()}, which is not "
                      f"in the graph (dangling use)")
            if counts[id(n)] != sum(1 for x in n.inputs if x is v):
                _fail(graph, n, f"use-list of %{v.name} is out of date")
    for v in graph.outputs:
        if id(v) not in defined:
            _fail(graph, None, f"output %{v.name} is not defined in this graph")
    if not graph.outputs:
        _fail(graph, None, "graph has no outputs")
    reason = batch.check(graph)  # marked graphs only: re-infers at two other batches
    if reason:
        _fail(graph, None, f"batch marks do not hold: {reason}")


def _on_cycle(graph: Graph, node: Node) -> bool:
    import networkx as nx

    g = graph.to_networkx()
    try:
        nx.find_cycle(g, source=node)
        return True
    except nx.NetworkXNoCycle:
        return False
