"""Rank selection and truncated SVD, shared by the low-rank passes (and structured-fc).

Everything here works in float64 on numpy arrays and knows nothing of the IR:

* ``unfold(w, mode)`` — the mode-``mode`` unfolding of a tensor (``w.shape[mode]`` rows);
* ``svd(a)`` — the economy SVD in float64; ``singular_values(a)`` — its spectrum only;
  ``left_svd(a)`` — the left factor and spectrum (through the Gram matrix when ``a`` is wide);
* ``factor_pair(a, rank, split=...)`` — ``a ≈ left @ right`` from the truncated SVD, the
  singular values split evenly between the factors by default (``sqrt(s)`` on each side,
  so neither factor's scale dwarfs the other's in float32 or int8);
* ``relative_error(w, approx)`` — ``||w - approx|| / ||w||``;
* ``tail_energy(s)`` — ``t[r]`` = the fraction of ``sum(s**2)`` beyond the first ``r``
  values: the squared relative error of the best rank-``r`` approximation (Eckart–Young);
* ``energy_rank(s, energy)`` — the smallest rank keeping at least ``energy`` of it;
* ``evbmf(a)`` / ``evbmf_values(s, shape)`` / ``evbmf_rank(a)`` — the rank empirical variational Bayesian matrix
  factorization keeps (Nakajima, Sugiyama, Babacan and Tomioka 2013, "Global analytic
  solution of fully-observed variational Bayesian matrix factorization", JMLR 14: the
  noise variance minimises the closed-form free energy, then every singular value above
  the EVB threshold is kept). Kim et al. 2016 apply it to a conv weight's unfoldings;
* ``round_rank(r, full, multiple, up=...)`` — a rank rounded to a multiple where the
  channel count allows it (never above ``full``, never rounded when ``full <= multiple``);
* ``largest_rank_within(cost, budget, full)`` — the largest rank whose cost fits;
* ``RankRule`` — the one way passes turn their ``rank= / ratio= / energy= / vbmf /
  target_macs=`` options into a rule (``RankRule.from_options``) and check them;
* ``allocate(layers, saving)`` — ranks for a whole-graph MAC budget: each layer offers
  candidate points (MACs, estimated error); the greedy walks every layer's lower convex
  hull in order of least error added per MAC saved until the saving is reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "EVBMF", "Point", "RankRule", "allocate", "energy_rank", "evbmf", "evbmf_rank", "evbmf_values",
    "factor_pair", "largest_rank_within", "left_svd", "relative_error", "round_rank", "singular_values", "svd",
    "tail_energy", "unfold",
]


# ============================================================================ SVD
def unfold(w: np.ndarray, mode: int) -> np.ndarray:
    """The mode-``mode`` unfolding: ``w.shape[mode]`` rows, the other axes (in order) as
    columns, in float64."""
    return np.moveaxis(np.asarray(w, dtype=np.float64), mode, 0).reshape(w.shape[mode], -1)


def svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U, s, Vt`` with ``a = U @ diag(s) @ Vt`` (economy size, float64, s descending)."""
    return np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)


def singular_values(a: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False)


