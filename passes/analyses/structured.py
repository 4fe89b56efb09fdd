"""Nearest structured matrices: the fits behind ``structured-fc``.

Each ``fit_*`` takes a dense weight ``W`` of shape ``[out, in]`` (a ``linear`` layer's
weight: ``y = W x``), works in float64, and returns a ``Fit``: the factors that the pass
emits as IR ops, the dense matrix those factors represent (``dense``), the parameter count
and the multiply-accumulates per input vector. Every fit is the nearest matrix of its kind
in the Frobenius norm (an orthogonal projection for the linear families; Eckart–Young on a
rearrangement for the others), so a weight that already has the structure is reproduced
exactly.

Families (``Fit.kind``):

* ``kronecker`` — ``W ≈ Σ_r A_r ⊗ B_r`` with ``A_r: [m1, n1]``, ``B_r: [m2, n2]``,
  ``out = m1·m2``, ``in = n1·n2``. Van Loan & Pitsianis (1993): rearrange ``W`` so that each
  Kronecker product becomes a rank-1 matrix, ``R[(i1,j1), (i2,j2)] = W[i1·m2+i2, j1·n2+j2]``,
  and keep the top ``r`` singular triplets.
* ``blockdiag`` — ``b`` diagonal blocks of ``[out/b, in/b]`` (the projection keeps the blocks
  and zeroes the rest), optionally after a permutation of the inputs and of the outputs
  that puts most of the energy into the blocks (balanced co-clustering by alternating
  assignment, ``scipy.optimize.linear_sum_assignment``).
* ``monarch`` — Dao et al. 2022: ``x`` as ``b`` blocks of ``p``; per block ``R_k: [q, p]``;
  transpose ``[b, q] → [q, b]``; per row ``L_j: [s, b]``; ``out = q·s``, ``in = b·p``. Then
  ``W[(j,t), (k,i)] = L_j[t,k] · R_k[j,i]``: every ``s×p`` slice ``(j, k)`` is rank one, and
  the nearest Monarch matrix is the per-slice rank-1 SVD (closed form).
* ``circulant`` / ``block_circulant`` — ``W`` as ``[out/k, in/k]`` blocks of ``k×k``
  circulants ``C[i, j] = c[(i - j) mod k]`` (Cheng et al. 2015; CirCNN); the nearest one
  takes the mean of each block along its wrapped diagonals. ``circulant`` is one block.
* ``toeplitz`` — ``W[i, j] = t[i - j + in - 1]`` (``out + in - 1`` values, Sindhwani et al.
  2015); the nearest one takes the mean along each diagonal.
* ``lowrank`` — truncated SVD ``W ≈ U V`` (``U: [out, r]``, ``V: [r, in]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KINDS", "Fit", "StructureError", "factor_pair", "fit", "fit_blockdiag",
    "fit_block_circulant", "fit_circulant", "fit_kronecker", "fit_lowrank", "fit_monarch",
    "fit_toeplitz",
]

KINDS = ("lowrank", "kronecker", "blockdiag", "monarch", "circulant", "block_circulant",
         "toeplitz")


class StructureError(ValueError):
    """The weight's shape does not admit the requested structure (a readable reason)."""


@dataclass
class Fit:
    """A structured approximation of one weight ``[out, in]``."""

    kind: str
    shape: tuple[int, int]
    factors: dict[str, np.ndarray]
    dense: np.ndarray  # the matrix the factors represent, [out, in], float64
    params: int  # values stored
    macs: int  # multiply-accumulates per input vector, as the pass emits it
    info: dict[str, object] = field(default_factory=dict)

    def error(self, w: np.ndarray) -> float:
        """Relative Frobenius error ``||W - fit|| / ||W||`` (0 for a zero ``W``)."""
        from .rank import relative_error

        return relative_error(w, self.dense)


