"""``tucker-conv``: Tucker-2 decomposition of convolutions (Kim et al. 2016; lossy).

Matches ``conv2d(x, W[, b])`` with a constant ``W [C_out, C_in/g, kh, kw]``, a kernel
larger than 1×1 and ``g`` groups (depthwise excluded), and produces, per group, ::

    conv2d 1×1   C_in  -> R_in            (U_in^T; groups=g)
    conv2d kh×kw R_in  -> R_out            (the core; the layer's stride, padding, dilation)
    conv2d 1×1   R_out -> C_out  (+ b)    (U_out; groups=g)

with ``W ≈ core ×₀ U_out ×₁ U_in`` fitted in float64 by HOOI from the HOSVD (tensorly's
``partial_tucker`` algorithm, at most ``max_iter`` sweeps; ``analyses/decompose.py``) and stored in
the layer's dtype. Full ranks reproduce the layer exactly. The core's output keeps the
layer's name; new weights are ``<stem>.tucker_in/core/out.weight``; all three nodes keep
the layer's loc.

Options (the rank options are shared with ``cp-conv`` and ``svd-linear``, see
``passes/lowrank.py``; give at most one of the first five):

* ``rank`` — ``R`` for both modes or ``(R_in, R_out)``; ``full`` = full rank, which reproduces the layer;
* ``ratio`` — each layer keeps at most this fraction of its parameters (ranks in
  proportion to the channel counts, rounded down); 1.0 is not full rank (a full-rank
  chain has more parameters than the layer), ``rank=full`` is;
* ``energy`` — per mode, the smallest rank keeping this fraction of the unfolding's
  singular-value energy (rounded up);
* ``vbmf`` — per mode, the EVBMF rank of the unfolding (Nakajima et al. 2013; rounded up);
  the default when no rank option is given;
* ``target_macs`` — MACs of the whole graph after the pass (an int, or a float in (0, 1]:
  a fraction of the graph's MACs before it): ranks on multiples of ``round_to`` chosen
  greedily by least estimated error (the HOSVD bound: the two unfoldings' discarded
  energy) per MAC saved;
* ``round_to`` — ranks rounded to a multiple of this (default 8) unless a mode has no
  more channels than that;
* ``break_even`` — skip a layer whose chain would not have fewer MACs (default true);
* ``min_params`` — layers with fewer weight parameters are left alone (default 1024);
* ``include`` / ``exclude`` — glob patterns on the node's loc (or name), e.g.
  ``include="layer[34].*"``;
* ``max_iter`` — HOOI sweeps after the HOSVD (default 10; 0 = HOSVD only; none at full
  rank, where the HOSVD is exact); sweeps also stop when the relative error changes by
  less than 1e-4.

Not decomposed (each counted in the stats): ``skipped_pointwise`` (a 1×1 kernel: use
``svd-linear``; counted, no report row), ``skipped_depthwise`` (one input channel per group),
``skipped_nonconstant``, ``skipped_shared_weight`` (the weight has other users),
``skipped_dtype``, ``skipped_encoded``, ``skipped_tiny``, ``skipped_excluded``,
``skipped_break_even``, ``skipped_budget`` (``target_macs`` left it as it is).

Stats: ``decomposed``, the reasons above, ``macs_before/after`` and
``params_before/after`` of the decomposed layers, ``max_error`` (relative reconstruction
error of a weight), ``seconds``. One row per layer (status or skip reason, rank,
relative error, params and MACs before → after, seconds) is ``PassResult.layers``, printed
by ``shrinkc opt --stats``, and ``ctx.artifacts["tucker-conv"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node
from .analyses import rank as R
from .analyses.decompose import tucker2
from .analyses.layers import Layer, conv_layer, group_slices
from .base import PassContext, option
from .lowrank import ChainStep, Fit, LowRankPass
from .registry import register_pass


@register_pass("tucker-conv")
@dataclass
class TuckerConv(LowRankPass):
    """Tucker-2: conv2d -> 1x1 (C_in->R_in), kxk core (R_in->R_out), 1x1 (R_out->C_out)."""

    exact = False
    ops = frozenset({"conv2d"})
    rank_entries = 2
    reasons = ("skipped_pointwise", "skipped_depthwise")
    quiet = frozenset({"skipped_pointwise"})

    max_iter: int = option(10, ge=0, help="HOOI sweeps after the HOSVD (0: HOSVD only)")

    def inspect(self, graph: Graph, node: Node) -> Layer | str:
        layer = conv_layer(graph, node, allow_pointwise=False)
        if isinstance(layer, str):
            return layer
        blocks = group_slices(layer)
        o, i, kh, kw = blocks[0].shape
        # rank order (R_in, R_out): mode 1 then mode 0; beyond the unfolding's rank, a mode
        # gains nothing
        layer.full = (min(i, o * kh * kw), min(o, i * kh * kw))
        layer.modes = [[R.unfold(b, 1), R.unfold(b, 0)] for b in blocks]
        return layer

    def cost(self, layer: Layer, rank: tuple[int, ...]) -> tuple[int, int]:
        r_in, r_out = rank
        g, info = layer.groups, layer.info
        kh, kw = info["k"]
        c_in, c_out = info["c_in"], info["c_out"]
        macs = (info["in_pixels"] * g * r_in * (c_in // g)
                + info["out_pixels"] * (g * r_out * r_in * kh * kw + c_out * r_out))
        params = (g * r_in * (c_in // g) + g * r_out * r_in * kh * kw + c_out * r_out
                  + (layer.bias.type.numel if layer.bias is not None else 0))
        return macs, params

    def fit(self, layer: Layer, rank: tuple[int, ...], ctx: PassContext) -> Fit:
        r_in, r_out = rank
        ins, cores, outs, sweeps = [], [], [], 0
        sq_err, sq_norm = 0.0, 0.0
        # at full rank the HOSVD is already exact: no sweeps
        sweeps_max = 0 if tuple(rank) == layer.full else self.max_iter
        for block, ((u_in, _), (u_out, _)) in zip(group_slices(layer), layer.left_svds):
            t = tucker2(block, r_out, r_in, max_iter=sweeps_max, hosvd=(u_out, u_in))
            ins.append(t.in_factor.T[:, :, None, None])  # [R_in, C_in/g, 1, 1]
            cores.append(t.core)  # [R_out, R_in, kh, kw]
            outs.append(t.out_factor[:, :, None, None])  # [C_out/g, R_out, 1, 1]
            norm2 = float(np.sum(block ** 2))
            sq_err += (t.error ** 2) * norm2
            sq_norm += norm2
            sweeps = max(sweeps, t.iterations)
        g, a = layer.groups, layer.node.attrs
        steps = [
            ChainStep("tucker_in", "conv2d", [np.concatenate(ins)], {"groups": g}),
            ChainStep("tucker_core", "conv2d", [np.concatenate(cores)],
                      {"stride": a["stride"], "padding": a["padding"],
                       "dilation": a["dilation"], "groups": g}),
            ChainStep("tucker_out", "conv2d",
                      [np.concatenate(outs)] + ([layer.bias] if layer.bias is not None else []),
                      {"groups": g}),
        ]
        err = (sq_err / sq_norm) ** 0.5 if sq_norm > 0 else 0.0
        return Fit(rank, steps, err, sweeps)
