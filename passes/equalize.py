"""``equalize``: cross-layer equalization, so per-tensor and per-channel int8 ranges fit
(Nagel et al. 2019, data-free quantization; exact through ReLU).

Matches ``layer1 → [act] → layer2`` where both layers are ``conv2d`` or ``linear`` with
constant float weights (conv → conv, linear → linear), ``act`` is absent, ``relu``,
``leaky_relu``, ``identity``, ``dropout`` or ``hardtanh(0, hi)`` (ReLU6), and every value
between the two has that one use (and is no graph output). ``layer2`` must read all of
layer1's channels the same way: a dense conv / linear, or a depthwise conv (one input
channel per group). Run it after ``fold-bn``: a batch norm between two layers breaks the
match.

For output channel ``c`` of layer1 (range ``r1[c] = max |W1[c]|``) and input channel ``c``
of layer2 (``r2[c] = max |W2[:, c]|``, for a depthwise conv ``max |W2[c]|``)::

    s[c] = sqrt(r1[c] / r2[c])
    W1[c] /= s[c];  b1[c] /= s[c];  W2[:, c] *= s[c]     (depthwise: W2[c] *= s[c])

so both ranges become ``sqrt(r1 r2)``. A positive scale commutes with ReLU (and the others
above), so the graph computes what it did: the pass is exact for them. Chains
(MobileNetV2's expand → depthwise → project) are swept pair by pair until no scale moves
by more than 0.1 % (at most ``iterations`` sweeps); scales are computed in float64 and the
weights stored in their dtype. A channel whose range is 0 on either side keeps scale 1.

ReLU6 does not commute (``min(x / s, 6) != min(x, 6) / s``). With ``relu6=keep`` (the
default) pairs through one are skipped (``skipped_relu6``) and the pass is exact. With
``relu6=replace`` the ReLU6 becomes ``relu`` where a pair goes through it (AIMET does the
same): lossy wherever activations exceed 6, which is why it is not the default. Measured on
the MNIST-trained MobileNetV2 (``tools/bench_quant.py``; 1,000 test images): replacing its
ReLU6 alone, in float, changes 0.7 % of the predictions (99.3 % agreement with the
original, -0.1 pt accuracy), while quantizing the equalized graph stays as close to it as
quantizing the original stays to the original (99.7 % vs 99.6 % agreement) — the whole
loss is the float change, and with per-channel int8 weights there is little imbalance left
for it to buy (mean accuracy over four calibration sets against no ``equalize``, per-channel
weights: -0.05 to -0.25 pt with minmax, percentile and mse, +0.5 pt with entropy, and
0.2-0.5 pt less agreement with the original for all four; per-tensor minmax: 0.0 pt, and
+0.15 pt with the ReLU6 kept). An exact form would need a per-channel clip at ``6 / s[c]``, which a
per-tensor activation quantize cannot absorb (an extra float Min per activation in
onnxruntime).

Not matched (counted): a weight or bias shared with another node (``skipped_shared``),
grouped convolutions that are not depthwise (``skipped_groups``), a non-constant or
non-float weight (``skipped_nonconstant``), a weight with a storage encoding
(``skipped_encoded``).

Options: ``relu6`` (replace | keep), ``iterations``. Stats: ``pairs`` (equalized),
``relu6_replaced``, ``sweeps``, the counters above, and ``range_ratio_before`` /
``range_ratio_after``: the mean over equalized layers of (largest / smallest non-zero
channel range) of the weights — what per-tensor quantization suffers from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..ir.graph import Graph, Node
from ..ir.types import to_numpy_dtype
from .base import Pass, PassContext, PassResult, option
from .registry import register_pass
from .rewrite import replace_data

LAYERS = ("conv2d", "linear")
HOMOGENEOUS = ("relu", "leaky_relu", "identity", "dropout")


def _is_relu6(n: Node) -> bool:
    return n.op == "hardtanh" and n.attrs["min_val"] == 0.0 and n.attrs["max_val"] > 0


def _is_relu_like(n: Node) -> bool:
    return n.op == "hardtanh" and n.attrs["min_val"] == 0.0 and n.attrs["max_val"] == np.inf


def _depthwise(n: Node) -> bool:
    w = n.inputs[1]
    return n.op == "conv2d" and n.attrs["groups"] > 1 and w.shape[1] == 1 and \
        n.attrs["groups"] == n.inputs[0].shape[1] == w.shape[0]


@dataclass
class _Pair:
    first: Node
    second: Node
    acts: list[Node]  # the nodes between (relu, relu6, …)


@register_pass("equalize")
@dataclass
class Equalize(Pass):
    """Cross-layer equalization of consecutive conv2d / linear weight ranges (exact via ReLU)."""

    exact = False  # relu6=replace changes ReLU6 into ReLU; with relu6=keep (default) it is exact
    relu6: Literal["keep", "replace"] = option(
        "keep", help="keep: skip pairs through a ReLU6 (exact); replace: it becomes ReLU (lossy)")
    iterations: int = option(20, ge=1, help="sweeps over the pairs at most")

    def _layer_ok(self, graph: Graph, n: Node, stats: dict) -> bool:
        w = n.inputs[1] if len(n.inputs) > 1 else None
        if w is None or not w.is_constant or not w.type.is_float:
            stats["skipped_nonconstant"] += 1
            return False
        if w.encoding is not None:
            stats["skipped_encoded"] += 1
            return False
        for v in n.inputs[1:]:
            if not v.is_constant or any(u is not n for u in v.uses) or v in graph.outputs:
                stats["skipped_shared"] += 1
                return False
        return True

    def _pairs(self, graph: Graph, stats: dict) -> list[_Pair]:
        outputs = {id(v) for v in graph.outputs}
        pairs = []
        for n in graph.nodes:
            if n.op not in LAYERS:
                continue
            acts, v = [], n.outputs[0]
            while len(v.uses) == 1 and id(v) not in outputs:
                user = v.uses[0]
                if user.op in HOMOGENEOUS or _is_relu6(user) or _is_relu_like(user):
                    acts.append(user)
                    v = user.outputs[0]
                    continue
                break
            if len(v.uses) != 1 or id(v) in outputs:
                continue
            second = v.uses[0]
            if second.op != n.op or second.inputs[0] is not v:
                continue
            if n.op == "conv2d" and second.attrs["groups"] != 1 and not _depthwise(second):
                stats["skipped_groups"] += 1
                continue
            if not (self._layer_ok(graph, n, stats) and self._layer_ok(graph, second, stats)):
                continue
            if any(_is_relu6(a) and not _is_relu_like(a) for a in acts) and self.relu6 == "keep":
                stats["skipped_relu6"] += 1
                continue
            pairs.append(_Pair(n, second, acts))
        return pairs

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int | float] = dict.fromkeys(
            ("pairs", "relu6_replaced", "sweeps", "skipped_shared", "skipped_groups",
             "skipped_nonconstant", "skipped_encoded", "skipped_relu6"), 0)
        pairs = self._pairs(graph, stats)
        if not pairs:
            return PassResult(False, stats)
        weights: dict[int, np.ndarray] = {}  # float64 working copies, by value
        for p in pairs:
            for layer in (p.first, p.second):
                for v in layer.inputs[1:]:
                    weights.setdefault(id(v), np.asarray(v.data, np.float64))
        layers = {id(x): x for p in pairs for x in (p.first, p.second)}
        before = _mean_range_ratio([weights[id(x.inputs[1])] for x in layers.values()],
                                   list(layers.values()))
        for sweep in range(self.iterations):
            moved = 0.0
            for p in pairs:
                moved = max(moved, self._equalize(p, weights))
            stats["sweeps"] = sweep + 1
            if moved < 1e-3:
                break
        for p in pairs:
            for a in p.acts:
                if _is_relu6(a) and not _is_relu_like(a) and a in graph.nodes:
                    _to_relu(graph, a)
                    stats["relu6_replaced"] += 1
        for layer in layers.values():
            for v in layer.inputs[1:]:
                replace_data(v, weights[id(v)].astype(to_numpy_dtype(v.dtype)))
        stats["pairs"] = len(pairs)
        stats["range_ratio_before"] = round(before, 3)
        stats["range_ratio_after"] = round(_mean_range_ratio(
            [weights[id(x.inputs[1])] for x in layers.values()], list(layers.values())), 3)
        ctx.logger.debug("equalize: %d pairs, %d sweeps", len(pairs), stats["sweeps"])
        return PassResult(True, stats)

    @staticmethod
    def _equalize(p: _Pair, weights: dict[int, np.ndarray]) -> float:
        """Equalize one pair in the working copies; the largest |log s| applied."""
        w1 = weights[id(p.first.inputs[1])]
        w2 = weights[id(p.second.inputs[1])]
        r1 = _out_ranges(p.first, w1)
        r2 = _in_ranges(p.second, w2)
        ok = (r1 > 0) & (r2 > 0)
        s = np.ones_like(r1)
        s[ok] = np.sqrt(r1[ok] / r2[ok])
        _scale_out(p.first, w1, 1.0 / s)
        if len(p.first.inputs) > 2:
            b = weights[id(p.first.inputs[2])]
            b /= s
        _scale_in(p.second, w2, s)
        return float(np.abs(np.log(s)).max())


def _out_ranges(n: Node, w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _in_ranges(n: Node, w: np.ndarray) -> np.ndarray:
    if _depthwise(n):
        return np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return np.abs(np.moveaxis(w, 1, 0)).reshape(w.shape[1], -1).max(axis=1)


def _scale_out(n: Node, w: np.ndarray, s: np.ndarray) -> None:
    w *= s.reshape((-1,) + (1,) * (w.ndim - 1))


def _scale_in(n: Node, w: np.ndarray, s: np.ndarray) -> None:
    if _depthwise(n):
        w *= s.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        w *= s.reshape((1, -1) + (1,) * (w.ndim - 2))


def _mean_range_ratio(ws: list[np.ndarray], layers: list[Node]) -> float:
    ratios = []
    for w, n in zip(ws, layers):
        r = _out_ranges(n, w)
        r = r[r > 0]
        if len(r):
            ratios.append(float(r.max() / r.min()))
    return float(np.mean(ratios)) if ratios else 1.0


def _to_relu(graph: Graph, act: Node) -> None:
    """``act`` (a ReLU6) becomes a ``relu`` under the same name and loc."""
    out = act.outputs[0]
    name = out.name
    relu = graph.add_node("relu", [act.inputs[0]], names=graph.fresh_name(f"{name}.relu"),
                          meta=act.meta, before=act)
    graph.replace_all_uses(out, relu.output)
    graph.erase(act)
    graph.rename(relu.output, name)


__all__ = ["Equalize"]
