"""Channel-pruning policy: how many channels of which group go, given the importance scores.

* **uniform** (``scope=local``): every prunable group drops ``floor(ratio * size)`` of its
  lowest-scored channels;
* **global threshold** (``scope=global``): scores are divided by their group's mean (so
  groups of different scale compare), and the lowest ``ratio`` of all prunable channels go,
  each group keeping at least ``max(1, round_to)``;
* **per-layer overrides** (``"pattern=ratio"``, fnmatch on the names and locs of a group's
  nodes, first match wins) set a group's own ratio in either scope (``=0`` protects it);
* **MACs / params target**: the ratio (local or global) is bisected until the pruned graph
  keeps at most that fraction of the original (computed from the shapes, not by pruning);
* **sensitivity** (``max_error``): each group is pruned alone at each of the
  ``sensitivity_ratios`` (through the oracle: its dropped channels fed as zeros), the
  output error (rel-L2 over the batches) is recorded, and each group gets the largest ratio
  whose error is at most ``max_error``. The data is the ``prune-sensitivity`` artifact
  (``Sensitivity.to_dict``); ``plot_sensitivity`` draws it.

Every group finally keeps a multiple of ``round_to`` channels (rounded up, at most all).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...ir.graph import Graph
from ...ir.interpreter import run
from . import channels_importance as importance
from .channels import ChannelAnalysis, Group
from .channels_plan import PrunePlan, cost_after, mask_values, masked_copy, removed_indices

__all__ = ["Sensitivity", "choose", "keep_count", "plot_sensitivity", "select", "sensitivity"]


def keep_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Channels a group of ``size`` keeps at ``ratio``: at least one (and ``round_to``), a
    multiple of ``round_to`` (rounded up), at most ``size``."""
    keep = size - math.floor(ratio * size + 1e-9)
    keep = math.ceil(keep / round_to) * round_to
    return min(size, max(keep, round_to, 1))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores (ties: the lower index), sorted."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:k])


def override_ratios(groups: list[Group], overrides: tuple[str, ...]) -> dict[int, float]:
    out = {}
    parsed = [(o.rpartition("=")[0], float(o.rpartition("=")[2])) for o in overrides]
    for g in groups:
        names = g.names()
        for pattern, r in parsed:
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                out[g.id] = r
                break
    return out


def select(groups: list[Group], scores: dict[int, np.ndarray], ratio: float, *,
           scope: str = "local", round_to: int = 1,
           ratios: dict[int, float] | None = None) -> dict[int, np.ndarray]:
    """Kept channel indices per group. ``ratios`` (per-layer overrides, sensitivity) set a
    group's own ratio; the others get ``ratio`` (local) or share the global threshold."""
    ratios = ratios or {}
    keep: dict[int, np.ndarray] = {}
    shared = [g for g in groups if g.id not in ratios]
    for g in groups:
        if g.id in ratios or scope == "local":
            keep[g.id] = _top(scores[g.id], keep_count(g.size, ratios.get(g.id, ratio),
                                                       round_to))
    if scope == "global" and shared:
        entries = []
        for g in shared:
            s = scores[g.id].astype(np.float64)
            mean = float(np.mean(s))
            norm = s / mean if mean > 0 else s
            entries.extend((float(norm[j]), g.id, j) for j in range(g.size))
        entries.sort()
        budget = math.floor(ratio * sum(g.size for g in shared) + 1e-9)
        dropped = {g.id: 0 for g in shared}
        limit = {g.id: g.size - min(g.size, max(1, round_to)) for g in shared}
        for _, gid, _ in entries:
            if budget <= 0:
                break
            if dropped[gid] < limit[gid]:
                dropped[gid] += 1
                budget -= 1
        for g in shared:
            k = min(g.size, math.ceil((g.size - dropped[g.id]) / round_to) * round_to)
            keep[g.id] = _top(scores[g.id], max(k, 1))
    return keep


