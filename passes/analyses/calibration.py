"""Quantization parameters: streaming activation observers, range calibrators, weight
quantization, and whether this CPU needs 7-bit weights.

Activations (``collect`` + ``choose_range`` + ``qparams``):

* ``collect(graph, values, batches, histograms=…)`` runs the interpreter over the
  calibration batches and hands each wanted value's tensor to its ``Observer`` the moment
  it is computed; the observer keeps a running min / max and, when asked, a histogram —
  never the activations. Histograms need a fixed range, so they take a second pass over the
  batches, with each range fixed by the first pass (``[0, max]`` when a value is never
  negative, else ``[-a, a]`` with ``a = max|x|`` and twice the bins, so both halves and the
  folded ``|x|`` histogram have ``bins`` bins each).
* ``choose_range(obs, method, levels, …)`` returns the clipping range ``(lo, hi)``:

  - ``minmax``: the observed ``[min, max]`` (exact);
  - ``percentile``: the ``p``-th percentile of the histogram, linear inside a bin (exact
    for data spread evenly within bins); one-sided data (min >= 0) clips only the top,
    signed data ``(100 - p) / 2`` percent at each end;
  - ``entropy``: TensorRT's KL-divergence search over a one-sided histogram: for every
    candidate threshold ``i`` bins wide (from ``levels`` to all bins), P is the histogram
    clipped at ``i`` with the outliers added to its last bin, Q is P's first ``i`` bins
    merged into ``levels`` buckets and spread back over the non-empty bins; the threshold
    with the smallest KL(P‖Q) wins; point masses (``histogram_atoms``: many identical
    values, e.g. a constant image background) stay points in Q instead of being spread
    over their bucket. After a ReLU it searches ``x`` with 256 levels (all of
    u8 / i8 covers ``[0, T]``); signed data gets a threshold per sign (activations are
    asymmetric, so the sides need not match), each side's histogram searched with the
    levels the final range gives it (proportional to its length; ``entropy_side_levels``,
    iterated from the min / max split until it stops moving). A threshold never clips
    more than ``ENTROPY_MAX_CLIPPED`` (0.1 %) of a side's values (a guard; see the
    constant);
  - ``mse``: the range with the smallest expected squared error — rounding
    (``Δ² / 12`` for every value inside) plus clipping (the distance to the range for
    every value outside) — over all bin edges (one-sided) or a grid of 256 × 256
    (lo, hi) edge pairs (signed).

  Every range lies within ``[min, max]``.
* ``qparams(lo, hi, dtype)``: the affine scale and zero point mapping ``[lo, hi]``
  (widened to hold 0, so 0 is exact) onto the dtype's levels; a range of width 0 gets
  scale 1, zero point at 0 (as onnxruntime).

Weights (``quantize_weight``): per output channel (or per tensor), symmetric (zero point
0, ``±qmax``) or asymmetric (``[min, max]`` with a zero point), with ``bits`` from 8 down
to 1 (1 bit: ``±α`` with ``α`` the mean ``|w|`` of the channel, BWN); below 8 bits the
clipping scale is searched for the least squared error instead of taken from the max.

``needs_reduce_range()``: True on an x86 CPU without VNNI. There u8 × i8 products are
summed in pairs into a saturating int16 (``vpmaddubsw``): ``2 · 255 · 127`` overflows, so
onnxruntime's output drifts from the exact result; with 7-bit weights (``|q| <= 64``)
``2 · 255 · 64 = 32640`` fits. CPUs with VNNI (``vpdpbusd``, 32-bit accumulation) and
non-x86 CPUs need no reduction.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...ir import batch as ir_batch
from ...ir.graph import Graph, IRError, Value
from ...ir.interpreter import bind_inputs, run
from ...ir.ops.quant import QRANGES

log = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_BATCH", "CALIBRATORS", "Observer", "WeightQuant", "choose_range", "collect", "cpu_flags",
    "cpuid_flags",
    "histogram_atoms", "kl_threshold_bins",
    "load_calibration", "needs_reduce_range", "qparams", "quantize_weight",
    "save_calibration",
]

CALIBRATORS = ("minmax", "percentile", "entropy", "mse")


# ============================================================================ observers
@dataclass
class Observer:
    """Running statistics of one value over the calibration batches."""

    name: str
    bins: int = 2048
    lo: float = math.inf
    hi: float = -math.inf
    count: int = 0
    hist: np.ndarray | None = None  # float64 counts over [hist_lo, hist_hi]
    hist_lo: float = 0.0
    hist_hi: float = 0.0

    def update_range(self, t: torch.Tensor) -> None:
        t = t.detach()
        if not t.is_floating_point():
            raise IRError(f"calibration: %{self.name} is {t.dtype}, not a float tensor")
        if t.numel() == 0:
            return
        if not bool(torch.isfinite(t).all()):
            raise IRError(f"calibration: %{self.name} has NaN or infinite values")
        self.lo = min(self.lo, float(t.min()))
        self.hi = max(self.hi, float(t.max()))
        self.count += t.numel()

    @property
    def one_sided(self) -> bool:
        """Never negative (e.g. after a ReLU)."""
        return self.lo >= 0.0

    def start_histogram(self) -> None:
        """Fix the histogram's range from the observed min / max (see the module doc)."""
        if self.one_sided:
            self.hist_lo, self.hist_hi, n = 0.0, self.hi, self.bins
        else:
            a = max(abs(self.lo), abs(self.hi))
            self.hist_lo, self.hist_hi, n = -a, a, 2 * self.bins
        self.hist = np.zeros(n, np.float64)

    def update_histogram(self, t: torch.Tensor) -> None:
        if self.hist is None or self.hist_hi <= self.hist_lo:
            return  # a constant value: its range says everything
        h = torch.histc(t.detach().double().flatten(), bins=len(self.hist),
                        min=self.hist_lo, max=self.hist_hi)
        self.hist += h.numpy()

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.hist_lo, self.hist_hi, len(self.hist) + 1)


