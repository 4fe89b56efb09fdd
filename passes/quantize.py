"""``quantize``: post-training int8 quantization of conv2d / linear / matmul as QDQ (lossy).

Matches every ``conv2d``, ``linear`` and ``matmul`` whose weight (operand 1) is a float
constant, and with static activations also ``matmul`` of two activations. Produces the
QDQ form that onnxruntime runs with its QLinear / integer kernels and that
``backends/tvm/int8.py`` lowers to integer compute::

    x ─ quantize(sx, zx) ─ dequantize ─┐                         (one per activation)
    W_i8 (per channel, zero point 0) ─ dequantize ─┼─ conv2d ─ quantize(sy, zy) ─ dequantize ─▶
    b_i32 (scale sx·sw, zero point 0) ─ dequantize ─┘

* **Which activations.** The data inputs of every matched op, and its output unless that is
  a graph output. Each activation is quantized once, right where it is produced, and every
  user reads the one dequantized value ("one requantization shared by all users"): a conv
  feeding a conv, or an activation feeding several layers, is quantized once.
* **ReLU / ReLU6 into the quantize.** A layer's output read only by ``relu`` (or
  ``hardtanh(0, hi)``) is quantized after it; when the quantize's own clamp already is that
  activation (zero point at the bottom of the range, and for ReLU6 ``hi`` at or above the
  top) the activation is removed, so the quantize follows the layer directly (what
  integer kernels fuse). This is exact.
* **Shared ranges.** An activation computed by ``max_pool2d`` / ``reshape`` / ``flatten`` /
  ``permute`` / ``identity`` / ``dropout`` from an already quantized one takes its scale
  and zero point: the values are on the same grid, so the requantization is exact.
* **Calibration.** Ranges come from the context's calibration batches through streaming
  observers (``passes/analyses/calibration.py``: running min / max, and with
  ``percentile`` / ``entropy`` / ``mse`` a histogram of ``bins`` bins per activation).
  Without calibration data the pass fails with one error saying how to give it.
* **Weights** are int8 constants, symmetric (zero point 0) per output channel (conv /
  linear: axis 0; matmul: the last axis) or per tensor; asymmetric with
  ``symmetric_weights=False``. ``reduce_range`` limits them to ±64 (7 bits) so that x86 CPUs
  without VNNI do not saturate their int16 pair sums; ``auto`` does so on such CPUs only.
* **Biases** become int32 at scale ``sx·sw`` (zero point 0), what QLinearConv and the TVM
  integer lowering add into the accumulator; a bias that would overflow int32 stays f32.
* **Dynamic** (``activations=dynamic``, as onnxruntime's ``quantize_dynamic``): ``linear``
  and ``matmul`` with a constant weight get ``dynamic_quantize`` (u8, the range of the
  tensor at run time; DynamicQuantizeLinear in ONNX) on their input, read only by them;
  weights as above, biases stay f32, no calibration. Matmuls of two activations stay
  float, and so do convolutions unless ``dynamic_conv`` (then they are quantized the same
  way; ONNX: ConvInteger → Cast → Mul, what ``quantize_dynamic`` writes). Off by default:
  on the zoo ViT its one conv (the patch embedding) is faster in float in onnxruntime —
  NCHWc Conv against an im2col ConvInteger plus a DynamicQuantizeLinear, a Cast and two
  Muls: the whole graph 0.88× of ``quantize_dynamic``'s at 1 thread with it float, 0.95×
  with it quantized (an interleaved A/B on a shared machine) — and closer to fp32 (logit
  cosine 0.999979 against 0.999967).

Stays float, counted in the stats (and logged with the node's name): nodes matching
``exclude`` (fnmatch patterns on the node name or its loc; ``skipped_excluded``), a
non-constant conv / linear weight (``skipped_nonconstant_weight``), a constant first
matmul operand (``skipped_constant_lhs``), non-f32 (``skipped_dtype``), a weight with a
storage encoding (``skipped_encoded``), an already quantized operand
(``skipped_quantized``), in dynamic mode ``skipped_dynamic_conv2d`` /
``skipped_dynamic_activations``; other ops with weights (``conv_transpose2d``,
``embedding``) as ``float_<op>``. The names are in ``ctx.artifacts["quantize"]``, a
``QuantizePlan`` that also holds each activation's range and the float graph (what
``bias-correct`` compares against).

Options: ``weights`` (int8), ``activations`` (uint8 | int8 | dynamic), ``calibration``
(minmax | percentile | entropy | mse), ``per_channel``, ``symmetric_weights``, ``bins``
(histogram bins; entropy needs at least 2048), ``percentile``, ``reduce_range`` (auto |
true | false), ``exclude``, ``dynamic_conv``. Stats: ``quantized_<op>``, ``activations``
(quantize / dequantize pairs or dynamic quantizes), ``shared_ranges``,
``absorbed_activations``, ``bias_int32``, ``bias_float``, ``weight_qmax``, ``reduce_range``,
``calibration_batches`` and the counters above.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..ir.graph import Graph, IRError, Node, Value
from ..ir.ops.quant import QRANGES
from .analyses import calibration as cal
from .base import Pass, PassContext, PassError, PassResult, option
from .registry import register_pass
from .rewrite import remove_unused_constants

TARGETS = ("conv2d", "linear", "matmul")
FLOAT_WEIGHTED = ("conv_transpose2d", "embedding")  # ops with weights and no int8 form here
PASSTHROUGH = frozenset({"max_pool2d", "reshape", "flatten", "permute", "identity", "dropout"})
ACT_DTYPES = {"uint8": "u8", "int8": "i8"}


@dataclass
class QuantizePlan:
    """What ``quantize`` did: activation ranges (lo, hi, scale, zero point), the nodes left
    float and why, the quantized layers, and the graph as it was before (sharing its
    arrays): what ``bias-correct`` compares against."""

    activations: str
    calibration: str
    reduce_range: bool
    ranges: dict[str, tuple[float, float, float, int]] = field(default_factory=dict)
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float
    layers: list[str] = field(default_factory=list)  # quantized nodes (output names)
    float_graph: Graph | None = None


@dataclass
class _Point:
    value: Value
    absorb: Node | None = None  # relu / hardtanh(0, hi) that the quantize may replace
    share: Value | None = None  # an earlier point whose scale and zero point this one takes


def _weight_axis(node: Node, w: Value) -> int:
    return w.type.rank - 1 if node.op == "matmul" else 0


def _is_quantized(v: Value) -> bool:
    return v.producer is not None and v.producer.op in ("dequantize", "fake_quantize")


def _one_sided_activation(node: Node) -> bool:
    if node.op == "relu":
        return True
    return node.op == "hardtanh" and node.attrs["min_val"] == 0.0 and node.attrs["max_val"] > 0


def quantize_bias(graph: Graph, node: Node, sx: float, w_scale: np.ndarray) -> bool:
    """Make the f32 constant bias of ``node`` (conv2d / linear) an int32 constant at scale
    ``sx·sw`` with zero point 0 (what QLinearConv and the TVM integer lowering add into the
    accumulator). False, and nothing changed, when there is no such bias or it would
    overflow int32."""
    if len(node.inputs) < 3 or node.op not in ("conv2d", "linear"):
        return False
    b = node.inputs[2]
    if not b.is_constant or b.dtype != "f32":
        return False
    n = node.outputs[0].shape[1] if node.op == "conv2d" else node.outputs[0].shape[-1]
    sb = (np.float32(sx) * np.broadcast_to(np.asarray(w_scale, np.float32), (n,))
          ).astype(np.float32)
    if np.any(sb <= 0) or not np.all(np.isfinite(sb)):
        return False
    bq = np.round(np.asarray(b.data, np.float64) / sb.astype(np.float64))
    if np.abs(bq).max(initial=0) > 2 ** 31 - 1:
        return False
    q_c = graph.add_constant(bq.astype(np.int32), graph.fresh_name(f"{b.name}.q"))
    s_c = graph.add_constant(sb, graph.fresh_name(f"{b.name}.scale"))
    z_c = graph.add_constant(np.zeros(n, np.int32), graph.fresh_name(f"{b.name}.zero_point"))
    d = graph.add_node("dequantize", [q_c, s_c, z_c], {"axis": 0},
                       names=graph.fresh_name(f"{b.name}.dq"), before=node)
    graph.set_input(node, 2, d.output)
    remove_unused_constants(graph, [b])
    return True


@register_pass("quantize")
@dataclass
class Quantize(Pass):
    """Post-training int8 quantization (QDQ) of conv2d / linear / matmul, calibrated."""

    exact = False
    weights: Literal["int8"] = option("int8", help="weight type")
    activations: Literal["uint8", "int8", "dynamic"] = option(
        "uint8", help="activation type; dynamic: linear/matmul inputs quantized at run time")
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = option(
        "minmax", help="how activation ranges are chosen from the calibration data")
    per_channel: bool = option(True, help="one weight scale per output channel")
    symmetric_weights: bool = option(True, help="weight zero point 0")
    bins: int = option(2048, ge=128, help="histogram bins (per sign) for percentile/entropy/mse")
    percentile: float = option(99.99, gt=50.0, le=100.0, help="percentile calibration's p")
    reduce_range: bool | Literal["auto"] = option(
        "auto", help="7-bit weights (x86 without VNNI); auto: detect this CPU")
    exclude: tuple[str, ...] = option((), help="fnmatch patterns of node names / locs kept float")
    dynamic_conv: bool = option(
        False, help="activations=dynamic: convolutions too (ONNX ConvInteger, as quantize_dynamic)")

    def check(self) -> str | None:
        if self.calibration == "entropy" and self.bins < 2048:
            return f"entropy calibration needs bins >= 2048 (a KL search), got {self.bins}"
        return None

    # ------------------------------------------------------------------ selection
    def _refuse(self, node: Node) -> str | None:
        """Why ``node`` (a conv2d / linear / matmul) stays float, or None."""
        names = [node.name] + ([node.loc] if node.loc else [])
        if any(fnmatch.fnmatchcase(n, p) for p in self.exclude for n in names):
            return "skipped_excluded"
        if len(node.inputs) < 2:
            return "skipped_nonconstant_weight"
        x, w = node.inputs[0], node.inputs[1]
        if any(_is_quantized(v) for v in node.inputs):
            return "skipped_quantized"
        if x.dtype != "f32" or w.dtype != "f32" or node.outputs[0].dtype != "f32":
            return "skipped_dtype"
        if node.op == "matmul" and x.is_constant:
            return "skipped_constant_lhs"
        if not w.is_constant:
            if node.op != "matmul":
                return "skipped_nonconstant_weight"
            if self.activations == "dynamic":
                return "skipped_dynamic_activations"
            if x.type.rank < 2 or w.type.rank < 2:
                return "skipped_dtype"
            return None
        if w.encoding is not None:
            return "skipped_encoded"
        if node.op == "matmul" and w.type.rank < 2:
            return "skipped_dtype"
        if self.activations == "dynamic" and node.op == "conv2d" and not self.dynamic_conv:
            return "skipped_dynamic_conv2d"
        return None

    def _reduce(self) -> bool:
        return cal.needs_reduce_range() if self.reduce_range == "auto" else bool(self.reduce_range)

    # ------------------------------------------------------------------ run
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        dynamic = self.activations == "dynamic"
        reduce = self._reduce()
        plan = QuantizePlan(self.activations, "none" if dynamic else self.calibration, reduce,
                            float_graph=graph.clone(share_data=True))
        stats: dict[str, int | float] = {f"quantized_{op}": 0 for op in TARGETS}
        stats.update(dict.fromkeys(("activations", "shared_ranges", "absorbed_activations",
                                    "bias_int32", "bias_float"), 0))
        targets: list[Node] = []
        for node in graph.nodes:
            if node.op in TARGETS:
                why = self._refuse(node)
                if why is None:
                    targets.append(node)
                    continue
                stats[why] = stats.get(why, 0) + 1
                plan.float_nodes[node.describe()] = why
            elif node.op in FLOAT_WEIGHTED:
                key = f"float_{node.op}"
                stats[key] = stats.get(key, 0) + 1
                plan.float_nodes[node.describe()] = f"{node.op} has no int8 form"
        for name, why in plan.float_nodes.items():
            ctx.logger.info("quantize: %s stays float (%s)", name, why)
        stats["reduce_range"] = int(reduce)
        stats["weight_qmax"] = cal.weight_range(8, self.symmetric_weights, reduce)[1]
        ctx.artifacts["quantize"] = plan
        if not targets:
            stats["calibration_batches"] = 0
            return PassResult(False, stats)
        if dynamic:
            scales = self._dynamic(graph, targets, stats)
            stats["calibration_batches"] = 0
        else:
            scales = self._static(graph, targets, ctx, plan, stats)
        weight_cache: dict[int, tuple[Value, cal.WeightQuant]] = {}
        for node in targets:
            self._weights(graph, node, scales.get(id(node)), weight_cache, plan, stats)
            stats[f"quantized_{node.op}"] += 1
            plan.layers.append(node.name)
        return PassResult(True, stats)

    # ------------------------------------------------------------------ activations
    def _points(self, graph: Graph, targets: list[Node]) -> list[_Point]:
        points: dict[int, _Point] = {}
        outputs = {id(v) for v in graph.outputs}

        def add(v: Value, absorb: Node | None = None) -> None:
            if id(v) not in points and not v.is_constant:
                points[id(v)] = _Point(v, absorb)

        for node in targets:
            for v in node.inputs[:1] if node.inputs[1].is_constant else node.inputs[:2]:
                add(v)
            y = node.outputs[0]
            if id(y) in outputs or not y.uses:
                continue
            user = y.uses[0]
            if (len(y.uses) == 1 and _one_sided_activation(user)
                    and id(user.outputs[0]) not in outputs):
                add(user.outputs[0], absorb=user)
            else:
                add(y)
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        pts = sorted(points.values(), key=lambda p: order.get(id(p.value.producer), -1))
        for p in pts:
            prod = p.value.producer
            if prod is not None and prod.op in PASSTHROUGH and id(prod.inputs[0]) in points:
                src = points[id(prod.inputs[0])]
                p.share = src.share if src.share is not None else src.value
        return pts

    def _static(self, graph: Graph, targets: list[Node], ctx: PassContext, plan: QuantizePlan,
                stats: dict) -> dict[int, np.float32]:
        if ctx.calibration is None or not list(ctx.calibration):
            raise PassError(
                f"quantize(activations={self.activations}) needs calibration data and the "
                f"context has none: give optimize(..., calibration=batches) / compile(..., "
                f"calibration=...) or `shrinkc opt --calibration FILE.npz|zoo-data:mnist` "
                f"(only activations=dynamic runs without it)")
        batches = list(ctx.calibration)
        stats["calibration_batches"] = len(batches)
        points = self._points(graph, targets)
        observed = [p.value for p in points if p.share is None]
        try:
            obs = cal.collect(graph, observed, batches, histograms=self.calibration != "minmax",
                              bins=self.bins)
        except IRError as e:
            raise PassError(str(e)) from None
        dtype = ACT_DTYPES[self.activations]
        qmin, qmax = QRANGES[dtype]
        params: dict[int, tuple[Value, Value, np.float32, int]] = {}
        first = graph.nodes[0]
        for p in points:
            v = p.value
            if p.share is not None:
                s_c, z_c, s, z = params[id(p.share)]
                stats["shared_ranges"] += 1
            else:
                lo, hi = cal.choose_range(obs[v.name], self.calibration, qmax - qmin + 1,
                                          self.percentile)
                s, z = cal.qparams(lo, hi, dtype)
                plan.ranges[v.name] = (lo, hi, float(s), z)
                s_c = graph.add_constant(np.asarray(s, np.float32),
                                         graph.fresh_name(f"{v.name}.scale"))
                z_c = graph.add_constant(np.asarray(z, dtype=np.uint8 if dtype == "u8"
                                                    else np.int8),
                                         graph.fresh_name(f"{v.name}.zero_point"))
            params[id(v)] = (s_c, z_c, s, z)
            src = v
            if p.absorb is not None and self._absorbs(p.absorb, s, z, qmin, qmax):
                src = p.absorb.inputs[0]
            where = {"after": src.producer} if src.producer is not None else {"before": first}
            q = graph.add_node("quantize", [src, s_c, z_c], {"dtype": dtype},
                               names=graph.fresh_name(f"{v.name}.q"), **where)
            d = graph.add_node("dequantize", [q.output, s_c, z_c],
                               names=graph.fresh_name(f"{v.name}.dq"), after=q)
            outs = list(graph.outputs)
            graph.replace_all_uses(v, d.output, exclude=[q])
            graph.outputs = outs
            if src is not v:
                graph.erase(p.absorb)
                stats["absorbed_activations"] += 1
            stats["activations"] += 1
        scales = {}
        for node in targets:
            x = node.inputs[0]
            if x.producer is not None and x.producer.op == "dequantize":
                scales[id(node)] = np.float32(x.producer.inputs[1].data)
        return scales

    @staticmethod
    def _absorbs(act: Node, s: np.float32, z: int, qmin: int, qmax: int) -> bool:
        """The quantize's clamp is exactly ``act`` (see the module docstring)."""
        if z != qmin:
            return False
        if act.op == "relu":
            return True
        top = np.round(np.float32(act.attrs["max_val"]) / np.float32(s)) + z
        return bool(top >= qmax)

    def _dynamic(self, graph: Graph, targets: list[Node], stats: dict) -> dict:
        done: dict[int, Value] = {}
        first = graph.nodes[0]
        for node in targets:
            x = node.inputs[0]
            if id(x) not in done:
                where = {"after": x.producer} if x.producer is not None else {"before": first}
                dq = graph.add_node("dynamic_quantize", [x], {"dtype": "u8"},
                                    names=[graph.fresh_name(f"{x.name}.q"),
                                           graph.fresh_name(f"{x.name}.scale"),
                                           graph.fresh_name(f"{x.name}.zero_point")], **where)
                d = graph.add_node("dequantize", list(dq.outputs),
                                   names=graph.fresh_name(f"{x.name}.dq"), after=dq)
                done[id(x)] = d.output
                stats["activations"] += 1
            graph.set_input(node, 0, done[id(x)])
        return {}

    # ------------------------------------------------------------------ weights, bias
    def _weights(self, graph: Graph, node: Node, sx: np.float32 | None,
                 cache: dict[int, tuple[Value, cal.WeightQuant]], plan: QuantizePlan,
                 stats: dict) -> None:
        w = node.inputs[1]
        if not w.is_constant:
            return  # a matmul of two activations: both are quantized activations
        axis = _weight_axis(node, w)
        if id(w) not in cache:
            wq = cal.quantize_weight(w.data, axis=axis if self.per_channel else None,
                                     symmetric=self.symmetric_weights,
                                     reduce_range=plan.reduce_range)
            q_c = graph.add_constant(wq.q, graph.fresh_name(f"{w.name}.q"))
            s_c = graph.add_constant(wq.scale, graph.fresh_name(f"{w.name}.scale"))
            z_c = graph.add_constant(wq.zero_point, graph.fresh_name(f"{w.name}.zero_point"))
            d = graph.add_node("dequantize", [q_c, s_c, z_c], {"axis": wq.axis},
                               names=graph.fresh_name(f"{w.name}.dq"), before=node)
            cache[id(w)] = (d.output, wq)
        dq, wq = cache[id(w)]
        graph.set_input(node, 1, dq)
        remove_unused_constants(graph, [w])
        if len(node.inputs) < 3 or node.op == "matmul":
            return
        b = node.inputs[2]
        if sx is not None and quantize_bias(graph, node, sx, wq.scale):
            stats["bias_int32"] += 1
        elif b.is_constant:
            stats["bias_float"] += 1
