"""Channel analysis: which channels must be pruned together, and which may never be.

Every axis of every value — graph inputs, constants, node results — is a *dim*
(``%conv2d_3:1``) and every index along it an *element*. Each op links, sinks or freezes the
elements of its operands and results through its rule in ``channels_rules.RULES`` (see there).
Linked elements are connected components of a networkx graph: a component is one channel
that can only be removed everywhere at once. Components touching exactly the same dims form
a **group**: one pruning unit with ``size`` channels (a residual chain, a concat's part, the
heads of an attention block, …).

A group is **refused** when any of its elements is frozen — by a rule (a softmax axis, a
mean over channels, a view that shuffles channels, an op without a rule), by being part of a
graph input or output, or by a constant with a storage encoding — and every refusal carries
the readable reasons. Groups without any sink or weight (batch, spatial axes) are not
channel groups and are only counted.

Channel ``j`` of a group has, in each member dim, the same number of elements
(``Group.index[dim][j]``); removing it removes those elements from every member: weight
rows and columns, biases, BN statistics, consumers' input channels. What that must equal is
stated by the oracle (``prune_plan.zeroed_copy``): the original graph with the dropped
channels fed as zeros into every sink.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ...ir.graph import Graph, Node, Value
from .channels_rules import RULES

__all__ = ["ChannelAnalysis", "Dim", "Group", "Sink", "analyze_channels"]


@dataclass(frozen=True, order=True)
class Dim:
    """Axis ``axis`` of value ``value`` (by name)."""

    value: str
    axis: int

    def __str__(self) -> str:
        return f"%{self.value}:{self.axis}"


@dataclass(frozen=True)
class Sink:
    """Operand ``operand`` of ``node`` is summed over ``axis``; ``index[j]`` are the indices
    along that axis of the group's channel ``j`` that are summed here."""

    node: Node
    operand: int
    axis: int
    index: np.ndarray = field(compare=False, repr=False)

    @property
    def value(self) -> Value:
        return self.node.inputs[self.operand]


@dataclass
class Group:
    """``size`` channels that touch the same dims; ``index[dim]`` is a ``[size, m]`` array of
    the indices along ``dim`` that belong to each channel (sorted by the anchor's)."""

    id: int
    anchor: Dim
    members: list[Dim]
    index: dict[Dim, np.ndarray]
    reasons: list[str]
    sinks: list[Sink]
    roles: dict[Dim, str]
    nodes: list[Node]  # every node one of whose operands or results is a member

    @property
    def size(self) -> int:
        return len(self.index[self.anchor])

    @property
    def prunable(self) -> bool:
        return not self.reasons

    def names(self) -> list[str]:
        """Node names and locs, for matching per-layer overrides."""
        out = []
        for n in self.nodes:
            out.append(n.name)
            if n.loc:
                out.append(n.loc)
        return out

    def layers(self) -> list[str]:
        """The weighted layers (conv, linear, matmul, norms) among ``nodes``: loc or name."""
        return list(dict.fromkeys(n.loc or n.name for n in self.nodes if n.op in _LAYER_OPS))

    def describe(self) -> str:
        layers = ", ".join(dict.fromkeys(n.describe() for n in self.nodes
                                         if n.op in _LAYER_OPS)) or "no weighted layer"
        s = "" if self.size == 1 else "s"
        return f"group {self.id} ({self.size} channel{s} at {self.anchor}; layers: {layers})"


_LAYER_OPS = frozenset({"conv2d", "conv_transpose2d", "linear", "matmul", "embedding",
                        "batch_norm", "group_norm"})


@dataclass
class ChannelAnalysis:
    graph: Graph
    groups: list[Group]  # the channel groups, prunable and refused, in anchor order
    other_groups: int = 0  # components without a sink or weight (batch, spatial, …)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def refused(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    def group(self, gid: int) -> Group:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(f"no channel group {gid} in graph {self.graph.name}")

    def explain(self, members: bool = True) -> str:
        """Every group with its members, sinks and (for refused ones) every reason."""
        lines = [f"channel groups of graph {self.graph.name}: {len(self.prunable)} prunable, "
                 f"{len(self.refused)} refused ({self.other_groups} non-channel components "
                 f"not listed)"]
        for g in self.groups:
            state = "prunable" if g.prunable else "REFUSED"
            lines.append(f"{g.describe()}: {state}")
            for r in g.reasons:
                lines.append(f"    refused: {r}")
            if members:
                lines.append("    members: " + ", ".join(
                    f"{d}" + (f"[{g.roles[d]}]" if d in g.roles else "") for d in g.members))
                if g.sinks:
                    lines.append("    sinks: " + ", ".join(
                        f"{s.node.describe()} operand {s.operand}" for s in g.sinks))
        return "\n".join(lines)