def _batch_inputs(graph: Graph, batch: Any, i: int) -> list[torch.Tensor]:
    try:
        return bind_inputs(graph, batch)
    except IRError as e:
        raise IRError(f"calibration batch {i}: {e}") from None


def collect(graph: Graph, values: Sequence[Value], batches: Iterable[Any], *,
            histograms: bool = False, bins: int = 2048) -> dict[str, Observer]:
    """Observers of ``values`` (graph inputs or node outputs) over ``batches`` (each like the
    interpreter's inputs). One interpreter run per batch, two with ``histograms``."""
    batches = list(batches)
    if not batches:
        raise IRError("calibration: no batches")
    obs = {v.name: Observer(v.name, bins) for v in values}
    by_id = {id(v): obs[v.name] for v in values}
    inputs = [(v, obs[v.name]) for v in graph.inputs if v.name in obs]

    def sweep(update) -> None:
        def hook(node, outs) -> None:
            for o, t in zip(node.outputs, outs):
                ob = by_id.get(id(o))
                if ob is not None:
                    update(ob, t)

        with torch.no_grad():
            for i, batch in enumerate(batches):
                xs = _batch_inputs(graph, batch, i)
                for v, ob in inputs:
                    update(ob, xs[graph.inputs.index(v)])
                run(graph, xs, hook=hook)

    sweep(Observer.update_range)
    missing = [name for name, ob in obs.items() if ob.count == 0]
    if missing:
        raise IRError(f"calibration: no data reached {', '.join('%' + m for m in missing)}")
    if histograms:
        for ob in obs.values():
            ob.start_histogram()
        sweep(Observer.update_histogram)
    return obs


