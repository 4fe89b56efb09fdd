"""``quantize-weights``: weight-only quantization to 8, 4, 2 or 1 bits (lossy); activations
stay float.

Matches the constant float weight of every ``conv2d``, ``conv_transpose2d``, ``linear``,
``matmul`` (operand 1) and ``embedding`` (its table) and replaces it by
``dequantize(Wq, s, z) {axis}`` with ``Wq`` an i8 constant holding ``bits``-bit levels:

* ``bits`` 8…2, symmetric (default): levels ``±(2^(bits-1) - 1)`` (2 bits: ternary
  {-1, 0, 1}), zero point 0; ``symmetric=false``: ``[-2^(bits-1), 2^(bits-1) - 1]`` with a
  zero point (from bits >= 2);
* ``bits=1``: binary, BWN-style (Rastegari et al. 2016): ``Wq = sign(W)`` (0 counts as +1)
  with ``s = mean |W|`` per channel, the least-squares scale for a sign;
* one scale per output channel (``per_channel``; conv / linear / embedding rows: axis 0,
  matmul: the last axis, conv_transpose2d: axis 1 when ungrouped) or per tensor. At 8 bits
  the scale maps the largest ``|W|`` to the top level; below, the clipping scale is
  searched (71 candidates from 0.3 to 1.0 of the max) for the least squared error per
  channel.

Below 8 bits the i8 constant is stored as ``codebook(bits=…)`` (``ir/encoding.py``): a
``bits``-bit index per weight plus the table of levels, which is what the size
accounting (``--stats`` bytes, ``shrinkc inspect``, ``.shrkz`` files) counts; backends still
run ``dequantize`` of the i8 values.

Left alone (counted): an already quantized or non-constant weight
(``skipped_quantized`` / ``skipped_nonconstant``), a weight with a storage encoding
(``skipped_encoded``), a non-float weight (``skipped_dtype``), nodes matching ``exclude``
(fnmatch on the node name or loc; ``skipped_excluded``). A weight shared by several nodes
is quantized once.

Options: ``bits``, ``per_channel``, ``symmetric``, ``exclude``. Stats: ``quantized_<op>``,
``weight_bytes_before`` / ``weight_bytes_after`` (storage of the quantized weights,
scales included), ``weight_rel_error`` (mean over weights of ``‖W - Ŵ‖ / ‖W‖``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from ..ir.encoding import Codebook
from ..ir.graph import Graph, Node, Value
from .analyses.calibration import quantize_weight
from .base import Pass, PassContext, PassResult, option
from .registry import register_pass
from .rewrite import remove_unused_constants

WEIGHTED = ("conv2d", "conv_transpose2d", "linear", "matmul", "embedding")


def _axis(node: Node, w: Value) -> int | None:
    if node.op == "matmul":
        return w.type.rank - 1
    if node.op == "conv_transpose2d":
        return 1 if node.attrs["groups"] == 1 else None
    return 0


@register_pass("quantize-weights")
@dataclass
class QuantizeWeights(Pass):
    """Weight-only quantization to 8/4/2 bits, or binary (1 bit, BWN); activations stay float."""

    exact = False
    bits: int = option(8, ge=1, le=8, help="bits per weight (1: binary with a scale)")
    per_channel: bool = option(True, help="one scale per output channel")
    symmetric: bool = option(True, help="zero point 0 (always for 1 bit)")
    exclude: tuple[str, ...] = option((), help="fnmatch patterns of node names / locs kept float")

    def _refuse(self, node: Node) -> str | None:
        names = [node.name] + ([node.loc] if node.loc else [])
        if any(fnmatch.fnmatchcase(n, p) for p in self.exclude for n in names):
            return "skipped_excluded"
        if len(node.inputs) < 2:
            return "skipped_nonconstant"
        w = node.inputs[1]
        if w.producer is not None and w.producer.op in ("dequantize", "fake_quantize"):
            return "skipped_quantized"
        if not w.is_constant:
            return "skipped_nonconstant"
        if not w.type.is_float:
            return "skipped_dtype"
        if w.encoding is not None:
            return "skipped_encoded"
        if node.op == "matmul" and w.type.rank < 2:
            return "skipped_nonconstant"
        return None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int | float] = {f"quantized_{op}": 0 for op in WEIGHTED}
        for k in ("skipped_excluded", "skipped_nonconstant", "skipped_quantized",
                  "skipped_dtype", "skipped_encoded"):
            stats[k] = 0
        done: dict[int, Value] = {}
        before = after = 0
        errors = []
        for node in [n for n in graph.nodes if n.op in WEIGHTED]:
            why = self._refuse(node)
            if why is not None:
                stats[why] += 1
                if why != "skipped_quantized":
                    ctx.logger.info("quantize-weights: %s stays float (%s)", node.describe(), why)
                continue
            w = node.inputs[1]
            if id(w) not in done:
                axis = _axis(node, w) if self.per_channel else None
                wq = quantize_weight(w.data, axis=axis, bits=self.bits,
                                     symmetric=self.symmetric)
                q = graph.add_constant(wq.q, graph.fresh_name(f"{w.name}.q"))
                if self.bits < 8:
                    q.encoding = Codebook(self.bits)
                s = graph.add_constant(wq.scale, graph.fresh_name(f"{w.name}.scale"))
                z = graph.add_constant(wq.zero_point, graph.fresh_name(f"{w.name}.zero_point"))
                d = graph.add_node("dequantize", [q, s, z], {"axis": wq.axis},
                                   names=graph.fresh_name(f"{w.name}.dq"), before=node)
                before += w.nbytes
                after += q.nbytes + s.nbytes + z.nbytes
                wf = np.asarray(w.data, np.float64)
                errors.append(float(np.linalg.norm(wq.dequantized() - wf)
                                    / max(np.linalg.norm(wf), 1e-30)))
                done[id(w)] = d.output
            graph.set_input(node, 1, done[id(w)])
            remove_unused_constants(graph, [w])
            stats[f"quantized_{node.op}"] += 1
        stats["weight_bytes_before"] = before
        stats["weight_bytes_after"] = after
        stats["weight_rel_error"] = round(float(np.mean(errors)), 6) if errors else 0.0
        return PassResult(bool(done), stats)
