"""Tensor decompositions of conv kernels, Tucker-2 and CP, in float64: tensorly's
algorithms written out in numpy, so that no step forms more than it needs (tensorly 0.10
stays the reference the tests compare with).

* ``tucker2(w, rank_out, rank_in, max_iter=..., tol=...)`` — ``w [C_out, C_in, kh, kw] ≈
  core ×₀ U_out ×₁ U_in`` by HOOI from the HOSVD: the algorithm of tensorly's
  ``partial_tucker`` on modes 0 and 1 (``init="svd"``; each sweep takes each factor as the
  leading left singular vectors of the kernel with the other mode projected; the error
  after 0, 1 and 5 sweeps equal to ``partial_tucker``'s, tested), the singular vectors
  from ``left_svd``'s Gram-matrix eigendecomposition. At most ``max_iter`` sweeps (0: the
  HOSVD itself), stopping from the third sweep on when the relative error changes by less
  than ``tol`` (1e-4: a 512×512×3×3 kernel at rank 352 stops after 5 sweeps, at 0.03 %
  less error than 10: 1.3 s on one thread, 4.5 s with
  ``partial_tucker``, to the same error);
* ``cp(w, rank, max_iter=..., work_budget=..., time_budget=..., tol=..., seed=...)`` —
  CP-ALS: the algorithm of tensorly's ``parafac`` (SVD init, the rank's columns past a
  mode's size drawn from ``seed``; each sweep solves every mode's factor against the
  Hadamard product of the others' Gram matrices; the error from the last MTTKRP), with the
  MTTKRP computed in stages (``mttkrp``). tensorly forms the Khatri-Rao product of the
  other three factors for every mode: for a 3×3 kernel's h mode ``C_out·C_in·3·R`` values,
  7 GB for a 512×512 kernel at rank 1144 (17 GB peak for ``cp-conv`` on ResNet-18). It
  stops at whichever comes first: convergence (relative error change below ``tol``),
  ``max_iter`` sweeps, the sweeps ``work_budget`` pays for —
  ``clamp(floor(work_budget / als_sweep_cost(shape, rank)), 1, max_iter)``, a count fixed
  before the first sweep, so the fit is the same in every process and on every machine —
  or, only when given, ``time_budget`` seconds (checked after every sweep, so a run
  overshoots by at most one sweep; the sweep count, and so the factors, then depend on the
  machine's speed and load);
* ``als_sweep_cost(shape, rank)`` — the estimated multiply-adds of one CP-ALS sweep: per
  mode the MTTKRP (``numel·R``), the Gram matrices' Hadamard product (``R²·Σ dims``) and
  the ``R×R`` solve (``R³``);
* ``cp_exact(w)`` — an exact CP of rank ``kh·kw·min(C_out, C_in)`` built without ALS
  (one SVD per kernel tap; the CP factors along h and w are one-hot), which is what
  "full rank" means for ``cp-conv``.

Results carry the relative reconstruction error ``||w - ŵ|| / ||w||`` computed from the
factors (float64), the sweeps run and the seconds spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .rank import left_svd, relative_error, unfold

__all__ = ["CP", "Tucker2", "als_sweep_cost", "cp", "cp_exact", "cp_to_tensor", "mttkrp",
           "relative_error", "tucker2", "tucker_to_tensor"]


# ============================================================================ Tucker-2
@dataclass
class Tucker2:
    """``w ≈ einsum('abhw,oa,ib->oihw', core, out_factor, in_factor)``."""

    core: np.ndarray  # [R_out, R_in, kh, kw]
    out_factor: np.ndarray  # [C_out, R_out]
    in_factor: np.ndarray  # [C_in, R_in]
    error: float
    iterations: int
    seconds: float


def tucker_to_tensor(core: np.ndarray, out_factor: np.ndarray, in_factor: np.ndarray
                     ) -> np.ndarray:
    return np.einsum("abhw,oa,ib->oihw", core, out_factor, in_factor, optimize=True)


def _sign_fixed(u: np.ndarray) -> np.ndarray:
    """``u`` with each column's largest-magnitude entry made positive (an SVD / eigh may
    return either sign, and LAPACK builds differ in which; tensorly's ``svd_flip``)."""
    big = np.argmax(np.abs(u), axis=0)
    return u * np.where(u[big, np.arange(u.shape[1])] < 0, -1.0, 1.0)


