"""The IR's data structures: Value, Node, Graph.

A ``Value`` is an SSA value: a graph input (no producer, no data), a constant (a weight:
``data`` holds a numpy array), or the result of a ``Node``. A ``Node`` applies an op from
the op table (``ir.ops``) to input values and defines output values. A ``Graph`` keeps its
nodes in topological order and is changed only through a few verbs that keep use-lists
right: ``add_node``, ``add_constant``, ``add_input``, ``set_input``, ``replace_all_uses``,
``erase``, ``rename``, ``toposort``, ``dce``, ``clone``, ``fresh_name``.

Verbs for physical rewrites — those that may change a value's type — are implemented in
``ir/edit.py`` and exposed here: ``replace_constant(s)`` (new data of another shape or
dtype), ``add_operand`` / ``remove_operand``, ``set_attrs`` (checked by the op table) and
``reinfer`` (types re-inferred forward; atomic, errors name the node).

``Value.uses`` lists the user nodes, one entry per operand occurrence; ``Value.use_sites``
gives the same uses as ``(node, operand_index)`` pairs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import edit, ops
from .errors import IRError
from .types import TensorType, dtype_from_numpy

__all__ = ["Graph", "IRError", "Node", "Value", "array_digest"]


class Value:
    """An SSA value. ``data`` is set for constants; ``producer`` for node results."""

    __slots__ = ("name", "type", "producer", "uses", "data", "encoding", "meta")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None,
                 data: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.uses: list[Node] = []  # one entry per operand occurrence
        self.data = data
        # How a constant is stored (masked, sparse, codebook, …); None = dense.
        # See ir/encoding.py. The dense view is always ``data``.
        self.encoding = None
        self.meta: dict[str, Any] = {}

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def use_sites(self) -> list[tuple[Node, int]]:
        """Every use as ``(node, operand_index)``, in ``uses`` order: ``add(%x, %x)`` gives
        two. Derived from ``uses`` and the users' operands, so exact whenever the use-lists
        are (every verb keeps them; the verifier checks them)."""
        return [(n, i) for n in dict.fromkeys(self.uses)
                for i, v in enumerate(n.inputs) if v is self]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def nbytes(self) -> int:
        """Bytes this value takes in storage (its encoding's size for coded constants)."""
        if self.encoding is not None:
            return self.encoding.nbytes(self)
        return self.type.nbytes

    def digest(self) -> str:
        """A short content hash of a constant (dtype, shape and bytes)."""
        if self.data is None:
            raise IRError(f"value %{self.name} is not a constant")
        return array_digest(self.data)

    def __repr__(self) -> str:
        kind = "const " if self.is_constant else ""
        return f"<Value {kind}%{self.name}: {self.type}>"


def array_digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:12]


class Node:
    """One op applied to input values, defining output values."""

    __slots__ = ("op", "inputs", "outputs", "attrs", "meta")

    def __init__(self, op: str, inputs: Sequence[Value], outputs: Sequence[Value],
                 attrs: dict[str, Any] | None = None, meta: dict[str, Any] | None = None):
        self.op = op
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.meta = dict(meta or {})

    @property
    def name(self) -> str:
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.describe()} has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def loc(self) -> str | None:
        return self.meta.get("loc")

    def describe(self) -> str:
        """``conv2d_3 (layer2.0.conv1)``: how errors name a node."""
        return f"{self.name} ({self.loc})" if self.loc else self.name

    def __repr__(self) -> str:
        return f"<Node {self.op} {self.describe()}>"


_NAME_RE = re.compile(r"[^A-Za-z0-9_.\-]")


