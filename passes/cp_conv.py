"""``cp-conv``: CP decomposition of convolutions into a separable chain (Lebedev et al. 2015;
lossy).

Matches ``conv2d(x, W[, b])`` with a constant ``W [C_out, C_in/g, kh, kw]``, a kernel
larger than 1×1 and ``g`` groups (depthwise excluded), and produces, per group, ::

    conv2d 1×1   C_in -> R          (groups=g)
    conv2d kh×1  depthwise on R     (stride [s_h, 1], padding [p_h, 0], dilation [d_h, 1])
    conv2d 1×kw  depthwise on R     (stride [1, s_w], padding [0, p_w], dilation [1, d_w])
    conv2d 1×1   R -> C_out (+ b)   (groups=g)

from ``W ≈ Σ_r out_r ⊗ in_r ⊗ h_r ⊗ w_r`` (CP-ALS in float64, ``analyses/decompose.py``:
tensorly's ``parafac`` algorithm with a staged MTTKRP), the CP weights λ folded into the
four factors (balanced: each factor's column carries the fourth root of the term's norm).
The IR's padding is symmetric per axis, so splitting stride / padding / dilation per axis
is exact (the 1×1 before them maps zero padding to zero). A kernel with ``kh = 1`` (or ``kw = 1``)
gets no k×1 (1×k) step: its factor is folded into the first 1×1 and the other step takes
both axes' stride and padding. ``rank=full`` builds an exact CP of rank
``kh·kw·min(C_out, C_in)`` per group without ALS (one SVD per kernel tap). New weights are
``<stem>.cp_in/cp_h/cp_w/cp_out.weight``; every node keeps the layer's loc.

ALS is bounded per layer by ``max_iter`` sweeps and by ``work_budget``, an estimated count
of multiply-adds (``als_sweep_cost`` in ``analyses/decompose.py``: per sweep ``4·numel·R``
for the MTTKRP plus the Gram and ``R×R`` solve terms): a fit at rank R runs at most
``clamp(floor(budget / cost_per_sweep), 1, max_iter)`` sweeps, fixed before ALS starts, so
the same seed gives the same factors in every process and on every machine. With an error
to reach and a rank from ``energy`` / ``vbmf`` (a lower bound of the CP rank), a fit that
misses it is retried at 1.5× the rank (rounded up) while the chain stays below break-even,
within the same per-layer budget (the work of the sweeps already run is subtracted). The
default 3e9 keeps ResNet-18's ALS where the former 5 s per layer left it on the development
machine (by the cost estimate at ``ratio=0.5``-like ranks): the 64-channel 3×3 layers
reach ``max_iter`` (50 sweeps), the 128-channel ones 10–34 sweeps, the first 256-channel
one 4, the other 256- and 512-channel ones one sweep each. ``time_budget``
(seconds per layer, checked after each sweep; default none) adds a wall-clock bound: the
number of sweeps, and so the result, then depends on the machine's speed and load (two runs
of ResNet-18 at ``ratio=0.5`` with 5 s on the loaded development machine: largest error
0.615 and 0.762).
A layer whose fit does not reach the requested error — ``max_error``,
or ``sqrt(1 - energy)`` with ``energy=`` — is skipped (``skipped_not_converged``, the error
reached and why ALS stopped in the report).

Options (the rank options are shared with ``tucker-conv`` and ``svd-linear``, see
``passes/lowrank.py``; give at most one of the first five):

* ``rank`` — the CP rank ``R``; ``full`` = the exact construction above;
* ``ratio`` — each layer keeps at most this fraction of its parameters (rounded down);
* ``energy`` — ``R`` starts at the larger of the two channel unfoldings' ranks keeping this
  energy (a lower bound: a rank-R CP has unfoldings of rank <= R; rounded up, then grown
  as above), and the fit must reach relative error ``sqrt(1 - energy)``;
* ``vbmf`` — ``R`` = the larger of the two unfoldings' EVBMF ranks (rounded up); the
  default when no rank option is given;
* ``target_macs`` — MACs of the whole graph after the pass (an int, or a float in (0, 1]),
  ranks chosen greedily by a proxy error (the unfoldings' discarded energy at rank R, a
  lower bound of the CP error) per MAC saved;
* ``round_to`` — ranks rounded to a multiple of this (default 8);
* ``break_even`` — skip a layer whose chain would not have fewer MACs (default true);
* ``min_params`` — layers with fewer weight parameters are left alone (default 1024);
* ``include`` / ``exclude`` — glob patterns on the node's loc (or name);
* ``max_iter`` — ALS sweeps per layer (default 50);
* ``work_budget`` — estimated multiply-adds of ALS per layer (default 3e9), shared by the
  fits of a rank search; deterministic;
* ``time_budget`` — seconds of ALS per layer (default none: no wall-clock bound; given, it
  makes the result machine-dependent);
* ``tol`` — ALS stops when the relative error changes by less than this (default 1e-5);
* ``max_error`` — the largest relative reconstruction error accepted (default none).

Not decomposed (each counted): ``skipped_pointwise`` (no report row), ``skipped_depthwise``,
``skipped_not_converged``, and the common ``skipped_nonconstant``,
``skipped_shared_weight``, ``skipped_dtype``, ``skipped_encoded``, ``skipped_tiny``,
``skipped_excluded``, ``skipped_break_even``, ``skipped_budget``.

Stats: ``decomposed``, the reasons, ``macs_before/after`` and ``params_before/after`` of
the decomposed layers, ``max_error``, ``seconds``. One row per layer (status or skip reason, rank,
relative error, params and MACs before → after, seconds) is ``PassResult.layers``, printed
by ``shrinkc opt --stats``, and ``ctx.artifacts["cp-conv"]``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node
from .analyses import rank as R
from .analyses.decompose import CP, als_sweep_cost, cp, cp_exact
from .analyses.layers import Layer, conv_layer, group_slices
from .base import PassContext, option
from .lowrank import ChainStep, Fit, LowRankPass, Skip
from .registry import register_pass


@register_pass("cp-conv")
@dataclass
class CpConv(LowRankPass):
    """CP: conv2d -> 1x1 (C_in->R), depthwise kx1, depthwise 1xk, 1x1 (R->C_out)."""

    exact = False
    ops = frozenset({"conv2d"})
    reasons = ("skipped_pointwise", "skipped_depthwise", "skipped_not_converged")
    quiet = frozenset({"skipped_pointwise"})

    max_iter: int = option(50, ge=1, help="ALS sweeps per layer")
    work_budget: float = option(3e9, gt=0, help="estimated multiply-adds of ALS per layer "
                                                "(sweeps = budget / cost of one sweep)")
    time_budget: float | None = option(None, gt=0, help="seconds of ALS per layer (checked "
                                                        "after each sweep; makes the result "
                                                        "machine-dependent)")
    tol: float = option(1e-5, gt=0, help="ALS stops when the relative error changes by "
                                         "less than this")
    max_error: float | None = option(None, gt=0, help="the largest relative reconstruction "
                                                      "error accepted (else skipped)")

    def inspect(self, graph: Graph, node: Node) -> Layer | str:
        layer = conv_layer(graph, node, allow_pointwise=False)
        if isinstance(layer, str):
            return layer
        blocks = group_slices(layer)
        o, i, kh, kw = blocks[0].shape
        layer.full = (kh * kw * min(o, i),)
        layer.modes = [[R.unfold(b, 1), R.unfold(b, 0)] for b in blocks]
        x, out = node.inputs[0], node.outputs[0]
        layer.info["mid_pixels"] = x.shape[0] * out.shape[2] * x.shape[3]
        return layer

    def mode_ranks_to_rank(self, layer: Layer, ranks: tuple[int, ...]) -> tuple[int, ...]:
        return (max(ranks),)

    def estimate(self, layer: Layer, rank: tuple[int, ...]) -> float:
        return max(layer.mode_errors((rank[0], rank[0])))

    def cost(self, layer: Layer, rank: tuple[int, ...]) -> tuple[int, int]:
        (r,), g, info = rank, layer.groups, layer.info
        kh, kw = info["k"]
        c_in, c_out = info["c_in"], info["c_out"]
        macs = info["in_pixels"] * g * r * (c_in // g) + info["out_pixels"] * c_out * r
        params = g * r * (c_in // g) + c_out * r
        if kh > 1:  # the k×1 step keeps the input's width unless it is the only one
            macs += (info["mid_pixels"] if kw > 1 else info["out_pixels"]) * g * r * kh
            params += g * r * kh
        if kw > 1:
            macs += info["out_pixels"] * g * r * kw
            params += g * r * kw
        return macs, params + (layer.bias.type.numel if layer.bias is not None else 0)

    def _requested_error(self) -> float | None:
        limits = [e for e in (self.max_error,
                              (1 - self.energy) ** 0.5 if self.energy is not None else None)
                  if e is not None]
        return min(limits) if limits else None

    def _fit_at(self, blocks: list[np.ndarray], r: int, work: float, seconds: float | None,
                ctx: PassContext) -> tuple[list[CP], float]:
        n = len(blocks)
        fits = [cp_exact(b) if self.rank == "full" else
                cp(b, r, max_iter=self.max_iter, work_budget=work / n, tol=self.tol,
                   time_budget=None if seconds is None else seconds / n,
                   seed=int(ctx.rng.integers(2 ** 31)))
                for b in blocks]
        norms = [float(np.sum(b ** 2)) for b in blocks]
        err = (sum(f.error ** 2 * n for f, n in zip(fits, norms)) / (sum(norms) or 1.0)) ** 0.5
        return fits, err

    def fit(self, layer: Layer, rank: tuple[int, ...], ctx: PassContext) -> Fit | Skip:
        blocks = group_slices(layer)
        want = self._requested_error()
        # energy / vbmf give a lower bound on the CP rank: with an error to reach, grow R
        # (x1.5, rounded up) while the chain stays below break-even and the work budget lasts
        search = want is not None and self.rule().kind in ("energy", "vbmf")
        t0 = time.perf_counter()
        r, tried, spent = rank[0], [], 0.0
        while True:
            seconds = (None if self.time_budget is None
                       else max(self.time_budget - (time.perf_counter() - t0), 1e-9))
            fits, err = self._fit_at(blocks, r, max(self.work_budget - spent, 1.0), seconds,
                                     ctx)
            spent += sum(f.iterations * als_sweep_cost(b.shape, r) for f, b in zip(fits, blocks))
            tried.append(f"R={r}: {err:.3g}")
            if not search or err <= want:
                break
            nxt = R.round_rank(math.ceil(r * 1.5), layer.full[0], self.round_to, up=True)
            if (nxt <= r or self.cost(layer, (nxt,))[0] >= layer.macs
                    or spent >= self.work_budget
                    or (self.time_budget is not None
                        and time.perf_counter() - t0 >= self.time_budget)):
                break
            r = nxt
        stopped = sorted({f.stopped for f in fits})
        sweeps = max(f.iterations for f in fits)
        note = f"ALS {sweeps} sweeps, {'/'.join(stopped)}"
        if len(tried) > 1:
            note += f"; tried {', '.join(tried)}"
        if want is not None and err > want:
            ctx.logger.info("%s: %s: error %.3g > %.3g after %s", self.name,
                            layer.node.describe(), err, want, note)
            return Skip("skipped_not_converged", err, f"{note}; wanted <= {want:.3g}")
        return Fit((fits[0].rank,), self._steps(layer, fits), err, sweeps, note)

    def _steps(self, layer: Layer, fits: list[CP]) -> list[ChainStep]:
        a, g = layer.node.attrs, layer.groups
        kh, kw = layer.info["k"]
        (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
        r = fits[0].rank
        ins = np.concatenate([f.in_.T for f in fits])  # [g*R, C_in/g]
        hs = np.concatenate([f.h.T for f in fits])  # [g*R, kh]
        ws = np.concatenate([f.w.T for f in fits])  # [g*R, kw]
        outs = np.concatenate([f.out for f in fits])  # [C_out, R]
        if kh == 1:  # a 1-tap axis: its factor is a per-channel scale, folded into cp_in
            ins = ins * hs[:, :1]
        if kw == 1:
            ins = ins * ws[:, :1]
        steps = [ChainStep("cp_in", "conv2d", [ins[:, :, None, None]], {"groups": g})]
        if kh > 1:
            steps.append(ChainStep("cp_h", "conv2d", [hs[:, None, :, None]], {
                "stride": (sh, 1 if kw > 1 else sw), "padding": (ph, 0 if kw > 1 else pw),
                "dilation": (dh, 1), "groups": g * r}))
        if kw > 1:
            steps.append(ChainStep("cp_w", "conv2d", [ws[:, None, None, :]], {
                "stride": (1 if kh > 1 else sh, sw), "padding": (0 if kh > 1 else ph, pw),
                "dilation": (1, dw), "groups": g * r}))
        bias = [layer.bias] if layer.bias is not None else []
        steps.append(ChainStep("cp_out", "conv2d", [outs[:, :, None, None], *bias],
                               {"groups": g}))
        return steps
