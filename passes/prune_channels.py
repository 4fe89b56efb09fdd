"""``prune-channels``: remove whole channels — filters, features, attention heads — with
everything that depends on them; what cannot be proven is refused with a reason.

Matches every channel group of the channel analysis (``analyses/channels.py``): channels
that must go together (a residual chain, a concat's part, a head across q, k, v and the
projection, a flatten's block of features) across all the ops they pass. Groups touching a
graph input or output, an op without a coupling rule, a normalization or reduction over
the channel, or a view that regroups axes are refused, each with its reason.

Produces, for each group, fewer channels: weight rows of the producers, biases, BN
weights and statistics, the consumers' input columns, and the attributes that count them
(reshape and expand shapes, split sizes, slice bounds, depthwise ``groups``, group-norm
``num_groups``) shrink together. Not exact: the result equals the original with the dropped
channels fed as zeros into their consumers (the oracle of ``analyses/channels_plan.py``).

Options:

* ``ratio`` — fraction of channels to remove: of each group, or of all prunable channels;
* ``scope`` — ``local``: each group loses ``ratio`` of its channels; ``global``: one
  threshold over all groups' scores, each divided by its group's mean (write
  ``scope=global``; the pipeline parser takes the keyword as a word);
* ``criterion`` — channel importance (``analyses/channels_importance.py``): ``l1`` / ``l2``
  (filter norms, Li et al.), ``bn-scale`` (|gamma|, Network Slimming), ``taylor`` (first-order
  Taylor at the consumers on calibration batches, Molchanov et al.), ``apoz`` (share of zero
  activations, Hu et al.), ``random``; always summed over the whole group;
* ``round_to`` — each group keeps a multiple of this many channels (and at least that many);
* ``target_macs`` / ``target_params`` — keep this fraction of the MACs / parameters: the
  ratio is found by bisection;
* ``overrides`` — per-layer ratios, ``"pattern=ratio"`` (fnmatch on node names and locs;
  ``=0`` protects a layer), applied per group, first match wins;
* ``max_error`` — choose each group's ratio from a sensitivity analysis: the largest ratio
  of ``sensitivity_ratios`` whose output rel-L2 error, pruning that group alone, is at most
  this (saved as the ``prune-sensitivity`` artifact; drawn to ``sensitivity_plot``);
* ``plan`` — apply this JSON plan instead of choosing one; ``save_plan`` — write the plan.

The plan (``PrunePlan``) is saved in ``ctx.artifacts["prune-plan"]`` and the explanation of
every group, its members and every refusal in ``ctx.artifacts["prune-explain"]``.

Stats: ``groups``, ``prunable``, ``refused``, ``pruned_groups``, ``channels_removed``,
``channels_total`` (in prunable groups), ``macs_kept_pct``, ``params_kept_pct``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..ir.errors import IRError
from ..ir.graph import Graph, Value
from .analyses.channels import ChannelAnalysis, Dim, analyze_channels
from .analyses.channels_plan import PrunePlan, cost_after, removed_indices, shapes_after
from .analyses.channels_rules import RULES
from .base import Pass, PassContext, PassError, PassResult, option
from .registry import register_pass

__all__ = ["PruneChannels", "apply_plan"]

Criterion = Literal["l1", "l2", "bn-scale", "taylor", "apoz", "random"]


class _NewShapes:
    """What a rule's ``resize`` sees: new shapes and removed indices."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], removed: dict[Dim, np.ndarray]):
        self._shapes, self._removed = shapes, removed

    def shape(self, v: Value) -> tuple[int, ...]:
        return self._shapes.get(v.name, v.shape)

    def removed(self, v: Value, axis: int) -> np.ndarray:
        return self._removed.get(Dim(v.name, axis % v.type.rank), np.zeros(0, np.int64))


def apply_plan(graph: Graph, analysis: ChannelAnalysis, plan: PrunePlan) -> int:
    """Physically remove the channels ``plan`` drops from ``graph`` (the graph ``analysis``
    was made of), in place. Returns the number of values whose shape changed."""
    removed = removed_indices(plan.resolve(analysis))
    if not removed:
        return 0
    shapes = shapes_after(graph, removed)
    new = _NewShapes(shapes, removed)
    attrs = {}
    for node in graph.nodes:  # before any type changes: resize reads the old shapes
        rule = RULES.get(node.op)
        if rule is not None and rule.resize is not None:
            a = rule.resize(node, new)
            if any(node.attrs.get(k) != v for k, v in a.items()):
                attrs[id(node)] = (node, a)
    arrays: dict[Value, np.ndarray] = {}
    for d, idx in sorted(removed.items()):
        v = graph.constants.get(d.value)
        if v is not None:
            arrays[v] = np.delete(arrays.get(v, v.data), idx, axis=d.axis)
    try:
        graph.replace_constants(arrays, reinfer=False)
        for node, a in attrs.values():
            graph.set_attrs(node, a, reinfer=False)
        graph.reinfer(*graph.nodes)
    except IRError as e:
        raise PassError(f"applying the plan: {e}") from None
    for n in graph.nodes:
        for o in n.outputs:
            want = shapes.get(o.name, o.shape)
            if o.shape != want:
                raise PassError(f"applying the plan: %{o.name} became {o.type}, the plan "
                                f"gives shape {list(want)}", node=n)
    return len(shapes)


