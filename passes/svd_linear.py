"""``svd-linear``: truncated SVD of fully connected layers into two smaller ones (lossy).

Matches, with a constant 2-D weight:

* ``linear(x, W [out, in][, b])`` (any leading dims: 2-D and 3-D token activations) →
  ``linear(x, V [r, in])`` → ``linear(·, U [out, r], b)``;
* ``conv2d`` with a 1×1 kernel (any stride and padding; ``g`` groups, per group) →
  ``conv2d 1×1 (in -> r per group; the stride, padding, dilation)`` → ``conv2d 1×1 (r ->
  out; + b)``;
* ``matmul(x, B [in, out])`` → ``matmul(matmul(x, P [in, r]), Q [r, out])``, and
  ``matmul(A [out, in], x)`` → ``matmul(P, matmul(Q, x))``.

``W ≈ U V`` is the rank-``r`` truncated SVD in float64 (``analyses/rank.py``), the
singular values split evenly between the two factors (``sqrt(s)`` each), stored in the
layer's dtype; the bias goes on the second op. ``r = min(out, in)`` (``rank=full``)
reproduces the layer exactly. The second op keeps the layer's output name; new weights are
``<stem>.svd_in.weight`` / ``<stem>.svd_out.weight``; both ops keep the layer's loc. The
error of the truncated SVD is known before fitting, so ``target_macs`` here is exact in
its estimate.

Options (the rank options are shared with ``tucker-conv`` and ``cp-conv``, see
``passes/lowrank.py``; give at most one of the first five):

* ``rank`` — the rank ``r``; ``full`` = ``min(out, in)``, which reproduces the layer;
* ``ratio`` — each layer keeps at most this fraction of its parameters (rounded down);
* ``energy`` — the smallest rank keeping this fraction of ``sum(s**2)`` (rounded up);
* ``vbmf`` — the EVBMF rank of the weight (rounded up); the default when no rank option
  is given;
* ``target_macs`` — MACs of the whole graph after the pass (an int, or a float in (0, 1]),
  ranks chosen greedily by least discarded energy per MAC saved;
* ``round_to`` — ranks rounded to a multiple of this (default 8);
* ``break_even`` — skip a layer whose pair would not have fewer MACs (default true):
  ``r (in + out) < in * out``;
* ``min_params`` — layers with fewer weight parameters are left alone (default 1024);
* ``include`` / ``exclude`` — glob patterns on the node's loc (or name).

Not decomposed (each counted): ``skipped_kernel`` (a conv2d kernel larger than 1×1: use
``tucker-conv`` or ``cp-conv``), ``skipped_activations`` (a matmul of two activations;
these two get no row in the report), ``skipped_depthwise``, ``skipped_layout`` (a matmul
constant that is not 2-D: batched weights), and the common ``skipped_nonconstant`` (also:
a matmul of two constants, which is ``fold-constants``' job), ``skipped_shared_weight``,
``skipped_dtype``, ``skipped_encoded``, ``skipped_tiny``, ``skipped_excluded``,
``skipped_break_even``, ``skipped_budget``.

Stats: ``decomposed``, the reasons, ``macs_before/after`` and ``params_before/after`` of
the decomposed layers, ``max_error``, ``seconds``. One row per layer (status or skip reason, rank,
relative error, params and MACs before → after, seconds) is ``PassResult.layers``, printed
by ``shrinkc opt --stats``, and ``ctx.artifacts["svd-linear"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node
from .analyses import rank as R
from .analyses.layers import Layer, conv_layer, dense_layer
from .base import PassContext
from .lowrank import ChainStep, Fit, LowRankPass
from .registry import register_pass


@register_pass("svd-linear")
@dataclass
class SvdLinear(LowRankPass):
    """Truncated SVD: linear / 1x1 conv2d / matmul by a constant -> two thinner ones."""

    exact = False
    ops = frozenset({"linear", "conv2d", "matmul"})
    reasons = ("skipped_kernel", "skipped_depthwise", "skipped_layout", "skipped_activations")
    quiet = frozenset({"skipped_kernel", "skipped_activations"})

    def inspect(self, graph: Graph, node: Node) -> Layer | str:
        if node.op == "conv2d":
            return self._conv(graph, node)
        return dense_layer(graph, node)

    def _conv(self, graph: Graph, node: Node) -> Layer | str:
        layer = conv_layer(graph, node, allow_pointwise=True)
        if isinstance(layer, str):
            return layer
        if layer.info["k"] != (1, 1):
            return "skipped_kernel"
        g = layer.groups
        mats = layer.w[:, :, 0, 0]  # [C_out, C_in/g]
        blocks = np.split(mats, g, axis=0) if g > 1 else [mats]
        layer.modes = [[b] for b in blocks]
        layer.full = (min(blocks[0].shape),)
        layer.info.update(kind="conv", rows=layer.info["out_pixels"],
                          **{"in": layer.info["c_in"], "out": layer.info["c_out"]})
        return layer

    def cost(self, layer: Layer, rank: tuple[int, ...]) -> tuple[int, int]:
        (r,), g, info = rank, layer.groups, layer.info
        params = g * r * (info["in"] // g) + info["out"] * r
        bias = layer.bias.type.numel if layer.bias is not None else 0
        return info["rows"] * params, params + bias

    def fit(self, layer: Layer, rank: tuple[int, ...], ctx: PassContext) -> Fit:
        (r,), kind = rank, layer.info["kind"]
        pairs = [R.factor_pair(ms[0], r) for ms in layer.modes]  # each (U [out, r], V [r, in])
        u = np.concatenate([p[0] for p in pairs])  # [out, r]
        v = np.concatenate([p[1] for p in pairs])  # [g*r, in/g]
        approx = np.concatenate([p[0] @ p[1] for p in pairs])
        err = R.relative_error(layer.w.reshape(approx.shape), approx)
        bias = [layer.bias] if layer.bias is not None else []
        if kind == "linear":
            steps = [ChainStep("svd_in", "linear", [v]),
                     ChainStep("svd_out", "linear", [u, *bias])]
        elif kind == "conv":
            a, g = layer.node.attrs, layer.groups
            steps = [ChainStep("svd_in", "conv2d", [v[:, :, None, None]],
                               {"stride": a["stride"], "padding": a["padding"],
                                "dilation": a["dilation"], "groups": g}),
                     ChainStep("svd_out", "conv2d", [u[:, :, None, None], *bias],
                               {"groups": g})]
        elif kind == "matmul_right":  # x @ B = x @ (V.T) @ (U.T)
            steps = [ChainStep("svd_in", "matmul", [v.T]), ChainStep("svd_out", "matmul", [u.T])]
        else:  # A @ x = U @ (V @ x)
            steps = [ChainStep("svd_in", "matmul", [v], activation_first=False),
                     ChainStep("svd_out", "matmul", [u], activation_first=False)]
        return Fit(rank, steps, err)