# ============================================================================ calibrators
def _inverse_cdf(hist: np.ndarray, edges: np.ndarray, target: float) -> float:
    """The x where the histogram's cumulative count reaches ``target`` (linear in a bin)."""
    cdf = np.concatenate([[0.0], np.cumsum(hist)])
    target = min(max(target, 0.0), cdf[-1])
    k = int(np.searchsorted(cdf, target, side="left"))
    if k == 0:
        return float(edges[0])
    c0, c1 = cdf[k - 1], cdf[k]
    frac = 0.0 if c1 == c0 else (target - c0) / (c1 - c0)
    return float(edges[k - 1] + frac * (edges[k] - edges[k - 1]))


def _percentile(ob: Observer, p: float) -> tuple[float, float]:
    total = ob.hist.sum()
    if ob.one_sided:
        return ob.lo, _inverse_cdf(ob.hist, ob.edges, total * p / 100.0)
    tail = (100.0 - p) / 200.0
    return (_inverse_cdf(ob.hist, ob.edges, total * tail),
            _inverse_cdf(ob.hist, ob.edges, total * (1.0 - tail)))


#: Point masses in a histogram (``histogram_atoms``): a bin holding more than
#: ``ATOM_FACTOR`` times the median of the ``2 * ATOM_WINDOW + 1`` bins around it, and at
#: least ``ATOM_MIN_MASS`` of all values, holds an atom of its excess over that median.
ATOM_WINDOW = 8
ATOM_FACTOR = 4.0
ATOM_MIN_MASS = 1e-4


def histogram_atoms(hist: np.ndarray) -> np.ndarray:
    """The point masses of a histogram: per bin, the count above the local level of its
    neighbours where that excess is an isolated spike (see ``ATOM_*``), else 0.

    Many identical values make one: MNIST's constant background gives every channel of
    the first layers one value at most pixels (ResNet-18's first ReLU: 26 % of its non-zero
    values in 35 bins of 2,048)."""
    h = np.asarray(hist, np.float64)
    w = ATOM_WINDOW
    padded = np.pad(h, w, mode="edge")
    base = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1), axis=1)
    spike = (h > ATOM_FACTOR * base) & (h >= ATOM_MIN_MASS * h.sum())
    return np.where(spike, h - base, 0.0)


def kl_threshold_bins(hist: np.ndarray, levels: int, block: int = 128) -> int:
    """TensorRT's entropy calibration on a one-sided histogram: how many bins to keep.

    Candidate ``i`` keeps bins ``[0, i)``: P is them with the outliers (bins ``>= i``) added
    to the last, Q is them merged into ``levels`` buckets (bucket ``k`` holds bins
    ``[k·i // levels, (k+1)·i // levels)``) and spread evenly over each bucket's non-empty
    bins. Returns the ``i`` with the least KL(P‖Q); ``levels`` when there are no more bins
    than levels. Evaluated ``block`` candidates at a time, vectorised, each block over only the
bins its widest candidate keeps.

    The first bin is given the count of the second: after a ReLU it holds every zero (half
    the values, or more), and a spike that no bucket can share would make the narrowest
    candidate (one bin per bucket) win whatever the rest looks like (as NVIDIA's
    pytorch-quantization does).

    Point masses elsewhere (``histogram_atoms``) stay point masses in Q: spreading a bucket
    evenly models values spread over it, and a quantizer maps an atom to one level, not
    over its bucket. Without this, a histogram of tall spikes (the first layers on MNIST)
    makes KL pay for "smearing" every spike a bucket holds, which only narrower buckets
    reduce — so it clips the signal above the spikes for resolution the spikes do not need
    (ResNet-18's first ReLU: 3.7 of 6.9; with atoms kept, 5.1). Only the spread part of
    each bucket (the counts minus the atoms) is spread; a histogram without spikes is
    searched as before."""
    h = np.array(hist, np.float64)
    n = len(h)
    if n > 1:
        h[0] = h[1]
    if n <= levels:
        return n
    total = h.sum()
    if total <= 0:
        return n
    a = histogram_atoms(h)
    c = h - a                                     # the spread part
    nz = (c > 0).astype(np.float64)
    C = np.concatenate([[0.0], np.cumsum(h)])    # C[k] = sum(h[:k])
    Cc = np.concatenate([[0.0], np.cumsum(c)])   # the same of the spread part
    N = np.concatenate([[0.0], np.cumsum(nz)])   # N[k] = non-empty spread bins in h[:k]
    best_i, best_kl = n, math.inf
    for i0 in range(levels, n + 1, block):
        i = np.arange(i0, min(i0 + block, n + 1))[:, None]     # candidates × 1
        j = np.arange(int(i[-1, 0]))                              # the bins any of them keeps
        inside = j[None, :] < i                                   # candidates × bins
        k = np.minimum(((j[None, :] + 1) * levels - 1) // i, levels - 1)  # bucket of bin j
        s, e = (k * i) // levels, ((k + 1) * i) // levels
        used = N[e] - N[s]
        q = np.where(inside & (nz[None, j] > 0), (Cc[e] - Cc[s]) / np.maximum(used, 1), 0.0)
        q += np.where(inside, a[None, j], 0.0)                    # atoms stay where they are
        p = np.where(inside, h[None, j], 0.0)
        last = (i - 1)[:, 0]
        p[np.arange(len(last)), last] += total - C[last + 1]      # the outliers
        kept = C[i[:, 0]][:, None]                                # mass of Q
        pn, qn = p / total, q / np.maximum(kept, 1e-300)
        # P > 0 where Q = 0 (an empty last bin with outliers beyond): a tiny Q, a big KL
        qn = np.where((pn > 0) & (qn <= 0), 1e-12, qn)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pn > 0, pn * np.log(pn / qn), 0.0)
        kl = terms.sum(axis=1)
        m = int(np.argmin(kl))
        if kl[m] < best_kl:
            best_kl, best_i = float(kl[m]), int(i[m, 0])
    return best_i