class Graph:
    """A dataflow graph: inputs, constants, nodes in topological order, outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()

    # ---------------------------------------------------------------- names
    def fresh_name(self, base: str = "v") -> str:
        """A name not yet used in this graph, derived from ``base``."""
        base = _NAME_RE.sub("_", base) or "v"
        if base not in self._names:
            return base
        m = re.match(r"^(.*?)(?:_(\d+))?$", base)
        stem, i = m.group(1), int(m.group(2) or 0)
        while f"{stem}_{i + 1}" in self._names:
            i += 1
        return f"{stem}_{i + 1}"

    def _claim(self, name: str | None, base: str) -> str:
        if name is None:
            name = self.fresh_name(base)
        elif name in self._names:
            raise IRError(f"name %{name} is already defined in graph {self.name}")
        self._names.add(name)
        return name

    def values(self) -> Iterable[Value]:
        """Every value: inputs, constants, node outputs."""
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(f"no value %{name} in graph {self.name}")

    def node(self, name: str) -> Node:
        """The node that defines value ``name`` (or whose loc is ``name``)."""
        for n in self.nodes:
            if any(o.name == name for o in n.outputs):
                return n
        for n in self.nodes:
            if n.loc == name:
                return n
        raise KeyError(f"no node {name} in graph {self.name}")

    # ---------------------------------------------------------------- building
    def add_input(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(self._claim(name, "input"), type)
        self.inputs.append(v)
        return v

    def add_constant(self, data, name: str | None = None) -> Value:
        """A constant (weight) holding ``data`` (numpy array or anything np.asarray takes)."""
        arr = np.asarray(data)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        v = Value(self._claim(name, "const"), TensorType(dtype_from_numpy(arr.dtype), arr.shape),
                  data=arr)
        self.constants[v.name] = v
        return v

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None, *,
                 names: Sequence[str | None] | str | None = None,
                 types: Sequence[TensorType] | None = None, loc: str | None = None,
                 meta: dict[str, Any] | None = None, before: Node | None = None,
                 after: Node | None = None) -> Node:
        """Append (or insert before/after a node) ``op(inputs) {attrs}``.

        Output types are inferred from the op table unless ``types`` is given. Attributes
        are completed with the op's defaults.
        """
        opdef = ops.get(op)
        attrs = opdef.complete_attrs(attrs or {}, where=op)
        if types is None:
            types = opdef.infer([v.type for v in inputs], attrs)
        if isinstance(names, str):
            names = [names]
        names = list(names) if names is not None else [None] * len(types)
        if len(names) != len(types):
            raise IRError(f"{op}: {len(names)} names given for {len(types)} outputs")
        meta = dict(meta or {})
        if loc is not None:
            meta["loc"] = loc
        node = Node(op, inputs, [], attrs, meta)
        node.outputs = [Value(self._claim(n, op), t, producer=node) for n, t in zip(names, types)]
        for v in inputs:
            v.uses.append(node)
        if before is not None:
            self.nodes.insert(self.nodes.index(before), node)
        elif after is not None:
            self.nodes.insert(self.nodes.index(after) + 1, node)
        else:
            self.nodes.append(node)
        return node

    # ---------------------------------------------------------------- rewriting
    def set_input(self, node: Node, index: int, value: Value) -> None:
        """Make operand ``index`` of ``node`` be ``value``."""
        old = node.inputs[index]
        old.uses.remove(node)
        node.inputs[index] = value
        value.uses.append(node)

    def replace_all_uses(self, old: Value, new: Value, exclude: Iterable[Node] = ()) -> None:
        """Every use of ``old`` (operands and graph outputs) now uses ``new`` — except uses
        by the nodes in ``exclude`` (e.g. the node that computes ``new`` from ``old``)."""
        if old is new:
            return
        skip = {id(n) for n in exclude}
        for node in list(dict.fromkeys(old.uses)):
            if id(node) in skip:
                continue
            for i, v in enumerate(node.inputs):
                if v is old:
                    node.inputs[i] = new
                    new.uses.append(node)
                    old.uses.remove(node)
        self.outputs = [new if v is old else v for v in self.outputs]

    def rename(self, value: Value, name: str) -> None:
        """Give ``value`` an unused ``name`` (a constant keeps its place in the table)."""
        if name == value.name:
            return
        if name in self._names:
            raise IRError(f"cannot rename %{value.name} to %{name}: the name is taken")
        if value.is_constant and self.constants.get(value.name) is value:
            self.constants = {(name if k == value.name else k): v
                              for k, v in self.constants.items()}
        self._names.discard(value.name)
        self._names.add(name)
        value.name = name

    def erase(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for o in node.outputs:
            if o.uses or o in self.outputs:
                user = o.uses[0].describe() if o.uses else "the graph output"
                raise IRError(f"cannot erase {node.describe()}: %{o.name} is used by {user}")
        for v in node.inputs:
            v.uses.remove(node)
        self.nodes.remove(node)
        for o in node.outputs:
            self._names.discard(o.name)

    def remove_constant(self, value: Value) -> None:
        if value.uses or value in self.outputs:
            raise IRError(f"cannot remove constant %{value.name}: still used")
        del self.constants[value.name]
        self._names.discard(value.name)

    def toposort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where it can)."""
        import networkx as nx

        order = {id(n): i for i, n in enumerate(self.nodes)}
        g = self.to_networkx(values=False)
        try:
            nodes = list(nx.lexicographical_topological_sort(g, key=lambda n: order[id(n)]))
        except nx.NetworkXUnfeasible as e:
            cycle = nx.find_cycle(g)
            names = " -> ".join(a.describe() for a, *_ in cycle)
            raise IRError(f"graph {self.name} has a cycle: {names}") from e
        self.nodes = nodes

    def dce(self) -> int:
        """Remove nodes and constants that no output depends on. Returns how many."""
        removed = 0
        live = set(id(v) for v in self.outputs)
        keep = []
        for node in reversed(self.nodes):
            if any(id(o) in live for o in node.outputs):
                keep.append(node)
                live.update(id(v) for v in node.inputs)
            else:
                for v in node.inputs:
                    v.uses.remove(node)
                for o in node.outputs:
                    self._names.discard(o.name)
                removed += 1
        self.nodes = keep[::-1]
        for v in list(self.constants.values()):
            if not v.uses and v not in self.outputs:
                self.remove_constant(v)
                removed += 1
        return removed

    def clone(self, share_data: bool = False) -> Graph:
        """A deep copy. Constant arrays are copied unless ``share_data``."""
        g = Graph(self.name)
        g.meta = dict(self.meta)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            nv = g.add_input(v.type, v.name)
            nv.meta = dict(v.meta)
            vmap[id(v)] = nv
        for v in self.constants.values():
            nv = g.add_constant(v.data if share_data else v.data.copy(), v.name)
            nv.encoding, nv.meta = v.encoding, dict(v.meta)
            vmap[id(v)] = nv
        for n in self.nodes:
            nn_ = g.add_node(n.op, [vmap[id(v)] for v in n.inputs], n.attrs,
                             names=[o.name for o in n.outputs], types=[o.type for o in n.outputs],
                             meta=n.meta)
            for o, no in zip(n.outputs, nn_.outputs):
                no.meta = dict(o.meta)
                vmap[id(o)] = no
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    # ---------------------------------------------------------------- views
    @property
    def num_params(self) -> int:
        return sum(v.type.numel for v in self.constants.values())

    def to_networkx(self, values: bool = True):
        """A ``networkx.MultiDiGraph`` with one edge per operand.

        Vertices: every ``Node`` (attributes ``kind="node"``, ``op``) and, unless ``values``
        is False, every graph input and constant ``Value`` (``kind="input"`` /
        ``"constant"``). Edge from the operand's producer (or from the input / constant
        itself) to the user, keyed by the operand index, with attributes ``value`` (the
        ``Value``) and ``index``. ``g.graph["outputs"]`` lists the graph's output values.
        """
        import networkx as nx

        g = nx.MultiDiGraph(outputs=list(self.outputs))
        if values:
            g.add_nodes_from(self.inputs, kind="input")
            g.add_nodes_from(self.constants.values(), kind="constant")
        for n in self.nodes:
            g.add_node(n, kind="node", op=n.op)
        for n in self.nodes:
            for i, v in enumerate(n.inputs):
                src = v.producer if v.producer is not None else v if values else None
                if src is not None:
                    g.add_edge(src, n, key=i, value=v, index=i)
        return g

    # ---------------------------------------------------------------- physical rewrites
    # (implemented in ir/edit.py; see its docstring for the contract)
    def replace_constants(self, arrays, *, drop_encoding: bool = False,
                          reinfer: bool = True) -> list[Node]:
        """New data (any shape/dtype) for constants ``{value: array}``; types re-inferred
        forward, atomically. Returns the nodes whose output types changed."""
        return edit.replace_constants(self, arrays, drop_encoding=drop_encoding, reinfer=reinfer)

    def replace_constant(self, value: Value, array, *, drop_encoding: bool = False,
                         reinfer: bool = True) -> list[Node]:
        """``replace_constants`` for one constant."""
        return edit.replace_constant(self, value, array, drop_encoding=drop_encoding,
                                     reinfer=reinfer)

    def add_operand(self, node: Node, value: Value, index: int | None = None, *,
                    reinfer: bool = True) -> list[Node]:
        """Insert ``value`` as operand ``index`` of ``node`` (append when None)."""
        return edit.add_operand(self, node, value, index, reinfer=reinfer)

    def remove_operand(self, node: Node, index: int, *, reinfer: bool = True) -> Value:
        """Remove operand ``index`` of ``node``; returns the value that was there."""
        return edit.remove_operand(self, node, index, reinfer=reinfer)

    def set_attrs(self, node: Node, attrs: dict[str, Any], *, reinfer: bool = True
                  ) -> list[Node]:
        """Update attributes of ``node``, checked against the op table."""
        return edit.set_attrs(self, node, attrs, reinfer=reinfer)

    def reinfer(self, *starts: Node | Value) -> list[Node]:
        """Re-infer types from ``starts`` (nodes, or values standing for their users)
        forward. Returns the nodes whose output types changed."""
        return edit.reinfer(self, *starts)

    def with_batch(self, n: int) -> Graph:
        """A copy at nominal batch ``n`` (``ir.batch.specialize``): the batch inputs at dim 0
        = ``n``, types re-inferred. A static-batch graph raises ``BatchError`` saying why."""
        from .batch import specialize

        return specialize(self, n)

    def __str__(self) -> str:
        from .text import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return (f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, "
                f"{len(self.constants)} constants>")