def left_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``U [m, k]`` and ``s [k]`` (``k = min(m, n)``, descending) of ``a [m, n]`` without
    the right factor: for a wide matrix (a conv kernel's channel unfolding, 512 × 4608) the
    eigenvectors of ``a @ a.T``, ~10× faster than the SVD. ``U`` is orthonormal either way,
    so a full-rank reconstruction stays exact; singular values below ~1e-8 of the largest
    lose relative precision (squared in the Gram matrix), which rank rules do not see."""
    a = np.asarray(a, dtype=np.float64)
    m, n = a.shape
    if m > n // 2:
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        return u, s
    lam, u = np.linalg.eigh(a @ a.T)
    order = np.argsort(lam)[::-1]
    return u[:, order], np.sqrt(np.clip(lam[order], 0.0, None))


def factor_pair(a: np.ndarray, rank: int, *,
                split: Literal["balanced", "left", "right"] = "balanced"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``left [m, rank]`` and ``right [rank, n]`` with ``left @ right`` the best rank-``rank``
    approximation of ``a [m, n]`` (exact when ``rank >= rank(a)``). ``split`` says where the
    singular values go: ``sqrt`` on each side, all on the left, or all on the right."""
    u, s, vt = svd(a)
    r = min(rank, s.size)
    u, s, vt = u[:, :r], s[:r], vt[:r]
    if split == "balanced":
        root = np.sqrt(s)
        left, right = u * root, root[:, None] * vt
    elif split == "left":
        left, right = u * s, vt
    else:
        left, right = u, s[:, None] * vt
    if r < rank:  # ask for more than the matrix has: pad with zero terms
        left = np.concatenate([left, np.zeros((left.shape[0], rank - r))], axis=1)
        right = np.concatenate([right, np.zeros((rank - r, right.shape[1]))], axis=0)
    return left, right


def relative_error(w: np.ndarray, approx: np.ndarray) -> float:
    """``||w - approx|| / ||w||`` (Frobenius, float64; 0 for a zero ``w``)."""
    w, approx = np.asarray(w, dtype=np.float64), np.asarray(approx, dtype=np.float64)
    norm = float(np.linalg.norm(w))
    return float(np.linalg.norm(w - approx)) / norm if norm > 0 else 0.0


def tail_energy(s: np.ndarray) -> np.ndarray:
    """``t[r]`` for ``r = 0 .. len(s)``: the fraction of ``sum(s**2)`` in ``s[r:]``."""
    e = np.asarray(s, dtype=np.float64) ** 2
    total = e.sum()
    if total == 0:
        return np.zeros(e.size + 1)
    tail = np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]]) / total
    return np.clip(tail, 0.0, 1.0)


def energy_rank(s: np.ndarray, energy: float) -> int:
    """The smallest rank (>= 1) whose leading singular values hold >= ``energy`` of
    ``sum(s**2)``."""
    tail = tail_energy(s)
    ok = np.nonzero(tail <= 1.0 - energy + 1e-12)[0]
    return max(1, int(ok[0]) if ok.size else len(s))


# ============================================================================ EVBMF
@dataclass(frozen=True)
class EVBMF:
    """What EVBMF found: the kept rank, the estimated noise variance and the threshold
    (a singular value is kept iff it is above ``threshold``)."""

    rank: int
    sigma2: float
    threshold: float


def _tau_bar(alpha: float) -> float:
    """The zero of ``log(1+t) + alpha*log(1+t/alpha) - t`` above ``sqrt(alpha)`` (Nakajima et
    al. 2013, Theorem 13; 2.5129 for alpha = 1, which is where the often-quoted
    ``2.5129*sqrt(alpha)`` approximation comes from)."""
    from scipy.optimize import brentq

    def f(t: float) -> float:
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t

    lo, hi = math.sqrt(alpha), 4.0
    while f(hi) > 0:
        hi *= 2
    return float(brentq(f, lo, hi, xtol=1e-12))


def evbmf(a: np.ndarray) -> EVBMF:
    """Empirical VBMF of matrix ``a`` (see ``evbmf_values``)."""
    a = np.asarray(a, dtype=np.float64)
    return evbmf_values(singular_values(a), a.shape)


