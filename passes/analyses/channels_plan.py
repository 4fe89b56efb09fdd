"""A channel-pruning plan as data, what it removes, what it costs, and the oracle it must equal.

**The plan** (``PrunePlan``) is JSON: for each pruned group its id, anchor dim, size and the
sorted indices of the channels it *keeps*; plus how it was chosen (``meta``). Groups not
listed keep everything. Applying a plan to a graph re-runs the channel analysis, which is
deterministic, and checks every group against it (same anchor, same size, prunable), so a
plan saved from one graph cannot silently be applied to another::

    {"version": 1, "graph": "ResNet", "meta": {"criterion": "l1", "ratio": 0.5, ...},
     "groups": [{"id": 2, "anchor": "%conv2d_1:1", "size": 16, "keep": [0, 3, 4, ...],
                 "layers": ["layer1.0.conv1", ...]}, ...]}

**The oracle** (``zeroed_copy``): dropping channels is *defined* as feeding zeros for them
into every sink of their group — every place where the channel is summed away (a conv's or
linear's input channels, a matmul contraction, a ``sum``, the part of a slice not read).
This is "zeroing the producer at the point the group is defined": after the last op that
computes the channel before its consumers, so a batch norm's ``beta - mean * scale`` or a
bias added after the conv is zeroed too (zeroing the conv's filter would leave them).
``zeroed_copy`` builds it on a copy of the original graph with ``x * mask`` at each sink; the
pruned graph must compute the same outputs (checked in float64 by the tests).
``masked_copy`` is the same copy with all-ones masks: the Taylor and APoZ criteria and the
sensitivity analysis read activations and gradients at those masks.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...ir import ops
from ...ir.graph import Graph, IRError
from ...ir.types import TensorType, to_numpy_dtype
from .channels import ChannelAnalysis, Dim, Group

__all__ = ["PLAN_VERSION", "GroupPlan", "MaskSite", "PrunePlan", "masked_copy", "removed_indices",
           "shapes_after", "cost_after", "zeroed_copy"]

PLAN_VERSION = 1


@dataclass
class GroupPlan:
    id: int
    anchor: str
    size: int
    keep: tuple[int, ...]
    layers: tuple[str, ...] = ()

    @property
    def dropped(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.size), np.asarray(self.keep, np.int64))


@dataclass
class PrunePlan:
    """Which channels each group keeps. ``groups`` lists only groups that lose channels."""

    graph: str
    groups: list[GroupPlan] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_keep(cls, analysis: ChannelAnalysis, keep: dict[int, np.ndarray],
                  meta: dict[str, Any] | None = None) -> PrunePlan:
        groups = []
        for gid in sorted(keep):
            g = analysis.group(gid)
            k = tuple(sorted(int(i) for i in keep[gid]))
            if len(k) < g.size:
                groups.append(GroupPlan(gid, str(g.anchor), g.size, k, tuple(g.layers())))
        return cls(analysis.graph.name, groups, dict(meta or {}))

    # ------------------------------------------------------------ text
    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "graph": self.graph, "meta": self.meta,
                "groups": [{"id": g.id, "anchor": g.anchor, "size": g.size,
                            "keep": list(g.keep), "layers": list(g.layers)}
                           for g in self.groups]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunePlan:
        if d.get("version") != PLAN_VERSION:
            raise IRError(f"pruning plan version {d.get('version')!r}: this shrinkc reads "
                          f"version {PLAN_VERSION}")
        try:
            groups = [GroupPlan(int(g["id"]), str(g["anchor"]), int(g["size"]),
                                tuple(int(i) for i in g["keep"]),
                                tuple(str(n) for n in g.get("layers", ())))
                      for g in d["groups"]]
            return cls(str(d["graph"]), groups, dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise IRError(f"pruning plan: malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise IRError(f"pruning plan: not JSON ({e})") from None
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as e:
            raise IRError(f"pruning plan {path}: {e.strerror}") from None

    # ------------------------------------------------------------ meaning
    def resolve(self, analysis: ChannelAnalysis) -> list[tuple[Group, np.ndarray]]:
        """``(group, dropped channel indices)`` for every planned group, after checking the
        plan against ``analysis`` (an IRError names the first mismatch)."""
        out = []
        for gp in self.groups:
            try:
                g = analysis.group(gp.id)
            except KeyError:
                raise IRError(f"pruning plan: group {gp.id} ({gp.anchor}) does not exist in "
                              f"graph {analysis.graph.name}") from None
            if str(g.anchor) != gp.anchor or g.size != gp.size:
                raise IRError(f"pruning plan: group {gp.id} is {gp.anchor} with {gp.size} "
                              f"channels, but the graph's group {g.id} is {g.anchor} with "
                              f"{g.size} (a plan for another graph?)")
            if not g.prunable:
                raise IRError(f"pruning plan: {g.describe()} cannot be pruned: "
                              f"{'; '.join(g.reasons)}")
            keep = np.asarray(gp.keep, np.int64)
            if not len(keep) or keep.min() < 0 or keep.max() >= g.size or \
                    len(np.unique(keep)) != len(keep):
                raise IRError(f"pruning plan: group {gp.id} keeps {list(gp.keep)[:8]}…: "
                              f"needs 1 to {g.size} distinct indices in [0, {g.size})")
            out.append((g, np.setdiff1d(np.arange(g.size), keep)))
        return out

    @property
    def channels_removed(self) -> int:
        return sum(g.size - len(g.keep) for g in self.groups)


# ============================================================================ effects
def removed_indices(drops: list[tuple[Group, np.ndarray]]) -> dict[Dim, np.ndarray]:
    """For every dim that loses elements, the sorted indices it loses."""
    acc: dict[Dim, list[np.ndarray]] = defaultdict(list)
    for g, dropped in drops:
        if len(dropped):
            for d, rows in g.index.items():
                acc[d].append(rows[dropped].ravel())
    return {d: np.unique(np.concatenate(parts)) for d, parts in acc.items()}


def shapes_after(graph: Graph, removed: dict[Dim, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The new shape of every value that changes."""
    by_value: dict[str, list[int]] = {}
    for d, idx in removed.items():
        shape = by_value.setdefault(d.value, list(graph_value(graph, d.value).shape))
        shape[d.axis] -= len(idx)
    return {k: tuple(v) for k, v in by_value.items()}