def _leading(a: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading left singular vectors of ``a [m, n]`` (``rank <= m``), sign-fixed;
    past ``a``'s own rank (``rank > n``) completed by an orthonormal basis of the rest
    (QR against seeded random columns, as tensorly's ``_complete_factor`` does)."""
    u = _sign_fixed(left_svd(a)[0][:, :rank])
    if u.shape[1] < rank:
        extra = np.random.RandomState(0).standard_normal((u.shape[0], rank - u.shape[1]))
        q, _ = np.linalg.qr(np.concatenate([u, extra], axis=1))
        u = np.concatenate([u, _sign_fixed(q[:, u.shape[1]:rank])], axis=1)
    return u


def tucker2(w: np.ndarray, rank_out: int, rank_in: int, *, max_iter: int = 10,
            tol: float = 1e-4, hosvd: tuple[np.ndarray, np.ndarray] | None = None) -> Tucker2:
    """Tucker-2 of a 4-D kernel on its two channel modes (see the module docstring).
    ``hosvd``: the leading left singular vectors of the mode-0 and mode-1 unfoldings (at
    least ``rank_out`` / ``rank_in`` columns) when the caller has them: HOOI starts from
    them instead of computing the HOSVD again."""
    w = np.asarray(w, dtype=np.float64)
    t0 = time.perf_counter()
    if hosvd is not None and hosvd[0].shape[1] >= rank_out and hosvd[1].shape[1] >= rank_in:
        u_out, u_in = hosvd[0][:, :rank_out], hosvd[1][:, :rank_in]
    else:
        u_out, u_in = _leading(unfold(w, 0), rank_out), _leading(unfold(w, 1), rank_in)
    norm2 = float(np.sum(w * w))
    errors: list[float] = []
    sweeps = 0
    core = None  # [kh, kw, R_out, R_in]: w ×₀ u_out ×₁ u_in, from the last sweep
    while sweeps < max_iter:
        # each factor: the leading left singular vectors of w with the other mode projected
        y = np.tensordot(w, u_in, axes=([1], [0]))  # [C_out, kh, kw, R_in]
        u_out = _leading(y.reshape(y.shape[0], -1), rank_out)
        y = np.tensordot(w, u_out, axes=([0], [0]))  # [C_in, kh, kw, R_out]
        u_in = _leading(y.reshape(y.shape[0], -1), rank_in)
        sweeps += 1
        # orthonormal factors: ||w - ŵ||² = ||w||² - ||core||²
        core = np.tensordot(y, u_in, axes=([0], [0]))
        errors.append(math.sqrt(abs(norm2 - float(np.sum(core ** 2))) / norm2) if norm2
                      else 0.0)
        if sweeps >= 3 and abs(errors[-2] - errors[-1]) < tol:
            break
    if core is None:  # max_iter=0: the HOSVD's core
        core = np.tensordot(np.tensordot(w, u_out, axes=([0], [0])), u_in, axes=([0], [0]))
    core = np.ascontiguousarray(core.transpose(2, 3, 0, 1))  # [R_out, R_in, kh, kw]
    err = relative_error(w, tucker_to_tensor(core, u_out, u_in))
    return Tucker2(core, u_out, u_in, err, sweeps, time.perf_counter() - t0)


# ============================================================================ CP
@dataclass
class CP:
    """``w ≈ sum_r out[:, r] ⊗ in_[:, r] ⊗ h[:, r] ⊗ w[:, r]`` with the CP weights (λ)
    already folded into the factors, balanced: each factor's column r has norm
    ``|λ_r ∏ norms|^(1/4)``. ``stopped`` is ``converged``, ``max_iter``, ``work_budget``,
    ``time_budget`` or ``exact`` (``cp_exact``)."""

    out: np.ndarray  # [C_out, R]
    in_: np.ndarray  # [C_in, R]
    h: np.ndarray  # [kh, R]
    w: np.ndarray  # [kw, R]
    error: float
    iterations: int
    seconds: float
    stopped: str

    @property
    def rank(self) -> int:
        return self.out.shape[1]


def cp_to_tensor(out: np.ndarray, in_: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_r out_r ⊗ in_r ⊗ h_r ⊗ w_r`` through ``[C_out, kh, kw, R]`` and one GEMM (never a
    ``[C_out, C_in, R]``)."""
    ohw = out[:, None, None, :] * (h[:, None, :] * w[None, :, :])
    return np.ascontiguousarray(np.moveaxis(np.tensordot(ohw, in_, axes=([3], [1])), 3, 1))


def _balance(weights: np.ndarray | None, factors: list[np.ndarray]) -> list[np.ndarray]:
    """Fold λ into the factors, every factor's column scaled to the same norm."""
    factors = [np.asarray(f, dtype=np.float64) for f in factors]
    rank = factors[0].shape[1]
    lam = np.ones(rank) if weights is None else np.asarray(weights, dtype=np.float64)
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    total = np.abs(lam) * np.prod(norms, axis=0)
    share = total ** (1.0 / len(factors))
    out = []
    for i, (f, n) in enumerate(zip(factors, norms)):
        scale = np.divide(share, n, out=np.zeros_like(n), where=n > 0)
        if i == 0:
            scale = scale * np.sign(lam)
        out.append(f * scale)
    return out


def als_sweep_cost(shape: tuple[int, ...], rank: int) -> int:
    """Estimated multiply-adds of one CP-ALS sweep on a tensor of ``shape`` at ``rank``:
    per mode the MTTKRP (``numel·R``), the Hadamard product of the other modes' Gram
    matrices (``R²·Σ dims`` for the Grams) and the ``R×R`` solve (``R³``)."""
    numel = math.prod(shape)
    return len(shape) * (numel * rank + rank ** 3) + rank * rank * sum(shape)


def als_sweeps(shape: tuple[int, ...], rank: int, max_iter: int,
               work_budget: float | None) -> int:
    """The sweeps ``work_budget`` pays for: ``clamp(floor(work_budget / cost), 1,
    max_iter)`` (``max_iter`` without a budget)."""
    if work_budget is None:
        return max_iter
    return max(1, min(max_iter, math.floor(work_budget / als_sweep_cost(shape, rank))))


def mttkrp(w: np.ndarray, factors: list[np.ndarray], mode: int) -> np.ndarray:
    """``unfold(w, mode) @ khatri_rao(the other factors)``, ``[w.shape[mode], R]``, in stages:
    ``w`` is first contracted with the factor of its largest other mode (one GEMM), then
    summed against the remaining factors with the rank index shared. No intermediate is
    larger than ``numel / dim_k · R``; the Khatri-Rao product itself (what tensorly's
    ``parafac`` forms, ``numel / dim_mode · R`` values: for a 512×512×3×3 kernel's h mode at
    rank 1144, 7 GB) never exists."""
    others = [k for k in range(w.ndim) if k != mode]
    first = max(others, key=lambda k: w.shape[k])
    t = np.tensordot(w, factors[first], axes=([first], [0]))  # the other axes in order, then R
    letters = "abcdefgh"[:w.ndim]
    subs = ["".join(letters[k] for k in range(w.ndim) if k != first) + "z"]
    operands = [t]
    for k in others:
        if k != first:
            subs.append(letters[k] + "z")
            operands.append(factors[k])
    return np.einsum(",".join(subs) + "->" + letters[mode] + "z", *operands, optimize=True)


def _svd_init(w: np.ndarray, rank: int, seed: int) -> list[np.ndarray]:
    """The SVD initialisation of CP-ALS (as tensorly's ``initialize_cp(init="svd")``): mode
    ``m``'s factor is the leading left singular vectors of ``unfold(w, m)`` (mode 0's scaled by
    the singular values), each column's largest entry made positive (LAPACK builds may
    return either sign), and the columns past the unfolding's rank drawn uniform in [0, 1)
    from ``seed``, mode by mode."""
    rng = np.random.RandomState(seed)
    factors = []
    for mode in range(w.ndim):
        u, s = left_svd(unfold(w, mode))
        u, s = _sign_fixed(u[:, :rank]), s[:rank]
        if mode == 0:
            u = u * s
        if u.shape[1] < rank:
            u = np.concatenate([u, rng.random_sample((u.shape[0], rank - u.shape[1]))], axis=1)
        factors.append(u)
    return factors


def cp(w: np.ndarray, rank: int, *, max_iter: int = 100, work_budget: float | None = None,
       time_budget: float | None = None, tol: float = 1e-6, seed: int = 0) -> CP:
    """CP-ALS of a 4-D kernel (see the module docstring). ``tol`` must be positive. Without
    ``time_budget`` the result depends only on the arguments (and the BLAS's arithmetic)."""
    if tol <= 0:
        raise ValueError("tol must be positive")
    w = np.asarray(w, dtype=np.float64)
    cap = als_sweeps(w.shape, rank, max_iter, work_budget)
    t0 = time.perf_counter()
    factors = _svd_init(w, rank, seed)
    grams = [f.T @ f for f in factors]
    norm2 = float(np.sum(w * w))
    errors: list[float] = []
    n, timed_out = 0, False
    while n < cap:
        for mode in range(w.ndim):
            v = np.ones((rank, rank))
            for k, g in enumerate(grams):
                if k != mode:
                    v *= g
            m = mttkrp(w, factors, mode)
            factors[mode] = np.linalg.solve(v, m.T).T  # v is symmetric
            grams[mode] = factors[mode].T @ factors[mode]
        n += 1
        # ||w - ŵ||² = ||w||² - 2<w, ŵ> + ||ŵ||², with <w, ŵ> from the last mode's MTTKRP
        inner = float(np.sum(m * factors[-1]))
        fit2 = float(np.sum(np.prod(np.stack(grams), axis=0)))
        errors.append(math.sqrt(abs(norm2 - 2.0 * inner + fit2) / norm2) if norm2 else 0.0)
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            timed_out = n < cap
            break
        if n >= 2 and abs(errors[-2] - errors[-1]) < tol:
            break
    seconds = time.perf_counter() - t0
    out, in_, h, ww = _balance(None, factors)
    stopped = ("time_budget" if timed_out else "max_iter" if n >= max_iter
               else "work_budget" if n >= cap else "converged")
    err = relative_error(w, cp_to_tensor(out, in_, h, ww))
    return CP(out, in_, h, ww, err, n, seconds, stopped)


def cp_exact(w: np.ndarray) -> CP:
    """An exact CP of rank ``kh·kw·min(C_out, C_in)``: for each tap (i, j) the SVD of
    ``w[:, :, i, j]`` gives ``min(C_out, C_in)`` terms whose h- and w-factors are the
    one-hot vectors of i and j."""
    from .rank import factor_pair

    t0 = time.perf_counter()
    w = np.asarray(w, dtype=np.float64)
    c_out, c_in, kh, kw = w.shape
    r = min(c_out, c_in)
    outs, ins, hs, ws = [], [], [], []
    for i in range(kh):
        for j in range(kw):
            left, right = factor_pair(w[:, :, i, j], r)
            outs.append(left)
            ins.append(right.T)
            hs.append(np.repeat(np.eye(kh)[:, i:i + 1], r, axis=1))
            ws.append(np.repeat(np.eye(kw)[:, j:j + 1], r, axis=1))
    out, in_, h, ww = (np.concatenate(a, axis=1) for a in (outs, ins, hs, ws))
    err = relative_error(w, cp_to_tensor(out, in_, h, ww))
    return CP(out, in_, h, ww, err, 0, time.perf_counter() - t0, "exact")