# ============================================================================ building
class _Couplings:
    """What a rule sees: the node, and the verbs of ``channels_rules``. Collects links,
    sinks, frozen elements and roles for the whole graph."""

    def __init__(self, graph: Graph):
        self.base: dict[tuple[int, int], int] = {}
        self.dim_index: dict[tuple[int, int], int] = {}
        self.dims: list[tuple[Value, int]] = []
        n = 0
        for v in graph.values():
            for ax, size in enumerate(v.shape):
                self.base[(id(v), ax)] = n
                self.dim_index[(id(v), ax)] = len(self.dims)
                self.dims.append((v, ax))
                n += size
        self.n = n
        self.same_dims: list[tuple[int, int]] = []  # identity links between whole dims
        self.links: list[tuple[np.ndarray, np.ndarray]] = []  # explicit element pairs
        self.reason = np.full(n, -1, np.int64)
        self.reasons: list[str] = []
        self.marked = np.zeros(n, bool)  # a sink or a weight role: a channel group
        self.sinks: list[tuple[Node, int, int, np.ndarray]] = []
        self.roles: dict[tuple[int, int], str] = {}
        self.node: Node | None = None
        self.covered: set[tuple[int, int]] = set()

    # ------------------------------------------------------------ the rule verbs
    def x(self, k: int) -> Value:
        return self.node.inputs[k]

    def out(self, k: int = 0) -> Value:
        return self.node.outputs[k]

    def ids(self, v: Value, ax: int, idx=None) -> np.ndarray:
        ax = ax % v.type.rank
        base = self.base[(id(v), ax)]
        if idx is None:
            return base + np.arange(v.shape[ax])
        return base + np.asarray(idx, dtype=np.int64)

    def _cover(self, v: Value, ax: int) -> None:
        self.covered.add((id(v), ax % v.type.rank))

    def same(self, a: Value, ax: int, b: Value, bx: int) -> None:
        if a.shape[ax] != b.shape[bx]:
            raise ValueError(f"{self.node.describe()}: rule links %{a.name}:{ax} "
                             f"({a.shape[ax]}) to %{b.name}:{bx} ({b.shape[bx]})")
        self._cover(a, ax)
        self._cover(b, bx)
        self.same_dims.append((self.dim_index[(id(a), ax % a.type.rank)],
                               self.dim_index[(id(b), bx % b.type.rank)]))

    def pairs(self, a: Value, ax: int, ai, b: Value, bx: int, bi) -> None:
        self._cover(a, ax)
        self._cover(b, bx)
        self.links.append((self.ids(a, ax, ai), self.ids(b, bx, bi)))

    def freeze(self, v: Value, ax: int, reason: str, idx=None) -> None:
        self._cover(v, ax)
        self._freeze(self.ids(v, ax, idx), f"{self.node.describe()} ({self.node.op}): {reason}")

    def _freeze(self, ids: np.ndarray, reason: str) -> None:
        ids = ids[self.reason[ids] < 0]
        if len(ids):
            self.reasons.append(reason)
            self.reason[ids] = len(self.reasons) - 1

    def free(self, v: Value, ax: int) -> None:
        self._cover(v, ax)

    def sink(self, k: int, ax: int, idx=None) -> None:
        v = self.node.inputs[k]
        self._cover(v, ax)
        ids = self.ids(v, ax, idx)
        self.marked[ids] = True
        self.sinks.append((self.node, k, ax % v.type.rank, ids))

    def role(self, v: Value, ax: int, role: str) -> None:
        self._cover(v, ax)
        self.roles.setdefault((id(v), ax % v.type.rank), role)
        self.marked[self.ids(v, ax)] = True

    # ------------------------------------------------------------ the whole graph
    def run(self, graph: Graph) -> None:
        for node in graph.nodes:
            self.node, self.covered = node, set()
            rule = RULES.get(node.op)
            if rule is None:
                for v in list(node.inputs) + list(node.outputs):
                    for ax in range(v.type.rank):
                        self.freeze(v, ax, "op has no channel rule")
                continue
            rule.couple(self)
            for v in list(node.inputs) + list(node.outputs):
                for ax in range(v.type.rank):
                    if (id(v), ax) not in self.covered:
                        self.freeze(v, ax, f"the {node.op} rule does not cover axis {ax} of "
                                           f"%{v.name}")
        for v in graph.inputs:
            self._freeze_value(v, f"graph input %{v.name}")
        for v in graph.outputs:
            self._freeze_value(v, f"graph output %{v.name}")
        for v in graph.constants.values():
            if v.encoding is not None:
                self._freeze_value(v, f"constant %{v.name} has a storage encoding "
                                      f"({v.encoding})")

    def _freeze_value(self, v: Value, reason: str) -> None:
        for ax in range(v.type.rank):
            self._freeze(self.ids(v, ax), reason)


