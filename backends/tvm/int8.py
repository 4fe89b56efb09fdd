"""int8 on TVM: QDQ patterns around conv2d / linear / matmul lowered to integer compute.

Relax 0.27 has no pass that turns ``dequantize → conv → quantize`` into an integer conv (a
QDQ graph runs every conv in float plus the Q/DQ work), so the TVM backend's lowering does
it here. The pattern, matched on the IR before lowering::

    dequantize(xq, sx, zx) ─┐
    dequantize(wq, sw, 0) ──┼─> conv2d | linear | matmul ─[─> quantize(·, sy, zy)]
    bias (f32 const, or dequantize(b_i32, sb, 0)) ─┘

with ``xq`` u8 or i8 per tensor (``sx``, ``zx`` constants), ``wq`` a constant i8, symmetric
(``zw`` all 0), per tensor or per output channel. It is lowered to

    acc = conv2d / matmul(xq, wq, out_dtype=int32)          # x86: x86_int8's kernels
    acc = acc + (b_i32 - zx * sum(wq))                       # one int32 constant per channel
    y   = f32(acc) * (sx*sw) [+ b_f32]                       # no output quantize: f32 out
    q   = clip(round(f32(acc) * (sx*sw/sy) [+ b_f32/sy]) + zy)   # with it: straight to dtype

An int32 bias at scale ``sx*sw`` (``dequantize(b_i32, sx*sw, 0)``) goes into the int32
accumulator exactly; an f32 bias (or an int32 one at another scale) is added in float after
scaling, fused with the requantize, so it costs no rounding.

The input zero point is exact at the borders too: a padded conv pads ``xq`` with ``zx``
(``nn.pad``) and convolves without padding, so ``conv(x - zx)`` is ``conv(x) - zx*sum(w)``
everywhere. The weight (and int32 bias) dequantize nodes are not lowered at all when every
use is an integer op. The activation dequantize is lowered only if something else uses it.

A ``dequantize(dynamic_quantize(x))`` input (``quantize(activations=dynamic)``) is lowered
the same way with the scale and zero point the ``dynamic_quantize`` computes at run time:
``acc - zx * sum(wq)`` in int32, then ``f32(acc) * (sx*sw) [+ b_f32]`` (linear / matmul;
no output quantize).

``max_pool2d`` of a per-tensor ``dequantize`` (positive, finite scale) runs on the integers:
a dequantize is monotone, so ``max_pool(dequantize(xq)) = dequantize(max_pool(xq))``
exactly (the padding is the dtype's minimum, never selected over a real element). A
following ``quantize`` with the same scale, zero point and dtype (what the ``quantize``
pass emits) is then the identity and is not lowered; otherwise the pooled integers are
dequantized. No NaN handling is needed: dequantized values are finite. This keeps the
max-pool between two integer convolutions from becoming three float kernels.

A candidate whose conditions fail (asymmetric weights, per-channel activations, non-constant
scales, …) stays float for that op only, with a debug log line saying why; so does one whose
integer lowering Relax rejects. Everything else is lowered as before. Results equal the IR
interpreter's QDQ reference to within one step of the output quantize (ties may round the
other way) and, for f32 outputs, to float rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvm import relax

from ...ir.graph import Graph, Node, Value
from ...ir.ops.quant import QRANGES
from .lowering import DTYPE_TO_TVM, Lowerer, lower_node, lowers_pattern

log = logging.getLogger(__name__)

#: Ops whose QDQ form is lowered to integer compute.
INT8_OPS = ("conv2d", "linear", "matmul")
#: Ops that commute with a per-tensor dequantize (they select a value; a dequantize is
#: monotone), so they run on the quantized integers.
SELECTING_OPS = ("max_pool2d",)
_ACT_DTYPES = ("u8", "i8")
_OUT_DTYPES = ("u8", "i8", "i16")
_I32 = (-(2 ** 31), 2 ** 31 - 1)


@dataclass
class Match:
    """One QDQ pattern, with everything its integer lowering needs as numpy data."""

    node: Node                 # conv2d / linear / matmul
    xq: Value                  # the u8 / i8 activation
    zx: int
    wq: Value                  # the i8 weight constant
    scale: np.ndarray          # sx * sw, f64: scalar or per output channel
    bias_q: np.ndarray | None  # int64 per output channel (an int32 bias at scale sx*sw)
    bias_f: np.ndarray | None  # f64 per output channel (any other bias), added after scaling
    out_q: Node | None         # the fused output quantize
    deq: tuple[Node, ...]      # the dequantize nodes feeding the op
    # dynamic_quantize's run-time (scale, zero point) of the activation; then ``scale`` is
    # sw alone and ``zx`` 0 (the zero point is corrected at run time)
    dynamic: tuple[Value, Value] | None = None


def _const(v: Value) -> np.ndarray | None:
    return None if v.data is None else np.asarray(v.data)


def _producer(v: Value, op: str) -> Node | None:
    p = v.producer
    return p if p is not None and p.op == op else None


def _out_channels(node: Node) -> tuple[int, int]:
    """(number of output channels, axis of the weight that holds them)."""
    w = node.inputs[1].type
    if node.op == "matmul":
        return w.shape[-1], w.rank - 1
    return w.shape[0], 0


def _per_channel(name: str, p: np.ndarray, axis: int | None, want_axis: int, n: int
                 ) -> tuple[np.ndarray | None, str | None]:
    """``p`` as a scalar or a length-``n`` vector along ``want_axis``, else a reason."""
    if p.ndim == 0:
        return p, None
    if axis is None or axis != want_axis or p.shape != (n,):
        return None, f"{name} is per-channel along axis {axis}, not the output channels"
    return p, None


def match(node: Node, graph: Graph) -> tuple[Match | None, str | None]:
    """The QDQ pattern rooted at ``node``: (match, None), (None, why not), or (None, None)
    when ``node`` is not a QDQ candidate at all (not both operands dequantized)."""
    if node.op not in INT8_OPS or len(node.inputs) < 2:
        return None, None
    xd, wd = _producer(node.inputs[0], "dequantize"), _producer(node.inputs[1], "dequantize")
    if xd is None or wd is None:
        return None, None
    xq, sx_v, zx_v = xd.inputs
    wq, sw_v, zw_v = wd.inputs
    if xq.dtype not in _ACT_DTYPES:
        return None, f"activation {xq.type} is not u8/i8"
    sx, zx = _const(sx_v), _const(zx_v)
    dynamic = None
    if sx is None or zx is None:
        p = xq.producer
        if p is None or p.op != "dynamic_quantize" or list(xd.inputs) != p.outputs:
            return None, "activation scale / zero point are not constants"
        if node.op == "conv2d":
            return None, "a dynamically quantized conv2d (only linear / matmul)"
        dynamic, sx, zx = (sx_v, zx_v), np.float64(1.0), np.int64(0)
    if sx.ndim != 0:
        return None, "activation is quantized per channel (per tensor needed)"
    w = _const(wq)
    if w is None or wq.dtype != "i8":
        return None, f"weight {wq.type} is not a constant i8 tensor"
    sw, zw = _const(sw_v), _const(zw_v)
    if sw is None or zw is None:
        return None, "weight scale / zero point are not constants"
    if np.any(zw != 0):
        return None, "weights are asymmetric (zero point != 0)"
    n, waxis = _out_channels(node)
    if node.op == "matmul" and (node.inputs[0].type.rank < 2 or wq.type.rank < 2):
        return None, "matmul with a 1-d operand"
    sw, why = _per_channel("weight scale", sw, wd.attrs["axis"], waxis, n)
    if why:
        return None, why
    scale = np.float64(sx) * sw.astype(np.float64)
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        return None, "scales are not positive and finite"
    deq = [xd, wd]
    bias_q = bias_f = None
    if len(node.inputs) > 2:
        b = node.inputs[2]
        bd = _producer(b, "dequantize")
        if bd is not None and dynamic is not None:
            return None, "a dynamically quantized layer with an int32 bias"
        if bd is not None:  # int32 bias: dequantize(b_i32, sb, zb)
            bq, sb, zb = (_const(v) for v in bd.inputs)
            if bq is None or sb is None or zb is None:
                return None, "quantized bias with non-constant data, scale or zero point"
            bq, sb, zb = (np.broadcast_to(a, (n,)) for a in (bq, sb, zb))
            if np.allclose(sb, np.broadcast_to(scale, (n,)), rtol=1e-6, atol=0):
                bias_q = bq.astype(np.int64) - zb.astype(np.int64)  # already at sx*sw: exact
            else:  # at another scale: exact in float, after the accumulator is scaled
                bias_f = (bq.astype(np.float64) - zb) * sb.astype(np.float64)
            deq.append(bd)
        elif b.data is not None and b.type.is_float:
            # an f32 bias is added in float after scaling: rounding it to sx*sw would cost
            # up to half a step of the accumulator
            bias_f = np.broadcast_to(_const(b).astype(np.float64), (n,))
        else:
            return None, "bias is neither a constant nor a dequantized int32 constant"
        if bias_q is not None:
            bias_q = np.broadcast_to(bias_q, (n,))
            if bias_q.min() < _I32[0] or bias_q.max() > _I32[1]:
                return None, "int32 bias out of range"
    out_q = None
    y = node.outputs[0]
    if dynamic is None and len(y.uses) == 1 and y not in graph.outputs and \
            y.uses[0].op == "quantize":
        q = y.uses[0]
        sy, zy = _const(q.inputs[1]), _const(q.inputs[2])
        oaxis = y.type.rank - 1 if node.op != "conv2d" else 1
        ok = (q.inputs[0] is y and sy is not None and zy is not None
              and q.attrs["dtype"] in _OUT_DTYPES
              and (sy.ndim == 0 or q.attrs["axis"] is not None
                   and q.attrs["axis"] % y.type.rank == oaxis))
        if ok:
            out_q = q
        else:
            log.debug("int8: %s: output quantize %s not fused (per-channel on another axis, "
                      "non-constant or wide dtype); output f32", node.describe(), q.describe())
    return Match(node, xq, int(zx), wq, scale, bias_q, bias_f, out_q, tuple(deq), dynamic), None


@dataclass
class PoolMatch:
    """A ``SELECTING_OPS`` node on a dequantized tensor, run on the integers."""

    node: Node
    xq: Value
    deq: Node
    out_q: Node | None  # a quantize with the same scale, zero point and dtype: the identity


def match_selecting(node: Node, graph: Graph) -> tuple[PoolMatch | None, str | None]:
    """``node`` (a ``SELECTING_OPS`` op) on a per-tensor dequantize: (match, None), (None,
    why not), or (None, None) when its input is not dequantized at all."""
    if node.op not in SELECTING_OPS:
        return None, None
    xd = _producer(node.inputs[0], "dequantize")
    if xd is None:
        return None, None
    xq, sx_v, zx_v = xd.inputs
    sx, zx = _const(sx_v), _const(zx_v)
    if xq.dtype not in _ACT_DTYPES or sx is None or zx is None or sx.ndim or zx.ndim:
        return None, "input is not a per-tensor u8/i8 dequantize with constant parameters"
    if not (np.isfinite(sx) and sx > 0):
        return None, "dequantize scale is not positive and finite"
    out_q = None
    y = node.outputs[0]
    if len(y.uses) == 1 and y not in graph.outputs and y.uses[0].op == "quantize":
        q = y.uses[0]
        sy, zy = _const(q.inputs[1]), _const(q.inputs[2])
        if (sy is not None and zy is not None and sy.ndim == 0 and zy.ndim == 0
                and q.attrs["dtype"] == xq.dtype and np.float32(sy) == np.float32(sx)
                and int(zy) == int(zx)):
            out_q = q
    return PoolMatch(node, xq, xd, out_q), None


class Plan:
    """The QDQ patterns of one graph and, while lowering, which of them were lowered."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.matches: dict[int, Match] = {}
        self.pools: dict[int, PoolMatch] = {}
        for node in graph.nodes:
            m, why = match(node, graph)
            if m is None and why is None:
                m, why = match_selecting(node, graph)
            if isinstance(m, Match):
                self.matches[id(node)] = m
            elif isinstance(m, PoolMatch):
                self.pools[id(node)] = m
            elif why:
                log.debug("int8: %s stays float: %s", node.describe(), why)
        # dequantize nodes only integer ops use: lowered only if a match falls back
        users = {id(m.node) for m in self.matches.values()} | set(self.pools)
        deqs = [d for m in self.matches.values() for d in m.deq] + [
            m.deq for m in self.pools.values()]
        self.deferred = {id(d): d for d in deqs if d.outputs[0] not in graph.outputs
                         and all(id(u) in users for u in d.outputs[0].uses)}
        self.fused_q: set[int] = set()  # output quantize nodes an integer op produced
        self.lowered: list[Node] = []    # the ops lowered to integer compute

    def lower(self, lw: Lowerer, node: Node) -> bool:
        """Lower ``node`` if it belongs to an int8 pattern; False to lower it as usual."""
        if id(node) in self.deferred or id(node) in self.fused_q:
            return True  # lowered lazily (if ever) / already produced by its integer op
        if id(node) in self.pools:
            return self._lower_selecting(lw, self.pools[id(node)])
        m = self.matches.get(id(node))
        if m is None:
            return False
        outputs = m.out_q.outputs if m.out_q is not None else node.outputs
        try:
            lower_node(lw, node, lowering=lambda lw_: _lower_int8(lw_, m), outputs=outputs)
        except Exception as e:  # Relax rejected it: this op stays float
            log.debug("int8: %s stays float: integer lowering failed: %s", node.describe(),
                      str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            for d in m.deq:
                if id(d) in self.deferred and id(d.outputs[0]) not in lw.env:
                    lower_node(lw, d)
            return False
        if m.out_q is not None:
            self.fused_q.add(id(m.out_q))
        self.lowered.append(node)
        log.debug("int8: %s lowered to integer compute%s", node.describe(),
                  f" (+ {m.out_q.describe()})" if m.out_q is not None else "")
        return True


    def _lower_selecting(self, lw: Lowerer, m: PoolMatch) -> bool:
        node = m.node
        outputs = m.out_q.outputs if m.out_q is not None else node.outputs
        try:
            lower_node(lw, node, lowering=lambda lw_: _lower_selecting(lw_, m), outputs=outputs)
        except Exception as e:  # Relax rejected it: the op runs in float
            log.debug("int8: %s stays float: integer lowering failed: %s", node.describe(),
                      str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            if id(m.deq) in self.deferred and id(m.deq.outputs[0]) not in lw.env:
                lower_node(lw, m.deq)
            return False
        if m.out_q is not None:
            self.fused_q.add(id(m.out_q))
        self.lowered.append(node)
        log.debug("int8: %s runs on the %s integers%s", node.describe(), m.xq.dtype,
                  f" (+ {m.out_q.describe()}, the identity)" if m.out_q is not None else "")
        return True


@lowers_pattern("int8")
def plan(graph: Graph) -> Plan | None:
    """The int8 plan of ``graph`` (None when it has no QDQ candidates at all)."""
    if not any(n.op == "dequantize" for n in graph.nodes):
        return None
    return Plan(graph)


def _chan(lw: Any, p: np.ndarray, rank: int, axis: int, dtype: str) -> Any:
    """A constant broadcasting along ``axis`` of a rank-``rank`` tensor (scalar if 0-d)."""
    p = np.asarray(p)
    if p.ndim:
        shape = [1] * rank
        shape[axis] = -1
        p = p.reshape(shape)
    return lw.const(p, dtype)


def _lower_int8(lw: Any, m: Match) -> Any:
    node = m.node
    x = lw.env[id(m.xq)]
    w_expr = lw.env[id(m.wq)]  # a Relax constant, or a parameter with keep_params
    w = np.asarray(m.wq.data).astype(np.int64)
    y_t = node.outputs[0].type
    rank = y_t.rank
    if node.op == "conv2d":
        at = node.attrs
        pad = list(at["padding"])
        if m.zx != 0 and any(pad):  # pad with the zero point, so the border is exact
            x = lw.emit(relax.op.nn.pad(x, [0, 0, 0, 0, pad[0], pad[0], pad[1], pad[1]],
                                        pad_value=float(m.zx)))
            pad = [0, 0]
        acc = lw.emit(relax.op.nn.conv2d(
            x, w_expr, strides=at["stride"], padding=pad, dilation=at["dilation"],
            groups=at["groups"], data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32"))
        wsum = w.sum(axis=(1, 2, 3))
        caxis = 1
    else:
        if node.op == "linear":
            c = lw.constant(w_expr)
            wt = (relax.const(np.ascontiguousarray(c.T), "int8") if c is not None
                  else lw.emit(relax.op.permute_dims(w_expr, [1, 0])))
            wsum = w.sum(axis=1)
        else:
            wt = w_expr
            wsum = w.sum(axis=-2)  # [..., N]: broadcasts against the [..., M, N] result
        acc = lw.emit(relax.op.matmul(x, wt, out_dtype="int32"))
        caxis = rank - 1
    # int32 correction: bias at scale sx*sw, minus the input zero point's term
    n = y_t.shape[caxis]
    corr = np.zeros(wsum.shape, np.int64) - m.zx * wsum
    if m.bias_q is not None:
        corr = corr + m.bias_q
    if corr.min() < _I32[0] or corr.max() > _I32[1]:
        raise OverflowError("zero-point correction does not fit in int32")
    if np.any(corr):
        if node.op == "matmul" and corr.ndim > 1:  # batched weight: [..., N] -> [..., 1, N]
            corr_c = lw.const(np.expand_dims(corr, -2), "i32")
        else:
            corr_c = _chan(lw, np.broadcast_to(corr, (n,)), rank, caxis, "i32")
        acc = lw.emit(relax.op.add(acc, corr_c))
    if m.dynamic is not None:  # acc - zx * sum(w), zx known at run time only
        if np.abs(wsum).max(initial=0) * 255 > _I32[1]:
            raise OverflowError("zero-point correction does not fit in int32")
        zx = relax.op.astype(lw.env[id(m.dynamic[1])], "int32")
        if node.op == "matmul" and wsum.ndim > 1:
            ws = lw.const(np.expand_dims(wsum, -2).astype(np.int32), "i32")
        else:
            ws = _chan(lw, np.broadcast_to(wsum, (n,)).astype(np.int32), rank, caxis, "i32")
        acc = lw.emit(relax.op.subtract(acc, relax.op.multiply(zx, ws)))
    accf = relax.op.astype(acc, "float32")
    if m.out_q is None:
        scale = _chan(lw, m.scale.astype(np.float32), rank, caxis, "f32")
        if m.dynamic is not None:  # sx (run time) * sw
            scale = relax.op.multiply(lw.env[id(m.dynamic[0])], scale)
        y = relax.op.multiply(accf, scale)
        if m.bias_f is not None:
            y = relax.op.add(y, _chan(lw, m.bias_f.astype(np.float32), rank, caxis, "f32"))
        return y
    q = m.out_q
    sy = np.asarray(q.inputs[1].data, np.float64)
    zy = np.asarray(q.inputs[2].data)
    # scalar, or per channel (weights and / or output per channel). In float32, as
    # onnxruntime computes it (sx · sw rounded, then / sy rounded: qlinearconv.cc, the QGemm
    # and QLinearMatMul kernels), not once from the exact value: the two differ by an ulp
    # for some scales, which flips a rounding tie now and then, and one flipped u8 step
    # grows through the layers after it (int8 MobileNetV2: 10 steps 20 layers later).
    mult = m.scale.astype(np.float32) / sy.astype(np.float32)
    r = relax.op.multiply(accf, _chan(lw, mult, rank, caxis, "f32"))
    if m.bias_f is not None:
        r = relax.op.add(r, _chan(lw, (m.bias_f / sy).astype(np.float32), rank, caxis, "f32"))
    r = relax.op.round(r)
    if np.any(zy):
        r = relax.op.add(r, _chan(lw, zy.astype(np.float32), rank, caxis, "f32"))
    lo, hi = QRANGES[q.attrs["dtype"]]
    return relax.op.astype(lw.clamp(lw.emit(r), lo, hi, "f32"), DTYPE_TO_TVM[q.attrs["dtype"]])


def _lower_selecting(lw: Any, m: PoolMatch) -> Any:
    from .lowering import LOWERINGS

    y = LOWERINGS[m.node.op](lw, m.node, [lw.env[id(m.xq)]])  # the op on the integers
    if m.out_q is not None:
        return y
    _, sx, zx = (np.asarray(v.data) for v in m.deq.inputs)
    acc = relax.op.subtract(relax.op.astype(lw.emit(y), "int32"), lw.const(int(zx), "i32"))
    return relax.op.multiply(relax.op.astype(acc, "float32"), lw.const(sx, "f32"))


def compute_calls(mod: Any) -> list[tuple[str, tuple[str, ...], str]]:
    """The conv2d / matmul calls of a lowered Relax module's ``main``, as (op name, operand
    dtypes, result dtype): e.g. ``("relax.nn.conv2d", ("uint8", "int8"), "int32")`` is
    integer compute, ``(..., ("float32", "float32"), "float32")`` is not."""
    out = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
                continue
            if call.op.name in ("relax.nn.conv2d", "relax.matmul"):
                ins = tuple(str(a.ty.dtype) for a in call.args[:2])
                out.append((str(call.op.name), ins, str(binding.var.ty.dtype)))
    return out


def integer_ops(mod: Any) -> list[tuple[str, tuple[str, ...], str]]:
    """``compute_calls`` that take 8-bit operands and accumulate in int32: the proof that
    integer compute is used."""
    return [c for c in compute_calls(mod)
            if c[2] == "int32" and all(d in ("uint8", "int8") for d in c[1])]


__all__ = ["INT8_OPS", "SELECTING_OPS", "Match", "Plan", "PoolMatch", "compute_calls",
           "integer_ops", "match", "match_selecting", "plan"]