@register_pass("prune-channels")
@dataclass
class PruneChannels(Pass):
    """Remove whole channels (filters, features, heads) and all they feed; refuse the unprovable."""

    exact = False
    ratio: float = option(0.3, ge=0.0, lt=1.0,
                          help="fraction of channels to remove (per group, or overall when "
                               "scope=global)")
    criterion: Criterion = option("l1", help="channel importance: l1, l2, bn-scale, taylor, "
                                             "apoz, random")
    scope: Literal["local", "global"] = option(
        "local", help="local: ratio of each group; global: one threshold over all groups")
    round_to: int = option(1, ge=1, help="each group keeps a multiple of this many channels")
    target_macs: float | None = option(None, gt=0.0, le=1.0,
                                       help="keep this fraction of the MACs (bisection)")
    target_params: float | None = option(None, gt=0.0, le=1.0,
                                         help="keep this fraction of the parameters (bisection)")
    overrides: tuple[str, ...] = option((), help='per-layer ratios "pattern=ratio" (fnmatch '
                                                 'on node names and locs; first match wins)')
    max_error: float | None = option(None, gt=0.0,
                                     help="per-group ratios from a sensitivity analysis: the "
                                          "largest with output rel-L2 error <= this")
    sensitivity_ratios: tuple[float, ...] = option(
        (0.1, 0.3, 0.5, 0.7, 0.9), help="ratios tried by the sensitivity analysis")
    sensitivity_plot: str | None = option(None, help="draw the sensitivity analysis (PNG)")
    plan: str | None = option(None, help="apply this JSON plan instead of choosing one")
    save_plan: str | None = option(None, help="write the plan (JSON) to this file")

    def check(self) -> str | None:
        chosen = [k for k in ("target_macs", "target_params", "max_error")
                  if getattr(self, k) is not None]
        if len(chosen) > 1:
            return f"give at most one of target_macs, target_params, max_error (got {chosen})"
        for o in self.overrides:
            reason = _check_override(o)
            if reason:
                return reason
        if any(not 0.0 < r < 1.0 for r in self.sensitivity_ratios):
            return "sensitivity_ratios must lie in (0, 1)"
        return None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from .analyses import channels_policy as policy

        analysis = analyze_channels(graph)
        before = cost_after(graph, {})
        try:
            if self.plan is not None:
                plan = PrunePlan.load(self.plan)
            else:
                plan = policy.choose(analysis, self, ctx)
            drops = plan.resolve(analysis)
        except IRError as e:
            raise PassError(str(e)) from None
        after = cost_after(graph, removed_indices(drops))
        ctx.artifacts["prune-plan"] = plan
        ctx.artifacts["prune-explain"] = explain(analysis, plan)
        if self.save_plan:
            plan.save(self.save_plan)
        changed = apply_plan(graph, analysis, plan) > 0
        if changed:
            graph.dce()
        stats = {"groups": len(analysis.groups), "prunable": len(analysis.prunable),
                 "refused": len(analysis.refused), "pruned_groups": len(plan.groups),
                 "channels_removed": plan.channels_removed,
                 "channels_total": sum(g.size for g in analysis.prunable),
                 "macs_kept_pct": round(100.0 * after[0] / max(before[0], 1), 2),
                 "params_kept_pct": round(100.0 * after[1] / max(before[1], 1), 2)}
        stats.update(plan.meta.get("stats", {}))
        return PassResult(changed, stats)


def _check_override(text: str) -> str | None:
    pattern, sep, ratio = text.rpartition("=")
    try:
        r = float(ratio)
    except ValueError:
        r = -1.0
    if not sep or not pattern or not 0.0 <= r < 1.0:
        return f'override {text!r}: expected "pattern=ratio" with 0 <= ratio < 1'
    return None


def explain(analysis: ChannelAnalysis, plan: PrunePlan | None = None) -> str:
    """The analysis' explanation, with what ``plan`` keeps of each group."""
    text = analysis.explain()
    if plan is None:
        return text
    how = ", ".join(f"{k}={v}" for k, v in plan.meta.items() if k != "stats")
    lines = [text, f"plan: {plan.channels_removed} channels removed from {len(plan.groups)} "
                   f"groups ({how})"]
    for gp in plan.groups:
        lines.append(f"  group {gp.id} ({gp.anchor}): keeps {len(gp.keep)} of {gp.size}")
    return "\n".join(lines)
