"""``prune-weights``: unstructured magnitude pruning (Deep Compression, step 1). Lossy.

Matches the constant weight (operand 1) of every ``conv2d``, ``conv_transpose2d`` and
``linear``; sets its smallest-magnitude elements to zero and gives it the ``sparse``
encoding, whose mask keeps the pruned positions at zero through fine-tuning
(``to_torch`` trains ``dense * mask``) and lets the verifier catch any that revive. A
weight's exact zeros count as pruned. Ties are broken by position, so the result is
deterministic, and exactly ``round(sparsity * size)`` elements are pruned.

Options:

* ``sparsity`` — the fraction to prune; ``0`` is exact.
* ``scope`` — ``layer``: ``sparsity`` of each weight; ``global``: of all matched weights
  together, with one magnitude threshold for all.
* ``per_layer`` — ``{"fc1": 0.92, "conv*": 0.6}``: a sparsity per layer, by ``fnmatch``
  pattern on the layer's loc, its node name or its weight's name (the first pattern that
  matches wins; a pattern that matches nothing is an error listing the layers). Such
  layers are left out of the global threshold.
* ``index_bits`` — the width of the relative index in the stored CSR (``None``: the
  paper's 8 bits for convolutions, 5 for fully connected layers).

A weight that is already sparse is pruned further (its mask only shrinks; a weight already
sparser than asked is left as it is, ``unchanged``). Not pruned (counted): a weight that is
not a constant (``skipped_nonconstant``), not float (``skipped_dtype``), or already
weight-shared (``skipped_codebook``: prune before ``share-weights``).

Stats: ``pruned`` (layers), ``unchanged``, ``weights`` (elements in matched layers),
``zeros`` (of them pruned after the pass), ``sparsity`` (``zeros / weights``) and the
counters above. The achieved sparsity per weight is left in
``ctx.artifacts["prune-weights"]`` (weight name -> fraction).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..ir.encoding import Sparse, codebook_of
from ..ir.graph import Graph, Node, Value
from .base import Pass, PassContext, PassError, PassResult, option
from .registry import register_pass

LAYERS = frozenset({"conv2d", "conv_transpose2d", "linear"})
#: Deep Compression's relative-index widths (Han et al., 2016, section 3).
PAPER_INDEX_BITS = {"conv2d": 8, "conv_transpose2d": 8, "linear": 5}


def weight_layers(graph: Graph) -> list[tuple[Node, Value, str | None]]:
    """``(layer, weight, reason)`` for each conv / linear in graph order, each weight once;
    ``reason`` is a stats key when the weight cannot be compressed, else None."""
    out, seen = [], set()
    for node in graph.nodes:
        if node.op not in LAYERS or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if id(w) in seen:
            continue
        seen.add(id(w))
        reason = ("skipped_nonconstant" if not w.is_constant
                  else "skipped_dtype" if not w.type.is_float else None)
        out.append((node, w, reason))
    return out


def layer_names(node: Node, weight: Value) -> list[str]:
    """The names a per-layer option may use for a layer: loc, node name, weight name."""
    return [n for n in (node.loc, node.name, weight.name) if n]


def per_layer_values(option_name: str, per_layer: dict | None,
                     layers: list[tuple[Node, Value, str | None]]) -> dict[int, object]:
    """``id(weight) -> value`` for the layers that ``per_layer`` patterns match (the first
    matching pattern wins); a pattern that matches no layer is a PassError."""
    if not per_layer:
        return {}
    out: dict[int, object] = {}
    used = set()
    for node, w, _ in layers:
        for pattern, value in per_layer.items():
            if any(fnmatch.fnmatchcase(n, pattern) for n in layer_names(node, w)):
                out[id(w)] = value
                used.add(pattern)
                break
    unused = [p for p in per_layer if p not in used]
    if unused:
        known = ", ".join(n.loc or n.name for n, _, _ in layers) or "none"
        raise PassError(f"{option_name}: {', '.join(map(repr, unused))} matches no layer "
                        f"(layers: {known})")
    return out


def prune_mask(w: np.ndarray, old: np.ndarray | None, count: int) -> np.ndarray:
    """The kept positions after pruning the ``count`` smallest |w| (zeros and ``old``'s
    pruned positions first; ties by position)."""
    flat = np.abs(w.astype(np.float64)).reshape(-1)
    keep = flat != 0
    if old is not None:
        keep &= old.reshape(-1)
    order = np.lexsort((np.arange(flat.size), np.where(keep, flat, -1.0)))
    mask = np.ones(flat.size, dtype=bool)
    mask[order[:count]] = False
    return (mask & keep).reshape(w.shape)


def apply_mask(weight: Value, mask: np.ndarray, index_bits: int) -> None:
    """Zero the pruned positions of ``weight`` and store it sparse."""
    data = np.where(mask, weight.data, np.zeros((), weight.data.dtype))
    weight.data = np.ascontiguousarray(data.astype(weight.data.dtype, copy=False))
    weight.encoding = Sparse(mask, index_bits)


@register_pass("prune-weights")
@dataclass
class PruneWeights(Pass):
    """Magnitude pruning of conv / linear weights; they become sparse (masked) constants."""

    exact = False
    sparsity: float = option(0.5, ge=0.0, lt=1.0,
                             help="fraction of weights to prune (per layer or global)")
    scope: Literal["layer", "global"] = option("layer", help="one threshold per layer or "
                                               "one for all layers")
    per_layer: dict[str, float] | None = option(None, help="{pattern: sparsity} by layer "
                                                "loc / node / weight name (fnmatch)")
    index_bits: int | None = option(None, ge=1, le=16, help="CSR relative-index width "
                                    "(None: 8 for conv, 5 for linear, as the paper)")

    def check(self) -> str | None:
        for k, v in (self.per_layer or {}).items():
            if not 0.0 <= v < 1.0:
                return f"per_layer[{k!r}] = {v}: a sparsity is in [0, 1)"
        return None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        keys = ("pruned", "unchanged", "skipped_nonconstant", "skipped_dtype",
                "skipped_codebook")
        stats: dict[str, int | float] = dict.fromkeys(keys, 0)
        layers = weight_layers(graph)
        overrides = per_layer_values("per_layer", self.per_layer, layers)
        todo: list[tuple[Node, Value]] = []
        for node, w, reason in layers:
            if reason is None and codebook_of(w) is not None:
                reason = "skipped_codebook"
            if reason:
                ctx.logger.debug("prune-weights: not pruning %s: %s", node.describe(), reason)
                stats[reason] += 1
            else:
                todo.append((node, w))
        counts = self._counts(todo, overrides)
        weights = zeros = 0
        achieved = {}
        for node, w in todo:
            old = w.encoding.mask if isinstance(w.encoding, Sparse) else None
            already = w.type.numel - int(np.count_nonzero(
                w.data if old is None else (w.data != 0) & old))
            count = max(counts[id(w)], already)
            mask = prune_mask(w.data, old, count)
            bits = self.index_bits or PAPER_INDEX_BITS[node.op]
            if old is not None and np.array_equal(mask, old) and w.encoding.index_bits == bits:
                stats["unchanged"] += 1
            else:
                apply_mask(w, mask, bits)
                stats["pruned"] += 1
            weights += w.type.numel
            zeros += w.type.numel - int(mask.sum())
            achieved[w.name] = 1.0 - float(mask.mean()) if mask.size else 0.0
        ctx.artifacts["prune-weights"] = achieved
        stats.update(weights=weights, zeros=zeros,
                     sparsity=round(zeros / weights, 6) if weights else 0.0)
        return PassResult(stats["pruned"] > 0, stats)

    def _counts(self, todo: list[tuple[Node, Value]], overrides: dict[int, object]
                ) -> dict[int, int]:
        """How many elements of each weight to prune."""
        counts = {id(w): int(round(float(overrides[id(w)]) * w.type.numel))
                  for _, w in todo if id(w) in overrides}
        rest = [w for _, w in todo if id(w) not in overrides]
        if self.scope == "layer":
            counts.update({id(w): int(round(self.sparsity * w.type.numel)) for w in rest})
            return counts
        # global: the k smallest magnitudes over all the remaining layers together
        if not rest:
            return counts
        mags = np.concatenate([np.abs(w.data.astype(np.float64)).reshape(-1) for w in rest])
        k = int(round(self.sparsity * mags.size))
        owner = np.concatenate([np.full(w.type.numel, i) for i, w in enumerate(rest)])
        order = np.lexsort((np.arange(mags.size), mags))[:k]
        per = np.bincount(owner[order], minlength=len(rest))
        counts.update({id(w): int(per[i]) for i, w in enumerate(rest)})
        return counts
