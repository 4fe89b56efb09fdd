"""The frame shared by ``tucker-conv``, ``cp-conv`` and ``svd-linear`` (not a pass itself).

``LowRankPass`` holds the options the three have in common, picks the layers, chooses each
layer's rank, applies the break-even guard, asks the pass to fit its factors, replaces the
layer by the chain the pass describes, and reports per layer. A pass defines:

* ``ops`` — the ops it looks at; ``inspect(graph, node)`` — a ``Layer`` to decompose, or
  the reason (a stats key) it is left alone (``analyses/layers.py``: ``conv_layer`` and
  ``dense_layer`` do the common checks of a conv2d and of a linear / matmul by a constant);
* ``cost(layer, rank)`` — ``(macs, params)`` of the chain at ``rank``;
* ``mode_ranks_to_rank(ranks)`` — the pass's rank from per-mode ranks (energy / vbmf are
  per mode); ``estimate(layer, rank)`` — the estimated squared relative error;
* ``fit(layer, rank, ctx)`` — a ``Fit`` (the chain as ``ChainStep``s, float64 arrays, and
  the error), or a ``Skip`` (reason, error reached, note).

Rank rules (``RankRule`` in ``analyses/rank.py``): ``rank=`` (as given, clipped to full;
``full``: full rank), ``ratio=`` (largest rank keeping at most that fraction of the layer's
parameters, rounded down), ``energy=`` / ``vbmf`` (per-mode ranks, rounded up), none of
them: ``vbmf``; ``target_macs=`` (the whole graph; ranks on multiples of ``round_to``).
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ..ir.cost import graph_cost
from ..ir.graph import Graph, Node, Value
from ..ir.types import to_torch_dtype
from .analyses import rank as R
from .analyses.layers import Layer
from .base import Pass, PassContext, PassResult, option
from .rewrite import remove_unused_constants, to_numpy

__all__ = ["BLAS_THREADS", "ChainStep", "Fit", "LayerReport", "LowRankPass", "Skip"]

#: BLAS threads while a low-rank pass runs. Measured on the 2-core development machine with
#: other jobs running (load 9-13): OpenBLAS's default two threads took 0.7-2.6 s for the
#: economy SVD of a 128x1152 unfolding that takes 17 ms on one thread (oversubscribed
#: threads spin against each other). One thread also makes the fits independent of the
#: core count.
BLAS_THREADS = 1

#: Skip reasons every low-rank pass counts (a pass adds its own).
COMMON_REASONS = ("skipped_excluded", "skipped_nonconstant", "skipped_shared_weight",
                  "skipped_dtype", "skipped_encoded", "skipped_tiny", "skipped_break_even",
                  "skipped_budget")


@dataclass
class ChainStep:
    """One node of the replacement chain: ``op`` applied to the previous result (the
    layer's activation for the first step) and ``operands`` — float64 arrays (added as
    constants named ``<stem>.<suffix>.weight`` in the layer's dtype) or values (the bias).
    ``first=False`` puts the constant before the activation (``matmul(P, x)``)."""

    suffix: str
    op: str
    operands: list[np.ndarray | Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    activation_first: bool = True


@dataclass
class Fit:
    rank: tuple[int, ...]
    steps: list[ChainStep]
    error: float  # relative reconstruction error of the weight (float64)
    iterations: int = 0
    note: str = ""


@dataclass
class Skip:
    """A fit that is not good enough: the reason (a stats key), the error reached, why."""

    reason: str
    error: float | None = None
    note: str = ""


@dataclass
class LayerReport:
    """One row of a low-rank pass's per-layer report."""

    node: str
    loc: str | None
    status: str  # "decomposed" or a skip reason
    rank: tuple[int, ...] | None = None
    error: float | None = None
    params: tuple[int, int] | None = None  # before, after
    macs: tuple[int, int] | None = None
    seconds: float = 0.0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "loc": self.loc, "status": self.status,
                "rank": "x".join(map(str, self.rank)) if self.rank else None,
                "error": self.error, "params": self.params, "macs": self.macs,
                "seconds": round(self.seconds, 4), "note": self.note}


