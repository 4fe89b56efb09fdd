"""ONNX handlers: convolutions, Gemm / MatMul, normalisations, pools and reductions."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import Value
from .context import Ctx, const_of, conv_pads, f32, fused, maps, need_4d, pair2, transposed


# ---------------------------------------------------------------------------- conv, dense
@maps("Conv")
def _conv(c: Ctx, n: gs.Node) -> None:
    x, w = c.x(), c.v(n.inputs[1])
    need_4d(c, x)
    if w.type.rank != 4:
        c.fail(f"weight {w.type} is not OIHW")
    strides = pair2(n.attrs.get("strides"), 1, c, "strides")
    dil = pair2(n.attrs.get("dilations"), 1, c, "dilations")
    pads = conv_pads(c, x.shape[2:], w.shape[2:], strides, dil)
    b = c.inp(2)
    c.emit("conv2d", [x, w] + ([c.v(b)] if b is not None else []),
           {"stride": strides, "padding": pads, "dilation": dil,
            "groups": int(n.attrs.get("group", 1))}, out=n.outputs[0])


@maps("ConvTranspose")
def _conv_t(c: Ctx, n: gs.Node) -> None:
    x, w = c.x(), c.v(n.inputs[1])
    need_4d(c, x)
    if "output_shape" in n.attrs:
        c.fail("output_shape is not supported (give pads and output_padding)")
    if n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        c.fail(f"auto_pad={n.attrs['auto_pad']} is not supported")
    strides = pair2(n.attrs.get("strides"), 1, c, "strides")
    dil = pair2(n.attrs.get("dilations"), 1, c, "dilations")
    pads = conv_pads(c, x.shape[2:], w.shape[2:], strides, dil)
    b = c.inp(2)
    c.emit("conv_transpose2d", [x, w] + ([c.v(b)] if b is not None else []),
           {"stride": strides, "padding": pads, "dilation": dil,
            "output_padding": pair2(n.attrs.get("output_padding"), 0, c, "output_padding"),
            "groups": int(n.attrs.get("group", 1))}, out=n.outputs[0])


@maps("Gemm")
def _gemm(c: Ctx, n: gs.Node) -> None:
    b_t, c_t = n.inputs[1], c.inp(2)
    alpha, beta = f32(n.attrs.get("alpha", 1.0)), f32(n.attrs.get("beta", 1.0))
    ta, tb = int(n.attrs.get("transA", 0)), int(n.attrs.get("transB", 0))
    out = n.outputs[0]
    b_arr = const_of(b_t)
    linear = b_arr is not None and b_arr.ndim == 2
    n_out = (b_arr.shape[0] if tb else b_arr.shape[1]) if linear else None
    c_arr = const_of(c_t) if c_t is not None and beta != 0.0 else None
    bias_in_linear = linear and c_arr is not None and c_arr.shape in ((n_out,), (1, n_out))
    add_c = c_t is not None and beta != 0.0 and not bias_in_linear
    last_is_core = (linear or alpha == 1.0) and not add_c

    a = c.x()
    if ta:
        a = c.emit("permute", [a], {"perm": (1, 0)}, suffix="a_t")
    if linear:  # alpha goes into the weight, beta into the bias
        if alpha != 1.0:
            w = c.v(b_t, lambda arr: ((arr if tb else arr.T) * alpha).astype(arr.dtype),
                    "alpha")
        else:
            w = c.v(b_t) if tb else c.v(b_t, transposed, "T")
        ins = [a, w]
        if bias_in_linear:
            plain = beta == 1.0 and c_arr.shape == (n_out,)
            ins.append(c.v(c_t) if plain else
                       c.v(c_t, lambda arr: (arr * beta).astype(arr.dtype).reshape(-1), "bias"))
        y = c.emit("linear", ins, out=out if last_is_core else None, suffix="linear")
    else:
        b = c.v(b_t)
        if tb:
            b = c.emit("permute", [b], {"perm": (1, 0)}, suffix="b_t")
        y = c.emit("matmul", [a, b], out=out if last_is_core else None, suffix="matmul")
    if alpha != 1.0 and not linear:
        y = c.emit("mul", [y, c.scalar(alpha, y.dtype, "alpha")],
                   out=None if add_c else out, suffix="alpha")
    if add_c:
        cv = c.v(c_t)
        if beta != 1.0:
            cv = c.emit("mul", [cv, c.scalar(beta, cv.dtype, "beta")], suffix="beta")
        c.emit("add", [y, cv], out=out)


@maps("MatMul")
def _matmul(c: Ctx, n: gs.Node) -> None:
    c.emit("matmul", [c.x(), c.v(n.inputs[1])], out=n.outputs[0])


@fused("Linear")
def _linear(c: Ctx, n: gs.Node) -> None:
    """Made by the MatMul (+ Add) fusion: the weight is stored [in, out]."""
    ins = [c.x(), c.v(n.inputs[1], transposed, "T")]
    if len(n.inputs) > 2:
        ins.append(c.v(n.inputs[2]))
    c.emit("linear", ins, out=n.outputs[0])


# ---------------------------------------------------------------------------- norms
@maps("BatchNormalization")
def _batch_norm(c: Ctx, n: gs.Node) -> None:
    if int(n.attrs.get("training_mode", 0)):
        c.fail("training_mode=1 is not supported (export the model in eval mode)")
    for i in (1, 2):
        c.unused(i, "running statistics")
    c.emit("batch_norm", [c.v(t) for t in n.inputs[:5]],
           {"eps": f32(n.attrs.get("epsilon", 1e-5))}, out=n.outputs[0])


@maps("LayerNormalization")
def _layer_norm(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axis = c.axis(int(n.attrs.get("axis", -1)), x.type.rank)
    ns = x.shape[axis:]
    c.unused(1, "Mean")
    c.unused(2, "InvStdDev")
    ins = [x]
    for i, what in ((1, "scale"), (2, "bias")):
        t = c.inp(i)
        if t is None:
            continue
        arr = const_of(t)
        if arr is not None and arr.shape != ns:
            ins.append(c.v(t, lambda a: np.ascontiguousarray(np.broadcast_to(a, ns)), "full"))
        else:
            ins.append(c.v(t))
    if len(ins) == 1 and c.inp(2) is not None:
        c.fail("bias without scale")
    c.emit("layer_norm", ins, {"normalized_shape": ns,
                               "eps": f32(n.attrs.get("epsilon", 1e-5))}, out=n.outputs[0])


@maps("GroupNormalization")
def _group_norm(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    groups = int(n.attrs["num_groups"])
    channels = x.shape[1] if x.type.rank >= 2 else 0
    ins = [x]
    for i in (1, 2):
        t = c.inp(i)
        arr = const_of(t) if t is not None else None
        if c.opset < 21 and arr is not None and arr.shape == (groups,) and groups != channels:
            # GroupNormalization-18: one scale/bias per group; the IR has one per channel
            ins.append(c.v(t, lambda a: np.repeat(a, channels // groups), "per_channel"))
        elif c.opset < 21 and groups != channels:
            c.fail("GroupNormalization-18 with non-constant per-group scale/bias")
        else:
            ins.append(c.v(t))
    c.emit("group_norm", ins, {"num_groups": groups, "eps": f32(n.attrs.get("epsilon", 1e-5))},
           out=n.outputs[0])




# ---------------------------------------------------------------------------- pools, reduce
def _pool_attrs(c: Ctx, n: gs.Node, x: Value) -> dict[str, Any]:
    need_4d(c, x)
    kernel = pair2(n.attrs.get("kernel_shape"), 1, c, "kernel_shape")
    stride = pair2(n.attrs.get("strides"), 1, c, "strides")
    dil = pair2(n.attrs.get("dilations"), 1, c, "dilations")
    return {"kernel": kernel, "stride": stride,
            "padding": conv_pads(c, x.shape[2:], kernel, stride, dil),
            "ceil_mode": bool(int(n.attrs.get("ceil_mode", 0))), "dilation": dil}


@maps("MaxPool")
def _max_pool(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    c.unused(1, "Indices")
    c.emit("max_pool2d", [x], _pool_attrs(c, n, x), out=n.outputs[0])


@maps("AveragePool")
def _avg_pool(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    attrs = _pool_attrs(c, n, x)
    if attrs.pop("dilation") != (1, 1):
        c.fail("dilated average pooling is not supported")
    attrs["count_include_pad"] = bool(int(n.attrs.get("count_include_pad", 0)))
    c.emit("avg_pool2d", [x], attrs, out=n.outputs[0])


@maps("GlobalAveragePool")
def _global_avg_pool(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    need_4d(c, x)
    c.emit("adaptive_avg_pool2d", [x], {"output_size": (1, 1)}, out=n.outputs[0])


@maps("ReduceMean", "ReduceSum")
def _reduce(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axes = c.attr_or_input("axes", 1)
    if not axes:
        if int(n.attrs.get("noop_with_empty_axes", 0)):
            c.alias(n.outputs[0], x)
            return
        axes = list(range(x.type.rank))
    for a in axes:
        c.axis(a, x.type.rank)
    if len({a % x.type.rank for a in axes}) != len(axes):
        c.fail(f"axes {axes} repeat an axis")
    c.emit("mean" if n.op == "ReduceMean" else "sum", [x],
           {"axes": tuple(axes), "keepdim": bool(int(n.attrs.get("keepdims", 1)))},
           out=n.outputs[0])


