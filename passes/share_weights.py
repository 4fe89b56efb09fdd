"""``share-weights``: k-means weight sharing per layer (Deep Compression, step 2). Lossy.

Matches the constant float weight (operand 1) of every ``conv2d``, ``conv_transpose2d``
and ``linear``. Its values — the kept ones of a ``sparse`` weight, all of them otherwise —
are clustered by 1-D k-means into at most ``2**bits`` centroids, and every value is
replaced by its centroid. The weight gets the ``codebook`` encoding (stacked on the
sparse one as ``sparse(...) then codebook(bits=…)``, the paper's order), so fine-tuning
through ``to_torch`` trains the centroids, each with the sum of its cluster's gradients,
and the verifier catches a weight that leaves its codebook.

k-means: Lloyd's algorithm in float64 on the sorted values (assignment by the midpoints
between sorted centroids), at most ``iterations`` rounds or until no assignment changes;
Initialisation (``init``): ``linear`` — equally
spaced between the smallest and largest value (the paper found it best: it keeps the
rare large weights); ``density`` — equally spaced quantiles of the values; ``random`` —
distinct values drawn with the context's seeded generator. Everything is deterministic
under the context seed. An empty cluster takes over the upper half of the cluster with the
largest squared error, so pruning's empty gap around zero wastes no centroid. A weight with
at most ``2**bits`` distinct values is left as it is, bit for bit, and just gets the
encoding.

Options:

* ``bits`` — index width (``None``: the paper's 8 for convolutions, 5 for fully
  connected layers);
* ``per_layer`` — ``{"fc3": 4, "conv*": 6}``: bits per layer by ``fnmatch`` pattern on
  the layer's loc, node name or weight name (as in ``prune-weights``);
* ``init`` — ``linear`` | ``density`` | ``random``;
* ``iterations`` — the cap on Lloyd rounds.

Not shared (counted): a weight that is not a constant (``skipped_nonconstant``) or not
float (``skipped_dtype``). Stats: ``shared`` (layers), ``exact`` (layers that already had
few enough values), ``centroids`` (their total), ``iterations`` (the most any layer
took), ``max_abs_error`` (largest change of a weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..ir.encoding import Codebook, Sparse, split_codebook
from ..ir.graph import Graph
from .base import Pass, PassContext, PassResult, option
from .prune_weights import per_layer_values, weight_layers
from .registry import register_pass

#: Deep Compression's codebook widths (Han et al., 2016, section 5).
PAPER_BITS = {"conv2d": 8, "conv_transpose2d": 8, "linear": 5}


def init_centroids(values: np.ndarray, k: int, init: str, rng: np.random.Generator
                   ) -> np.ndarray:
    """``k`` starting centroids (float64, sorted) for 1-D k-means of ``values``."""
    v = values.astype(np.float64)
    if init == "linear":
        c = np.linspace(v.min(), v.max(), k)
    elif init == "density":
        c = np.quantile(v, (np.arange(k) + 0.5) / k)
    elif init == "random":
        uniq = np.unique(v)
        c = rng.choice(uniq, size=k, replace=False)
    else:
        raise ValueError(f"unknown init {init!r}")
    return np.sort(c)


def kmeans_1d(values: np.ndarray, centroids: np.ndarray, iterations: int
              ) -> tuple[np.ndarray, np.ndarray, int]:
    """Lloyd's algorithm in one dimension: ``(centroids, assignment, rounds)``, the centroids
    sorted. An empty cluster takes the upper half of the cluster with the largest squared
    error, so none is wasted in the gap that pruning leaves around zero."""
    v = values.astype(np.float64).reshape(-1)
    c = np.sort(np.asarray(centroids, dtype=np.float64))
    assign = None
    for rounds in range(1, iterations + 1):
        new = np.searchsorted((c[1:] + c[:-1]) / 2, v)
        if assign is not None and np.array_equal(new, assign):
            rounds -= 1
            break
        assign = new
        counts = np.bincount(assign, minlength=len(c))
        sums = np.bincount(assign, weights=v, minlength=len(c))
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # split the clusters with the largest squared error
            sse = np.bincount(assign, weights=(v - c[assign]) ** 2, minlength=len(c))
            upper = v > c[assign]
            n_up = np.bincount(assign[upper], minlength=len(c))
            s_up = np.bincount(assign[upper], weights=v[upper], minlength=len(c))
            split = [j for j in np.argsort(-sse, kind="stable") if n_up[j] > 0][: len(empty)]
            for e, j in zip(empty, split):
                c[e] = s_up[j] / n_up[j]
        c = np.sort(c)
    return c, np.searchsorted((c[1:] + c[:-1]) / 2, v), rounds


def share(values: np.ndarray, bits: int, init: str, iterations: int,
          rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """``values`` replaced by their k-means centroids (in their dtype), the number of
    centroids, and the Lloyd rounds (0: already at most ``2**bits`` distinct values)."""
    table, _ = split_codebook(values)
    k = 2 ** bits
    if len(table) <= k:
        return values.copy(), len(table), 0
    c, assign, rounds = kmeans_1d(values, init_centroids(values, k, init, rng), iterations)
    out = c.astype(values.dtype)[assign].reshape(values.shape)
    return out, len(np.unique(out)), rounds


@register_pass("share-weights")
@dataclass
class ShareWeights(Pass):
    """k-means weight sharing per layer: weights become codebook values (trainable centroids)."""

    exact = False
    bits: int | None = option(None, ge=1, le=16, help="codebook index bits (None: 8 for "
                              "conv, 5 for linear, as the paper)")
    per_layer: dict[str, int] | None = option(None, help="{pattern: bits} by layer loc / "
                                              "node / weight name (fnmatch)")
    init: Literal["linear", "density", "random"] = option("linear", help="k-means "
                                                          "initialisation")
    iterations: int = option(100, ge=1, help="cap on Lloyd rounds per layer")

    def check(self) -> str | None:
        for k, v in (self.per_layer or {}).items():
            if not 1 <= v <= 16:
                return f"per_layer[{k!r}] = {v}: bits are in 1..16"
        return None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int | float] = dict.fromkeys(
            ("shared", "exact", "centroids", "iterations", "skipped_nonconstant",
             "skipped_dtype"), 0)
        stats["max_abs_error"] = 0.0
        layers = weight_layers(graph)
        overrides = per_layer_values("per_layer", self.per_layer, layers)
        for node, w, reason in layers:
            if reason:
                ctx.logger.debug("share-weights: not sharing %s: %s", node.describe(), reason)
                stats[reason] += 1
                continue
            bits = int(overrides.get(id(w), self.bits or PAPER_BITS[node.op]))
            sparse = w.encoding if isinstance(w.encoding, Sparse) else None
            values = w.data[sparse.mask] if sparse is not None else w.data
            new_values, k, rounds = share(values, bits, self.init, self.iterations, ctx.rng)
            if sparse is not None:
                data = np.zeros_like(w.data)
                data[sparse.mask] = new_values
                enc = Sparse(sparse.mask, sparse.index_bits, codebook=Codebook(bits))
            else:
                data, enc = new_values, Codebook(bits)
            if values.size:
                err = float(np.abs(new_values.astype(np.float64) - values).max())
                stats["max_abs_error"] = max(stats["max_abs_error"], err)
            graph.replace_constant(w, data, drop_encoding=True)
            w.encoding = enc
            stats["shared"] += 1
            stats["exact"] += rounds == 0
            stats["centroids"] += k
            stats["iterations"] = max(stats["iterations"], rounds)
        return PassResult(stats["shared"] > 0, stats)