def _patterns(p: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if p is None else (p,) if isinstance(p, str) else tuple(p)


@dataclass
class LowRankPass(Pass):
    """Base of the low-rank passes (not registered)."""

    exact = False
    ops: ClassVar[frozenset[str]] = frozenset()
    rank_entries: ClassVar[int] = 1  # how many numbers a rank has (Tucker: 2)
    reasons: ClassVar[tuple[str, ...]] = ()  # the pass's own skip reasons
    #: reasons counted but not given a report row: the node is not this pass's kind of layer
    #: (``skipped_excluded`` never gets one either: the user left it out)
    quiet: ClassVar[frozenset[str]] = frozenset()

    rank: int | tuple[int, ...] | Literal["full"] | None = option(
        None, help="the rank (Tucker: one, or (R_in, R_out)); full = full rank (reproduces the layer)")
    ratio: float | None = option(None, gt=0, le=1,
                                 help="fraction of each layer's parameters kept")
    energy: float | None = option(None, gt=0, le=1,
                                  help="fraction of singular-value energy kept per mode")
    vbmf: bool = option(False, help="EVBMF rank per mode (the default when no rank "
                                    "option is given)")
    target_macs: int | float | None = option(
        None, help="MACs of the whole graph after the pass: an int, or a fraction of its "
                   "MACs before")
    round_to: int = option(8, ge=1, help="ranks rounded to a multiple of this where the "
                                         "channels allow")
    break_even: bool = option(True, help="skip a layer whose chain has no fewer MACs than "
                                         "the layer (false: only to test exactness)")
    min_params: int = option(1024, ge=0, help="layers with fewer weight parameters are "
                                              "left alone")
    include: str | tuple[str, ...] | None = option(
        None, help="only layers whose loc (or name) matches one of these glob patterns")
    exclude: str | tuple[str, ...] | None = option(
        None, help="never layers whose loc (or name) matches one of these glob patterns")

    # ------------------------------------------------------------------ options
    def check(self) -> str | None:
        try:
            rule = self.rule()
        except ValueError as e:
            return str(e)
        if rule.kind == "rank" and len(rule.value) not in (1, self.rank_entries):
            return (f"rank takes {self.rank_entries} value{'s' if self.rank_entries > 1 else ''}"
                    f" here, got {self.rank!r}")
        return None

    def rule(self) -> R.RankRule:
        return R.RankRule.from_options(self.rank, self.ratio, self.energy, self.vbmf,
                                       self.target_macs)

    # ------------------------------------------------------------------ pass hooks
    def inspect(self, graph: Graph, node: Node) -> Layer | str:
        raise NotImplementedError

    def cost(self, layer: Layer, rank: tuple[int, ...]) -> tuple[int, int]:
        raise NotImplementedError

    def mode_ranks_to_rank(self, layer: Layer, ranks: tuple[int, ...]) -> tuple[int, ...]:
        return ranks

    def estimate(self, layer: Layer, rank: tuple[int, ...]) -> float:
        return sum(layer.mode_errors(rank))

    def fit(self, layer: Layer, rank: tuple[int, ...], ctx: PassContext) -> Fit | Skip:
        raise NotImplementedError

    # ------------------------------------------------------------------ ranks
    def _selected(self, node: Node) -> bool:
        names = [n for n in (node.loc, node.name) if n]
        inc, exc = _patterns(self.include), _patterns(self.exclude)
        if inc and not any(fnmatch.fnmatchcase(n, p) for n in names for p in inc):
            return False
        return not any(fnmatch.fnmatchcase(n, p) for n in names for p in exc)

    def choose(self, layer: Layer, rule: R.RankRule) -> tuple[int, ...]:
        """The rank ``rule`` gives ``layer`` (not ``target_macs``)."""
        full, m = layer.full, self.round_to
        if rule.kind == "full":
            return full
        if rule.kind == "rank":
            given = rule.value * self.rank_entries if len(rule.value) == 1 else rule.value
            return tuple(min(r, f) for r, f in zip(given, full))
        if rule.kind == "ratio":
            top = max(full)

            def family(k: int) -> tuple[int, ...]:
                return tuple(max(1, min(f, math.ceil(k * f / top))) for f in full)

            k = R.largest_rank_within(lambda k: self.cost(layer, family(k))[1],
                                      rule.value * layer.params, top)
            return tuple(R.round_rank(r, f, m, up=False) for r, f in zip(family(k), full))
        # energy / vbmf: per mode, the largest over groups
        n_modes = len(layer.spectra[0])
        per_mode = []
        for i in range(n_modes):
            if rule.kind == "energy":
                r = max(R.energy_rank(spec[i], rule.value) for spec in layer.spectra)
            else:
                r = max(R.evbmf_values(spec[i], ms[i].shape).rank
                        for spec, ms in zip(layer.spectra, layer.modes))
            per_mode.append(max(1, r))
        rank = self.mode_ranks_to_rank(layer, tuple(per_mode))
        return tuple(R.round_rank(r, f, m, up=True) for r, f in zip(rank, full))

    def candidates(self, layer: Layer) -> list[tuple[int, ...]]:
        """The ranks ``target_macs`` chooses among: multiples of ``round_to`` (every rank
        when the channels do not allow it) below break-even."""
        axes = []
        for f in layer.full:
            m = self.round_to if f > self.round_to else 1
            axes.append(sorted({*range(m, f, m), f}))
        return [r for r in itertools.product(*axes) if self.cost(layer, r)[0] < layer.macs]

    def _allocate(self, graph: Graph, layers: list[Layer], rule: R.RankRule,
                  stats: dict, ctx: PassContext) -> list[tuple[int, ...] | None]:
        total = graph_cost(graph).total.macs
        target = rule.target(total)
        points = []
        for layer in layers:
            pts = [R.Point(layer.macs, 0.0, None)]
            pts += [R.Point(self.cost(layer, r)[0], self.estimate(layer, r), r)
                    for r in self.candidates(layer)]
            points.append(pts)
        chosen, saved = R.allocate(points, total - target)
        stats["target_macs"] = target
        if total - saved > target:
            stats["target_unmet"] = 1
            ctx.logger.warning("%s: target_macs=%d not reachable: at most %d of %d MACs can be "
                               "saved", self.name, target, saved, total)
        return [p.rank for p in chosen]

    # ------------------------------------------------------------------ rewriting
    def emit(self, graph: Graph, layer: Layer, fit: Fit) -> None:
        """Replace ``layer.node`` by ``fit.steps``; the last node takes its output's name."""
        node, out = layer.node, layer.node.outputs[0]
        stem = layer.weight.name.removesuffix(".weight")
        dtype = layer.weight.dtype
        prev = node.inputs[layer.x_index]
        for i, step in enumerate(fit.steps):
            operands = []
            for a in step.operands:
                if isinstance(a, Value):
                    operands.append(a)
                else:
                    data = to_numpy(torch.from_numpy(np.ascontiguousarray(a))
                                    .to(to_torch_dtype(dtype)), dtype)
                    operands.append(graph.add_constant(
                        data, graph.fresh_name(f"{stem}.{step.suffix}.weight")))
            args = [prev, *operands] if step.activation_first else [*operands, prev]
            last = i == len(fit.steps) - 1
            new = graph.add_node(step.op, args, step.attrs, meta=node.meta, before=node,
                                 names=[graph.fresh_name(f"{out.name}.{step.suffix}")])
            new.outputs[0].meta = dict(out.meta)
            if last and new.outputs[0].type != out.type:
                raise AssertionError(f"{node.describe()}: chain gives {new.outputs[0].type}, "
                                     f"not {out.type}")
            prev = new.outputs[0]
        name = out.name
        graph.replace_all_uses(out, prev)
        graph.erase(node)
        graph.rename(prev, name)
        remove_unused_constants(graph, [layer.weight])

    # ------------------------------------------------------------------ run
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            return self._run(graph, ctx)

    def _run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rule = self.rule()
        keys = ("decomposed", *COMMON_REASONS, *self.reasons)
        stats: dict[str, int | float] = dict.fromkeys(keys, 0)
        stats.update(macs_before=0, macs_after=0, params_before=0, params_after=0,
                     max_error=0.0, seconds=0.0)
        reports: list[LayerReport] = []
        layers: list[Layer] = []
        started: dict[int, float] = {}

        def skip(node: Node, reason: str, t0: float, **kw) -> None:
            stats[reason] += 1
            ctx.logger.debug("%s: not decomposing %s: %s", self.name, node.describe(), reason)
            if reason not in self.quiet and reason != "skipped_excluded":
                    reports.append(LayerReport(node.name, node.loc, reason,
                                           seconds=time.perf_counter() - t0, **kw))

        for node in list(graph.nodes):
            if node.op not in self.ops:
                continue
            t0 = time.perf_counter()
            if not self._selected(node):
                skip(node, "skipped_excluded", t0)
                continue
            layer = self.inspect(graph, node)
            if isinstance(layer, str):
                skip(node, layer, t0)
                continue
            if layer.weight.type.numel < self.min_params:
                skip(node, "skipped_tiny", t0)
                continue
            started[id(layer)] = time.perf_counter() - t0
            layers.append(layer)

        if rule.kind == "target_macs":
            t0 = time.perf_counter()
            ranks = self._allocate(graph, layers, rule, stats, ctx)
            share = (time.perf_counter() - t0) / max(len(layers), 1)
            for layer in layers:
                started[id(layer)] += share
        else:
            ranks = [None] * len(layers)
        for layer, rank in zip(layers, ranks):
            t0 = time.perf_counter() - started[id(layer)]
            node = layer.node
            if rule.kind == "target_macs" and rank is None:
                skip(node, "skipped_budget", t0)
                continue
            if rank is None:
                rank = self.choose(layer, rule)
            macs, params = self.cost(layer, rank)
            if self.break_even and macs >= layer.macs:
                skip(node, "skipped_break_even", t0, rank=rank, macs=(layer.macs, macs),
                     params=(layer.params, params))
                continue
            fit = self.fit(layer, rank, ctx)
            if isinstance(fit, Skip):
                skip(node, fit.reason, t0, rank=rank, error=fit.error, note=fit.note,
                     macs=(layer.macs, macs), params=(layer.params, params))
                continue
            if fit.rank != tuple(rank):  # the pass chose another rank (cp-conv's search)
                macs, params = self.cost(layer, fit.rank)
            self.emit(graph, layer, fit)
            seconds = time.perf_counter() - t0
            reports.append(LayerReport(node.name, node.loc, "decomposed", fit.rank, fit.error,
                                       (layer.params, params), (layer.macs, macs), seconds,
                                       fit.note))
            stats["decomposed"] += 1
            stats["macs_before"] += layer.macs
            stats["macs_after"] += macs
            stats["params_before"] += layer.params
            stats["params_after"] += params
            stats["max_error"] = max(stats["max_error"], fit.error)
            stats["seconds"] += seconds
            ctx.logger.info("%s: %s rank %s, error %.3g, MACs %d -> %d", self.name,
                            node.describe(), "x".join(map(str, fit.rank)), fit.error,
                            layer.macs, macs)
        stats["seconds"] = round(stats["seconds"], 3)
        rows = [r.as_dict() for r in reports]
        ctx.artifacts[self.name] = rows  # for API users (optimize(..., artifacts=...))
        return PassResult(stats["decomposed"] > 0, stats, layers=rows)
