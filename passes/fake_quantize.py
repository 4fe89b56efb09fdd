"""``fake-quantize``: a QDQ graph in its trainable form — ``fake_quantize`` ops with float
weights and straight-through gradients (exact).

Rewrites what ``quantize`` (or ``quantize-weights``) wrote:

* ``dequantize(quantize(x, s, z), s, z)`` (the integer result read only there) becomes
  ``fake_quantize(x, s, z) {dtype, axis}``;
* a constant integer weight ``dequantize(Wq, s, z)`` becomes ``fake_quantize(W, s, z)``
  with ``W = (Wq - z)·s`` a float constant (a trainable weight in ``to_torch``), named after
  the float weight it came from (``conv1.weight`` for ``conv1.weight.q``). Its integer range
  is read from the data, so training cannot leave it: symmetric weights (zero point 0)
  keep ``±max|Wq|`` (±127 at 8 bits, ±64 with reduce_range, ±7 at 4 bits), asymmetric ones
  the dtype's range;
* an int32 bias ``dequantize(Bq, sx·sw, 0)`` becomes its float value (a plain trainable
  bias; ``fold-fake-quantize`` quantizes it again at the scale of the day);
* ``dequantize(dynamic_quantize(x))`` becomes ``fake_quantize(x, scale, zero_point)`` with
  the run-time scale and zero point of the ``dynamic_quantize`` node.

The result computes exactly what the QDQ graph computes (the forward of ``fake_quantize`` is
``dequantize(quantize(x))``), and trains: ``to_torch`` makes the float weights and biases
parameters and the scales and zero points buffers; gradients pass the quantizers where
``x / s + z`` is inside the range (straight-through). ``fold-fake-quantize`` turns it back
into QDQ with int8 weights.

Left alone (counted): binary weights (``skipped_binary``: {-1, +1} has no zero level, and
``fake_quantize`` rounds to a grid that has one), a quantize whose integer result has other
readers (``skipped_shared``), dequantizes of non-constant integers not made by a quantize
(``skipped_other``).

No options. Stats: ``activations``, ``weights``, ``biases``, ``dynamic`` and the counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.interpreter import as_tensor
from ..ir.ops.quant import dequantize
from .base import Pass, PassContext, PassResult
from .registry import register_pass
from .rewrite import remove_unused_constants


def _float_name(graph: Graph, q: Value) -> str:
    """``conv1.weight`` for ``conv1.weight.q`` (or a fresh name derived from it)."""
    base = q.name[: -len(".q")] if q.name.endswith(".q") else f"{q.name}.float"
    return graph.fresh_name(base)


def _replace(graph: Graph, old: Node, op: str, inputs: list[Value], attrs: dict) -> Node:
    """A node computing ``old``'s output under its name and loc; ``old`` is erased."""
    out = old.outputs[0]
    name = out.name
    new = graph.add_node(op, inputs, attrs, names=graph.fresh_name(f"{name}.new"),
                         meta=old.meta, before=old)
    new.outputs[0].meta = dict(out.meta)
    graph.replace_all_uses(out, new.outputs[0])
    graph.erase(old)
    graph.rename(new.outputs[0], name)
    return new


def _dequantized(d: Node) -> np.ndarray:
    """What a dequantize of constants computes (the op table's reference)."""
    q, s, z = (as_tensor(v.data) for v in d.inputs)
    return dequantize(q, s, z, axis=d.attrs["axis"]).numpy()


def _is_bias(graph: Graph, d: Node) -> bool:
    out = d.outputs[0]
    return d.inputs[0].dtype == "i32" and bool(out.uses) and all(
        u.op in ("conv2d", "linear", "conv_transpose2d") and len(u.inputs) > 2
        and u.inputs[2] is out for u in out.uses)


@register_pass("fake-quantize")
@dataclass
class FakeQuantize(Pass):
    """QDQ to fake_quantize with float weights: a quantized graph that trains (exact)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = dict.fromkeys(("activations", "weights", "biases", "dynamic", "skipped_binary",
                               "skipped_shared", "skipped_other"), 0)
        for d in [n for n in graph.nodes if n.op == "dequantize"]:
            q, s, z = d.inputs
            p = q.producer
            axis = d.attrs["axis"]
            if q.is_constant:
                data = np.asarray(q.data)
                value = _dequantized(d)
                if _is_bias(graph, d):
                    c = graph.add_constant(value, _float_name(graph, q))
                    graph.replace_all_uses(d.outputs[0], c)
                    graph.erase(d)
                    remove_unused_constants(graph, [q, s, z])
                    stats["biases"] += 1
                    continue
                zeros = not np.any(np.asarray(z.data))
                if zeros and set(np.unique(data).tolist()) <= {-1, 1}:
                    stats["skipped_binary"] += 1
                    continue
                w = value
                attrs = {"dtype": q.dtype, "axis": axis}
                if zeros:
                    top = int(np.abs(data.astype(np.int64)).max()) or 1
                    attrs.update(qmin=-top, qmax=top)
                c = graph.add_constant(w, _float_name(graph, q))
                _replace(graph, d, "fake_quantize", [c, s, z], attrs)
                remove_unused_constants(graph, [q])
                stats["weights"] += 1
            elif p is not None and p.op == "quantize":
                if len(q.uses) != 1 or q in graph.outputs or p.inputs[1] is not s or \
                        p.inputs[2] is not z or p.attrs["axis"] != axis:
                    stats["skipped_shared"] += 1
                    continue
                x = p.inputs[0]
                _replace(graph, d, "fake_quantize", [x, s, z],
                         {"dtype": p.attrs["dtype"], "axis": axis})
                graph.erase(p)
                stats["activations"] += 1
            elif p is not None and p.op == "dynamic_quantize" and list(d.inputs) == p.outputs:
                _replace(graph, d, "fake_quantize", [p.inputs[0], s, z],
                         {"dtype": p.attrs["dtype"], "axis": None})
                stats["dynamic"] += 1
            else:
                stats["skipped_other"] += 1
        changed = stats["activations"] + stats["weights"] + stats["biases"] + stats["dynamic"]
        return PassResult(changed > 0, stats)