# ------------------------------------------------------------------------------ shapes
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def factor_pair(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a·b = n`` and ``a ≤ b`` as close to ``√n`` as possible."""
    a = max(d for d in _divisors(n) if d * d <= n)
    return a, n // a


def _check_w(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, np.float64)
    if w.ndim != 2 or 0 in w.shape:
        raise StructureError(f"needs a non-empty matrix [out, in], got shape {list(w.shape)}")
    return w


# ------------------------------------------------------------------------------ low rank
def fit_lowrank(w: np.ndarray, rank: int) -> Fit:
    """Truncated SVD, ``U = u_r √σ``, ``V = √σ v_r`` — the low-rank passes' own
    (``analyses/rank.factor_pair``), so ``structured-fc(kind=lowrank)`` and ``svd-linear``
    agree."""
    from .rank import factor_pair as svd_pair, singular_values

    w = _check_w(w)
    out, inp = w.shape
    if not 1 <= rank <= min(out, inp):
        raise StructureError(f"rank {rank} must be in 1..{min(out, inp)}")
    U, V = svd_pair(w, rank)
    return Fit("lowrank", w.shape, {"U": U, "V": V}, U @ V, rank * (out + inp),
               rank * (out + inp), {"rank": rank, "singular_values": singular_values(w)})


# ------------------------------------------------------------------------------ kronecker
def _rearrange(w: np.ndarray, m: tuple[int, int], n: tuple[int, int]) -> np.ndarray:
    """Van Loan–Pitsianis: ``R[(i1,j1), (i2,j2)] = W[i1·m2+i2, j1·n2+j2]``."""
    (m1, m2), (n1, n2) = m, n
    return w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def fit_kronecker(w: np.ndarray, rank: int = 1, out_factors: tuple[int, int] | None = None,
                  in_factors: tuple[int, int] | None = None) -> Fit:
    """The nearest sum of ``rank`` Kronecker products ``A_r ⊗ B_r``."""
    w = _check_w(w)
    out, inp = w.shape
    m = out_factors or factor_pair(out)
    n = in_factors or factor_pair(inp)
    if m[0] * m[1] != out or n[0] * n[1] != inp:
        raise StructureError(f"factors {m} x {n} do not multiply to [{out}, {inp}]")
    if 1 in m and 1 in n and (m[0] == n[0] == 1 or m[1] == n[1] == 1):
        raise StructureError(f"[{out}, {inp}] has no non-trivial Kronecker factorisation "
                             f"(a prime dimension)")
    r_mat = _rearrange(w, m, n)
    if not 1 <= rank <= min(r_mat.shape):
        raise StructureError(f"rank {rank} must be in 1..{min(r_mat.shape)} for factors "
                             f"{m[0]}x{n[0]} and {m[1]}x{n[1]}")
    u, s, vt = np.linalg.svd(r_mat, full_matrices=False)
    sq = np.sqrt(s[:rank])
    a = (u[:, :rank] * sq).T.reshape(rank, m[0], n[0])
    b = (sq[:, None] * vt[:rank]).reshape(rank, m[1], n[1])
    dense = sum(np.kron(a[i], b[i]) for i in range(rank))
    params = rank * (m[0] * n[0] + m[1] * n[1])
    # emitted as X·Bᵀ then A·(…): per term n1·n2·m2 + m1·n1·m2 MACs
    macs = rank * (n[0] * n[1] * m[1] + m[0] * n[0] * m[1])
    return Fit("kronecker", w.shape, {"A": a, "B": b}, dense, params, macs,
               {"rank": rank, "out_factors": m, "in_factors": n, "singular_values": s})


# ------------------------------------------------------------------------------ block-diagonal
def _block_energy(e: np.ndarray, rows: np.ndarray, cols: np.ndarray, b: int) -> float:
    return float(sum(e[np.ix_(rows == k, cols == k)].sum() for k in range(b)))


def _assign(score: np.ndarray, size: int) -> np.ndarray:
    """Balanced assignment of items (rows of ``score[item, block]``) to blocks of ``size``
    items each, maximising the total score (Hungarian method on repeated block slots)."""
    from scipy.optimize import linear_sum_assignment

    slots = np.repeat(score, size, axis=1)  # item x (block, slot)
    _, col = linear_sum_assignment(-slots)
    return col // size


def _refine(e: np.ndarray, rows: np.ndarray, cols: np.ndarray, b: int,
            iters: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Alternate balanced assignments of columns and rows while the block energy grows."""
    out, inp = e.shape
    best = (_block_energy(e, rows, cols, b), rows, cols)
    for _ in range(iters):
        col_score = np.stack([e[rows == k].sum(0) for k in range(b)], 1)  # in x b
        cols = _assign(col_score, inp // b)
        row_score = np.stack([e[:, cols == k].sum(1) for k in range(b)], 1)  # out x b
        rows = _assign(row_score, out // b)
        energy = _block_energy(e, rows, cols, b)
        if energy <= best[0] * (1 + 1e-12):
            break
        best = (energy, rows, cols)
    return best


def _coblocks(w: np.ndarray, b: int, seed: int = 0,
              iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Row and column block labels that put most of ``W``'s energy in the diagonal blocks:
    balanced alternating assignment, started from the identity labelling and from spectral
    co-clustering of ``|W|`` (Dhillon 2001, scikit-learn); the better of the two."""
    out, inp = w.shape
    e = w * w
    starts = [(np.arange(out) // (out // b), np.arange(inp) // (inp // b))]
    try:
        from sklearn.cluster import SpectralCoclustering

        sc = SpectralCoclustering(n_clusters=b, random_state=seed).fit(np.abs(w) + 1e-12)
        starts.append((sc.row_labels_, sc.column_labels_))
    except Exception:  # degenerate spectra (e.g. a constant matrix): the identity start
        pass
    best = None
    for rows, cols in starts:
        if len(set(rows)) < b or len(set(cols)) < b or any(
                (rows == k).sum() != out // b or (cols == k).sum() != inp // b
                for k in range(b)):
            # unbalanced clusters: one balanced assignment pass toward them first
            col_score = np.stack([(cols == k).astype(float) for k in range(b)], 1)
            row_score = np.stack([(rows == k).astype(float) for k in range(b)], 1)
            rows, cols = _assign(row_score, out // b), _assign(col_score, inp // b)
        cand = _refine(e, rows, cols, b, iters)
        if best is None or cand[0] > best[0] * (1 + 1e-12):
            best = cand
    return best[1], best[2]


def fit_blockdiag(w: np.ndarray, blocks: int, permute: bool = False) -> Fit:
    """``blocks`` diagonal blocks; with ``permute``, after the input/output permutations
    that keep most energy. Factors: ``blocks: [b, out/b, in/b]``, and with ``permute`` the
    index arrays ``in_perm`` (inputs gathered in that order) and ``out_perm`` (block outputs
    scattered back: ``y[out_perm] = z``)."""
    w = _check_w(w)
    out, inp = w.shape
    b = int(blocks)
    if b < 2 or out % b or inp % b:
        raise StructureError(f"blocks={b} must be >= 2 and divide both {out} outputs and "
                             f"{inp} inputs")
    factors: dict[str, np.ndarray] = {}
    if permute:
        rows, cols = _coblocks(w, b)
        out_perm = np.concatenate([np.flatnonzero(rows == k) for k in range(b)])
        in_perm = np.concatenate([np.flatnonzero(cols == k) for k in range(b)])
        wp = w[np.ix_(out_perm, in_perm)]
        if np.array_equal(out_perm, np.arange(out)) and np.array_equal(in_perm, np.arange(inp)):
            permute = False  # the identity was best
    if not permute:
        out_perm, in_perm, wp = np.arange(out), np.arange(inp), w
    ob, ib = out // b, inp // b
    blk = np.stack([wp[k * ob:(k + 1) * ob, k * ib:(k + 1) * ib] for k in range(b)])
    dense_p = np.zeros_like(wp)
    for k in range(b):
        dense_p[k * ob:(k + 1) * ob, k * ib:(k + 1) * ib] = blk[k]
    dense = np.empty_like(dense_p)
    dense[np.ix_(out_perm, in_perm)] = dense_p
    factors["blocks"] = blk
    if permute:
        factors["in_perm"], factors["out_perm"] = in_perm, out_perm
    return Fit("blockdiag", w.shape, factors, dense, b * ob * ib, b * ob * ib,
               {"blocks": b, "permuted": bool(permute)})


# ------------------------------------------------------------------------------ monarch
def _monarch_shape(out: int, inp: int, blocks: int | None) -> tuple[int, int, int, int]:
    """``(b, p, q, s)``: ``in = b·p``, ``out = q·s``; ``b`` input blocks (default ≈ √in) and
    ``q`` = ``b`` when it divides ``out``, else the divisor of ``out`` nearest to ``b``."""
    b = blocks or factor_pair(inp)[0]
    if b < 2 or inp % b:
        raise StructureError(f"blocks={b} must be >= 2 and divide the {inp} inputs")
    q = min(_divisors(out), key=lambda d: (abs(d - b), d))
    if q < 2 and out > 1:
        raise StructureError(f"{out} outputs have no divisor near blocks={b}")
    return b, inp // b, q, out // q


def fit_monarch(w: np.ndarray, blocks: int | None = None) -> Fit:
    """The nearest Monarch matrix: per ``(j, k)`` slice the best rank-1 approximation.
    Factors ``R: [b, q, p]`` (first block-diagonal) and ``L: [q, s, b]`` (second)."""
    w = _check_w(w)
    out, inp = w.shape
    b, p, q, s = _monarch_shape(out, inp, blocks)
    w4 = w.reshape(q, s, b, p)  # W[(j,t), (k,i)]
    slices = w4.transpose(0, 2, 1, 3)  # [q, b, s, p]
    u, sv, vt = np.linalg.svd(slices, full_matrices=False)  # batched
    sq = np.sqrt(sv[..., 0])  # [q, b]
    left = u[..., :, 0] * sq[..., None]  # [q, b, s]: L_j[:, k]
    right = vt[..., 0, :] * sq[..., None]  # [q, b, p]: R_k[j, :]
    lmat = left.transpose(0, 2, 1)  # L: [q, s, b]
    rmat = right.transpose(1, 0, 2)  # R: [b, q, p]
    dense = np.einsum("jtk,kji->jtki", lmat, rmat).reshape(out, inp)
    params = b * q * p + q * s * b
    return Fit("monarch", w.shape, {"R": rmat, "L": lmat}, dense, params, params,
               {"blocks": b, "shape": (b, p, q, s)})


# ------------------------------------------------------------------------------ circulant
def _circ_dense(c: np.ndarray) -> np.ndarray:
    """``[p, q, k]`` → the block_circulant matrix ``[p·k, q·k]``."""
    p, q, k = c.shape
    idx = (np.arange(k)[:, None] - np.arange(k)[None, :]) % k
    return c[:, :, idx].transpose(0, 2, 1, 3).reshape(p * k, q * k)


def fit_block_circulant(w: np.ndarray, block: int) -> Fit:
    """``[out/k, in/k]`` blocks of ``k×k`` circulants: ``c[p, q, d]`` is the mean of block
    ``(p, q)`` along its wrapped diagonal ``(i - j) mod k = d``."""
    w = _check_w(w)
    out, inp = w.shape
    k = int(block)
    if k < 2 or out % k or inp % k:
        raise StructureError(f"block={k} must be >= 2 and divide both {out} and {inp}")
    p, q = out // k, inp // k
    w4 = w.reshape(p, k, q, k).transpose(0, 2, 1, 3)  # [p, q, i, j]
    idx = (np.arange(k)[:, None] - np.arange(k)[None, :]) % k
    c = np.zeros((p, q, k))
    for d in range(k):
        c[:, :, d] = w4[:, :, idx == d].mean(-1)
    kind = "circulant" if p == q == 1 else "block_circulant"
    return Fit(kind, w.shape, {"c": c}, _circ_dense(c), p * q * k, p * q * k * k,
               {"block": k})


def fit_circulant(w: np.ndarray) -> Fit:
    """One ``n×n`` circulant (square weights only: ``block_circulant`` takes others)."""
    w = _check_w(w)
    if w.shape[0] != w.shape[1]:
        raise StructureError(f"circulant needs a square weight, got {list(w.shape)} "
                             f"(block_circulant takes rectangular ones)")
    return fit_block_circulant(w, w.shape[0])


# ------------------------------------------------------------------------------ toeplitz
def toeplitz_dense(t: np.ndarray, out: int, inp: int) -> np.ndarray:
    i, j = np.arange(out)[:, None], np.arange(inp)[None, :]
    return t[i - j + inp - 1]


def fit_toeplitz(w: np.ndarray) -> Fit:
    """``W[i, j] = t[i - j + in - 1]``; ``t`` the means along the diagonals."""
    w = _check_w(w)
    out, inp = w.shape
    i, j = np.arange(out)[:, None], np.arange(inp)[None, :]
    d = (i - j + inp - 1).ravel()
    n = out + inp - 1
    t = np.bincount(d, weights=w.ravel(), minlength=n) / np.bincount(d, minlength=n)
    return Fit("toeplitz", w.shape, {"t": t}, toeplitz_dense(t, out, inp), n, out * inp, {})


def default_block_size(out: int, inp: int, largest: int = 256) -> int:
    """The largest common divisor of ``out`` and ``inp`` up to ``largest`` (CirCNN used
    blocks of 64–256: larger blocks compress more and fit worse)."""
    g = math.gcd(out, inp)
    return max(d for d in _divisors(g) if d <= largest)


# ------------------------------------------------------------------------------ one entry
def fit(w: np.ndarray, kind: str, *, rank: int = 1, blocks: int | None = None,
        block_size: int | None = None, permute: bool = False) -> Fit:
    """Dispatch on ``kind`` (one of ``KINDS``): ``rank`` for lowrank/kronecker, ``blocks``
    (number of blocks) for blockdiag/monarch, ``block_size`` for block_circulant (default: ``default_block_size``)."""
    w = _check_w(w)
    if kind == "lowrank":
        return fit_lowrank(w, rank)
    if kind == "kronecker":
        return fit_kronecker(w, rank)
    if kind == "blockdiag":
        return fit_blockdiag(w, blocks or 4, permute)
    if kind == "monarch":
        return fit_monarch(w, blocks)
    if kind == "circulant":
        return fit_circulant(w)
    if kind == "block_circulant":
        return fit_block_circulant(w, block_size or default_block_size(*w.shape))
    if kind == "toeplitz":
        return fit_toeplitz(w)
    raise StructureError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
