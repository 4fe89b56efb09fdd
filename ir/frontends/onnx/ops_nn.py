"""ONNX handlers: convolutions, Gemm / MatMul, normalisations, pools and reductions."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import Value
from .context import (
    Ctx,
    const_of,
    conv_pads,
    f32,
    fused,
    ints_n,
    maps,
    need_4d,
    pair2,
    spatial_pads,
    transposed,
)


# ---------------------------------------------------------------------------- conv, dense
def _spatial(c: Ctx, x: Value, what: str = "input") -> int:
    """The number of spatial dims (1-3) of an N, C, spatial... input."""
    nd = x.type.rank - 2
    if nd not in (1, 2, 3):
        c.fail(f"{what} {x.type}: only 1-D, 2-D and 3-D (N, C, spatial...) are supported")
    return nd


def _as_2d(c: Ctx, x: Value) -> Value:
    """A 1-D input [N, C, L] as [N, C, 1, L] (1-D convs and pools are 2-D ones, exactly)."""
    return c.emit("reshape", [x], {"shape": (x.shape[0], x.shape[1], 1, x.shape[2])},
                  suffix="as_2d")


def _pad_input(c: Ctx, x: Value, begins: tuple[int, ...], ends: tuple[int, ...],
               value: float = 0.0) -> Value:
    """Explicit padding of the spatial dims (asymmetric ``pads`` / ``auto_pad``)."""
    return c.emit("pad", [x], {"pads": (0, 0) + begins + (0, 0) + ends, "mode": "constant",
                               "value": value}, suffix="pad")


def _padding(c: Ctx, x: Value, begins, ends, value: float = 0.0) -> tuple[Value, tuple]:
    """The input and the symmetric padding attribute: asymmetric pads become a ``pad``."""
    if begins == ends:
        return x, tuple(begins)
    return _pad_input(c, x, tuple(begins), tuple(ends), value), (0,) * len(begins)


def _from_2d(c: Ctx, n: gs.Node, y: Value) -> None:
    c.emit("reshape", [y], {"shape": (y.shape[0], y.shape[1], y.shape[3])}, out=n.outputs[0])


@maps("Conv")
def _conv(c: Ctx, n: gs.Node) -> None:
    x, w_t = c.x(), n.inputs[1]
    nd = _spatial(c, x)
    w = c.v(w_t)
    if w.type.rank != nd + 2:
        c.fail(f"weight {w.type} does not match the {nd}-D input {x.type}")
    strides = ints_n(n.attrs.get("strides"), 1, nd, c, "strides")
    dil = ints_n(n.attrs.get("dilations"), 1, nd, c, "dilations")
    begins, ends = spatial_pads(c, x.shape[2:], w.shape[2:], strides, dil)
    b = c.inp(2)
    bias = [c.v(b)] if b is not None else []
    groups = int(n.attrs.get("group", 1))
    if nd == 1:  # [N, C, L] as [N, C, 1, L]
        x = _as_2d(c, x)
        if isinstance(w_t, gs.Constant):
            w = c.v(w_t, lambda a: np.ascontiguousarray(a[:, :, None, :]), "2d")
        else:
            w = c.emit("reshape", [w], {"shape": (w.shape[0], w.shape[1], 1, w.shape[2])},
                       suffix="weight_2d")
        strides, dil, begins, ends = (1,) + strides, (1,) + dil, (0,) + begins, (0,) + ends
    x, padding = _padding(c, x, begins, ends)
    attrs = {"stride": strides, "padding": padding, "dilation": dil, "groups": groups}
    if nd == 1:
        _from_2d(c, n, c.emit("conv2d", [x, w] + bias, attrs, suffix="conv2d"))
    else:
        c.emit("conv2d" if nd == 2 else "conv3d", [x, w] + bias, attrs, out=n.outputs[0])


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
def _pool(c: Ctx, n: gs.Node, op: str) -> None:
    """MaxPool / AveragePool in 1-D (as 2-D), 2-D and 3-D; asymmetric pads become a ``pad``
    (-inf for max, zeros for an average that counts the padding)."""
    x = c.x()
    nd = _spatial(c, x)
    kernel = ints_n(n.attrs.get("kernel_shape"), 1, nd, c, "kernel_shape")
    stride = ints_n(n.attrs.get("strides"), 1, nd, c, "strides")
    dil = ints_n(n.attrs.get("dilations"), 1, nd, c, "dilations")
    begins, ends = spatial_pads(c, x.shape[2:], kernel, stride, dil)
    ceil = bool(int(n.attrs.get("ceil_mode", 0)))
    count_pad = bool(int(n.attrs.get("count_include_pad", 0)))
    if nd == 1:
        x = _as_2d(c, x)
        kernel, stride, dil = (1,) + kernel, (1,) + stride, (1,) + dil
        begins, ends = (0,) + begins, (0,) + ends
    recount = None
    if begins != ends:
        if ceil:
            c.fail("asymmetric pads together with ceil_mode are not supported")
        if op == "avg" and not count_pad:  # the pad op's zeros must not count: rescale
            recount = _valid_counts(x.shape[2:], kernel, stride, begins, ends)
    x, padding = _padding(c, x, begins, ends, -np.inf if op == "max" else 0.0)
    attrs: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding,
                             "ceil_mode": ceil}
    if op == "max":
        attrs["dilation"] = dil
    elif any(d != 1 for d in dil):
        c.fail("dilated average pooling is not supported")
    else:
        attrs["count_include_pad"] = count_pad
    name = f"{op}_pool{3 if nd == 3 else 2}d"
    if recount is not None:  # window size / valid elements per output position
        y = c.emit(name, [x], attrs, suffix=name)
        scale = (np.prod(kernel) / recount).astype(np.float32).reshape((1, 1) + recount.shape)
        k = c.g.add_constant(scale, c.fresh(f"{n.outputs[0].name}_count_scale"))
        if nd == 1:
            _from_2d(c, n, c.emit("mul", [y, k], suffix="rescaled"))
        else:
            c.emit("mul", [y, k], out=n.outputs[0])
    elif nd == 1:
        _from_2d(c, n, c.emit(name, [x], attrs, suffix=name))
    else:
        c.emit(name, [x], attrs, out=n.outputs[0])


def _valid_counts(spatial, kernel, stride, begins, ends) -> np.ndarray:
    """How many input (not padding) elements each output window of a pool covers."""
    per_dim = []
    for size, k, s, b, e in zip(spatial, kernel, stride, begins, ends):
        n_out = (size + b + e - k) // s + 1
        start = np.arange(n_out) * s - b
        per_dim.append((np.minimum(start + k, size) - np.maximum(start, 0)).astype(np.float64))
    counts = per_dim[0]
    for d in per_dim[1:]:
        counts = np.multiply.outer(counts, d)
    return counts


@maps("MaxPool")
def _max_pool(c: Ctx, n: gs.Node) -> None:
    c.unused(1, "Indices")
    if int(n.attrs.get("storage_order", 0)):
        c.fail("storage_order=1 (column-major indices) is not supported")
    _pool(c, n, "max")


@maps("AveragePool")
def _avg_pool(c: Ctx, n: gs.Node) -> None:
    _pool(c, n, "avg")


@maps("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    nd = _spatial(c, x)
    if nd == 2 and n.op == "GlobalAveragePool":
        c.emit("adaptive_avg_pool2d", [x], {"output_size": (1, 1)}, out=n.outputs[0])
        return
    c.emit("mean" if n.op == "GlobalAveragePool" else "max", [x],
           {"axes": tuple(range(2, 2 + nd)), "keepdim": True}, out=n.outputs[0])


_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min"}


@maps(*_REDUCE)
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
    c.emit(_REDUCE[n.op], [x],
           {"axes": tuple(axes), "keepdim": bool(int(n.attrs.get("keepdims", 1)))},
           out=n.outputs[0])


# ---------------------------------------------------------------------------- LRN, resize
@maps("LRN")
def _lrn(c: Ctx, n: gs.Node) -> None:
    size = int(n.attrs["size"])
    if size % 2 == 0:
        c.fail(f"LRN with an even size ({size}) is not supported: ONNX centres the window one "
               f"channel later than torch's local_response_norm, the IR's reference")
    c.emit("lrn", [c.x()], {"size": size, "alpha": f32(n.attrs.get("alpha", 1e-4)),
                            "beta": f32(n.attrs.get("beta", 0.75)),
                            "bias": f32(n.attrs.get("bias", 1.0))}, out=n.outputs[0])


@maps("InstanceNormalization")
def _instance_norm(c: Ctx, n: gs.Node) -> None:
    """Instance norm is group norm with one group per channel."""
    x = c.x()
    if x.type.rank < 3:
        c.fail(f"needs [N, C, spatial...] input, got {x.type}")
    c.emit("group_norm", [x, c.v(n.inputs[1]), c.v(n.inputs[2])],
           {"num_groups": x.shape[1], "eps": f32(n.attrs.get("epsilon", 1e-5))},
           out=n.outputs[0])


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@maps("Resize", "Upsample")
def _resize(c: Ctx, n: gs.Node) -> None:
    """Resize of H, W in the modes torch has: nearest (asymmetric + floor) and linear
    (half_pixel / pytorch_half_pixel, or align_corners)."""
    x = c.x()
    a = n.attrs
    if x.type.rank != 4:
        c.fail(f"only NCHW resizing is supported, got {x.type}")
    out = n.outputs[0]
    if not (isinstance(out.shape, (list, tuple)) and all(isinstance(d, int) for d in out.shape)):
        c.fail("the output size is not static (sizes/scales must fold to constants)")
    size = tuple(int(d) for d in out.shape)
    if size[:2] != x.shape[:2]:
        c.fail(f"resizing the batch or channel dims ({x.type} -> {list(size)}) is not supported")
    mode = _str(a.get("mode", "nearest"))
    ctm = _str(a.get("coordinate_transformation_mode", "half_pixel" if n.op == "Resize"
                     else "asymmetric"))
    if n.op == "Upsample":
        ctm = "asymmetric"
    if mode == "nearest":
        nearest = _str(a.get("nearest_mode", "round_prefer_floor" if n.op == "Resize"
                             else "floor"))
        if n.op == "Upsample":
            nearest = "floor"
        integer = all(o % i == 0 for o, i in zip(size[2:], x.shape[2:]))
        # with an integer factor, asymmetric floor == half_pixel round (the same source pixel)
        if not ((ctm == "asymmetric" and nearest == "floor") or (integer and ctm in (
                "half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor",
                                                                    "round_prefer_ceil"))):
            c.fail(f"nearest resize with coordinate_transformation_mode={ctm!r} and "
                   f"nearest_mode={nearest!r} differs from torch's nearest")
        c.emit("upsample", [x], {"size": size[2:], "mode": "nearest"}, out=out)
    elif mode == "linear":
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            c.fail(f"linear resize with coordinate_transformation_mode={ctm!r} is not "
                   f"supported (half_pixel, pytorch_half_pixel, align_corners)")
        if ctm == "half_pixel" and 1 in size[2:]:
            c.fail("half_pixel linear resize to size 1 differs from torch's bilinear")
        c.emit("upsample", [x], {"size": size[2:], "mode": "bilinear",
                                 "align_corners": ctm == "align_corners"}, out=out)
    else:
        c.fail(f"resize mode {mode!r} is not supported (nearest, linear)")


@fused("Attention")
def _attention(c: Ctx, n: gs.Node) -> None:
    """Made by the attention fusion: q, k, v (and a bool or additive mask)."""
    c.emit("scaled_dot_product_attention", [c.v(t) for t in n.inputs],
           {"causal": bool(n.attrs["causal"]), "scale": n.attrs["scale"]}, out=n.outputs[0])
