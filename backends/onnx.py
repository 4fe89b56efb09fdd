"""ONNX backend: IR → ``.onnx`` through onnx-graphsurgeon, and running it in ONNX Runtime.

``to_onnx(graph, path, opset=17)`` builds a graphsurgeon graph with one exporter per IR op
(``EXPORTERS``, keyed by the op table's names; a test checks every op has one), exports it,
checks it with ``onnx.checker`` (full check, with shape inference) and writes it atomically
(a temp file renamed into place; nothing is written on error). The file is saved with IR
version 10 (onnx 1.23 writes 14 by default, which onnxruntime 1.31 rejects); beyond 2 GB the
weights go to ``<name>.data`` beside it (external data).

Names: ONNX tensor names are the IR value names; an ONNX node is named after its ``loc`` (or
its first output) — made unique, since onnxruntime refuses duplicate node names — and keeps
the exact ``loc`` in its ``shrinkc.loc`` metadata, which ``load_onnx`` reads back, so ONNX →
IR → ONNX → IR gives an equal graph. An IR op that needs several ONNX nodes (``linear`` on
3-D input, ``gelu`` below opset 20, ``group_norm`` below 21, …) is written as the pattern that
the frontend fuses back where it can. Quantized graphs export as QDQ (QuantizeLinear /
DequantizeLinear, per-tensor or per-channel ``axis``; ``fake_quantize`` as such a pair (with a Clip of the integers for a narrowed range),
``dynamic_quantize`` as DynamicQuantizeLinear, which onnxruntime fuses with the
DequantizeLinear and MatMul after it into its DynamicQuantizeMatMul). Opsets 13–21.

A batch-polymorphic graph (``ir/batch.py``) is written with a dynamic first dim ``batch``
on its batch inputs and outputs, so one file runs at any batch: reshapes keep their -1, an
``expand``'s -1 (keep) becomes ONNX's 1 (broadcast), shapes the exporters spell out get
-1 for the batch, intermediate tensors carry no shape (onnx shape inference derives them),
and the model's ``shrinkc.batch`` metadata records the nominal batch for ``load_onnx``.

``OnnxRuntimeSession`` / ``run_onnxruntime`` run a model (path, bytes or ModelProto) on the
CPU with a configurable number of intra-op threads (default: the cores this process may use).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..ir import batch as ir_batch
from ..ir import ops
from ..ir.graph import Graph, IRError, Node, Value
from ..ir.interpreter import as_tensor
from ..ir.onnx_common import BATCH_DIM, BATCH_KEY, IR_TO_ONNX, LOC_KEY, OPSET_MAX, OPSET_MIN
from ..ir.ops.quant import QRANGES
from ..ir.types import to_numpy_dtype
from .runtime import host_threads

log = logging.getLogger(__name__)

IR_VERSION = 10  # what onnxruntime 1.31 accepts (onnx 1.23 would write 14)
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**24  # bytes; above this the weights go to a .data file


class OnnxExportError(IRError):
    """A graph that cannot be written as ONNX (or a file that cannot be written)."""


# ============================================================================ context
class _Ex:
    """State while exporting one graph: IR value → graphsurgeon tensor, names, nodes."""

    def __init__(self, graph: Graph, opset: int, propagate_nan: bool = False):
        self.g, self.opset = graph, opset
        self.propagate_nan = propagate_nan
        self.tensors: dict[int, gs.Tensor] = {}
        self.consts: dict[tuple[str, str], gs.Constant] = {}
        self.nodes: list[gs.Node] = []
        self.locs: dict[str, str] = {}  # ONNX node name -> loc ("" = none)
        self.taken = {v.name for v in graph.values()}
        self.node_names: set[str] = set()
        self.node: Node | None = None
        self.batched = ir_batch.batch_values(graph)  # ids of values that carry the batch

    def shape_of(self, v: Value, shape: Sequence[int] | None = None) -> list[int]:
        """``shape`` (default: ``v``'s) as a Reshape target: -1 for dim 0 when ``v`` carries
        the batch (in a proven graph a reshaped value has it in dim 0 only)."""
        shape = list(v.shape if shape is None else shape)
        if id(v) in self.batched and shape:
            shape[0] = -1
        return shape

    def fail(self, msg: str) -> NoReturn:
        where = f"node {self.node.describe()} ({self.node.op})" if self.node else "graph"
        raise OnnxExportError(f"to_onnx: {where}: {msg}")

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    # ------------------------------------------------------------------ tensors
    def x(self, v: Value, transform: Callable[[np.ndarray], np.ndarray] | None = None,
          tag: str = "") -> gs.Tensor:
        """The tensor for ``v``; a constant (optionally ``transform``ed) keeps its IR name the
        first time it is written, later variants get fresh names."""
        if v.is_constant:
            key = (v.name, tag)
            if key not in self.consts:
                data = np.asarray(v.data)
                if transform is not None:
                    data = transform(data).copy(order="C")
                first = not any(k[0] == v.name for k in self.consts)
                name = v.name if first else self.fresh(f"{v.name}_{tag or 'c'}")
                self.consts[key] = gs.Constant(name, data)
            return self.consts[key]
        if id(v) not in self.tensors:
            self.fail(f"operand %{v.name} is not defined before this node")
        return self.tensors[id(v)]

    def out(self, v: Value) -> gs.Variable:
        t = gs.Variable(v.name, dtype=to_numpy_dtype(v.dtype), shape=list(v.shape))
        self.tensors[id(v)] = t
        return t

    def tmp(self, suffix: str, dtype: str, shape: Sequence[int] | None = None) -> gs.Variable:
        base = self.node.outputs[0].name if self.node is not None else "t"
        return gs.Variable(self.fresh(f"{base}_{suffix}"), dtype=to_numpy_dtype(dtype),
                           shape=None if shape is None else list(shape))

    def const(self, data: Any, suffix: str, dtype: str | None = None) -> gs.Constant:
        arr = np.asarray(data, dtype=to_numpy_dtype(dtype) if dtype else None)
        base = self.node.outputs[0].name if self.node is not None else "c"
        return gs.Constant(self.fresh(f"{base}_{suffix}"), arr.copy(order="C"))

    def i64(self, values: Sequence[int], suffix: str) -> gs.Constant:
        return self.const(np.array(list(values), dtype=np.int64), suffix)

    # ------------------------------------------------------------------ nodes
    def emit(self, op: str, inputs: Sequence[gs.Tensor | None], outputs: Sequence[gs.Tensor],
             attrs: dict[str, Any] | None = None) -> gs.Node:
        loc = self.node.loc if self.node is not None else None
        first = outputs[0].name
        base = loc or first
        name = base if base not in self.node_names else (
            f"{loc}/{first}" if loc else first)
        i = 0
        while name in self.node_names:
            i += 1
            name = f"{base}_{i}"
        self.node_names.add(name)
        self.locs[name] = loc or ""
        ins = [t if t is not None else gs.Variable.empty() for t in inputs]
        node = gs.Node(op, name=name, attrs={k: v for k, v in (attrs or {}).items()
                                             if v is not None},
                       inputs=ins, outputs=list(outputs))
        self.nodes.append(node)
        return node

    def one(self, op: str, node: Node, inputs: Sequence[gs.Tensor | None],
            attrs: dict[str, Any] | None = None) -> None:
        """The common case: one ONNX node computes the IR node's outputs."""
        self.emit(op, inputs, [self.out(o) for o in node.outputs], attrs)


Exporter = Callable[[_Ex, Node], None]
EXPORTERS: dict[str, Exporter] = {}


def _exports(*names: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        for name in names:
            EXPORTERS[name] = fn
        return fn

    return deco


def _pads(p: Sequence[int]) -> list[int]:
    return [int(p[0]), int(p[1]), int(p[0]), int(p[1])]


def _T(a: np.ndarray) -> np.ndarray:
    return a.T


# ============================================================================ exporters
# ---------------------------------------------------------------------------- simple ones
_SIMPLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "neg": "Neg", "sqrt": "Sqrt",
           "exp": "Exp", "erf": "Erf", "identity": "Identity"}


@_exports(*_SIMPLE)
def _simple(e: _Ex, n: Node) -> None:
    e.one(_SIMPLE[n.op], n, [e.x(v) for v in n.inputs])


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow"}


@_exports(*_BINARY)
def _binary(e: _Ex, n: Node) -> None:
    """ONNX wants equal operand types: operands are cast to the result's type (int div)."""
    want = n.output.dtype
    ins = []
    for i, v in enumerate(n.inputs):
        t = e.x(v)
        if v.dtype != want:
            c = e.tmp(f"cast{i}", want, v.shape)
            e.emit("Cast", [t], [c], {"to": IR_TO_ONNX[want]})
            t = c
        ins.append(t)
    e.one(_BINARY[n.op], n, ins)


@_exports("cast")
def _cast(e: _Ex, n: Node) -> None:
    e.one("Cast", n, [e.x(n.inputs[0])], {"to": IR_TO_ONNX[n.attrs["dtype"]]})


@_exports("hardtanh")
def _hardtanh(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    lo, hi = n.attrs["min_val"], n.attrs["max_val"]
    ins = [e.x(x),
           None if lo == -math.inf else e.const(lo, "min", x.dtype),
           None if hi == math.inf else e.const(hi, "max", x.dtype)]
    while ins[-1] is None:
        ins.pop()
    e.one("Clip", n, ins)


@_exports("hardsigmoid")
def _hardsigmoid(e: _Ex, n: Node) -> None:
    e.one("HardSigmoid", n, [e.x(n.inputs[0])], {"alpha": 1.0 / 6.0, "beta": 0.5})


@_exports("hardswish")
def _hardswish(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    if e.opset >= 14:
        e.one("HardSwish", n, [e.x(x)])
        return
    h = e.tmp("hardsigmoid", x.dtype, x.shape)
    e.emit("HardSigmoid", [e.x(x)], [h], {"alpha": 1.0 / 6.0, "beta": 0.5})
    e.emit("Mul", [e.x(x), h], [e.out(n.output)])


@_exports("silu")
def _silu(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    s = e.tmp("sigmoid", x.dtype, x.shape)
    e.emit("Sigmoid", [e.x(x)], [s])
    e.emit("Mul", [e.x(x), s], [e.out(n.output)])


@_exports("gelu")
def _gelu(e: _Ex, n: Node) -> None:
    """Gelu from opset 20; below, the Erf / Tanh pattern the frontend fuses back."""
    x, approx = n.inputs[0], n.attrs["approximate"]
    if e.opset >= 20:
        e.one("Gelu", n, [e.x(x)], {"approximate": approx})
        return
    dt, shape = x.dtype, x.shape
    if approx == "none":
        d = e.tmp("div", dt, shape)
        e.emit("Div", [e.x(x), e.const(math.sqrt(2.0), "sqrt2", dt)], [d])
        core = e.tmp("erf", dt, shape)
        e.emit("Erf", [d], [core])
    else:
        p = e.tmp("pow", dt, shape)
        e.emit("Pow", [e.x(x), e.const(3.0, "three", dt)], [p])
        a = e.tmp("cubic", dt, shape)
        e.emit("Mul", [p, e.const(0.044715, "coeff", dt)], [a])
        b = e.tmp("inner", dt, shape)
        e.emit("Add", [e.x(x), a], [b])
        c = e.tmp("scaled", dt, shape)
        e.emit("Mul", [b, e.const(math.sqrt(2.0 / math.pi), "sqrt_2_pi", dt)], [c])
        core = e.tmp("tanh", dt, shape)
        e.emit("Tanh", [c], [core])
    one = e.tmp("one_plus", dt, shape)
    e.emit("Add", [core, e.const(1.0, "one", dt)], [one])
    m = e.tmp("times_x", dt, shape)
    e.emit("Mul", [e.x(x), one], [m])
    e.emit("Mul", [m, e.const(0.5, "half", dt)], [e.out(n.output)])


@_exports("dropout")
def _dropout(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    e.one("Dropout", n, [e.x(x), e.const(n.attrs["p"], "ratio", x.dtype if x.type.is_float
                                         else "f32")])


@_exports("softmax", "log_softmax")
def _softmax(e: _Ex, n: Node) -> None:
    e.one("Softmax" if n.op == "softmax" else "LogSoftmax", n, [e.x(n.inputs[0])],
          {"axis": n.attrs["axis"]})


# ---------------------------------------------------------------------------- conv, dense
def _conv_attrs(n: Node) -> dict[str, Any]:
    a = n.attrs
    return {"kernel_shape": list(n.inputs[1].shape[2:]), "strides": list(a["stride"]),
            "pads": _pads(a["padding"]), "dilations": list(a["dilation"]), "group": a["groups"]}


@_exports("conv2d")
def _conv2d(e: _Ex, n: Node) -> None:
    """Conv; a dynamically quantized conv (``dequantize(dynamic_quantize(x))`` and a
    dequantized i8 weight with one zero point) is written as ``quantize_dynamic`` writes it:
    ConvInteger(xq, wq, zx, zw) → Cast → Mul(sx · sw[c]) [→ Add bias]."""
    dyn = _dynamic_operands(n)
    if dyn is not None and (dyn[5].type.rank == 0 or not np.asarray(dyn[5].data).any()):
        _dynamic_conv(e, n, dyn)
        return
    e.one("Conv", n, [e.x(v) for v in n.inputs], _conv_attrs(n))


def _dynamic_conv(e: _Ex, n: Node, ops_: tuple[Value, ...]) -> None:
    """ConvInteger subtracts one zero point per operand (onnxruntime refuses a per-channel
    one), so per-channel weights here are symmetric (every zero point 0, written as a
    scalar) and their scales are applied to the int32 result, one per output channel:
    the same sum as the float conv of the dequantized operands, computed exactly in int32."""
    xq, sx, zx, wq, sw, zw = ops_
    c = n.output.shape[1]
    zwt = (e.const(0, "w_zero_point", zw.dtype) if zw.type.rank else e.x(zw))
    acc = e.tmp("acc", "i32")
    e.emit("ConvInteger", [e.x(xq), e.x(wq), e.x(zx), zwt], [acc], _conv_attrs(n))
    accf = e.tmp("acc_f", "f32")
    e.emit("Cast", [acc], [accf], {"to": IR_TO_ONNX["f32"]})
    scale = e.tmp("scale", "f32")
    swt = e.x(sw, lambda a: a.reshape(-1, 1, 1), "c11") if sw.type.rank else e.x(sw)
    e.emit("Mul", [e.x(sx), swt], [scale])
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    if bias is None:
        e.emit("Mul", [accf, scale], [e.out(n.output)])
        return
    y = e.tmp("scaled", "f32")
    e.emit("Mul", [accf, scale], [y])
    if bias.is_constant:
        bt = e.x(bias, lambda a: a.reshape(c, 1, 1), "c11")
    else:
        bt = e.tmp("bias_c11", bias.dtype, (c, 1, 1))
        e.emit("Reshape", [e.x(bias), e.i64([c, 1, 1], "bias_shape")], [bt])
    e.emit("Add", [y, bt], [e.out(n.output)])


@_exports("circulant_matmul")
def _circulant_matmul(e: _Ex, n: Node) -> None:
    """Exact, without an FFT (ONNX has none that torch exports): a convolution over the
    circularly extended input, ``Concat(x[..., 1:], x)`` with ``c`` reversed as the kernel
    (see ir/ops/structured.py). The leading dims are copied from ``x`` at run time, so a
    dynamic batch stays dynamic."""
    x, c = n.inputs
    p, q, k = c.shape
    xt = e.tmp("blocks", x.dtype)
    e.emit("Reshape", [e.x(x), e.i64([-1, q, 1, k], "blocks_shape")], [xt])
    tail = e.tmp("tail", x.dtype)
    e.emit("Slice", [xt, e.i64([1], "start"), e.i64([k], "end"), e.i64([3], "axes")], [tail])
    ext = e.tmp("extended", x.dtype)
    e.emit("Concat", [tail, xt], [ext], {"axis": 3})
    if c.is_constant:
        w = e.x(c, lambda a: a[..., ::-1].reshape(p, q, 1, k), "reversed")
    else:
        rev = e.tmp("reversed", c.dtype)
        e.emit("Slice", [e.x(c), e.i64([-1], "rstart"), e.i64([-(k + 1)], "rend"),
                         e.i64([2], "raxes"), e.i64([-1], "rsteps")], [rev])
        w = e.tmp("kernel", c.dtype)
        e.emit("Reshape", [rev, e.i64([p, q, 1, k], "kernel_shape")], [w])
    y = e.tmp("conv", x.dtype)
    e.emit("Conv", [ext, w], [y], {"kernel_shape": [1, k]})
    shape = e.tmp("in_shape", "i64")
    e.emit("Shape", [e.x(x)], [shape])
    lead = e.tmp("lead", "i64")
    e.emit("Slice", [shape, e.i64([0], "lstart"), e.i64([-1], "lend")], [lead])
    out_shape = e.tmp("out_shape", "i64")
    e.emit("Concat", [lead, e.i64([p * k], "width")], [out_shape], {"axis": 0})
    e.emit("Reshape", [y, out_shape], [e.out(n.output)])


@_exports("conv_transpose2d")
def _conv_t(e: _Ex, n: Node) -> None:
    a = n.attrs
    e.one("ConvTranspose", n, [e.x(v) for v in n.inputs],
          {"kernel_shape": list(n.inputs[1].shape[2:]), "strides": list(a["stride"]),
           "pads": _pads(a["padding"]), "dilations": list(a["dilation"]), "group": a["groups"],
           "output_padding": list(a["output_padding"])})


def _dynamic_operands(n: Node) -> tuple[Value, Value, Value, Value, Value, Value] | None:
    """(xq, x_scale, x_zero_point, wq, w_scale, w_zero_point) when ``n`` (linear / matmul /
    conv2d) reads ``dequantize(dynamic_quantize(x))`` and a dequantized constant weight (per
    tensor, or per output channel)."""
    xd, wd = n.inputs[0].producer, n.inputs[1].producer
    if xd is None or wd is None or xd.op != "dequantize" or wd.op != "dequantize":
        return None
    xq = xd.inputs[0]
    if xq.producer is None or xq.producer.op != "dynamic_quantize" or \
            tuple(xd.inputs) != tuple(xq.producer.outputs):
        return None
    wq, sw, zw = wd.inputs
    if not (wq.is_constant and sw.is_constant and zw.is_constant) or wq.dtype != "i8":
        return None
    out_axis = 0 if n.op in ("linear", "conv2d") else wq.type.rank - 1
    if sw.type.rank == 1 and wd.attrs["axis"] % wq.type.rank != out_axis:
        return None
    return (xq, xd.inputs[1], xd.inputs[2], wq, sw, zw)


def _dynamic_matmul(e: _Ex, n: Node, ops_: tuple[Value, ...], bias: Value | None) -> None:
    """onnxruntime's quantize_dynamic form, which it fuses into DynamicQuantizeMatMul:
    MatMulInteger(xq, wq[ᵀ], zx, zw) → Cast → Mul(sx · sw) [→ Add bias]. (A
    DequantizeLinear before a MatMul is fused instead into MatMulNBits, a weight-only kernel
    that leaves the activations in float, or into a float Gemm.) The dequantize nodes this
    replaces are left unused and dropped at export.

    Symmetric weights (every zero point 0) get a scalar zero point even when their scales
    are per channel: MLAS's integer GEMM then skips its per-column zero-point correction
    (``PerColumnZeroPoints``: one more multiply-add per output element), the same result."""
    xq, sx, zx, wq, sw, zw = ops_
    wt = e.x(wq, _T, "T") if n.op == "linear" else e.x(wq)
    zwt = (e.const(0, "w_zero_point", zw.dtype) if not np.asarray(zw.data).any()
           else e.x(zw))
    acc = e.tmp("acc", "i32")
    e.emit("MatMulInteger", [e.x(xq), wt, e.x(zx), zwt], [acc])
    accf = e.tmp("acc_f", "f32")
    e.emit("Cast", [acc], [accf], {"to": IR_TO_ONNX["f32"]})
    scale = e.tmp("scale", "f32")
    e.emit("Mul", [e.x(sx), e.x(sw)], [scale])
    if bias is None:
        e.emit("Mul", [accf, scale], [e.out(n.output)])
        return
    y = e.tmp("scaled", "f32")
    e.emit("Mul", [accf, scale], [y])
    e.emit("Add", [y, e.x(bias)], [e.out(n.output)])


@_exports("matmul")
def _matmul(e: _Ex, n: Node) -> None:
    dyn = _dynamic_operands(n)
    if dyn is not None:
        _dynamic_matmul(e, n, dyn, None)
        return
    e.one("MatMul", n, [e.x(v) for v in n.inputs])


@_exports("linear")
def _linear(e: _Ex, n: Node) -> None:
    """2-D input: Gemm(transB=1). Otherwise MatMul with the [in, out] weight (+ Add bias),
    the form torch's exporter writes and the frontend fuses back into ``linear``. A
    dynamically quantized linear is written in the integer form of ``_dynamic_matmul``."""
    x, w = n.inputs[0], n.inputs[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    dyn = _dynamic_operands(n)
    if dyn is not None:
        _dynamic_matmul(e, n, dyn, b)
        return
    if x.type.rank == 2:
        e.one("Gemm", n, [e.x(x), e.x(w)] + ([e.x(b)] if b is not None else []), {"transB": 1})
        return
    if w.is_constant:
        wt = e.x(w, _T, "T")
    else:
        wt = e.tmp("weight_t", w.dtype, w.shape[::-1])
        e.emit("Transpose", [e.x(w)], [wt], {"perm": [1, 0]})
    if b is None:
        e.emit("MatMul", [e.x(x), wt], [e.out(n.output)])
        return
    mm = e.tmp("matmul", n.output.dtype, n.output.shape)
    e.emit("MatMul", [e.x(x), wt], [mm])
    e.emit("Add", [mm, e.x(b)], [e.out(n.output)])


@_exports("embedding")
def _embedding(e: _Ex, n: Node) -> None:
    e.one("Gather", n, [e.x(n.inputs[1]), e.x(n.inputs[0])], {"axis": 0})


# ---------------------------------------------------------------------------- norms
@_exports("batch_norm")
def _batch_norm(e: _Ex, n: Node) -> None:
    e.one("BatchNormalization", n, [e.x(v) for v in n.inputs], {"epsilon": n.attrs["eps"]})


def _reduce_mean(e: _Ex, x: gs.Tensor, axes: Sequence[int], dtype: str, suffix: str,
                 out: gs.Tensor | None = None) -> gs.Tensor:
    y = out if out is not None else e.tmp(suffix, dtype)
    if e.opset >= 18:
        e.emit("ReduceMean", [x, e.i64(axes, f"{suffix}_axes")], [y], {"keepdims": 1})
    else:
        e.emit("ReduceMean", [x], [y], {"axes": list(axes), "keepdims": 1})
    return y


def _normalize(e: _Ex, x: gs.Tensor, axes: Sequence[int], eps: float, dtype: str) -> gs.Tensor:
    """(x - mean) / sqrt(var + eps) over ``axes``, in ops every opset has."""
    mu = _reduce_mean(e, x, axes, dtype, "mean")
    d = e.tmp("centered", dtype)
    e.emit("Sub", [x, mu], [d])
    sq = e.tmp("squared", dtype)
    e.emit("Mul", [d, d], [sq])
    var = _reduce_mean(e, sq, axes, dtype, "var")
    ve = e.tmp("var_eps", dtype)
    e.emit("Add", [var, e.const(eps, "eps", dtype)], [ve])
    sd = e.tmp("std", dtype)
    e.emit("Sqrt", [ve], [sd])
    y = e.tmp("normalized", dtype)
    e.emit("Div", [d, sd], [y])
    return y


def _affine(e: _Ex, n: Node, y: gs.Tensor, weight: Value | None, bias: Value | None,
            shape: Sequence[int]) -> None:
    """y * weight + bias with the parameters reshaped to ``shape``; defines the output."""
    steps: list[tuple[gs.Tensor, str]] = []
    if weight is not None:
        steps.append((e.x(weight, lambda a: a.reshape(shape), "bcast"), "Mul"))
    if bias is not None:
        steps.append((e.x(bias, lambda a: a.reshape(shape), "bcast"), "Add"))
    if not steps:
        e.emit("Identity", [y], [e.out(n.output)])
    for i, (p, op) in enumerate(steps):
        z = e.out(n.output) if i == len(steps) - 1 else e.tmp("scaled", n.output.dtype)
        e.emit(op, [y, p], [z])
        y = z


@_exports("layer_norm")
def _layer_norm(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    ns = n.attrs["normalized_shape"]
    w = n.inputs[1] if len(n.inputs) > 1 else None
    b = n.inputs[2] if len(n.inputs) > 2 else None
    if e.opset >= 17:
        scale = e.x(w) if w is not None else e.const(np.ones(ns), "scale", x.dtype)
        e.one("LayerNormalization", n, [e.x(x), scale] + ([e.x(b)] if b is not None else []),
              {"axis": -len(ns), "epsilon": n.attrs["eps"]})
        return
    axes = list(range(x.type.rank - len(ns), x.type.rank))
    y = _normalize(e, e.x(x), axes, n.attrs["eps"], x.dtype)
    _affine(e, n, y, w, b, ns)


@_exports("group_norm")
def _group_norm(e: _Ex, n: Node) -> None:
    """GroupNormalization-21 (per-channel scale); below opset 21 written out (opset 18's
    GroupNormalization has per-group scale and is deprecated)."""
    x = n.inputs[0]
    groups, eps = n.attrs["num_groups"], n.attrs["eps"]
    c = x.shape[1]
    w = n.inputs[1] if len(n.inputs) > 1 else None
    b = n.inputs[2] if len(n.inputs) > 2 else None
    if e.opset >= 21:
        scale = e.x(w) if w is not None else e.const(np.ones(c), "scale", x.dtype)
        bias = e.x(b) if b is not None else e.const(np.zeros(c), "bias", x.dtype)
        e.one("GroupNormalization", n, [e.x(x), scale, bias],
              {"num_groups": groups, "epsilon": eps})
        return
    gshape = (x.shape[0], groups, x.type.numel // (x.shape[0] * groups))
    grouped = e.tmp("grouped", x.dtype, gshape)
    e.emit("Reshape", [e.x(x), e.i64(e.shape_of(x, gshape), "group_shape")], [grouped])
    y = _normalize(e, grouped, [2], eps, x.dtype)
    back = e.tmp("ungrouped", x.dtype, x.shape)
    e.emit("Reshape", [y, e.i64(e.shape_of(x), "shape")], [back])
    _affine(e, n, back, w, b, (c,) + (1,) * (x.type.rank - 2))


# ---------------------------------------------------------------------------- pools, reduce
def _keeping_nan(e: _Ex, n: Node, op: str, inputs: list, attrs: dict[str, Any]) -> None:
    """``op`` (a max / min over windows or axes: MaxPool, ReduceMax, ReduceMin) for node
    ``n``; with ``e.propagate_nan`` NaN-keeping. onnxruntime's kernels drop a NaN among
    other values (PyTorch and the IR give NaN); the same op over the NaN mask (0/1) says
    which outputs read one, and ``sqrt(-mask)`` (-0 or NaN) is added:
    IsNaN → Cast → op → Neg → Sqrt → Add."""
    x = n.inputs[0]
    if not (e.propagate_nan and x.type.is_float):
        e.one(op, n, inputs, attrs)
        return
    dtype, shape = x.dtype, n.outputs[0].shape
    isnan = e.tmp("isnan", "bool", x.shape)
    e.emit("IsNaN", [inputs[0]], [isnan])
    mask = e.tmp("nan_mask", dtype, x.shape)
    e.emit("Cast", [isnan], [mask], {"to": IR_TO_ONNX[dtype]})
    reached, neg, nan_or_zero, value = (e.tmp(s, dtype, shape) for s in (
        "nan_reached", "neg_nan_reached", "nan_or_zero", "value"))
    e.emit("ReduceMax" if op == "ReduceMin" else op, [mask, *inputs[1:]], [reached], attrs)
    e.emit("Neg", [reached], [neg])
    e.emit("Sqrt", [neg], [nan_or_zero])
    e.emit(op, inputs, [value], attrs)
    e.one("Add", n, [value, nan_or_zero])


@_exports("max_pool2d")
def _max_pool(e: _Ex, n: Node) -> None:
    a = n.attrs
    _keeping_nan(e, n, "MaxPool", [e.x(n.inputs[0])],
                 {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
                  "pads": _pads(a["padding"]), "dilations": list(a["dilation"]),
                  "ceil_mode": int(a["ceil_mode"])})


@_exports("avg_pool2d")
def _avg_pool(e: _Ex, n: Node) -> None:
    a = n.attrs
    e.one("AveragePool", n, [e.x(n.inputs[0])],
          {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
           "pads": _pads(a["padding"]), "ceil_mode": int(a["ceil_mode"]),
           "count_include_pad": int(a["count_include_pad"])})


@_exports("adaptive_avg_pool2d")
def _adaptive_avg_pool(e: _Ex, n: Node) -> None:
    """1×1: GlobalAveragePool; sizes that divide the input: AveragePool; otherwise separable
    windows (Slice + ReduceMean + Concat per output row, then per column)."""
    x = n.inputs[0]
    oh, ow = n.attrs["output_size"]
    h, w = x.shape[2:]
    if (oh, ow) == (1, 1):
        e.one("GlobalAveragePool", n, [e.x(x)])
        return
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        e.one("AveragePool", n, [e.x(x)], {"kernel_shape": k, "strides": k})
        return
    t = e.x(x)
    shape = list(x.shape)
    for axis, (size, out_size) in ((2, (h, oh)), (3, (w, ow))):
        if size == out_size:
            continue
        cells = []
        for i in range(out_size):
            lo, hi = (i * size) // out_size, -(-((i + 1) * size) // out_size)
            s = e.tmp(f"ax{axis}_{i}", x.dtype)
            e.emit("Slice", [t, e.i64([lo], "lo"), e.i64([hi], "hi"), e.i64([axis], "ax")], [s])
            cells.append(_reduce_mean(e, s, [axis], x.dtype, f"ax{axis}_{i}_mean"))
        shape[axis] = out_size
        y = e.tmp(f"pooled{axis}", x.dtype, shape)
        e.emit("Concat", cells, [y], {"axis": axis})
        t = y
    e.emit("Identity", [t], [e.out(n.output)])


@_exports("mean", "sum")
def _reduce(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    axes = list(n.attrs["axes"]) or list(range(x.type.rank))
    keep = int(n.attrs["keepdim"])
    if n.op == "sum" or e.opset >= 18:
        e.one("ReduceSum" if n.op == "sum" else "ReduceMean", n,
              [e.x(x), e.i64(axes, "axes")], {"keepdims": keep})
    else:
        e.one("ReduceMean", n, [e.x(x)], {"axes": axes, "keepdims": keep})


# ---------------------------------------------------------------------------- shapes
@_exports("reshape")
def _reshape(e: _Ex, n: Node) -> None:
    e.one("Reshape", n, [e.x(n.inputs[0]), e.i64(n.attrs["shape"], "shape")])


@_exports("flatten")
def _flatten(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    r = x.type.rank
    start, end = n.attrs["start_dim"] % max(r, 1), n.attrs["end_dim"] % max(r, 1)
    if r >= 2 and start == 1 and end == r - 1:
        e.one("Flatten", n, [e.x(x)], {"axis": 1})
    else:
        e.one("Reshape", n, [e.x(x), e.i64(e.shape_of(n.output), "shape")])


@_exports("permute")
def _permute(e: _Ex, n: Node) -> None:
    r = n.inputs[0].type.rank
    e.one("Transpose", n, [e.x(n.inputs[0])], {"perm": [p % r for p in n.attrs["perm"]]})


@_exports("concat")
def _concat(e: _Ex, n: Node) -> None:
    e.one("Concat", n, [e.x(v) for v in n.inputs], {"axis": n.attrs["axis"]})


@_exports("split")
def _split(e: _Ex, n: Node) -> None:
    e.one("Split", n, [e.x(n.inputs[0]), e.i64(n.attrs["sizes"], "sizes")],
          {"axis": n.attrs["axis"]})


@_exports("slice")
def _slice(e: _Ex, n: Node) -> None:
    a = n.attrs
    e.one("Slice", n, [e.x(n.inputs[0]), e.i64([a["start"]], "starts"),
                       e.i64([a["end"]], "ends"), e.i64([a["axis"]], "axes"),
                       e.i64([a["step"]], "steps")])


@_exports("expand")
def _expand(e: _Ex, n: Node) -> None:
    # the IR's -1 keeps the input's dim; ONNX's Expand broadcasts, so 1 does the same
    shape = [1 if d == -1 else d for d in n.attrs["shape"]]
    if len(n.inputs) == 1:
        e.one("Expand", n, [e.x(n.inputs[0]), e.i64(shape, "shape")])
        return
    like = n.inputs[1]  # a 0 takes like's size in that dim: Shape(like) sliced in
    dims = e.tmp("like_shape", "i64", [like.type.rank])
    e.emit("Shape", [e.x(like)], [dims])
    parts = []
    for i, d in enumerate(shape):
        if d == 0:
            part = e.tmp(f"like_dim{i}", "i64", [1])
            e.emit("Slice", [dims, e.i64([i], f"dim{i}_start"), e.i64([i + 1], f"dim{i}_end")],
                   [part])
            parts.append(part)
        else:
            parts.append(e.i64([d], f"dim{i}"))
    target = e.tmp("shape", "i64", [len(shape)])
    e.emit("Concat", parts, [target], {"axis": 0})
    e.one("Expand", n, [e.x(n.inputs[0]), target])


# ---------------------------------------------------------------------------- quantization
def _q_axis(n: Node) -> dict[str, Any]:
    axis = n.attrs["axis"]
    return {} if axis is None or n.inputs[1].type.rank == 0 else {"axis": axis}


@_exports("quantize")
def _quantize(e: _Ex, n: Node) -> None:
    dtype = n.attrs["dtype"]
    if dtype == "i32":  # QuantizeLinear has no int32 output (QDQ biases are int32 constants)
        if not all(v.is_constant for v in n.inputs):
            e.fail("QuantizeLinear cannot produce int32; only constant inputs (biases) can be "
                   "quantized to i32, and are written as int32 initializers")
        q = ops.get("quantize").ref(*[as_tensor(v.data) for v in n.inputs], **n.attrs)
        e.emit("Identity", [e.const(q.numpy(), "int32")], [e.out(n.output)])
        return
    if dtype == "i16" and e.opset < 21:
        e.fail(f"int16 QuantizeLinear needs opset 21 (exporting opset {e.opset})")
    e.one("QuantizeLinear", n, [e.x(v) for v in n.inputs], _q_axis(n))


@_exports("dequantize")
def _dequantize(e: _Ex, n: Node) -> None:
    if n.inputs[0].dtype == "i16" and e.opset < 21:
        e.fail(f"int16 DequantizeLinear needs opset 21 (exporting opset {e.opset})")
    e.one("DequantizeLinear", n, [e.x(v) for v in n.inputs], _q_axis(n))


# ---------------------------------------------------------------------------- more element-wise
_SIMPLE_MORE = {"abs": "Abs", "log": "Log", "softsign": "Softsign", "logical_not": "Not",
                "selu": "Selu"}


@_exports(*_SIMPLE_MORE)
def _simple_more(e: _Ex, n: Node) -> None:
    e.one(_SIMPLE_MORE[n.op], n, [e.x(n.inputs[0])])


@_exports("rsqrt")
def _rsqrt(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    s = e.tmp("sqrt", x.dtype, x.shape)
    e.emit("Sqrt", [e.x(x)], [s])
    e.emit("Reciprocal", [s], [e.out(n.output)])


@_exports("leaky_relu")
def _leaky_relu(e: _Ex, n: Node) -> None:
    e.one("LeakyRelu", n, [e.x(n.inputs[0])], {"alpha": n.attrs["negative_slope"]})


@_exports("elu")
def _elu(e: _Ex, n: Node) -> None:
    e.one("Elu", n, [e.x(n.inputs[0])], {"alpha": n.attrs["alpha"]})


@_exports("softplus")
def _softplus(e: _Ex, n: Node) -> None:
    """ONNX Softplus is log(1 + exp(x)): beta and threshold are written out around it (with
    beta 1 the threshold changes nothing in float32 beyond 17: log1p(exp(-17)) < 2^-24)."""
    x = n.inputs[0]
    beta, thr = n.attrs["beta"], n.attrs["threshold"]
    if beta == 1.0 and thr >= 17.0:
        e.one("Softplus", n, [e.x(x)])
        return
    dt, shape = x.dtype, x.shape
    bx = e.tmp("beta_x", dt, shape)
    e.emit("Mul", [e.x(x), e.const(beta, "beta", dt)], [bx])
    sp = e.tmp("softplus", dt, shape)
    e.emit("Softplus", [bx], [sp])
    scaled = e.tmp("scaled", dt, shape)
    e.emit("Div", [sp, e.const(beta, "beta_div", dt)], [scaled])
    big = e.tmp("linear_region", "bool", shape)
    e.emit("Greater", [bx, e.const(thr, "threshold", dt)], [big])
    e.emit("Where", [big, e.x(x), scaled], [e.out(n.output)])


def _common(e: _Ex, n: Node, want: str | None = None) -> list[gs.Tensor]:
    """The operands cast to one type (ONNX wants equal types): ``want`` or torch's promotion."""
    if want is None:
        import torch

        from ..ir.types import dtype_from_torch, to_torch_dtype

        t = to_torch_dtype(n.inputs[0].dtype)
        for v in n.inputs[1:]:
            t = torch.promote_types(t, to_torch_dtype(v.dtype))
        want = dtype_from_torch(t)
    ins = []
    for i, v in enumerate(n.inputs):
        t = e.x(v)
        if v.dtype != want:
            c = e.tmp(f"cast{i}", want, v.shape)
            e.emit("Cast", [t], [c], {"to": IR_TO_ONNX[want]})
            t = c
        ins.append(t)
    return ins


_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
            "ge": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or"}


@_exports(*_COMPARE)
def _compare(e: _Ex, n: Node) -> None:
    e.one(_COMPARE[n.op], n, _common(e, n))


@_exports("ne")
def _ne(e: _Ex, n: Node) -> None:
    eq = e.tmp("eq", "bool", n.output.shape)
    e.emit("Equal", _common(e, n), [eq])
    e.emit("Not", [eq], [e.out(n.output)])


@_exports("maximum", "minimum")
def _max_min(e: _Ex, n: Node) -> None:
    e.one("Max" if n.op == "maximum" else "Min", n, _common(e, n, n.output.dtype))


@_exports("prelu")
def _prelu(e: _Ex, n: Node) -> None:
    e.one("PRelu", n, _common(e, n, n.output.dtype))


@_exports("where")
def _where(e: _Ex, n: Node) -> None:
    cond, a, b = n.inputs
    want = n.output.dtype
    ins = [e.x(cond)]
    for i, v in enumerate((a, b)):
        t = e.x(v)
        if v.dtype != want:
            c = e.tmp(f"cast{i}", want, v.shape)
            e.emit("Cast", [t], [c], {"to": IR_TO_ONNX[want]})
            t = c
        ins.append(t)
    e.one("Where", n, ins)


# ---------------------------------------------------------------------------- more reductions
@_exports("max", "min")
def _reduce_max_min(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    op = "ReduceMax" if n.op == "max" else "ReduceMin"
    axes = list(n.attrs["axes"]) or list(range(x.type.rank))
    keep = int(n.attrs["keepdim"])
    if e.opset >= 18:
        _keeping_nan(e, n, op, [e.x(x), e.i64(axes, "axes")], {"keepdims": keep})
    else:
        _keeping_nan(e, n, op, [e.x(x)], {"axes": axes, "keepdims": keep})


@_exports("cumsum")
def _cumsum(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    t = e.x(x)
    if x.dtype != n.output.dtype:  # torch sums ints in i64
        c = e.tmp("cast", n.output.dtype, x.shape)
        e.emit("Cast", [t], [c], {"to": IR_TO_ONNX[n.output.dtype]})
        t = c
    e.one("CumSum", n, [t, e.const(np.array(n.attrs["axis"], np.int64), "axis")])


# ---------------------------------------------------------------------------- pad, tile, gather
_PAD_MODE = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


@_exports("pad")
def _pad(e: _Ex, n: Node) -> None:
    x = n.inputs[0]
    a = n.attrs
    ins = [e.x(x), e.i64(a["pads"], "pads")]
    if a["mode"] == "constant":
        ins.append(e.const(np.array(a["value"], to_numpy_dtype(x.dtype)), "value"))
    e.one("Pad", n, ins, {"mode": _PAD_MODE[a["mode"]]})


@_exports("tile")
def _tile(e: _Ex, n: Node) -> None:
    e.one("Tile", n, [e.x(n.inputs[0]), e.i64(n.attrs["repeats"], "repeats")])


@_exports("gather")
def _gather(e: _Ex, n: Node) -> None:
    e.one("Gather", n, [e.x(v) for v in n.inputs], {"axis": n.attrs["axis"]})


@_exports("gather_elements")
def _gather_elements(e: _Ex, n: Node) -> None:
    e.one("GatherElements", n, [e.x(v) for v in n.inputs], {"axis": n.attrs["axis"]})


# ---------------------------------------------------------------------------- 3-D, LRN
def _pads_nd(p: Sequence[int]) -> list[int]:
    return [int(v) for v in p] * 2


@_exports("conv3d")
def _conv3d(e: _Ex, n: Node) -> None:
    a = n.attrs
    e.one("Conv", n, [e.x(v) for v in n.inputs],
          {"kernel_shape": list(n.inputs[1].shape[2:]), "strides": list(a["stride"]),
           "pads": _pads_nd(a["padding"]), "dilations": list(a["dilation"]),
           "group": a["groups"]})


@_exports("max_pool3d")
def _max_pool3d(e: _Ex, n: Node) -> None:
    a = n.attrs
    _keeping_nan(e, n, "MaxPool", [e.x(n.inputs[0])],
                 {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
                  "pads": _pads_nd(a["padding"]), "dilations": list(a["dilation"]),
                  "ceil_mode": int(a["ceil_mode"])})


@_exports("avg_pool3d")
def _avg_pool3d(e: _Ex, n: Node) -> None:
    a = n.attrs
    e.one("AveragePool", n, [e.x(n.inputs[0])],
          {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
           "pads": _pads_nd(a["padding"]), "ceil_mode": int(a["ceil_mode"]),
           "count_include_pad": int(a["count_include_pad"])})


@_exports("lrn")
def _lrn(e: _Ex, n: Node) -> None:
    a = n.attrs
    if a["size"] % 2 == 0:
        e.fail(f"LRN with an even size ({a['size']}) centres its window differently in ONNX "
               f"(one more channel after) than in torch (one more before)")
    e.one("LRN", n, [e.x(n.inputs[0])],
          {"size": a["size"], "alpha": a["alpha"], "beta": a["beta"], "bias": a["bias"]})


# ---------------------------------------------------------------------------- attention
@_exports("scaled_dot_product_attention")
def _sdpa(e: _Ex, n: Node) -> None:
    """Written out (ONNX's Attention op is opset 23): MatMul(q, kᵀ) · scale + mask, Softmax,
    MatMul v; a bool mask becomes 0 / -inf, causal a constant additive mask; fewer k/v heads
    than q heads are repeated (Reshape, Expand, Reshape)."""
    q, k, v = n.inputs[:3]
    mask = n.inputs[3] if len(n.inputs) > 3 else None
    dt = q.dtype
    r = q.type.rank
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = n.attrs["scale"] if n.attrs["scale"] is not None else 1.0 / math.sqrt(E)

    def heads(t: Value, what: str) -> gs.Tensor:
        hq, hk = q.shape[-3], t.shape[-3]
        if hq == hk:
            return e.x(t)
        lead, g = list(t.shape[:-3]), hq // hk
        five = lead + [hk, 1, S, t.shape[-1]]
        rep = lead + [hk, g, S, t.shape[-1]]
        full = lead + [hq, S, t.shape[-1]]
        # a batch in dim 0: -1 in the reshapes, 1 (broadcast: kept) in the expand
        batched = id(t) in e.batched
        a = e.tmp(f"{what}_5d", dt, five)
        e.emit("Reshape", [e.x(t), e.i64([-1] + five[1:] if batched else five,
                                         f"{what}_5d_shape")], [a])
        b = e.tmp(f"{what}_rep", dt, rep)
        e.emit("Expand", [a, e.i64([1] + rep[1:] if batched else rep, f"{what}_rep_shape")], [b])
        c = e.tmp(f"{what}_heads", dt, full)
        e.emit("Reshape", [b, e.i64([-1] + full[1:] if batched else full,
                                    f"{what}_heads_shape")], [c])
        return c

    kt = e.tmp("k_t", dt)
    e.emit("Transpose", [heads(k, "k")], [kt], {"perm": list(range(r - 2)) + [r - 1, r - 2]})
    qk = e.tmp("scores", dt)
    e.emit("MatMul", [e.x(q), kt], [qk])
    s = e.tmp("scaled", dt)
    e.emit("Mul", [qk, e.const(scale, "scale", dt)], [s])
    add = []
    if mask is not None:
        if mask.dtype == "bool":
            m = e.tmp("mask_add", dt)
            e.emit("Where", [e.x(mask), e.const(0.0, "zero", dt), e.const(-np.inf, "ninf", dt)],
                   [m])
            add.append(m)
        else:
            add.append(e.x(mask))
    if n.attrs["causal"]:
        tri = np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf)
        add.append(e.const(tri.astype(to_numpy_dtype(dt)), "causal"))
    for i, m in enumerate(add):
        t = e.tmp(f"masked{i}", dt)
        e.emit("Add", [s, m], [t])
        s = t
    p = e.tmp("probs", dt)
    e.emit("Softmax", [s], [p], {"axis": -1})
    e.emit("MatMul", [p, heads(v, "v")], [e.out(n.output)])


# ---------------------------------------------------------------------------- upsample
@_exports("upsample")
def _upsample(e: _Ex, n: Node) -> None:
    """Resize to the output sizes: nearest = asymmetric + floor (torch's nearest); bilinear
    = linear with pytorch_half_pixel, or align_corners."""
    x = n.inputs[0]
    a = n.attrs
    if a["mode"] == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        attrs = {"mode": "linear", "coordinate_transformation_mode":
                 "align_corners" if a["align_corners"] else "pytorch_half_pixel"}
    if id(x) not in e.batched:
        sizes = e.i64(list(x.shape[:2]) + list(a["size"]), "sizes")
    elif e.opset >= 18:  # a dynamic batch: resize the spatial axes only
        sizes, attrs = e.i64(list(a["size"]), "sizes"), {**attrs, "axes": [2, 3]}
    else:  # a dynamic batch below opset 18: N, C from the input's shape
        shape, nc = e.tmp("shape", "i64", [4]), e.tmp("nc", "i64", [2])
        e.emit("Shape", [e.x(x)], [shape])
        e.emit("Slice", [shape, e.i64([0], "nc_start"), e.i64([2], "nc_end")], [nc])
        sizes = e.tmp("sizes", "i64", [4])
        e.emit("Concat", [nc, e.i64(list(a["size"]), "hw")], [sizes], {"axis": 0})
    e.one("Resize", n, [e.x(x), None, None, sizes], attrs)


@_exports("fake_quantize")
def _fake_quantize(e: _Ex, n: Node) -> None:
    """QuantizeLinear → DequantizeLinear; a ``[qmin, qmax]`` narrower than the dtype's range
    is a Clip of the integers between them (the same bounds for every channel)."""
    x, s, z = n.inputs
    at = n.attrs
    dtype = at["dtype"]
    if dtype == "i16" and e.opset < 21:
        e.fail(f"int16 QuantizeLinear needs opset 21 (exporting opset {e.opset})")
    lo, hi = QRANGES[dtype]
    qmin = lo if at["qmin"] is None else at["qmin"]
    qmax = hi if at["qmax"] is None else at["qmax"]
    q = e.tmp("q", dtype, x.shape)
    e.emit("QuantizeLinear", [e.x(x), e.x(s), e.x(z)], [q], _q_axis(n))
    if (qmin, qmax) != (lo, hi):
        c = e.tmp("clipped", dtype, x.shape)
        e.emit("Clip", [q, e.const(qmin, "qmin", dtype), e.const(qmax, "qmax", dtype)], [c])
        q = c
    e.emit("DequantizeLinear", [q, e.x(s), e.x(z)], [e.out(n.output)], _q_axis(n))


@_exports("dynamic_quantize")
def _dynamic_quantize(e: _Ex, n: Node) -> None:
    e.one("DynamicQuantizeLinear", n, [e.x(n.inputs[0])])


# ============================================================================ driver
def export_model(graph: Graph, opset: int = 17, *, propagate_nan: bool = False
                 ) -> onnx.ModelProto:
    """The checked ``ModelProto`` for ``graph`` (IR version 10); nothing is written.

    ``propagate_nan``: write max pools and max / min reductions so that onnxruntime gives
    NaN where one is read, as PyTorch and the IR do (five more nodes each;
    ``shrinkc.compile`` uses it). Off by default: the plain form is one ONNX op each, which
    reads back as one IR op."""
    if not OPSET_MIN <= int(opset) <= OPSET_MAX:
        raise OnnxExportError(f"to_onnx: opset {opset} is not supported "
                              f"({OPSET_MIN}-{OPSET_MAX})")
    missing = sorted({n.op for n in graph.nodes} - set(EXPORTERS))
    if missing:
        raise OnnxExportError(f"to_onnx: no ONNX exporter for op(s) {missing}")
    if ir_batch.is_polymorphic(graph):
        reason = ir_batch.check(graph)
        if reason:
            raise OnnxExportError(f"to_onnx: graph {graph.name}: its batch marks do not hold: "
                                  f"{reason}")
    e = _Ex(graph, int(opset), propagate_nan)
    inputs = [e.out(v) for v in graph.inputs]
    for node in graph.nodes:
        e.node = node
        try:
            EXPORTERS[node.op](e, node)
        except OnnxExportError:
            raise
        except Exception as err:  # a bug in an exporter: name the node
            e.fail(f"{type(err).__name__}: {err}")
    e.node = None
    outputs, seen = [], set()
    for v in graph.outputs:
        t = e.x(v)
        if v.producer is None or id(v) in seen:  # an input, a constant, or listed twice
            alias = gs.Variable(e.fresh(f"{v.name}_output"), dtype=to_numpy_dtype(v.dtype),
                                shape=list(v.shape))
            e.emit("Identity", [t], [alias])
            t = alias
        seen.add(id(v))
        outputs.append(t)
    if ir_batch.is_polymorphic(graph):  # dynamic batch: the one size not fixed
        io = {id(t) for t in inputs + outputs}
        for t in e.tensors.values():
            if id(t) not in io:
                t.shape = None
        for node in e.nodes:
            for t in node.outputs:
                if id(t) not in io:
                    t.shape = None
        for ts, vs in ((inputs, ir_batch.batch_inputs(graph)),
                       (outputs, ir_batch.batch_outputs(graph))):
            marked = {id(v) for v in vs}
            for t, v in zip(ts, graph.inputs if ts is inputs else graph.outputs):
                if id(v) in marked:
                    t.shape = [BATCH_DIM] + list(v.shape[1:])
    gsg = gs.Graph(nodes=e.nodes, inputs=inputs, outputs=outputs, name=graph.name, opset=opset,
                   producer_name="shrinkc")
    # nodes whose results a pattern export did not need (the dequantizes of a dynamically
    # quantized matmul); the IR itself has no dead nodes
    gsg.cleanup(remove_unused_graph_inputs=False)
    try:
        model = gs.export_onnx(gsg, do_type_check=True)
    except Exception as err:
        raise OnnxExportError(f"to_onnx: onnx-graphsurgeon export failed: {err}") from None
    model.ir_version = IR_VERSION
    # initializers in the IR's constant order (then helper constants), so the text of the
    # graph read back lists its constants in the same order
    rank = {name: i for i, name in enumerate(graph.constants)}
    inits = sorted(model.graph.initializer, key=lambda t: rank.get(t.name, len(rank)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    for node in model.graph.node:
        node.metadata_props.add(key=LOC_KEY, value=e.locs.get(node.name, ""))
    if ir_batch.is_polymorphic(graph):
        model.metadata_props.add(key=BATCH_KEY, value=str(ir_batch.nominal_batch(graph)))
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as err:
            raise OnnxExportError(f"to_onnx: the exported model fails onnx.checker: "
                                  f"{str(err).strip().splitlines()[0]}") from None
    return model


def _write(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: a temp file in the same folder renamed into place."""
    external = model.ByteSize() >= EXTERNAL_DATA_THRESHOLD
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        data_name = f"{path.name}.data"
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name,
                            size_threshold=1024)
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, path.parent / data_name)
        else:
            tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def to_onnx(graph: Graph, path: str | Path, opset: int = 17, *,
            propagate_nan: bool = False) -> Path:
    """Write ``graph`` as an ONNX file that ONNX Runtime runs; returns the path.
    ``propagate_nan``: see ``export_model``.

    Raises ``OnnxExportError`` (an ``IRError``) when the graph cannot be exported or the file
    cannot be written; nothing is left behind in that case.
    """
    path = Path(path)
    model = export_model(graph, opset, propagate_nan=propagate_nan)
    if not path.parent.is_dir():
        raise OnnxExportError(f"to_onnx: cannot write {path}: folder {path.parent} does not "
                              f"exist")
    try:
        _write(model, path)
    except OSError as err:
        raise OnnxExportError(f"to_onnx: cannot write {path}: {err.strerror or err}") from None
    log.info("wrote %s (%d nodes, opset %d)", path, len(model.graph.node), opset)
    return path


# ============================================================================ onnxruntime
def default_threads() -> int:
    """The number of cores this process may run on (``backends.runtime.host_threads``)."""
    return host_threads()


class OnnxRuntimeSession:
    """An onnxruntime CPU session; ``session(inputs)`` returns the outputs as numpy arrays.

    ``model`` is a path, serialized bytes, a ``ModelProto`` or an IR ``Graph`` (exported at
    ``opset``). ``threads`` sets the intra-op thread pool (default: all usable cores);
    ``spinning`` lets its threads busy-wait for work (onnxruntime's default; off here, so
    that they leave the cores to other work between runs).
    It implements the runtime protocol of ``backends/runtime.py`` (``run`` / ``save`` /
    ``load``: one ``model.onnx``).
    """

    backend = "onnxruntime"
    runs_here = True
    FILE = "model.onnx"

    def __init__(self, model: str | Path | bytes | onnx.ModelProto | Graph, threads: int | None
                 = None, *, opset: int = 17, optimize: bool = True, spinning: bool = False):
        import onnxruntime as ort

        if isinstance(model, Graph):
            model = export_model(model, opset)
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        elif isinstance(model, Path):
            model = str(model)
        self._model: str | bytes = model  # a path keeps its external data files beside it
        self.threads = int(threads) if threads else default_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # no busy-waiting between runs unless asked (``spinning``, onnxruntime's own default):
        # spinning pool threads steal the cores from whatever runs next in this process
        # (PyTorch in a side-by-side benchmark, the next layer)
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if spinning else "0")
        so.log_severity_level = 3
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        try:
            self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise OnnxExportError(f"onnxruntime cannot load the model: "
                                  f"{str(err).strip().splitlines()[0]}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        """A tensor/array, a sequence of them (in input order) or a mapping by input name."""
        if isinstance(inputs, Mapping):
            missing = [n for n in self.inputs if n not in inputs]
            if missing:
                raise IRError(f"onnxruntime: missing inputs {missing}")
            items = [inputs[n] for n in self.inputs]
        elif isinstance(inputs, (np.ndarray,)) or hasattr(inputs, "detach"):
            items = [inputs]
        else:
            items = list(inputs)
        if len(items) != len(self.inputs):
            raise IRError(f"onnxruntime: the model takes {len(self.inputs)} inputs "
                          f"({', '.join(self.inputs)}), got {len(items)}")
        return {n: _numpy(x) for n, x in zip(self.inputs, items)}

    def run(self, inputs: Any) -> list[np.ndarray]:
        return list(self.session.run(None, self.feeds(inputs)))

    __call__ = run

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write the model as one ``model.onnx`` into ``directory`` (external data read in);
        returns its manifest entries."""
        data = self._model
        if isinstance(data, str):
            data = onnx.load(data).SerializeToString()
        (Path(directory) / self.FILE).write_bytes(data)
        return {"files": {"model": self.FILE}}

    @classmethod
    def load(cls, directory: str | Path, entry: Mapping[str, Any], inputs: Any = None,
             outputs: Any = None) -> OnnxRuntimeSession:
        """A session from ``save``'s file (``entry["threads"]``: its thread count)."""
        path = Path(directory) / entry["files"]["model"]
        if not path.is_file():
            raise IRError(f"{path}: no such file")
        return cls(path.read_bytes(), entry.get("threads"))


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if x.flags.c_contiguous else x.copy(order="C")


def run_onnxruntime(model: str | Path | bytes | onnx.ModelProto | Graph, inputs: Any,
                    threads: int | None = None) -> list[np.ndarray]:
    """Run ``model`` once in onnxruntime (see ``OnnxRuntimeSession``)."""
    return OnnxRuntimeSession(model, threads).run(inputs)


__all__ = ["EXPORTERS", "IR_VERSION", "OnnxExportError", "OnnxRuntimeSession", "export_model",
           "run_onnxruntime", "to_onnx"]