#: The entropy threshold of a side never clips more than this fraction of its values. KL
#: divergence cannot see what clipping costs when a histogram is a few tall spikes (after
#: MNIST's constant background, every channel of the first conv is one value at most
#: pixels): keeping each spike in its own bucket wins, and the threshold drops below the
#: strokes — measured on VGG-11's first ReLU: 0.73 of a 5.47 range, every stroke clipped,
#: 10 % accuracy. On ordinary data the KL threshold clips less than this and it changes
#: nothing (the heavy-tailed and Gaussian known answers in the tests). Since point masses
#: stay points in Q (``kl_threshold_bins``) the search itself keeps those strokes (the
#: MNIST models' first layers now clip 0.001–0.06 % where this bound used to decide), so
#: the bound is a guard, not the answer.
ENTROPY_MAX_CLIPPED = 1e-3


def _kl_side(hist: np.ndarray, width: float, levels: int) -> float:
    """The KL threshold of a one-sided histogram, at least its (1 - ENTROPY_MAX_CLIPPED)
    quantile."""
    t = kl_threshold_bins(hist, levels) * width
    edges = np.arange(len(hist) + 1) * width
    return max(t, _inverse_cdf(hist, edges, hist.sum() * (1.0 - ENTROPY_MAX_CLIPPED)))


def entropy_side_levels(pos: float, neg: float, levels_total: int) -> tuple[int, int]:
    """The integer levels that the positive and the negative side of a range ``[-neg, pos]``
    get from one affine quantizer of ``levels_total`` levels: proportional to their lengths
    (at least 2 each)."""
    share = pos / (pos + neg) if pos + neg > 0 else 0.5
    p = int(np.clip(round(levels_total * share), 2, levels_total - 2))
    return p, levels_total - p


