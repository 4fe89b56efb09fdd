"""``fold-bn``: fold inference batch norm into the layer before it (exact).

Matches ``batch_norm(conv2d(x, W[, b]))`` — also ``conv_transpose2d`` and ``linear`` with
a 2-D output — and produces ``conv2d(x, W', b')`` with, per output channel ``c``::

    s[c] = gamma[c] / sqrt(var[c] + eps)
    W'[c] = W[c] * s[c]                  (conv_transpose2d: its weight is [C_in, C_out/g, ...])
    b'[c] = (b[c] - mean[c]) * s[c] + beta[c]      (b = 0 when the layer had no bias)

computed in float64 and stored in the weight's dtype. A weight or bias used only by this
layer gets the new values under its own name; a shared one is left alone and a new constant
is added. A layer without bias gets ``<weight stem>.bias``. The folded node keeps the
layer's name and loc (the batch norm's name when its output was a graph output).

Not folded (each counted): the layer's output has another user or is a graph output
(``skipped_shared``), an operand is not a constant (``skipped_nonconstant``), mixed or
non-float dtypes (``skipped_dtype``), a ``linear`` whose output is not 2-D, where dim 1 is
not the feature axis (``skipped_layout``), a weight with a storage encoding
(``skipped_encoded``). A batch norm after any other op is left as it is (``unmatched``).

Written as one rule of the rewrite toolkit (``passes/patterns.py``): the pattern
``batch_norm(conv2d | conv_transpose2d | linear(x, w, b?), gamma, beta, mean, var)``, the
refusals above as its check, ``fold`` as its rewrite. ``shrinkc opt --explain`` says for
every batch norm left why.

No options. Stats: ``folded`` and the counters above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.types import to_numpy_dtype
from .base import Pass, PassContext, PassResult
from .patterns import Match, Pat, Rule, apply_rules
from .registry import register_pass
from .rewrite import remove_unused_constants, replace_data

LAYERS = frozenset({"conv2d", "conv_transpose2d", "linear"})

PATTERN = Pat("batch_norm", [
    Pat(LAYERS, [Pat(name="x"), Pat(name="w"), Pat(name="b", optional=True)], name="layer"),
    Pat(name="gamma"), Pat(name="beta"), Pat(name="mean"), Pat(name="var"),
], name="bn")


def _refuse(graph: Graph, layer: Node, bn: Node) -> str | None:
    """Why ``bn`` cannot be folded into ``layer`` (a stats key), or None."""
    out = layer.outputs[0]
    if len(layer.outputs) != 1 or len(out.uses) != 1 or out in graph.outputs:
        return "skipped_shared"
    operands = layer.inputs[1:] + bn.inputs[1:]
    if not all(v.is_constant for v in operands):
        return "skipped_nonconstant"
    dtypes = {v.dtype for v in operands} | {out.dtype}
    if len(dtypes) != 1 or not out.type.is_float:
        return "skipped_dtype"
    if layer.op == "linear" and out.type.rank != 2:
        return "skipped_layout"
    if any(v.encoding is not None for v in layer.inputs[1:]):
        return "skipped_encoded"
    return None


def _folded_arrays(layer: Node, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    w = layer.inputs[1].data.astype(np.float64)
    gamma, beta, mean, var = (v.data.astype(np.float64) for v in bn.inputs[1:])
    s = gamma / np.sqrt(var + bn.attrs["eps"])
    if layer.op == "conv_transpose2d":
        g = layer.attrs["groups"]
        cin, cout_g = w.shape[0], w.shape[1]
        w2 = (w.reshape(g, cin // g, cout_g, *w.shape[2:])
              * s.reshape(g, 1, cout_g, *[1] * (w.ndim - 2))).reshape(w.shape)
    else:
        w2 = w * s.reshape(-1, *[1] * (w.ndim - 1))
    b = layer.inputs[2].data.astype(np.float64) if len(layer.inputs) > 2 else 0.0
    b2 = (b - mean) * s + beta
    dt = to_numpy_dtype(layer.inputs[1].dtype)
    return w2.astype(dt), b2.astype(dt)


def _new_values(graph: Graph, layer: Node, old: Value, array: np.ndarray) -> Value:
    """``old`` with new contents if only ``layer`` uses it, else a new constant."""
    if all(u is layer for u in old.uses) and old not in graph.outputs:
        replace_data(old, array)
        return old
    return graph.add_constant(array, graph.fresh_name(old.name))


def _bias_name(layer: Node) -> str:
    w = layer.inputs[1].name
    stem = w[: -len(".weight")] if w.endswith(".weight") else layer.outputs[0].name
    return f"{stem}.bias"


def fold(graph: Graph, layer: Node, bn: Node) -> Node:
    """Fold ``bn`` into ``layer``; returns the node that now defines the result."""
    w2, b2 = _folded_arrays(layer, bn)
    bn_out, out = bn.outputs[0], layer.outputs[0]
    name = bn_out.name if bn_out in graph.outputs else out.name
    dead_params = list(bn.inputs[1:])
    w = _new_values(graph, layer, layer.inputs[1], w2)
    if w is not layer.inputs[1]:
        dead_params.append(layer.inputs[1])
        graph.set_input(layer, 1, w)
    if len(layer.inputs) > 2:
        b = _new_values(graph, layer, layer.inputs[2], b2)
        if b is not layer.inputs[2]:
            dead_params.append(layer.inputs[2])
            graph.set_input(layer, 2, b)
        target = layer
    else:  # a third operand: build the node again with it
        b = graph.add_constant(b2, graph.fresh_name(_bias_name(layer)))
        target = graph.add_node(layer.op, [layer.inputs[0], w, b], layer.attrs,
                                names=[graph.fresh_name(f"{out.name}.folded")],
                                meta=layer.meta, before=layer)
        target.outputs[0].meta = dict(out.meta)
    graph.replace_all_uses(bn_out, target.outputs[0])
    graph.erase(bn)
    if target is not layer:
        graph.replace_all_uses(out, target.outputs[0])
        graph.erase(layer)
    graph.rename(target.outputs[0], name)
    remove_unused_constants(graph, dead_params)
    return target


def _check(graph: Graph, m: Match) -> str | None:
    return _refuse(graph, m["layer"], m["bn"])


def _rewrite(graph: Graph, m: Match) -> None:
    fold(graph, m["layer"], m["bn"])


RULE = Rule("fold-bn", PATTERN, check=_check, rewrite=_rewrite, counter="folded",
            unmatched="unmatched")
STATS = ("folded", "skipped_shared", "skipped_nonconstant", "skipped_dtype", "skipped_layout",
         "skipped_encoded", "unmatched")


@register_pass("fold-bn")
@dataclass
class FoldBn(Pass):
    """Fold batch_norm into the conv2d / conv_transpose2d / linear that feeds it."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = apply_rules(graph, [RULE])
        stats = {**dict.fromkeys(STATS, 0), **result.stats}
        return PassResult(result.changed, stats)
