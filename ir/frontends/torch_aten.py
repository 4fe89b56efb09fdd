"""More ATen handlers for the torch frontend (registered into ``torch.ATEN_MAP``): comparisons
and logic, ``where`` / ``masked_fill``, ``index`` / ``index_select`` / ``gather``, padding,
scaled dot-product attention, upsampling, 1-D and 3-D convolutions and pools, and the
activations and reductions Hugging Face models use.

What these ops compute from constants alone never reaches them: ``torch_fold`` folds it
first. What is left reads a graph input, and a few rewrites keep it small:
``x & <all true>`` is ``x``, ``where(<all true>, a, b)`` is ``a``, an ``index`` whose
constant indices select every element in order is a ``reshape``, and a constant causal mask
given to ``scaled_dot_product_attention`` becomes its ``causal`` flag.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..graph import Value
from ..types import dtype_from_torch
from .torch import ATEN_MAP, TraceError, _arg, _maps

aten = torch.ops.aten


def _const(v: Any) -> np.ndarray | None:
    return np.asarray(v.data) if isinstance(v, Value) and v.is_constant else None


def _to_shape(c, x: Value, shape: tuple[int, ...]) -> Value:
    """``x`` broadcast to ``shape`` (nothing when it already has it)."""
    if x.shape == tuple(shape):
        return x
    return c.emit("expand", [x], {"shape": tuple(shape)})


def _operand(c, x, like: Value) -> Value:
    return c.v(x) if isinstance(x, torch.fx.Node) else c.scalar(x, like)


def _pair_operands(c, a) -> tuple[Value, Value]:
    if isinstance(a[0], torch.fx.Node):
        x = c.v(a[0])
        return x, _operand(c, a[1], x)
    y = c.v(a[1])
    return _operand(c, a[0], y), y


# ---------------------------------------------------------------------------- compare, logic
_COMPARE = {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}
for _name, _op in _COMPARE.items():
    for _overload in ("Scalar", "Tensor"):
        ATEN_MAP[getattr(getattr(aten, _name), _overload)] = (
            lambda op: lambda c, a, k: c.emit(op, list(_pair_operands(c, a))))(_op)


def _logical(op: str, neutral: bool):
    """``and`` / ``or`` on bool tensors; with an operand that is the constant neutral element
    (all true for and, all false for or) the result is the other operand, broadcast."""

    def handler(c, a, k):
        x, y = _pair_operands(c, a)
        if x.dtype != "bool" or y.dtype != "bool":
            raise TraceError(f"{c.where()}: bitwise {op} on {x.type}, {y.type}: only bool "
                             f"tensors (logical {op}) are supported")
        out = c.out_shape()
        for keep, other in ((x, y), (y, x)):
            arr = _const(other)
            if arr is not None and bool(np.all(arr == neutral)):
                return _to_shape(c, keep, out)
        return c.emit(f"logical_{op}", [x, y])

    return handler


_maps(aten.__and__.Tensor, aten.bitwise_and.Tensor, aten.logical_and.default)(
    _logical("and", True))
_maps(aten.__or__.Tensor, aten.bitwise_or.Tensor, aten.logical_or.default)(
    _logical("or", False))


@_maps(aten.logical_not.default, aten.bitwise_not.default)
def _not(c, a, k):
    x = c.v(a[0])
    if x.dtype != "bool":
        raise TraceError(f"{c.where()}: bitwise not on {x.type}: only bool is supported")
    return c.emit("logical_not", [x])


def _where_out(c, cond: Value, x: Value, y: Value) -> Value:
    arr = _const(cond)
    if arr is not None and arr.all():
        return _to_shape(c, x, c.out_shape())
    if arr is not None and not arr.any():
        return _to_shape(c, y, c.out_shape())
    return c.emit("where", [cond, x, y])


@_maps(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where(c, a, k):
    cond = c.v(a[0])
    dtype = dtype_from_torch(c.node.meta["val"].dtype)
    like = next((c.v(t) for t in a[1:3] if isinstance(t, torch.fx.Node)), None)
    vals = []
    for t in a[1:3]:
        if isinstance(t, torch.fx.Node):
            vals.append(c.v(t))
        else:
            from ..types import to_numpy_dtype

            vals.append(c.g.add_constant(np.array(t, to_numpy_dtype(
                like.dtype if like is not None else dtype)), c.g.fresh_name(
                f"{c.node.name}_scalar")))
    return _where_out(c, cond, vals[0], vals[1])


@_maps(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(c, a, k):
    x, mask = c.v(a[0]), c.v(a[1])
    value = _operand(c, a[2], x)
    return _where_out(c, mask, value, x)


# ---------------------------------------------------------------------------- element-wise
def _unary(op: str, **attrs):
    return lambda c, a, k: c.emit(op, [c.v(a[0])], attrs)


for _t, _op in ((aten.abs.default, "abs"), (aten.log.default, "log"),
                (aten.rsqrt.default, "rsqrt"), (aten.selu.default, "selu"),
                (aten.selu_.default, "selu")):
    ATEN_MAP[_t] = _unary(_op)


@_maps(aten.reciprocal.default)
def _reciprocal(c, a, k):
    x = c.v(a[0])
    return c.emit("div", [c.scalar(1.0, x), x])


@_maps(aten.leaky_relu.default, aten.leaky_relu_.default)
def _leaky_relu(c, a, k):
    return c.emit("leaky_relu", [c.v(a[0])],
                  {"negative_slope": float(_arg(a, k, 1, "negative_slope", 0.01))})


@_maps(aten.elu.default, aten.elu_.default)
def _elu(c, a, k):
    if _arg(a, k, 2, "scale", 1) != 1 or _arg(a, k, 3, "input_scale", 1) != 1:
        raise TraceError(f"{c.where()}: elu with scale or input_scale is not supported")
    return c.emit("elu", [c.v(a[0])], {"alpha": float(_arg(a, k, 1, "alpha", 1.0))})


@_maps(aten.softplus.default)
def _softplus(c, a, k):
    return c.emit("softplus", [c.v(a[0])], {"beta": float(_arg(a, k, 1, "beta", 1.0)),
                                           "threshold": float(_arg(a, k, 2, "threshold", 20.0))})


@_maps(aten.prelu.default, aten._prelu_kernel.default)
def _prelu(c, a, k):
    x, w = c.v(a[0]), c.v(a[1])
    if w.type.numel > 1 and x.type.rank >= 2:  # one slope per channel (dim 1)
        w = c.emit("reshape", [w], {"shape": (w.type.numel,) + (1,) * (x.type.rank - 2)},
                   name=f"{c.node.name}_slope")
    return c.emit("prelu", [x, w])


@_maps(aten.maximum.default, aten.max.other, aten.minimum.default, aten.min.other)
def _max_min(c, a, k):
    op = "maximum" if c.node.target in (aten.maximum.default, aten.max.other) else "minimum"
    return c.emit(op, list(_pair_operands(c, a)))


@_maps(aten.clamp_min.default, aten.clamp_max.default)
def _clamp_one_side(c, a, k):
    x = c.v(a[0])
    op = "maximum" if c.node.target == aten.clamp_min.default else "minimum"
    return c.emit(op, [x, _operand(c, a[1], x)])


# ---------------------------------------------------------------------------- reductions
def _dims(x: Value, dims) -> tuple[int, ...]:
    if dims is None or dims == []:
        return tuple(range(x.type.rank))
    return tuple(int(d) for d in ([dims] if isinstance(dims, int) else dims))


@_maps(aten.amax.default, aten.amin.default)
def _amax(c, a, k):
    x = c.v(a[0])
    return c.emit("max" if c.node.target == aten.amax.default else "min", [x], {
        "axes": _dims(x, _arg(a, k, 1, "dim")), "keepdim": bool(_arg(a, k, 2, "keepdim", False))})


@_maps(aten.max.dim, aten.min.dim)
def _max_dim(c, a, k):
    x = c.v(a[0])
    values = c.emit("max" if c.node.target == aten.max.dim else "min", [x], {
        "axes": (int(a[1]),), "keepdim": bool(_arg(a, k, 2, "keepdim", False))})
    return (values, None)  # the indices are not computed (an error if they are used)


@_maps(aten.cumsum.default)
def _cumsum(c, a, k):
    x = c.v(a[0])
    y = c.emit("cumsum", [x], {"axis": int(a[1])}, name=f"{c.node.name}_cumsum")
    want = dtype_from_torch(c.node.meta["val"].dtype)
    return y if y.dtype == want else c.emit("cast", [y], {"dtype": want})


@_maps(aten.type_as.default, aten.to.device, aten.to.dtype_layout, aten.to.other)
def _cast_to(c, a, k):
    x = c.v(a[0])
    want = dtype_from_torch(c.node.meta["val"].dtype)
    return x if want == x.dtype else c.emit("cast", [x], {"dtype": want})


# ---------------------------------------------------------------------------- indexing
@_maps(aten.index_select.default)
def _index_select(c, a, k):
    x, dim, idx = c.v(a[0]), int(a[1]), c.v(a[2])
    return c.emit("gather", [x, idx], {"axis": dim % x.type.rank})


@_maps(aten.gather.default)
def _gather(c, a, k):
    x, dim, idx = c.v(a[0]), int(a[1]), c.v(a[2])
    return c.emit("gather_elements", [x, idx], {"axis": dim % x.type.rank})


@_maps(aten.index.Tensor)
def _index(c, a, k):
    """Advanced indexing ``x[i0, i1, …]`` (None = a full slice). One computed index tensor
    is a ``gather``; constant indices become one ``gather`` over the indexed dims flattened
    (or a ``reshape`` when they select every element in order)."""
    x = c.v(a[0])
    idx = list(a[1]) + [None] * (x.type.rank - len(a[1]))
    dims = [d for d, t in enumerate(idx) if t is not None]
    vals = {d: c.v(idx[d]) for d in dims}
    if any(v.dtype == "bool" for v in vals.values()):
        raise TraceError(f"{c.where()}: indexing with a bool mask has a data-dependent shape")
    out = c.out_shape()
    consecutive = dims == list(range(dims[0], dims[-1] + 1))
    if len(dims) == 1:
        return c.emit("gather", [x, vals[dims[0]]], {"axis": dims[0]})
    arrays = {d: _const(v) for d, v in vals.items()}
    if any(arr is None for arr in arrays.values()):
        raise TraceError(f"{c.where()}: indexing with several index tensors is supported when "
                         f"they are constants (or with one computed index tensor)")
    if not consecutive:  # torch puts the broadcast index dims first: move the indexed dims there
        perm = dims + [d for d in range(x.type.rank) if d not in dims]
        x = c.emit("permute", [x], {"perm": tuple(perm)}, name=f"{c.node.name}_perm")
        arrays = {i: arrays[d] for i, d in enumerate(dims)}
        dims = list(range(len(dims)))
    sizes = [x.shape[d] for d in dims]
    bcast = np.broadcast_arrays(*[np.where(arrays[d] < 0, arrays[d] + n, arrays[d])
                                  for d, n in zip(dims, sizes)])
    flat = np.ravel_multi_index(tuple(b.astype(np.int64) for b in bcast), sizes)
    d0, d1 = dims[0], dims[-1] + 1
    merged = x.shape[:d0] + (math.prod(sizes),) + x.shape[d1:]
    if flat.size == math.prod(sizes) and np.array_equal(flat.reshape(-1), np.arange(flat.size)):
        return x if out == x.shape else c.emit("reshape", [x], {"shape": out})
    xm = x if merged == x.shape else c.emit("reshape", [x], {"shape": merged},
                                            name=f"{c.node.name}_merged")
    ids = c.g.add_constant(np.ascontiguousarray(flat.astype(np.int64)),
                           c.g.fresh_name(f"{c.node.name}_indices"))
    return c.emit("gather", [xm, ids], {"axis": d0})


@_maps(aten.repeat.default)
def _repeat(c, a, k):
    x = c.v(a[0])
    reps = [int(r) for r in a[1]]
    if len(reps) > x.type.rank:
        x = c.emit("reshape", [x], {"shape": (1,) * (len(reps) - x.type.rank) + x.shape},
                   name=f"{c.node.name}_rank")
    return x if all(r == 1 for r in reps) else c.emit("tile", [x], {"repeats": tuple(reps)})


@_maps(aten.roll.default)
def _roll(c, a, k):
    x = c.v(a[0])
    shifts = [int(s) for s in ([a[1]] if isinstance(a[1], int) else a[1])]
    dims = _arg(a, k, 2, "dims", [])
    dims = [int(d) for d in ([dims] if isinstance(dims, int) else dims)]
    if len(dims) != len(shifts):
        raise TraceError(f"{c.where()}: roll over the flattened tensor is not supported")
    for i, (s, d) in enumerate(zip(shifts, dims)):
        n = x.shape[d]
        s %= n
        if not s:
            continue
        tail = c.emit("slice", [x], {"axis": d, "start": n - s, "end": n, "step": 1},
                      name=f"{c.node.name}_tail{i}")
        head = c.emit("slice", [x], {"axis": d, "start": 0, "end": n - s, "step": 1},
                      name=f"{c.node.name}_head{i}")
        x = c.emit("concat", [tail, head], {"axis": d})
    return x


@_maps(aten.stack.default)
def _stack(c, a, k):
    xs = [c.v(t) for t in a[0]]
    dim = int(_arg(a, k, 1, "dim", 0)) % (xs[0].type.rank + 1)
    shape = xs[0].shape[:dim] + (1,) + xs[0].shape[dim:]
    parts = [c.emit("reshape", [x], {"shape": shape}, name=f"{c.node.name}_{i}")
             for i, x in enumerate(xs)]
    return c.emit("concat", parts, {"axis": dim})


@_maps(aten.unflatten.int)
def _unflatten(c, a, k):
    return c.emit("reshape", [c.v(a[0])], {"shape": c.out_shape()})


# ---------------------------------------------------------------------------- padding
def _onnx_pads(rank: int, torch_pads) -> tuple[int, ...]:
    """torch's (last dim first: begin, end, …) → the IR's all begins then all ends."""
    pads = [0] * (2 * rank)
    for i in range(len(torch_pads) // 2):
        d = rank - 1 - i
        pads[d], pads[rank + d] = int(torch_pads[2 * i]), int(torch_pads[2 * i + 1])
    return tuple(pads)


@_maps(aten.pad.default, aten.constant_pad_nd.default)
def _pad(c, a, k):
    x = c.v(a[0])
    if c.node.target == aten.pad.default:
        mode = _arg(a, k, 2, "mode", "constant")
        value = _arg(a, k, 3, "value", None)
    else:
        mode, value = "constant", _arg(a, k, 2, "value", 0)
    if mode not in ("constant", "reflect", "replicate"):
        raise TraceError(f"{c.where()}: pad mode {mode!r} is not supported (constant, reflect, "
                         f"replicate)")
    pads = _onnx_pads(x.type.rank, a[1])
    if not any(pads):
        return x
    return c.emit("pad", [x], {"pads": pads, "mode": mode,
                               "value": float(value) if value is not None else 0.0})


for _t, _mode in ((aten.reflection_pad1d.default, "reflect"),
                  (aten.reflection_pad2d.default, "reflect"),
                  (aten.reflection_pad3d.default, "reflect"),
                  (aten.replication_pad1d.default, "replicate"),
                  (aten.replication_pad2d.default, "replicate"),
                  (aten.replication_pad3d.default, "replicate")):
    ATEN_MAP[_t] = (lambda mode: lambda c, a, k: c.emit("pad", [c.v(a[0])], {
        "pads": _onnx_pads(c.v(a[0]).type.rank, a[1]), "mode": mode}))(_mode)


# ---------------------------------------------------------------------------- attention
def _causal(mask: np.ndarray, L: int, S: int) -> bool:
    """Whether a constant mask (bool keep, or additive 0 / -inf) is exactly the causal one."""
    tri = np.tril(np.ones((L, S), bool))
    keep = mask if mask.dtype == bool else (mask == 0)
    if mask.dtype != bool and not np.all((mask == 0) | np.isneginf(mask)):
        return False
    return bool(np.all(np.broadcast_to(keep, keep.shape[:-2] + (L, S)) == tri))


@_maps(aten.scaled_dot_product_attention.default)
def _sdpa(c, a, k):
    q, key, v = c.v(a[0]), c.v(a[1]), c.v(a[2])
    mask = _arg(a, k, 3, "attn_mask")
    if float(_arg(a, k, 4, "dropout_p", 0.0)) != 0.0:
        raise TraceError(f"{c.where()}: attention dropout is training-only (call model.eval())")
    causal = bool(_arg(a, k, 5, "is_causal", False))
    scale = _arg(a, k, 6, "scale")
    attrs = {"causal": causal, "scale": None if scale is None else float(scale)}
    ins = [q, key, v]
    if mask is not None:
        m = c.v(mask)
        if m.producer is not None and m.producer.op == "expand":  # the op broadcasts itself
            m = m.producer.inputs[0]
        arr = _const(m)
        L, S = q.shape[-2], key.shape[-2]
        if arr is not None and (arr.all() if arr.dtype == bool else not arr.any()):
            pass  # keeps everything: no mask
        elif arr is not None and not causal and _causal(arr, L, S):
            attrs["causal"] = True
        else:
            ins.append(m)
    return c.emit("scaled_dot_product_attention", ins, attrs)


# ---------------------------------------------------------------------------- upsample
def _check_scales(c, x: Value, out: tuple[int, ...], scales) -> None:
    """torch computes source pixels from a given scale factor, the IR from the sizes: the two
    agree when the factor is exactly out / in."""
    if not scales:
        return
    for s, n, m in zip(scales, x.shape[2:], out[2:]):
        if s is not None and float(s) != m / n:
            raise TraceError(f"{c.where()}: scale_factor {s} is not output / input size "
                             f"({m}/{n}); give size= instead (or recompute_scale_factor=True)")


@_maps(aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
def _upsample_bilinear(c, a, k):
    x = c.v(a[0])
    out = c.out_shape()
    if c.node.target == aten.upsample_bilinear2d.vec:
        _check_scales(c, x, out, _arg(a, k, 3, "scale_factors"))
    else:
        _check_scales(c, x, out, [_arg(a, k, 3, "scales_h"), _arg(a, k, 4, "scales_w")])
    return c.emit("upsample", [x], {"size": out[2:], "mode": "bilinear",
                                    "align_corners": bool(_arg(a, k, 2, "align_corners"))})


@_maps(aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
def _upsample_nearest(c, a, k):
    x = c.v(a[0])
    out = c.out_shape()
    if c.node.target == aten.upsample_nearest2d.vec:
        _check_scales(c, x, out, _arg(a, k, 2, "scale_factors"))
    else:
        _check_scales(c, x, out, [_arg(a, k, 2, "scales_h"), _arg(a, k, 3, "scales_w")])
    return c.emit("upsample", [x], {"size": out[2:], "mode": "nearest"})


# ---------------------------------------------------------------------------- 1-D, 3-D
def _tuple(x, n: int) -> tuple[int, ...]:
    if isinstance(x, int):
        return (x,) * n
    x = tuple(int(i) for i in x)
    return x * n if len(x) == 1 else x


def _as_2d(c, x: Value) -> Value:
    n, ch, length = x.shape
    return c.emit("reshape", [x], {"shape": (n, ch, 1, length)}, name=f"{c.node.name}_2d")


def _from_2d(c, y: Value) -> Value:
    return c.emit("reshape", [y], {"shape": c.out_shape()})


@_maps(aten.conv1d.default)
def _conv1d(c, a, k):
    x, w = c.v(a[0]), c.v(a[1])
    b = _arg(a, k, 2, "bias")
    pad = _arg(a, k, 4, "padding", 0)
    if isinstance(pad, str):
        raise TraceError(f"{c.where()}: conv1d padding={pad!r} is not supported (give ints)")
    w2 = c.emit("reshape", [w], {"shape": (w.shape[0], w.shape[1], 1, w.shape[2])},
                name=f"{c.node.name}_weight_2d")
    y = c.emit("conv2d", [_as_2d(c, x), w2] + ([c.v(b)] if b is not None else []), {
        "stride": (1,) + _tuple(_arg(a, k, 3, "stride", 1), 1),
        "padding": (0,) + _tuple(pad, 1),
        "dilation": (1,) + _tuple(_arg(a, k, 5, "dilation", 1), 1),
        "groups": int(_arg(a, k, 6, "groups", 1))}, name=f"{c.node.name}_conv2d")
    return _from_2d(c, y)


@_maps(aten.conv3d.default)
def _conv3d(c, a, k):
    b = _arg(a, k, 2, "bias")
    pad = _arg(a, k, 4, "padding", 0)
    if isinstance(pad, str):
        raise TraceError(f"{c.where()}: conv3d padding={pad!r} is not supported (give ints)")
    return c.emit("conv3d", [c.v(a[0]), c.v(a[1])] + ([c.v(b)] if b is not None else []), {
        "stride": _tuple(_arg(a, k, 3, "stride", 1), 3), "padding": _tuple(pad, 3),
        "dilation": _tuple(_arg(a, k, 5, "dilation", 1), 3),
        "groups": int(_arg(a, k, 6, "groups", 1))})


def _pool_args(a, k, n: int):
    kernel = _tuple(a[1], n)
    stride = _arg(a, k, 2, "stride", None)
    return kernel, (kernel if not stride else _tuple(stride, n)), _tuple(
        _arg(a, k, 3, "padding", 0), n)


@_maps(aten.max_pool1d.default, aten.max_pool3d.default,
       aten.max_pool3d_with_indices.default)
def _max_pool(c, a, k):
    x = c.v(a[0])
    n = x.type.rank - 2
    kernel, stride, padding = _pool_args(a, k, n)
    attrs = {"kernel": kernel, "stride": stride, "padding": padding,
             "dilation": _tuple(_arg(a, k, 4, "dilation", 1), n),
             "ceil_mode": bool(_arg(a, k, 5, "ceil_mode", False))}
    if n == 1:
        attrs = {key: (1 if key != "padding" else 0,) + val if isinstance(val, tuple) else val
                 for key, val in attrs.items()}
        y = _from_2d(c, c.emit("max_pool2d", [_as_2d(c, x)], attrs, name=f"{c.node.name}_2d_pool"))
    else:
        y = c.emit("max_pool3d", [x], attrs)
    return (y, None) if c.node.target == aten.max_pool3d_with_indices.default else y


@_maps(aten.avg_pool1d.default, aten.avg_pool3d.default)
def _avg_pool(c, a, k):
    x = c.v(a[0])
    n = x.type.rank - 2
    kernel, stride, padding = _pool_args(a, k, n)
    if n == 3 and _arg(a, k, 6, "divisor_override") is not None:
        raise TraceError(f"{c.where()}: avg_pool3d divisor_override is not supported")
    attrs = {"kernel": kernel, "stride": stride, "padding": padding,
             "ceil_mode": bool(_arg(a, k, 4, "ceil_mode", False)),
             "count_include_pad": bool(_arg(a, k, 5, "count_include_pad", True))}
    if n == 1:
        attrs = {key: (1 if key != "padding" else 0,) + val if isinstance(val, tuple) else val
                 for key, val in attrs.items()}
        return _from_2d(c, c.emit("avg_pool2d", [_as_2d(c, x)], attrs,
                                  name=f"{c.node.name}_2d_pool"))
    return c.emit("avg_pool3d", [x], attrs)


@_maps(aten.adaptive_avg_pool1d.default)
def _adaptive_avg_pool1d(c, a, k):
    x = c.v(a[0])
    size = _tuple(a[1], 1)[0]
    if size == 1:
        return c.emit("mean", [x], {"axes": (2,), "keepdim": True})
    y = c.emit("adaptive_avg_pool2d", [_as_2d(c, x)], {"output_size": (1, size)},
               name=f"{c.node.name}_2d_pool")
    return _from_2d(c, y)


# ---------------------------------------------------------------------------- more compute
@_maps(aten.baddbmm.default)
def _baddbmm(c, a, k):
    """beta * input + alpha * (batch1 @ batch2)."""
    inp, b1, b2 = c.v(a[0]), c.v(a[1]), c.v(a[2])
    beta, alpha = _arg(a, k, 3, "beta", 1), _arg(a, k, 4, "alpha", 1)
    y = c.emit("matmul", [b1, b2], name=f"{c.node.name}_mm")
    if alpha != 1:
        y = c.emit("mul", [y, c.scalar(alpha, y)], name=f"{c.node.name}_alpha")
    if beta == 0:
        return y
    if beta != 1:
        inp = c.emit("mul", [inp, c.scalar(beta, inp)], name=f"{c.node.name}_beta")
    return c.emit("add", [y, inp])


@_maps(aten.reshape_as.default, aten.view_as.default)
def _reshape_as(c, a, k):
    x = c.v(a[0])
    out = c.out_shape()
    return x if out == x.shape else c.emit("reshape", [x], {"shape": out})


def _l2_norm(c, x: Value, axes: tuple[int, ...], keepdim: bool, tag: str) -> Value:
    sq = c.emit("mul", [x, x], name=f"{c.node.name}_{tag}_sq")
    s = c.emit("sum", [sq], {"axes": axes, "keepdim": keepdim}, name=f"{c.node.name}_{tag}_sum")
    return c.emit("sqrt", [s], name=f"{c.node.name}_{tag}" if tag != "out" else None)


@_maps(aten.linalg_vector_norm.default)
def _vector_norm(c, a, k):
    x = c.v(a[0])
    if float(_arg(a, k, 1, "ord", 2)) != 2.0 or _arg(a, k, 4, "dtype") is not None:
        raise TraceError(f"{c.where()}: only the 2-norm is supported")
    return _l2_norm(c, x, _dims(x, _arg(a, k, 2, "dim")), bool(_arg(a, k, 3, "keepdim", False)),
                    "out")


@_maps(aten._weight_norm.default)
def _weight_norm(c, a, k):
    """Weight normalisation, g * v / ||v|| (the norm over every dim but ``dim``), as IR ops on
    the two parameters (they stay trainable)."""
    v, g = c.v(a[0]), c.v(a[1])
    dim = int(_arg(a, k, 2, "dim", 0))
    axes = tuple(d for d in range(v.type.rank) if d != dim % v.type.rank) if dim != -1 \
        else tuple(range(v.type.rank))
    norm = _l2_norm(c, v, axes, True, "norm")
    unit = c.emit("div", [v, norm], name=f"{c.node.name}_unit")
    return c.emit("mul", [unit, g])


@_maps(aten.take_along_dim.default)
def _take_along_dim(c, a, k):
    """``torch.take_along_dim(x, indices, dim)``: x and the indices broadcast against each
    other except along ``dim``, then ``gather_elements``."""
    x, idx = c.v(a[0]), c.v(a[1])
    dim = _arg(a, k, 2, "dim")
    if dim is None:
        raise TraceError(f"{c.where()}: take_along_dim without dim (over the flattened tensor) "
                         f"is not supported")
    d = int(dim) % x.type.rank
    if x.type.rank != idx.type.rank:
        raise TraceError(f"{c.where()}: take_along_dim needs indices of the input's rank")
    shape = [max(a_, b_) for a_, b_ in zip(x.shape, idx.shape)]
    xs = tuple(x.shape[i] if i == d else shape[i] for i in range(x.type.rank))
    ids = tuple(idx.shape[i] if i == d else shape[i] for i in range(x.type.rank))
    return c.emit("gather_elements", [_to_shape(c, x, xs), _to_shape(c, idx, ids)], {"axis": d})
