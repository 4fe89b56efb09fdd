"""Layers as the low-rank passes see them: a conv2d, linear or matmul by a constant whose
weight can be factored, with its sizes and the spectra the rank rules read.

* ``Layer`` — the node, its activation operand, weight and bias values, a float64 copy of
  the weight in the pass's layout, ``groups`` blocks sharing one rank, its MACs and
  parameters, the full rank per rank entry, the matrices per group whose spectra the rank
  rules read (``modes``; ``left_svds`` / ``spectra`` computed once), and
  ``mode_errors(ranks)``, the discarded energy of each mode at those ranks;
* ``refuse_weight`` — the common reasons a layer's constants cannot be factored (a stats
  key: ``skipped_nonconstant``, ``skipped_shared_weight``, ``skipped_dtype``,
  ``skipped_encoded``);
* ``conv_layer`` — a ``conv2d`` (``skipped_depthwise``, ``skipped_pointwise`` unless
  allowed), ``dense_layer`` — a ``linear``, or a ``matmul`` with one constant 2-D operand,
  as its ``[out, in]`` matrix (``skipped_activations``, ``skipped_layout``);
  ``group_slices`` — a grouped conv weight's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...ir.graph import Graph, Node, Value
from . import rank as R

__all__ = ["Layer", "conv_layer", "dense_layer", "group_slices", "refuse_weight"]


@dataclass
class Layer:
    """A layer a pass may decompose. ``weight`` is float64 in the pass's own layout;
    ``groups`` independent blocks share one rank; ``modes`` lists, per group, the matrices
    whose spectra the rank rules read (e.g. a kernel's unfoldings), in rank order."""

    node: Node
    x: Value  # the activation operand
    weight: Value  # the constant being decomposed
    bias: Value | None
    w: np.ndarray  # float64 copy of the weight's data
    groups: int
    macs: int
    params: int  # weight + bias
    full: tuple[int, ...]  # the full rank per rank entry
    modes: list[list[np.ndarray]] = field(default_factory=list)  # [group][mode] -> matrix
    info: dict[str, Any] = field(default_factory=dict)  # pass-specific facts
    x_index: int = 0  # which operand of ``node`` is ``x`` (read again when emitting: an
    # earlier rewrite may have replaced the value)
    _svds: list[list[tuple[np.ndarray, np.ndarray]]] | None = field(default=None, repr=False)
    _tails: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def spectra(self) -> list[list[np.ndarray]]:
        """Singular values of every ``modes`` matrix (computed once)."""
        return [[s for _, s in ms] for ms in self.left_svds]

    @property
    def left_svds(self) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """``(U, s)`` of every ``modes`` matrix (``analyses.rank.left_svd``; computed once):
        the spectra the rank rules read and the HOSVD factors Tucker starts from."""
        if self._svds is None:
            self._svds = [[R.left_svd(m) for m in ms] for ms in self.modes]
        return self._svds

    def mode_errors(self, ranks: tuple[int, ...]) -> list[float]:
        """Per mode, the squared relative error of the best rank-``ranks[i]`` approximation
        of that unfolding, over all groups (discarded energy / total energy)."""
        if self._tails is None:
            total = float(np.sum(self.w ** 2)) or 1.0
            tails = []
            for i in range(len(self.modes[0])):
                n = max(len(spec[i]) for spec in self.spectra)
                t = np.zeros(n + 1)
                for spec in self.spectra:
                    e = np.asarray(spec[i], dtype=np.float64) ** 2
                    tail = np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]])
                    t += np.concatenate([tail, np.zeros(n + 1 - tail.size)])
                tails.append(t / total)
            self._tails = tails
        return [float(t[min(r, t.size - 1)]) for t, r in zip(self._tails, ranks)]


def refuse_weight(graph: Graph, node: Node, weight: Value, others: list[Value]) -> str | None:
    """The common reasons a layer's constant operands cannot be decomposed, or None."""
    if not weight.is_constant or not all(v.is_constant for v in others):
        return "skipped_nonconstant"
    if any(u is not node for u in weight.uses) or weight in graph.outputs:
        return "skipped_shared_weight"
    if not weight.type.is_float or node.outputs[0].dtype != weight.dtype or any(
            v.dtype != weight.dtype for v in others):
        return "skipped_dtype"
    if weight.encoding is not None:
        return "skipped_encoded"
    return None


def conv_layer(graph: Graph, node: Node, *, allow_pointwise: bool) -> Layer | str:
    """The common checks of a conv2d to decompose, and its ``Layer`` (no modes yet)."""
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    reason = refuse_weight(graph, node, w, [bias] if bias is not None else [])
    if reason:
        return reason
    c_out, c_in_g, kh, kw = w.shape
    g = node.attrs["groups"]
    if c_in_g == 1 and g > 1:
        return "skipped_depthwise"
    if (kh, kw) == (1, 1) and not allow_pointwise:
        return "skipped_pointwise"
    out = node.outputs[0]
    wd = w.data.astype(np.float64)
    info = {"in_pixels": x.type.numel // x.shape[1], "out_pixels": out.type.numel // c_out,
            "c_in": x.shape[1], "c_out": c_out, "k": (kh, kw)}
    return Layer(node, x, w, bias, wd, g, macs=out.type.numel * c_in_g * kh * kw,
                 params=w.type.numel + (bias.type.numel if bias is not None else 0),
                 full=(), info=info)


def dense_layer(graph: Graph, node: Node) -> Layer | str:
    """A ``linear``, or a ``matmul`` with one constant 2-D operand, as a ``Layer`` whose ``w``
    is the ``[out, in]`` matrix (``x @ B`` gives ``B.T``, ``A @ x`` gives ``A``) and whose
    ``info`` has ``kind`` (linear / matmul_right / matmul_left), ``rows`` (rows of the
    product), ``in``, ``out``; or the reason it is not one (a stats key)."""
    if node.op == "linear":
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        reason = refuse_weight(graph, node, w, [bias] if bias is not None else [])
        if reason:
            return reason
        mats = w.data.astype(np.float64)
        kind = "linear"
    else:
        a, b = node.inputs
        if not a.is_constant and not b.is_constant:
            return "skipped_activations"
        if a.is_constant and b.is_constant:
            return "skipped_nonconstant"  # fold-constants' job
        w, x = (b, a) if b.is_constant else (a, b)
        kind = "matmul_right" if b.is_constant else "matmul_left"
        bias = None
        reason = refuse_weight(graph, node, w, [])
        if reason:
            return reason
        if w.type.rank != 2:
            return "skipped_layout"
        # as [out, in]: x @ B uses B.T, A @ x uses A
        mats = w.data.astype(np.float64)
        mats = mats.T if kind == "matmul_right" else mats
    out_f, in_f = mats.shape
    rows = node.outputs[0].type.numel // out_f  # rows of the product
    return Layer(node, x, w, bias, mats, 1, macs=rows * in_f * out_f,
                 params=w.type.numel + (bias.type.numel if bias is not None else 0),
                 full=(min(out_f, in_f),), modes=[[mats]],
                 info={"kind": kind, "rows": rows, "in": in_f, "out": out_f},
                 x_index=1 if kind == "matmul_left" else 0)


def group_slices(layer: Layer) -> list[np.ndarray]:
    """The weight's per-group blocks ``[C_out/g, C_in/g, kh, kw]``."""
    g = layer.groups
    return list(np.split(layer.w, g, axis=0)) if g > 1 else [layer.w]
