"""``bias-correct``: empirical bias correction of the layers ``quantize`` quantized (lossy; it
removes the mean error quantization adds to each output channel).

Quantization errors do not average out per channel: a weight's rounding error times the
mean of its input, and clipped activation tails, shift the mean of every output channel
(Nagel et al. 2019; AIMET's empirical bias correction). Run right after ``quantize`` in the
same pipeline (``quantize(calibration=…),bias-correct``): it needs the float graph that
``quantize`` records in ``ctx.artifacts["quantize"]`` and the context's calibration batches
(on a graph with no quantized layer it does nothing).

For each quantized ``conv2d`` / ``linear`` in graph order, the mean of its output per
channel over the calibration batches is measured in the float graph (``E_f``) and in the
quantized graph with every earlier layer already corrected (``E_q``), and ``E_f - E_q`` is
added to the layer's bias. The quantized graph is run one node at a time over all batches
(each value freed after its last reader), so correcting every layer costs one forward pass
— and holds the live activations of every batch at once (``max_batches`` bounds that):

* an int32 bias at scale ``sx·sw`` gets ``round((E_f - E_q) / (sx·sw))`` added (the integer
  kernels add it into the accumulator as before);
* an f32 bias gets ``E_f - E_q`` added;
* a layer without a bias gets one: f32, made int32 at ``sx·sw`` when its input and weight
  are quantized with constant scales.

Skipped (counted): ``matmul`` (no bias operand; ``skipped_matmul``), layers that are no
longer in the graph (``skipped_missing``), an int32 bias that would overflow
(``skipped_overflow``), a bias shared with another node (``skipped_shared``).

Options: ``max_batches`` (0: every calibration batch). Stats: ``corrected``, the counters
above, ``mean_shift`` (mean over corrected layers of ``max_c |E_f - E_q|`` before
correcting, relative to the float output's mean magnitude).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ir import ops
from ..ir.graph import Graph, IRError, Node
from ..ir.interpreter import as_tensor, bind_inputs, run
from .base import Pass, PassContext, PassError, PassResult, option
from .quantize import quantize_bias
from .registry import register_pass
from .rewrite import replace_data

LAYERS = ("conv2d", "linear")


def _channel_axis(node: Node) -> int:
    return 1 if node.op == "conv2d" else node.outputs[0].type.rank - 1


def _channel_sum(t: torch.Tensor, axis: int) -> tuple[np.ndarray, int]:
    t = t.detach().double()
    dims = [d for d in range(t.dim()) if d != axis]
    return t.sum(dim=dims).numpy(), t.numel() // t.shape[axis]


def _layerwise(graph: Graph, inputs: list[list[torch.Tensor]], on_node) -> None:
    """Run ``graph`` one node at a time over every batch (each value freed after its last
    reader), calling ``on_node(node, outs)`` with the node's outputs for every batch; when it
    returns True the node changed (a corrected bias) and is evaluated again, so every later
    node sees the corrected values. One forward pass in all, at the price of keeping the
    live values of every batch at once (``max_batches`` bounds it)."""
    consts = {id(v): as_tensor(v.data) for v in graph.constants.values()}
    envs = [{id(v): t for v, t in zip(graph.inputs, xs)} for xs in inputs]
    keep = {id(v) for v in graph.outputs}
    last: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            last[id(v)] = i

    def operand(env: dict, v) -> torch.Tensor:
        if id(v) in env:
            return env[id(v)]
        if v.is_constant:
            return consts.setdefault(id(v), as_tensor(v.data))
        p = v.producer  # a node the correction added (an int32 bias): constants only
        outs = ops.get(p.op).ref(*[operand(env, u) for u in p.inputs], **p.attrs)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        for o, t in zip(p.outputs, outs):
            env[id(o)] = t
        return env[id(v)]

    def evaluate(node: Node) -> list[list[torch.Tensor]]:
        opdef = ops.get(node.op)
        results = []
        for env in envs:
            out = opdef.ref(*[operand(env, v) for v in node.inputs], **node.attrs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            for o, t in zip(node.outputs, outs):
                env[id(o)] = t
            results.append(outs)
        return results

    for i, node in enumerate(list(graph.nodes)):
        outs = evaluate(node)
        if on_node(node, outs):
            consts.clear()  # the bias (and its dequantize) anew
            for v in node.inputs:
                p = v.producer
                if p is not None and all(u.is_constant for u in p.inputs):
                    for env in envs:
                        env.pop(id(v), None)
            evaluate(node)
        for v in node.inputs:
            if last.get(id(v)) == i and id(v) not in keep and not v.is_constant:
                for env in envs:
                    env.pop(id(v), None)


class _Means:
    """Streaming per-channel means of a set of values."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, t: torch.Tensor, axis: int) -> None:
        s, n = _channel_sum(t, axis)
        self.sums[name] = self.sums.get(name, 0.0) + s
        self.counts[name] = self.counts.get(name, 0) + n

    def mean(self, name: str) -> np.ndarray:
        return self.sums[name] / max(self.counts[name], 1)