def _entropy(ob: Observer, levels_total: int, rounds: int = 4) -> tuple[float, float]:
    if ob.one_sided:
        width = (ob.hist_hi - ob.hist_lo) / len(ob.hist)
        return ob.lo, min(_kl_side(ob.hist, width, levels_total), ob.hi)
    # each sign on its own: the threshold of |x| over both would let one side's mass decide
    # the other's (MNIST's input: every background pixel at -0.42 and the strokes up to
    # 2.8 — one |x| threshold at 0.42 clips every stroke). Each side is searched with the
    # levels the one quantizer gives it, proportional to its length: a lopsided range (a
    # bottleneck's output from -1 to 9) spends most of its 256 levels on the long side, and
    # searching that side with half of them makes KL clip it for resolution it does not
    # lack. The split depends on the thresholds, so it starts from the min / max split and
    # is repeated until it stops moving (``rounds`` at most; one or two in practice).
    half = len(ob.hist) // 2
    width = ob.hist_hi / half
    pos_h, neg_h = ob.hist[half:], ob.hist[:half][::-1]
    pos, neg = ob.hi, -ob.lo
    split = entropy_side_levels(pos, neg, levels_total)
    seen: set[tuple[int, int]] = set()
    for _ in range(rounds):
        seen.add(split)
        pos = min(_kl_side(pos_h, width, split[0]), ob.hi)
        neg = min(_kl_side(neg_h, width, split[1]), -ob.lo)
        split = entropy_side_levels(pos, neg, levels_total)
        if split in seen:
            break
    return -neg, pos


def _mse(ob: Observer, levels_total: int, grid: int = 256) -> tuple[float, float]:
    """Least expected squared error (rounding inside + clipping outside), see module doc."""
    hist, edges = ob.hist, ob.edges
    c = (edges[:-1] + edges[1:]) / 2
    steps = levels_total - 1
    # prefix sums of n, n c, n c^2 over bins: S[k] = sum over bins < k
    S0 = np.concatenate([[0.0], np.cumsum(hist)])
    S1 = np.concatenate([[0.0], np.cumsum(hist * c)])
    S2 = np.concatenate([[0.0], np.cumsum(hist * c * c)])
    nb = len(hist)
    # candidate upper ends: bin edges k (keep bins < k); lower ends: edges j (keep bins >= j)
    if ob.one_sided:
        k = np.arange(1, nb + 1)
        j = np.zeros(1, np.int64)
    else:
        half = nb // 2
        k = np.unique(np.linspace(half + 1, nb, min(grid, half)).round().astype(np.int64))
        j = np.unique(np.linspace(0, half - 1, min(grid, half)).round().astype(np.int64))
    hi = edges[k][None, :]
    lo = edges[j][:, None] if not ob.one_sided else np.zeros((1, 1))
    delta = (hi - lo) / steps
    n_in = S0[k][None, :] - S0[j][:, None]
    # above hi: sum n (c - hi)^2 = S2' - 2 hi S1' + hi^2 S0' over bins >= k
    a0, a1, a2 = S0[-1] - S0[k], S1[-1] - S1[k], S2[-1] - S2[k]
    above = a2[None, :] - 2 * hi * a1[None, :] + hi * hi * a0[None, :]
    b0, b1, b2 = S0[j], S1[j], S2[j]
    below = b2[:, None] - 2 * lo * b1[:, None] + lo * lo * b0[:, None]
    err = n_in * delta * delta / 12.0 + np.maximum(above, 0) + np.maximum(below, 0)
    r, col = np.unravel_index(int(np.argmin(err)), err.shape)
    best_lo = 0.0 if ob.one_sided else float(edges[j[r]])
    return max(best_lo, ob.lo), min(float(edges[k[col]]), ob.hi)


def choose_range(ob: Observer, method: str, levels: int = 256, percentile: float = 99.99
                 ) -> tuple[float, float]:
    """The clipping range ``(lo, hi)`` of one observed value (see the module docstring)."""
    if method == "minmax" or ob.hi <= ob.lo:
        return ob.lo, ob.hi
    if ob.hist is None:
        raise IRError(f"calibration {method} needs histograms (collect(histograms=True))")
    if method == "percentile":
        lo, hi = _percentile(ob, percentile)
    elif method == "entropy":
        lo, hi = _entropy(ob, levels)
    elif method == "mse":
        lo, hi = _mse(ob, levels)
    else:
        raise IRError(f"unknown calibration {method!r} (known: {', '.join(CALIBRATORS)})")
    return max(lo, ob.lo), min(hi, ob.hi)


