"""Neural-network ops: convolutions, linear, matmul, normalisations, pools, embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Attr, OpDef, register

PAIR = "ints"
_WEIGHTS = {"weight": "weight", "bias": "weight"}  # operand roles: see ir.ops.ROLES


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


# ---------------------------------------------------------------------------- conv
def conv2d(x, w, b=None, *, stride, padding, dilation, groups):
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def _conv_check(ts, a):
    x, w = ts[0], ts[1]
    if x.rank != 4 or w.rank != 4:
        return f"expects NCHW input and OIHW weight, got {x} and {w}"
    if any(len(a[k]) != 2 for k in ("stride", "padding", "dilation")):
        return "stride, padding and dilation take 2 values"
    g = a["groups"]
    if g < 1 or x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        return (f"groups={g}: input channels {x.shape[1]} and weight {w} do not match "
                f"(need C_in = weight.shape[1]*groups and C_out % groups == 0)")
    if len(ts) > 2 and ts[2].shape != (w.shape[0],):
        return f"bias {ts[2]} does not match {w.shape[0]} output channels"
    return None


register(OpDef(
    "conv2d", ("x", "weight", "bias?"), conv2d, kind="nn", roles=_WEIGHTS,
    attrs={"stride": Attr(PAIR, (1, 1)), "padding": Attr(PAIR, (0, 0)),
           "dilation": Attr(PAIR, (1, 1)), "groups": Attr("int", 1)},
    macs_fn=lambda i, o, a: o[0].numel * _prod(i[1].shape[1:]),
    check_fn=_conv_check,
    doc="2-D convolution, NCHW input, OIHW weight, symmetric padding."))


def conv_transpose2d(x, w, b=None, *, stride, padding, output_padding, dilation, groups):
    return F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)


def _convt_check(ts, a):
    x, w = ts[0], ts[1]
    if x.rank != 4 or w.rank != 4:
        return f"expects NCHW input and IOHW weight, got {x} and {w}"
    if x.shape[1] != w.shape[0] or w.shape[0] % a["groups"]:
        return f"groups={a['groups']}: input channels {x.shape[1]} and weight {w} do not match"
    return None


register(OpDef(
    "conv_transpose2d", ("x", "weight", "bias?"), conv_transpose2d, kind="nn",
    roles=_WEIGHTS,
    attrs={"stride": Attr(PAIR, (1, 1)), "padding": Attr(PAIR, (0, 0)),
           "output_padding": Attr(PAIR, (0, 0)), "dilation": Attr(PAIR, (1, 1)),
           "groups": Attr("int", 1)},
    macs_fn=lambda i, o, a: i[0].numel * _prod(i[1].shape[1:]),
    check_fn=_convt_check,
    doc="2-D transposed convolution, weight [C_in, C_out/groups, kh, kw]."))


# ---------------------------------------------------------------------------- dense
def linear(x, w, b=None):
    return F.linear(x, w, b)


def _linear_check(ts, a):
    x, w = ts[0], ts[1]
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        return f"input {x} does not match weight {w} (weight is [out_features, in_features])"
    if len(ts) > 2 and ts[2].shape != (w.shape[0],):
        return f"bias {ts[2]} does not match {w.shape[0]} output features"
    return None


register(OpDef(
    "linear", ("x", "weight", "bias?"), linear, kind="nn", roles=_WEIGHTS,
    macs_fn=lambda i, o, a: o[0].numel * i[1].shape[1], check_fn=_linear_check,
    doc="y = x @ weight.T + bias, weight [out_features, in_features]."))


def matmul(a, b):
    return torch.matmul(a, b)


register(OpDef(
    "matmul", ("a", "b"), matmul, kind="nn",
    macs_fn=lambda i, o, a: o[0].numel * (i[0].shape[-1] if i[0].rank else 1),
    doc="numpy-style matmul with batch broadcasting (covers bmm)."))


# ---------------------------------------------------------------------------- norms
def batch_norm(x, weight, bias, mean, var, *, eps):
    # written out (not F.batch_norm) so gradients reach every operand, running stats too
    scale = weight * torch.rsqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return x * scale.reshape(shape) + (bias - mean * scale).reshape(shape)


def _bn_check(ts, a):
    c = ts[0].shape[1] if ts[0].rank >= 2 else None
    for name, t in zip(("weight", "bias", "mean", "var"), ts[1:]):
        if t.shape != (c,):
            return f"{name} {t} does not match {c} channels of {ts[0]}"
    return None


register(OpDef(
    "batch_norm", ("x", "weight", "bias", "mean", "var"), batch_norm, kind="norm",
    roles={"weight": "weight", "bias": "weight", "mean": "statistic", "var": "statistic"},
    attrs={"eps": Attr("float", 1e-5)}, check_fn=_bn_check,
    flops_fn=lambda i, o, a: o[0].numel,
    doc="inference batch norm over dim 1 with running statistics."))


def layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


register(OpDef(
    "layer_norm", ("x", "weight?", "bias?"), layer_norm, kind="norm", roles=_WEIGHTS,
    attrs={"normalized_shape": Attr("ints"), "eps": Attr("float", 1e-5)},
    flops_fn=lambda i, o, a: o[0].numel,
    doc="layer norm over the trailing normalized_shape dims."))


def group_norm(x, weight=None, bias=None, *, num_groups, eps):
    return F.group_norm(x, num_groups, weight, bias, eps)


register(OpDef(
    "group_norm", ("x", "weight?", "bias?"), group_norm, kind="norm", roles=_WEIGHTS,
    attrs={"num_groups": Attr("int"), "eps": Attr("float", 1e-5)},
    check_fn=lambda ts, a: (None if ts[0].rank >= 2 and a["num_groups"] > 0
                            and ts[0].shape[1] % a["num_groups"] == 0
                            else f"{ts[0].shape[1] if ts[0].rank > 1 else '?'} channels "
                                 f"not divisible into {a['num_groups']} groups"),
    flops_fn=lambda i, o, a: o[0].numel,
    doc="group norm over dim 1."))


def softmax(x, *, axis):
    return torch.softmax(x, axis)


register(OpDef("softmax", ("x",), softmax, kind="reduce", attrs={"axis": Attr("int", -1)},
               flops_fn=lambda i, o, a: o[0].numel, doc="softmax along axis."))


def log_softmax(x, *, axis):
    return torch.log_softmax(x, axis)


register(OpDef("log_softmax", ("x",), log_softmax, kind="reduce",
               attrs={"axis": Attr("int", -1)}, flops_fn=lambda i, o, a: o[0].numel,
               doc="log-softmax along axis."))


# ---------------------------------------------------------------------------- pools
def max_pool2d(x, *, kernel, stride, padding, dilation, ceil_mode):
    return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)


register(OpDef(
    "max_pool2d", ("x",), max_pool2d, kind="pool",
    attrs={"kernel": Attr(PAIR), "stride": Attr(PAIR), "padding": Attr(PAIR, (0, 0)),
           "dilation": Attr(PAIR, (1, 1)), "ceil_mode": Attr("bool", False)},
    flops_fn=lambda i, o, a: o[0].numel * _prod(a["kernel"]),
    doc="2-D max pooling."))


def avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)


register(OpDef(
    "avg_pool2d", ("x",), avg_pool2d, kind="pool",
    attrs={"kernel": Attr(PAIR), "stride": Attr(PAIR), "padding": Attr(PAIR, (0, 0)),
           "ceil_mode": Attr("bool", False), "count_include_pad": Attr("bool", True)},
    flops_fn=lambda i, o, a: o[0].numel * _prod(a["kernel"]),
    doc="2-D average pooling."))


def adaptive_avg_pool2d(x, *, output_size):
    return F.adaptive_avg_pool2d(x, output_size)


register(OpDef(
    "adaptive_avg_pool2d", ("x",), adaptive_avg_pool2d, kind="pool",
    attrs={"output_size": Attr(PAIR)},
    flops_fn=lambda i, o, a: i[0].numel,
    doc="2-D adaptive average pooling to output_size."))


# ---------------------------------------------------------------------------- embedding
def embedding(indices, weight):
    return F.embedding(indices, weight)


register(OpDef(
    "embedding", ("indices", "weight"), embedding, kind="nn",
    roles={"indices": "index", "weight": "weight"},
    check_fn=lambda ts, a: (None if ts[0].dtype in ("i32", "i64") and ts[1].rank == 2
                            else f"needs integer indices and a 2-D table, got {ts[0]}, {ts[1]}"),
    doc="rows of weight [num_embeddings, dim] selected by integer indices."))