@register_pass("bias-correct")
@dataclass
class BiasCorrect(Pass):
    """Empirical bias correction of quantized conv2d / linear layers (after quantize)."""

    exact = False
    max_batches: int = option(0, ge=0, help="calibration batches to use (0: all)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        plan = ctx.artifacts.get("quantize")
        quantized = any(n.op in LAYERS and len(n.inputs) > 1 and n.inputs[1].producer is not None
                        and n.inputs[1].producer.op == "dequantize" for n in graph.nodes)
        if plan is None and not quantized:
            return PassResult(False, {"corrected": 0})  # a float graph: nothing to correct
        if plan is None or getattr(plan, "float_graph", None) is None:
            raise PassError("bias-correct corrects the layers `quantize` quantized and needs "
                            "the float graph it records: run it after quantize in the same "
                            "pipeline (e.g. quantize(calibration=entropy),bias-correct)")
        if ctx.calibration is None or not list(ctx.calibration):
            raise PassError("bias-correct needs calibration data (optimize(..., "
                            "calibration=batches) or --calibration FILE.npz|zoo-data:NAME)")
        batches = list(ctx.calibration)
        if self.max_batches:
            batches = batches[: self.max_batches]
        stats: dict[str, int | float] = dict.fromkeys(
            ("corrected", "skipped_matmul", "skipped_missing", "skipped_overflow",
             "skipped_shared"), 0)
        by_name = {n.outputs[0].name: n for n in graph.nodes if n.outputs}
        layers = []
        for name in plan.layers:
            node = by_name.get(name)
            if node is None:
                stats["skipped_missing"] += 1
            elif node.op not in LAYERS:
                stats["skipped_matmul"] += 1
            else:
                layers.append(node)
        if not layers:
            return PassResult(False, stats)
        fg = plan.float_graph
        want = {n.outputs[0].name: _channel_axis(n) for n in layers}
        ref = _Means()

        def float_hook(node, outs):
            for o, t in zip(node.outputs, outs):
                if o.name in want:
                    ref.add(o.name, t, want[o.name])

        with torch.no_grad():
            for i, batch in enumerate(batches):
                run(fg, self._inputs(fg, batch, i), hook=float_hook)
        shifts = []
        todo = {id(n): n for n in layers}

        def on_layer(node: Node, outs: list[list[torch.Tensor]]) -> bool:
            """Correct ``node`` from its outputs over every batch; True if its bias moved."""
            if id(node) not in todo:
                return False
            name = node.outputs[0].name
            if name not in ref.sums:
                stats["skipped_missing"] += 1
                return False
            got = _Means()
            for o in outs:
                got.add(name, o[0], want[name])
            delta = ref.mean(name) - got.mean(name)
            why = self._apply(graph, node, delta)
            if why:
                stats[why] += 1
                return False
            shifts.append(float(np.abs(delta).max()) / (float(np.abs(ref.mean(name)).mean())
                                                         or 1.0))
            stats["corrected"] += 1
            return True

        with torch.no_grad():
            _layerwise(graph, [self._inputs(graph, b, i) for i, b in enumerate(batches)],
                       on_layer)
        stats["mean_shift"] = round(float(np.mean(shifts)), 6) if shifts else 0.0
        return PassResult(stats["corrected"] > 0, stats)

    @staticmethod
    def _inputs(graph: Graph, batch, i: int):
        try:
            return bind_inputs(graph, batch)
        except IRError as e:
            raise PassError(f"calibration batch {i}: {e}") from None

    @staticmethod
    def _apply(graph: Graph, layer: Node, delta: np.ndarray) -> str | None:
        """Add ``delta`` to the layer's bias; a stats key when it cannot."""
        if len(layer.inputs) < 3:
            b = graph.add_constant(delta.astype(np.float32),
                                   graph.fresh_name(f"{layer.outputs[0].name}.bias"))
            graph.add_operand(layer, b)
            xd, wd = layer.inputs[0].producer, layer.inputs[1].producer
            if (xd is not None and wd is not None and xd.op == wd.op == "dequantize"
                    and xd.inputs[1].is_constant and xd.inputs[1].type.rank == 0
                    and wd.inputs[1].is_constant):
                quantize_bias(graph, layer, float(np.asarray(xd.inputs[1].data)),
                              np.asarray(wd.inputs[1].data))
            return None
        b = layer.inputs[2]
        d = b.producer
        if d is not None and d.op == "dequantize" and d.inputs[0].is_constant:
            bq, sb, _ = d.inputs  # (q - zp)·s: whole steps added to q keep the zero point
            if len(bq.uses) != 1 or len(b.uses) != 1:
                return "skipped_shared"
            step = np.broadcast_to(np.asarray(sb.data, np.float64), delta.shape)
            new = np.asarray(bq.data, np.int64) + np.round(delta / step).astype(np.int64)
            if np.abs(new).max() > 2 ** 31 - 1:
                return "skipped_overflow"
            replace_data(bq, new.astype(bq.data.dtype).reshape(bq.shape))
            return None
        if b.is_constant and b.type.is_float:
            if len(b.uses) != 1 or b in graph.outputs:
                return "skipped_shared"
            replace_data(b, (np.asarray(b.data, np.float64) + delta).astype(b.data.dtype))
            return None
        return "skipped_shared"