def evbmf_values(s: np.ndarray, shape: tuple[int, int]) -> EVBMF:
    """Empirical VBMF of a matrix of ``shape`` with singular values ``s``, the noise variance
    estimated (the global analytic solution of Nakajima et al. 2013): ``sigma2`` minimises
    the closed-form free energy within the paper's bounds, then every singular value above
    the EVB threshold ``sqrt(M * sigma2 * (1+tau)(1+alpha/tau))`` is kept."""
    from scipy.optimize import minimize_scalar

    L, M = sorted(int(d) for d in shape)  # L <= M
    s = np.sort(np.asarray(s, dtype=np.float64))[::-1][:L]
    if L == 0 or not np.any(s > 0):
        return EVBMF(0, 0.0, 0.0)
    if s.size < L:
        s = np.concatenate([s, np.zeros(L - s.size)])
    alpha = L / M
    tau_bar = _tau_bar(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    # the search interval for sigma2: at most e_h components can be above the threshold
    e_h = min(math.ceil(L / (1 + alpha)) - 1, L - 1)
    upper = float(np.sum(s ** 2)) / (L * M)
    lower = max(s[e_h] ** 2 / (M * x_bar), float(np.mean(s[e_h:] ** 2)) / M)
    lower = min(max(lower, upper * 1e-12), upper)

    def free_energy(sigma2: float) -> float:
        # 2F/M as a function of sigma2, constants dropped: sum(x) + L log(sigma2) for the
        # noise, plus psi_1(x) = log(1+tau) + alpha log(1+tau/alpha) - tau per kept value
        x = s ** 2 / (M * sigma2)
        kept = x[x > x_bar]
        tau = 0.5 * (kept - (1 + alpha) + np.sqrt((kept - (1 + alpha)) ** 2 - 4 * alpha))
        return float(np.sum(x) + L * math.log(sigma2)
                     + np.sum(np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau))

    if upper <= lower * (1 + 1e-9):
        sigma2 = upper
    else:
        sigma2 = float(minimize_scalar(free_energy, bounds=(lower, upper), method="bounded",
                                       options={"xatol": upper * 1e-10}).x)
    threshold = math.sqrt(M * sigma2 * x_bar)
    return EVBMF(int(np.sum(s > threshold)), sigma2, threshold)


def evbmf_rank(a: np.ndarray) -> int:
    """The EVBMF rank of ``a`` (at least 1)."""
    return max(1, evbmf(a).rank)


# ============================================================================ ranks
def round_rank(r: int, full: int, multiple: int, *, up: bool = True) -> int:
    """``r`` clipped to ``[1, full]`` and rounded to a multiple of ``multiple`` — up (never
    above ``full``: a rounded-up rank past it is ``full``) or down (never below
    ``multiple``). When ``full <= multiple`` the channels do not allow it: no rounding."""
    r = max(1, min(int(r), full))
    if multiple <= 1 or full <= multiple:
        return r
    if up:
        return min(full, -(-r // multiple) * multiple)
    return max(multiple, r // multiple * multiple)


def largest_rank_within(cost: Callable[[int], float], budget: float, full: int) -> int:
    """The largest ``r`` in ``[1, full]`` with ``cost(r) <= budget`` (``cost`` increasing);
    1 when even that does not fit."""
    lo, hi = 1, full
    if cost(full) <= budget:
        return full
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


RuleKind = Literal["rank", "full", "ratio", "energy", "vbmf", "target_macs"]


@dataclass(frozen=True)
class RankRule:
    """How a layer's rank is chosen: ``kind`` and its ``value``.

    * ``rank`` — a given rank (an int, or a tuple with one rank per decomposed mode);
    * ``full`` — full rank (exact; only useful to check a pass, or with ``break_even=false``);
    * ``ratio`` — keep at most this fraction of the layer's parameters;
    * ``energy`` — keep at least this fraction of the singular-value energy (per mode);
    * ``vbmf`` — the EVBMF rank (per mode);
    * ``target_macs`` — chosen for the whole graph by ``allocate`` (an int: MACs; a float
      in (0, 1]: that fraction of the graph's MACs).
    """

    kind: RuleKind
    value: Any = None

    @staticmethod
    def from_options(rank: Any = None, ratio: float | None = None, energy: float | None = None,
                     vbmf: bool = False, target_macs: int | float | None = None,
                     default: RuleKind = "vbmf") -> RankRule:
        """The rule the options give; ``ValueError`` when they conflict. None of them given:
        ``default``."""
        given = [k for k, v in (("rank", rank), ("ratio", ratio), ("energy", energy),
                                ("vbmf", vbmf or None), ("target_macs", target_macs))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"give one of rank, ratio, energy, vbmf, target_macs (got "
                             f"{', '.join(given)})")
        if not given:
            return RankRule(default)
        kind = given[0]
        if kind == "rank":
            if rank == "full":
                return RankRule("full")
            ranks = (rank,) if isinstance(rank, int) else tuple(rank)
            if not ranks or any(not isinstance(r, int) or r < 1 for r in ranks):
                raise ValueError(f"rank must be a positive int, a tuple of them, or full; "
                                 f"got {rank!r}")
            return RankRule("rank", ranks)
        if kind == "ratio":
            if not 0 < ratio <= 1:
                raise ValueError(f"ratio is the fraction of parameters kept, in (0, 1]; got "
                                 f"{ratio}")
            return RankRule("ratio", float(ratio))
        if kind == "energy":
            if not 0 < energy <= 1:
                raise ValueError(f"energy is the fraction of singular-value energy kept, in "
                                 f"(0, 1]; got {energy}")
            return RankRule("energy", float(energy))
        if kind == "vbmf":
            return RankRule("vbmf")
        if isinstance(target_macs, float) and not 0 < target_macs <= 1:
            raise ValueError(f"target_macs as a float is a fraction of the graph's MACs, in "
                             f"(0, 1]; give an absolute count as an int (got {target_macs})")
        if isinstance(target_macs, int) and target_macs < 1:
            raise ValueError(f"target_macs must be positive, got {target_macs}")
        return RankRule("target_macs", target_macs)

    def target(self, graph_macs: int) -> int:
        """The MAC budget of a ``target_macs`` rule for a graph of ``graph_macs``."""
        v = self.value
        return int(v) if isinstance(v, int) else int(math.floor(v * graph_macs))


# ============================================================================ budgets
@dataclass(frozen=True)
class Point:
    """One way to build a layer: its ``macs`` and estimated squared relative ``error``
    (``rank`` None = the layer as it is)."""

    macs: int
    error: float
    rank: Any = None


def _pareto(points: Sequence[Point], start: Point) -> list[Point]:
    """The points no other beats on both MACs and error, ``start`` (the layer as it is)
    first, then by MACs descending."""
    out: list[Point] = []
    for p in sorted((q for q in points if q.macs <= start.macs), key=lambda p: (p.macs, p.error)):
        if not out or p.error < out[-1].error:
            out.append(p)
    out = [p for p in out if p.macs < start.macs] + [start]
    return out[::-1]


def allocate(layers: Sequence[Sequence[Point]], saving: int, *, resolution: int = 4096
             ) -> tuple[list[Point], int]:
    """Pick one point per layer so that the MACs saved (against each layer's largest-MACs
    point: the layer as it is) reach ``saving`` with the least total estimated error — a
    multiple-choice knapsack, solved by dynamic programming over the saving in
    ``saving / resolution`` steps (each point's saving rounded down, so the true saving is
    never less than the planned one). Returns the chosen points and the MACs saved; when no
    choice saves enough, every layer takes its cheapest point."""
    fronts = [_pareto(pts, max(pts, key=lambda p: (p.macs, -p.error))) for pts in layers]

    def saved_by(choice: list[Point]) -> int:
        return sum(f[0].macs - c.macs for f, c in zip(fronts, choice))

    if saving <= 0:
        return [f[0] for f in fronts], 0
    cheapest = [min(f, key=lambda p: (p.macs, p.error)) for f in fronts]
    if saved_by(cheapest) < saving:
        return cheapest, saved_by(cheapest)
    unit = max(1.0, saving / resolution)
    need = math.ceil(saving / unit)
    dp = np.full(need + 1, np.inf)
    dp[0] = 0.0
    back: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: point index, previous bucket
    idx = np.arange(need + 1)
    for front in fronts:
        new = np.full(need + 1, np.inf)
        arg = np.full(need + 1, -1)
        prev = np.full(need + 1, -1)
        for j, p in enumerate(front):
            k = int((front[0].macs - p.macs) // unit)
            cand = dp + p.error
            if k < need:  # new[b + k] from dp[b], b + k < need
                sl = slice(k, need)
                better = cand[: need - k] < new[sl]
                new[sl] = np.where(better, cand[: need - k], new[sl])
                arg[sl] = np.where(better, j, arg[sl])
                prev[sl] = np.where(better, idx[: need - k], prev[sl])
            lo = max(need - k, 0)  # every dp[b] with b + k >= need lands on need
            b = lo + int(np.argmin(cand[lo:]))
            if cand[b] < new[need]:
                new[need], arg[need], prev[need] = cand[b], j, b
        dp = new
        back.append((arg, prev))
    if not np.isfinite(dp[need]):  # only rounding can get here: take the cheapest points
        return cheapest, saved_by(cheapest)
    choice: list[Point] = []
    b = need
    for front, (arg, prev) in zip(reversed(fronts), reversed(back)):
        choice.append(front[int(arg[b])])
        b = int(prev[b])
    choice.reverse()
    return choice, saved_by(choice)