def qparams(lo: float, hi: float, dtype: str) -> tuple[np.float32, int]:
    """(scale, zero point) mapping ``[lo, hi]`` (widened to hold 0) onto ``dtype``'s levels."""
    qmin, qmax = QRANGES[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return np.float32(1.0), int(np.clip(0, qmin, qmax))
    scale = np.float32((hi - lo) / (qmax - qmin))
    if scale == 0 or not np.isfinite(scale):
        raise IRError(f"range [{lo}, {hi}] has no float32 scale")
    zp = int(np.clip(round(qmin - lo / float(scale)), qmin, qmax))
    return scale, zp


# ============================================================================ weights
@dataclass
class WeightQuant:
    """One quantized weight: integer values, scale and zero point (per channel on axis)."""

    q: np.ndarray          # int8 values
    scale: np.ndarray      # f32, 0-d or [channels]
    zero_point: np.ndarray  # int8, same shape as scale
    axis: int | None       # None: per tensor
    qmin: int
    qmax: int

    def dequantized(self) -> np.ndarray:
        return ((self.q.astype(np.float32) - self._b(self.zero_point).astype(np.float32))
                * self._b(self.scale)).astype(np.float32)

    def _b(self, p: np.ndarray) -> np.ndarray:
        if self.axis is None or p.ndim == 0:
            return p
        shape = [1] * self.q.ndim
        shape[self.axis] = -1
        return p.reshape(shape)


def weight_range(bits: int, symmetric: bool, reduce_range: bool) -> tuple[int, int]:
    """The integer levels a ``bits``-bit weight uses (reduce_range: 7-bit, ±64 at 8 bits)."""
    if bits == 1:
        return -1, 1
    if bits == 8 and reduce_range:
        return (-64, 64)
    top = 2 ** (bits - 1) - 1
    return (-top, top) if symmetric else (-top - 1, top)


def _quantize_channels(w: np.ndarray, bits: int, symmetric: bool, qmin: int, qmax: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w`` is [channels, k] in float64: (q, scale, zero point) per row."""
    if bits == 1:  # BWN: sign with the mean magnitude as the scale
        alpha = np.abs(w).mean(axis=1)
        alpha = np.where(alpha > 0, alpha, 1.0)
        q = np.where(w >= 0, 1, -1)
        return q, alpha, np.zeros(len(w), np.int64)
    if symmetric:
        amax = np.abs(w).max(axis=1)
        cands = [1.0] if bits == 8 else np.linspace(0.3, 1.0, 71)
        best_err = np.full(len(w), np.inf)
        best_s = np.ones(len(w))
        for r in cands:
            s = np.where(amax > 0, amax * r / qmax, 1.0)
            q = np.clip(np.round(w / s[:, None]), qmin, qmax)
            err = ((q * s[:, None] - w) ** 2).sum(axis=1)
            better = err < best_err
            best_err, best_s = np.where(better, err, best_err), np.where(better, s, best_s)
        s = best_s.astype(np.float32).astype(np.float64)
        q = np.clip(np.round(w / s[:, None]), qmin, qmax)
        return q, s, np.zeros(len(w), np.int64)
    lo, hi = np.minimum(w.min(axis=1), 0.0), np.maximum(w.max(axis=1), 0.0)
    s = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0).astype(np.float32).astype(np.float64)
    z = np.clip(np.round(qmin - lo / s), qmin, qmax)
    q = np.clip(np.round(w / s[:, None]) + z[:, None], qmin, qmax)
    return q, s, z.astype(np.int64)


def quantize_weight(w: np.ndarray, *, axis: int | None, bits: int = 8, symmetric: bool = True,
                    reduce_range: bool = False) -> WeightQuant:
    """Quantize a float weight per channel along ``axis`` (None: per tensor)."""
    if not 1 <= bits <= 8:
        raise IRError(f"weights of {bits} bits are not supported (1..8)")
    qmin, qmax = weight_range(bits, symmetric or bits == 1, reduce_range)
    wf = np.asarray(w, np.float64)
    if axis is None:
        rows = wf.reshape(1, -1)
    else:
        rows = np.moveaxis(wf, axis, 0).reshape(wf.shape[axis], -1)
    q, s, z = _quantize_channels(rows, bits, symmetric or bits == 1, qmin, qmax)
    if axis is None:
        qa = q.reshape(wf.shape)
        scale, zp = np.float32(s[0]), np.int8(z[0])
        scale, zp = np.asarray(scale, np.float32), np.asarray(zp, np.int8)
    else:
        moved = [wf.shape[axis]] + [d for i, d in enumerate(wf.shape) if i != axis]
        qa = np.moveaxis(q.reshape(moved), 0, axis)
        scale, zp = s.astype(np.float32), z.astype(np.int8)
    return WeightQuant(np.ascontiguousarray(qa.astype(np.int8)), scale, zp, axis, qmin, qmax)


# ============================================================================ the CPU
def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel lists in ``path`` (empty where it does not exist)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}

# x86-64 System V: ``void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])``:
# push rbx; mov r8, rdx; mov eax, edi; mov ecx, esi; cpuid;
# mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 4989d0 89f8 89f1 0fa2 418900 41895804 41894808 4189500c 5b c3")


def _cpuid_fn():
    """CPUID as a C function (machine code in an executable page), or None off x86-64 Linux."""
    import ctypes
    import mmap

    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32,
                          ctypes.POINTER(ctypes.c_uint32))(addr)
    fn._page = page  # the code lives as long as the function
    return fn


@functools.cache
def cpuid_flags() -> frozenset[str] | None:
    """The VNNI flags (``/proc/cpuinfo``'s names) that the CPU instruction CPUID reports to
    this process, or None where it cannot be run.

    This is what onnxruntime's MLAS reads to pick its u8 × s8 kernel, and it can differ from
    ``/proc/cpuinfo``: under an emulator (``qemu-x86_64 -cpu EPYC-Milan``, a Zen 3) the
    kernel's flags are the host's. numpy's own CPUID probe (``__cpu_features__``, which also
    checks that the OS saves the AVX / AVX-512 registers) decides AVX2 and AVX-512 VNNI; it
    has no AVX-VNNI entry, so that bit is read here (leaf 7 subleaf 1, EAX bit 4). AMX is
    not asked for: every CPU with AMX-INT8 has AVX-512 VNNI.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features

        fn = _cpuid_fn()
    except (ImportError, OSError, ValueError, AttributeError) as e:  # no numpy probe, no exec page
        log.debug("CPUID not available (%s); reading /proc/cpuinfo", e)
        return None
    if fn is None:
        return None
    import ctypes

    regs = (ctypes.c_uint32 * 4)()
    fn(0, 0, regs)
    leaf7_1 = 0
    if regs[0] >= 7:  # the highest leaf
        fn(7, 0, regs)
        if regs[0] >= 1:  # the highest subleaf of leaf 7
            fn(7, 1, regs)
            leaf7_1 = regs[0]
    return frozenset(name for name, on in (
        ("avx2", features.get("AVX2")),
        ("avx512_vnni", features.get("AVX512VNNI")),
        ("avx_vnni", features.get("AVX2") and leaf7_1 >> 4 & 1),
    ) if on)


def needs_reduce_range(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU without VNNI (see the module docstring): by CPUID where it can be
    run (``cpuid_flags``), else by ``/proc/cpuinfo``."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False
    if flags is None:
        flags = cpuid_flags()
    if flags is None:
        flags = cpu_flags()
    return not (flags & _VNNI_FLAGS)


# ============================================================================ data files
#: Calibration batch size for graphs that run at any batch: big enough that the interpreter's
#: per-op overhead does not dominate, small enough for any model's activations.
CALIBRATION_BATCH = 32


def load_calibration(source: str | Path | dict[str, np.ndarray], graph: Graph,
                     batch_size: int | None = None) -> list[list[np.ndarray]]:
    """Calibration batches for ``graph`` from an ``.npz`` file (or a dict of arrays).

    The file holds one array per graph input, named like the input (a file with a single
    array feeds a graph with a single input whatever its name), with the samples along
    dim 0. They are cut into batches of ``batch_size``, in order: by default
    ``CALIBRATION_BATCH`` for a graph that runs at any batch (``ir/batch.py``), else the batch
    it was traced at (its inputs' dim 0), where a short last batch is dropped.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise IRError(f"calibration file {path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: np.asarray(f[k]) for k in f.files}
        except Exception as e:
            raise IRError(f"calibration file {path}: cannot read it as .npz: {e}") from None
        where = str(path)
    else:
        arrays, where = dict(source), "calibration data"
    meta = {k: v for k, v in arrays.items() if k.startswith("__")}
    arrays = {k: v for k, v in arrays.items() if not k.startswith("__")}
    if batch_size is None and "__batch_size__" in meta:
        batch_size = int(meta["__batch_size__"])
    names = [v.name for v in graph.inputs]
    keys = {n: n for n in arrays}  # input name -> array name in the file
    if len(arrays) == 1 and len(names) == 1:
        (key, only), = arrays.items()
        arrays, keys = {names[0]: only}, {names[0]: key}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise IRError(f"{where}: no array for input(s) {', '.join(missing)} (it has "
                      f"{', '.join(sorted(arrays)) or 'none'})")
    first = graph.inputs[0]
    traced = first.shape[0] if first.shape else 1
    polymorphic = {id(v) for v in ir_batch.batch_inputs(graph)} >= {id(v) for v in graph.inputs}
    n = len(arrays[names[0]])
    for v in graph.inputs:
        a = arrays[v.name]
        if a.ndim != len(v.shape) or tuple(a.shape[1:]) != tuple(v.shape[1:]):
            raise IRError(f"{where}: array {keys[v.name]} is {a.shape}; input %{v.name} is "
                          f"{v.type} (samples along dim 0, the rest as the input)")
        if len(a) != n:
            raise IRError(f"{where}: arrays have different sample counts")
    bs = int(batch_size or (CALIBRATION_BATCH if polymorphic else traced))
    if bs < 1:
        raise IRError(f"{where}: batch size must be >= 1")
    batches = []
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        if stop - start < bs and not polymorphic and batches:
            break  # the graph runs at its traced batch
        batch = [np.ascontiguousarray(arrays[v.name][start:stop]).astype(
            _np_dtype(v), copy=False) for v in graph.inputs]
        batches.append(batch)
    if not batches:
        raise IRError(f"{where}: no samples")
    return batches


def _np_dtype(v: Value):
    from ...ir.types import to_numpy_dtype

    return to_numpy_dtype(v.dtype)


def save_calibration(batches: Iterable[Any], graph: Graph, path: str | Path) -> Path:
    """Write calibration batches as an ``.npz`` that ``load_calibration`` reads back into
    the same batches (samples concatenated along dim 0, the batch size recorded)."""
    per_input: dict[str, list[np.ndarray]] = {v.name: [] for v in graph.inputs}
    sizes = []
    for i, batch in enumerate(batches):
        xs = _batch_inputs(graph, batch, i)
        for v, x in zip(graph.inputs, xs):
            per_input[v.name].append(x.detach().cpu().numpy())
        sizes.append(len(xs[0]) if xs and xs[0].dim() else 1)
    arrays: dict[str, Any] = {k: np.concatenate(v) for k, v in per_input.items()}
    if sizes:
        arrays["__batch_size__"] = np.asarray(sizes[0])
    path = Path(path)
    np.savez(path, **arrays)
    return path