def graph_value(graph: Graph, name: str):
    v = graph.constants.get(name)
    return v if v is not None else graph.value(name)


def cost_after(graph: Graph, removed: dict[Dim, np.ndarray]) -> tuple[int, int]:
    """(MACs, parameters) the graph would have with ``removed`` taken out."""
    shapes = shapes_after(graph, removed)

    def t(v) -> TensorType:
        return v.type.with_shape(shapes[v.name]) if v.name in shapes else v.type

    macs = 0
    for n in graph.nodes:
        macs += ops.get(n.op).macs([t(v) for v in n.inputs], [t(o) for o in n.outputs],
                                   n.attrs)
    params = sum(t(v).numel for v in graph.constants.values())
    return macs, params


# ============================================================================ masks
@dataclass
class MaskSite:
    """A ``mul(x, mask)`` inserted before operand ``operand`` of node ``node`` (by name);
    ``groups[gid]`` are the rows (``[size, m]``, -1 padded) of that group's channels."""

    mask: str
    value: str  # the operand masked
    node: str
    operand: int
    axis: int
    size: int
    groups: dict[int, np.ndarray] = field(default_factory=dict)


def masked_copy(graph: Graph, groups: list[Group]) -> tuple[Graph, list[MaskSite]]:
    """A copy of ``graph`` with an all-ones ``mask`` multiplied into every sink of ``groups``
    (one per node, operand and axis)."""
    g = graph.clone()
    by_name = {n.name: n for n in g.nodes}
    sites: dict[tuple[str, int, int], MaskSite] = {}
    for grp in groups:
        for s in grp.sinks:
            key = (s.node.name, s.operand, s.axis)
            if key not in sites:
                node = by_name[s.node.name]
                x = node.inputs[s.operand]
                shape = [1] * x.type.rank
                shape[s.axis] = x.shape[s.axis]
                m = g.add_constant(np.ones(shape, to_numpy_dtype(x.dtype)),
                                   g.fresh_name(f"{x.name}.mask"))
                mul = g.add_node("mul", [x, m], names=[g.fresh_name(f"{x.name}.masked")],
                                 before=node)
                g.set_input(node, s.operand, mul.output)
                sites[key] = MaskSite(m.name, x.name, node.name, s.operand, s.axis, x.shape[s.axis])
            sites[key].groups[grp.id] = s.index
    return g, list(sites.values())


def mask_values(sites: list[MaskSite], drops: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Mask contents (1 kept, 0 dropped) for ``drops`` (group id -> dropped channels)."""
    out = {}
    for s in sites:
        m = np.ones(s.size)
        for gid, rows in s.groups.items():
            if gid in drops and len(drops[gid]):
                idx = rows[drops[gid]].ravel()
                m[idx[idx >= 0]] = 0.0
        out[s.mask] = m
    return out


def zeroed_copy(graph: Graph, analysis: ChannelAnalysis, plan: PrunePlan) -> Graph:
    """The oracle: ``graph`` with the channels ``plan`` drops fed as zeros into every sink."""
    from ..rewrite import replace_data

    drops = plan.resolve(analysis)
    g, sites = masked_copy(graph, [grp for grp, _ in drops])
    values = mask_values(sites, {grp.id: d for grp, d in drops})
    for s in sites:
        c = g.constants[s.mask]
        replace_data(c, values[s.mask].reshape(c.shape).astype(c.data.dtype))
    return g