def _components(c: _Couplings) -> np.ndarray:
    """The connected component of every element. Dims linked by identity are merged first
    (one networkx graph over dims), so the element graph holds only the explicit pairs."""
    nd = len(c.dims)
    sizes = np.array([v.shape[ax] for v, ax in c.dims], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if nd else sizes
    dg = nx.Graph()
    dg.add_nodes_from(range(nd))
    dg.add_edges_from(c.same_dims)
    rep = np.arange(nd)
    for members in nx.connected_components(dg):
        m = sorted(members)
        rep[m] = m[0]
    dim_of = np.repeat(np.arange(nd), sizes)
    elem = np.arange(c.n, dtype=np.int64)
    rep_elem = starts[rep[dim_of]] + (elem - starts[dim_of])
    eg = nx.Graph()
    eg.add_nodes_from(np.unique(rep_elem).tolist())
    for a, b in c.links:
        eg.add_edges_from(zip(rep_elem[a].tolist(), rep_elem[b].tolist()))
    comp_of_rep = np.full(c.n, -1, np.int64)
    for i, members in enumerate(nx.connected_components(eg)):
        comp_of_rep[np.fromiter(members, np.int64, len(members))] = i
    return comp_of_rep[rep_elem], dim_of, starts


def analyze_channels(graph: Graph) -> ChannelAnalysis:
    """The channel groups of ``graph`` (see the module docstring)."""
    c = _Couplings(graph)
    c.run(graph)
    comp, dim_of, starts = _components(c)
    frozen = c.reason >= 0
    ncomp = int(comp.max()) + 1 if c.n else 0
    marked = np.zeros(ncomp, bool)
    marked[comp[c.marked]] = True
    # the elements of each channel component, sorted by component then element
    sel = np.flatnonzero(marked[comp])
    sel = sel[np.argsort(comp[sel], kind="stable")]
    cuts = np.flatnonzero(np.diff(comp[sel])) + 1
    comps = dict(zip(comp[sel[np.r_[0, cuts]]].tolist(), np.split(sel, cuts))) if len(sel) \
        else {}
    other = ncomp - len(comps)

    # components with the same dims (and multiplicities) form a group
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for i, ids in comps.items():
        dims_, counts = np.unique(dim_of[ids], return_counts=True)
        sig = (bool(frozen[ids].any()), tuple(dims_.tolist()), tuple(counts.tolist()))
        by_signature[sig].append(i)

    node_pos = {id(n): i for i, n in enumerate(graph.nodes)}
    users: dict[int, list[Node]] = defaultdict(list)
    for n in graph.nodes:
        for v in n.inputs:
            users[id(v)].append(n)

    def position(d: int) -> tuple[int, int]:
        """Graph order: a result at its producer, a constant at its first user."""
        v, ax = c.dims[d]
        if v.producer is not None:
            return (node_pos[id(v.producer)], d)
        first = min((node_pos[id(u)] for u in users[id(v)]), default=-1)
        return (first if v.is_constant else -1, d)

    raw = []
    for (is_frozen, dims, _), cids in by_signature.items():
        dims = sorted(dims, key=position)
        anchor = next((d for d in dims if c.dims[d][0].producer is not None), dims[0])
        first = {i: int(comps[i][dim_of[comps[i]] == anchor][0]) for i in cids}
        cids.sort(key=first.__getitem__)
        ids = np.concatenate([comps[i] for i in cids])
        chan = np.repeat(np.arange(len(cids)), [len(comps[i]) for i in cids])
        order = np.lexsort((ids, chan, dim_of[ids]))  # by dim, then channel, then element
        ids, chan, dd = ids[order], chan[order], dim_of[ids[order]]
        index = {}
        for d in dims:
            lo, hi = np.searchsorted(dd, d), np.searchsorted(dd, d, side="right")
            index[d] = (ids[lo:hi] - starts[d]).reshape(len(cids), -1)
        reasons = []
        if is_frozen:
            reasons = list(dict.fromkeys(
                c.reasons[r] for r in dict.fromkeys(c.reason[ids[frozen[ids]]].tolist())))
        raw.append((position(anchor), anchor, dims, index, reasons, set(cids)))
    raw.sort(key=lambda r: r[0])

    cid_group = {}
    groups: list[Group] = []
    for gid, (_, anchor, dims, index, reasons, cids) in enumerate(raw):
        for i in cids:
            cid_group[i] = gid
        to_dim = {d: Dim(c.dims[d][0].name, c.dims[d][1]) for d in dims}
        nodes = []
        for d in dims:
            v = c.dims[d][0]
            if v.producer is not None:
                nodes.append(v.producer)
            nodes.extend(users[id(v)])
        nodes = sorted({id(n): n for n in nodes}.values(), key=lambda n: node_pos[id(n)])
        roles = {to_dim[d]: c.roles[(id(c.dims[d][0]), c.dims[d][1])] for d in dims
                 if (id(c.dims[d][0]), c.dims[d][1]) in c.roles}
        groups.append(Group(gid, to_dim[anchor], [to_dim[d] for d in dims],
                            {to_dim[d]: index[d] for d in dims}, reasons, [], roles, nodes))

    # each sink belongs to the groups of its elements
    for node, k, ax, ids in c.sinks:
        for gid in sorted({cid_group[i] for i in comp[ids].tolist() if i in cid_group}):
            grp = groups[gid]
            v = node.inputs[k]
            d = Dim(v.name, ax)
            local = set((ids - c.base[(id(v), ax)]).tolist())
            rows = grp.index[d]
            mask = np.isin(rows, list(local))
            grp.sinks.append(Sink(node, k, ax, np.where(mask, rows, -1)))
    return ChannelAnalysis(graph, groups, other)
