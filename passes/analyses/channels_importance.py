"""Channel importance: one score per channel of a group (higher = keep), summed over the group.

* ``l1`` / ``l2`` — the norm of the channel's filters (Li et al. 2017): every weight of the
  group whose axis is a filter (``"out"`` role: conv / linear rows, a transposed conv's
  columns, an embedding's columns), all of them taken as one filter: ``sum |w|`` or
  ``sqrt(sum w**2)``. A group with no filter (only consumers' columns) uses those columns.
* ``bn-scale`` — ``|gamma|`` of the group's batch / group norms, summed (Network Slimming,
  Liu et al. 2017). A group without one falls back to ``l1`` (counted in ``fallback_l1``).
* ``taylor`` — first-order Taylor expansion of the loss (Molchanov et al. 2017) for
  removing the channel *where it is removed*: at every sink a mask ``m`` multiplies the
  input, and ``dL/dm`` summed over the channel's elements is the first-order change of the
  loss when the channel is fed as zeros. ``|dL/dm|`` is averaged over the calibration
  batches. No labels are needed: the loss is the cross-entropy against the model's own
  top-1 (2-D outputs) or half the squared output norm.
* ``apoz`` — ``1 - APoZ``: the share of non-zero activations reaching the sinks (Hu et al.
  2016; meaningful after a ReLU, where zeros are common), over the calibration batches.
* ``random`` — uniform scores from the pass's seeded ``rng`` (a baseline).

Activation criteria read ``ctx.calibration`` (batches like the example inputs), else the
example inputs, else seeded random inputs. A batch larger than the graph's batch is split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ...ir.errors import IRError
from ...ir.graph import Graph
from ...ir.interpreter import bind_inputs, run
from .channels import ChannelAnalysis, Group
from .channels_plan import masked_copy

__all__ = ["CRITERIA", "batches", "scores"]

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn-scale", "taylor", "apoz", "random")


def scores(analysis: ChannelAnalysis, groups: Sequence[Group], criterion: str, ctx,
           stats: dict | None = None) -> dict[int, np.ndarray]:
    """``{group id: scores[size]}`` for ``groups`` under ``criterion``."""
    stats = stats if stats is not None else {}
    graph = analysis.graph
    if criterion in ("l1", "l2"):
        return {g.id: _weight_norm(graph, g, criterion) for g in groups}
    if criterion == "bn-scale":
        out = {}
        for g in groups:
            s = _bn_scale(graph, g)
            if s is None:
                stats["fallback_l1"] = stats.get("fallback_l1", 0) + 1
                log.debug("bn-scale: %s has no normalization scale; using l1", g.describe())
                s = _weight_norm(graph, g, "l1")
            out[g.id] = s
        return out
    if criterion in ("taylor", "apoz"):
        return _activation_scores(graph, groups, criterion, ctx)
    if criterion == "random":
        return {g.id: ctx.rng.random(g.size) for g in groups}
    raise IRError(f"unknown pruning criterion {criterion!r} (known: {', '.join(CRITERIA)})")


def _per_element(graph: Graph, g: Group, role: str, square: bool) -> list[np.ndarray]:
    """For each constant member with ``role``: per channel, sum of |w| (or w**2)."""
    out = []
    for d, r in g.roles.items():
        v = graph.constants.get(d.value)
        if r != role or v is None:
            continue
        a = np.moveaxis(v.data.astype(np.float64), d.axis, 0).reshape(v.shape[d.axis], -1)
        e = (a * a).sum(1) if square else np.abs(a).sum(1)
        out.append(e[g.index[d]].sum(1))
    return out


def _weight_norm(graph: Graph, g: Group, criterion: str) -> np.ndarray:
    square = criterion == "l2"
    parts = _per_element(graph, g, "out", square) or _per_element(graph, g, "in", square)
    if not parts:
        return np.zeros(g.size)
    total = np.sum(parts, axis=0)
    return np.sqrt(total) if square else total


def _bn_scale(graph: Graph, g: Group) -> np.ndarray | None:
    parts = _per_element(graph, g, "bn", square=False)
    return np.sum(parts, axis=0) if parts else None


def batches(graph: Graph, ctx) -> list[list[torch.Tensor]]:
    """Input batches for activation criteria, each fitting the graph's input types."""
    source = list(ctx.calibration) if ctx.calibration is not None else [ctx.inputs_for(graph)]
    out = []
    for b in source:
        try:
            out.append(bind_inputs(graph, b))
            continue
        except IRError:
            pass
        xs = b if isinstance(b, (list, tuple)) else [b]
        xs = [torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
              for x in xs]
        n = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else 1
        if len(xs) != len(graph.inputs) or any(tuple(x.shape[1:]) != v.shape[1:] or x.shape[0] % n
                                               for x, v in zip(xs, graph.inputs)):
            raise IRError(f"calibration batch of shapes {[tuple(x.shape) for x in xs]} does not "
                          f"fit the graph's inputs {[str(v.type) for v in graph.inputs]}")
        for i in range(0, xs[0].shape[0], n):
            out.append(bind_inputs(graph, [x[i:i + n] for x in xs]))
    return out


def _loss(y: torch.Tensor) -> torch.Tensor:
    if y.dim() == 2 and y.shape[1] > 1:
        return torch.nn.functional.cross_entropy(y, y.detach().argmax(1), reduction="sum")
    return 0.5 * (y * y).sum()


def _activation_scores(graph: Graph, groups: Sequence[Group], criterion: str, ctx
                       ) -> dict[int, np.ndarray]:
    masked, sites = masked_copy(graph, list(groups))
    acc = {g.id: np.zeros(g.size) for g in groups}
    if not sites:  # no group is summed anywhere: every channel scores the same
        return acc
    data = batches(graph, ctx)
    for xs in data:
        if criterion == "taylor":
            params = {s.mask: torch.ones(masked.constants[s.mask].shape,
                                         dtype=torch.float64 if masked.constants[s.mask].dtype
                                         == "f64" else torch.float32, requires_grad=True)
                      for s in sites}
            ys = run(masked, xs, params=params)
            sum(_loss(y) for y in ys if y.is_floating_point()).backward()
            per_site = {s.mask: params[s.mask].grad.detach().double().reshape(-1).numpy()
                        for s in sites}
        else:
            with torch.no_grad():
                _, cap = run(masked, xs, capture=[s.value for s in sites])
            per_site = {}
            for s in sites:
                t = cap[s.value].detach()
                nz = (t != 0).double().movedim(s.axis, 0).reshape(t.shape[s.axis], -1)
                per_site[s.mask] = nz.mean(1).numpy()
        for g in groups:
            total, count = np.zeros(g.size), np.zeros(g.size)
            for s in sites:
                rows = s.groups.get(g.id)
                if rows is None:
                    continue
                vals = np.where(rows >= 0, per_site[s.mask][np.maximum(rows, 0)], 0.0)
                total += vals.sum(1)
                count += (rows >= 0).sum(1)
            if criterion == "taylor":
                acc[g.id] += np.abs(total)
            else:
                acc[g.id] += total / np.maximum(count, 1)
    return {gid: a / max(len(data), 1) for gid, a in acc.items()}