def _bisect(fraction, target: float, hi: float = 0.99, steps: int = 30) -> tuple[float, bool]:
    """The smallest ratio in [0, hi] with ``fraction(ratio) <= target`` (bisection)."""
    if fraction(0.0) <= target:
        return 0.0, True
    if fraction(hi) > target:
        return hi, False
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if fraction(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, True


def choose(analysis: ChannelAnalysis, opts, ctx) -> PrunePlan:
    """The plan for pass options ``opts`` (a ``PruneChannels``)."""
    graph = analysis.graph
    groups = analysis.prunable
    stats: dict[str, Any] = {}
    scores = importance.scores(analysis, groups, opts.criterion, ctx, stats)
    ratios = override_ratios(groups, opts.overrides)
    meta: dict[str, Any] = {"criterion": opts.criterion, "scope": opts.scope,
                            "round_to": opts.round_to}
    if opts.max_error is not None:
        sens = sensitivity(analysis, groups, scores, opts.sensitivity_ratios, ctx,
                           round_to=opts.round_to)
        ctx.artifacts["prune-sensitivity"] = sens
        if opts.sensitivity_plot:
            plot_sensitivity(sens, opts.sensitivity_plot)
        for gid, r in sens.ratios_for(opts.max_error).items():
            ratios.setdefault(gid, r)
        meta["max_error"] = opts.max_error
        keep = select(groups, scores, 0.0, scope="local", round_to=opts.round_to,
                      ratios=ratios)
    elif opts.target_macs is not None or opts.target_params is not None:
        which = 0 if opts.target_macs is not None else 1
        target = opts.target_macs if which == 0 else opts.target_params
        base = cost_after(graph, {})[which]

        def fraction(r: float) -> float:
            k = select(groups, scores, r, scope=opts.scope, round_to=opts.round_to,
                       ratios=ratios)
            drops = [(g, np.setdiff1d(np.arange(g.size), k[g.id])) for g in groups]
            return cost_after(graph, removed_indices(drops))[which] / max(base, 1)

        ratio, reached = _bisect(fraction, target)
        meta.update({"target_macs" if which == 0 else "target_params": target,
                     "ratio": round(ratio, 6), "target_reached": reached})
        stats["target_reached"] = int(reached)
        keep = select(groups, scores, ratio, scope=opts.scope, round_to=opts.round_to,
                      ratios=ratios)
    else:
        meta["ratio"] = opts.ratio
        keep = select(groups, scores, opts.ratio, scope=opts.scope, round_to=opts.round_to,
                      ratios=ratios)
    if opts.overrides:
        meta["overrides"] = list(opts.overrides)
    meta["stats"] = stats
    return PrunePlan.from_keep(analysis, keep, meta)


# ============================================================================ sensitivity
@dataclass
class Sensitivity:
    """Output error (rel-L2 against the unpruned graph, or a user metric) of pruning each
    group alone, at each ratio."""

    ratios: tuple[float, ...]
    groups: list[dict[str, Any]] = field(default_factory=list)  # id, anchor, size, layers, errors
    metric: str = "rel_l2"

    def ratios_for(self, max_error: float) -> dict[int, float]:
        out = {}
        for g in self.groups:
            ok = [r for r, e in zip(self.ratios, g["errors"]) if e <= max_error]
            out[g["id"]] = max(ok) if ok else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "ratios": list(self.ratios), "groups": self.groups}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(tuple(d["ratios"]), list(d["groups"]), d.get("metric", "rel_l2"))


def _rel_l2(ys: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    num = sum(float(((y.double() - r.double()) ** 2).sum()) for y, r in zip(ys, refs))
    den = sum(float((r.double() ** 2).sum()) for r in refs)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def sensitivity(analysis: ChannelAnalysis, groups: list[Group], scores: dict[int, np.ndarray],
                ratios: tuple[float, ...], ctx, *, round_to: int = 1,
                metric=None) -> Sensitivity:
    """Prune each group alone (lowest scores first) at each ratio, through the oracle, and
    record the output error — or ``metric(graph)`` (e.g. an accuracy) when given."""
    graph: Graph = analysis.graph
    masked, sites = masked_copy(graph, groups)
    data = importance.batches(graph, ctx)
    with torch.no_grad():
        refs = [run(graph, xs) for xs in data]
    result = Sensitivity(tuple(ratios), metric="rel_l2" if metric is None else
                         getattr(metric, "__name__", "metric"))
    for g in groups:
        errors = []
        for r in ratios:
            k = keep_count(g.size, r, round_to)
            dropped = np.setdiff1d(np.arange(g.size), _top(scores[g.id], k))
            values = mask_values(sites, {g.id: dropped})
            if metric is not None:
                from ..rewrite import replace_data

                trial = masked.clone(share_data=True)
                for s in sites:
                    c = trial.constants[s.mask]
                    replace_data(c, values[s.mask].reshape(c.shape).astype(c.data.dtype))
                errors.append(float(metric(trial)))
                continue
            params = {s.mask: torch.as_tensor(values[s.mask].reshape(
                masked.constants[s.mask].shape).astype(masked.constants[s.mask].data.dtype))
                for s in sites}
            with torch.no_grad():
                ys = [run(masked, xs, params=params) for xs in data]
            errors.append(sum(_rel_l2(y, ref) for y, ref in zip(ys, refs)) / len(data))
        result.groups.append({"id": g.id, "anchor": str(g.anchor), "size": g.size,
                              "layers": g.layers(),
                              "errors": errors})
    return result


def plot_sensitivity(sens: Sensitivity, path: str | Path) -> Path:
    """Draw error vs ratio, one line per group, to a PNG (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in sens.groups:
        label = f"g{g['id']} {g['layers'][0] if g['layers'] else g['anchor']} ({g['size']})"
        ax.plot(sens.ratios, [max(e, 1e-12) for e in g["errors"]], marker="o", label=label)
    ax.set_xlabel("ratio of the group's channels removed")
    ax.set_ylabel(sens.metric)
    if sens.metric == "rel_l2":
        ax.set_yscale("log")
    ax.set_title("channel-pruning sensitivity (each group pruned alone)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
