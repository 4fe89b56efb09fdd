"""``fold-fake-quantize``: a trained fake-quantized graph back to QDQ with integer weights
(exact but for int32 bias rounding).

The inverse of ``fake-quantize``:

* ``fake_quantize(W, s, z)`` of a constant float weight becomes ``dequantize(Wq, s, z)``
  with ``Wq = clamp(round(W / s) + z, qmin, qmax)`` an integer constant (``<W>.q``) —
  exactly the values the fake-quantized graph computed;
* ``fake_quantize(x, s, z)`` of an activation becomes ``quantize`` → ``dequantize`` (with
  its range narrowed below the dtype's it stays fake: ``skipped_narrow``);
* ``fake_quantize(x, scale, zero_point)`` reading a ``dynamic_quantize`` of ``x`` becomes
  ``dequantize`` of that node's integer output;
* with ``int32_bias`` (default), the f32 bias of a conv2d / linear whose input and weight
  are now dequantized (a per-tensor input scale) becomes int32 at ``sx·sw``, as
  ``quantize`` writes it: that rounding (at most half a step of ``sx·sw``) is the only
  change to the numbers; ``int32_bias=false`` keeps f32 biases and the pass is exact.

Options: ``int32_bias``. Stats: ``weights``, ``activations``, ``dynamic``, ``bias_int32``,
``skipped_narrow``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node
from ..ir.interpreter import as_tensor
from ..ir.ops.quant import QRANGES, quantize
from .base import Pass, PassContext, PassResult, option
from .quantize import quantize_bias
from .registry import register_pass
from .rewrite import remove_unused_constants


def _swap(graph: Graph, old: Node, new: Node) -> None:
    """``new`` (inserted before ``old``) takes over ``old``'s output name and readers."""
    out = old.outputs[0]
    name = out.name
    graph.replace_all_uses(out, new.outputs[0])
    graph.erase(old)
    graph.rename(new.outputs[0], name)


@register_pass("fold-fake-quantize")
@dataclass
class FoldFakeQuantize(Pass):
    """fake_quantize back to QDQ with integer weights (after quantization-aware training)."""

    exact = False  # int32 biases round; exact with int32_bias=false
    int32_bias: bool = option(True, help="biases of quantized layers become int32 at sx*sw")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = dict.fromkeys(("weights", "activations", "dynamic", "bias_int32",
                               "skipped_narrow"), 0)
        for n in [n for n in graph.nodes if n.op == "fake_quantize"]:
            x, s, z = n.inputs
            at = n.attrs
            name = n.outputs[0].name
            if x.is_constant and s.is_constant and z.is_constant:
                lo, hi = QRANGES[at["dtype"]]
                qmin = lo if at["qmin"] is None else at["qmin"]
                qmax = hi if at["qmax"] is None else at["qmax"]
                q = quantize(as_tensor(x.data), as_tensor(s.data), as_tensor(z.data),
                             dtype=at["dtype"], axis=at["axis"]).numpy()
                q = np.clip(q, qmin, qmax).astype(q.dtype)
                qc = graph.add_constant(q, graph.fresh_name(f"{x.name}.q"))
                d = graph.add_node("dequantize", [qc, s, z], {"axis": at["axis"]},
                                   names=graph.fresh_name(f"{name}.dq"), meta=n.meta, before=n)
                _swap(graph, n, d)
                remove_unused_constants(graph, [x])
                stats["weights"] += 1
                continue
            p = s.producer
            if p is not None and p.op == "dynamic_quantize" and z.producer is p and \
                    p.inputs[0] is x and p.outputs[1] is s and p.outputs[2] is z:
                d = graph.add_node("dequantize", list(p.outputs),
                                   names=graph.fresh_name(f"{name}.dq"), meta=n.meta, before=n)
                _swap(graph, n, d)
                stats["dynamic"] += 1
                continue
            if (at["qmin"], at["qmax"]) != (None, None) and \
                    (at["qmin"], at["qmax"]) != QRANGES[at["dtype"]]:
                stats["skipped_narrow"] += 1
                continue
            q = graph.add_node("quantize", [x, s, z], {"dtype": at["dtype"], "axis": at["axis"]},
                               names=graph.fresh_name(f"{name}.q"), before=n)
            d = graph.add_node("dequantize", [q.output, s, z], {"axis": at["axis"]},
                               names=graph.fresh_name(f"{name}.dq"), meta=n.meta, before=n)
            _swap(graph, n, d)
            stats["activations"] += 1
        if self.int32_bias:
            for n in list(graph.nodes):
                if n.op not in ("conv2d", "linear") or len(n.inputs) < 3:
                    continue
                xd, wd = n.inputs[0].producer, n.inputs[1].producer
                if xd is None or wd is None or xd.op != "dequantize" or wd.op != "dequantize":
                    continue
                sx, sw = xd.inputs[1], wd.inputs[1]
                if not (sx.is_constant and sw.is_constant) or sx.type.rank != 0:
                    continue
                if quantize_bias(graph, n, float(np.asarray(sx.data)), np.asarray(sw.data)):
                    stats["bias_int32"] += 1
        changed = stats["weights"] + stats["activations"] + stats["dynamic"] + stats["bias_int32"]
        return PassResult(changed > 0, stats)
