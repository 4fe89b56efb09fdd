"""Neural-network ops: convolutions (2-D, 3-D), linear, matmul, normalisations (incl. LRN),
pools (2-D, 3-D), embedding, scaled dot-product attention, upsampling.

1-D convolutions and pools are 2-D ones on an ``[N, C, 1, L]`` view (the frontends map
them; that is exact). ``scaled_dot_product_attention`` stays one op — softmax(q kᵀ · scale
+ mask) v — so head pruning sees an attention whole.
"""

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


# ---------------------------------------------------------------------------- 3-D
TRIPLE = "ints"


def conv3d(x, w, b=None, *, stride, padding, dilation, groups):
    return F.conv3d(x, w, b, stride, padding, dilation, groups)


def _conv3d_check(ts, a):
    x, w = ts[0], ts[1]
    if x.rank != 5 or w.rank != 5:
        return f"expects NCDHW input and OIDHW weight, got {x} and {w}"
    if any(len(a[k]) != 3 for k in ("stride", "padding", "dilation")):
        return "stride, padding and dilation take 3 values"
    g = a["groups"]
    if g < 1 or x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        return f"groups={g}: input channels {x.shape[1]} and weight {w} do not match"
    if len(ts) > 2 and ts[2].shape != (w.shape[0],):
        return f"bias {ts[2]} does not match {w.shape[0]} output channels"
    return None


register(OpDef(
    "conv3d", ("x", "weight", "bias?"), conv3d, kind="nn", roles=_WEIGHTS,
    attrs={"stride": Attr(TRIPLE, (1, 1, 1)), "padding": Attr(TRIPLE, (0, 0, 0)),
           "dilation": Attr(TRIPLE, (1, 1, 1)), "groups": Attr("int", 1)},
    macs_fn=lambda i, o, a: o[0].numel * _prod(i[1].shape[1:]),
    check_fn=_conv3d_check,
    doc="3-D convolution, NCDHW input, OIDHW weight, symmetric padding."))


def max_pool3d(x, *, kernel, stride, padding, dilation, ceil_mode):
    return F.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode)


def avg_pool3d(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool3d(x, kernel, stride, padding, ceil_mode, count_include_pad)


register(OpDef(
    "max_pool3d", ("x",), max_pool3d, kind="pool",
    attrs={"kernel": Attr(TRIPLE), "stride": Attr(TRIPLE), "padding": Attr(TRIPLE, (0, 0, 0)),
           "dilation": Attr(TRIPLE, (1, 1, 1)), "ceil_mode": Attr("bool", False)},
    flops_fn=lambda i, o, a: o[0].numel * _prod(a["kernel"]),
    doc="3-D max pooling (NCDHW)."))
register(OpDef(
    "avg_pool3d", ("x",), avg_pool3d, kind="pool",
    attrs={"kernel": Attr(TRIPLE), "stride": Attr(TRIPLE), "padding": Attr(TRIPLE, (0, 0, 0)),
           "ceil_mode": Attr("bool", False), "count_include_pad": Attr("bool", True)},
    flops_fn=lambda i, o, a: o[0].numel * _prod(a["kernel"]),
    doc="3-D average pooling (NCDHW)."))


# ---------------------------------------------------------------------------- LRN
def lrn(x, *, size, alpha, beta, bias):
    return F.local_response_norm(x, size, alpha, beta, bias)


register(OpDef(
    "lrn", ("x",), lrn, kind="norm",
    attrs={"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
           "bias": Attr("float", 1.0)},
    check_fn=lambda ts, a: (None if ts[0].rank >= 3 and a["size"] >= 1
                            else f"needs [N, C, ...] input and size >= 1, got {ts[0]}"),
    flops_fn=lambda i, o, a: o[0].numel * (a["size"] + 3),
    doc="local response normalisation across channels: x / (bias + alpha / size * "
        "sum of x^2 over size channels centred on c) ^ beta."))


# ---------------------------------------------------------------------------- attention
def scaled_dot_product_attention(q, k, v, mask=None, *, causal, scale):
    if causal and mask is not None:  # torch takes one or the other: combine them
        tri = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = mask & tri if mask.dtype == torch.bool else mask.masked_fill(~tri, float("-inf"))
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=k.shape[-3] != q.shape[-3])


def _sdpa_check(ts, a):
    q, k, v = ts[:3]
    if q.rank < 3 or k.rank != q.rank or v.rank != q.rank:
        return f"q, k, v must have the same rank >= 3 ([..., heads, seq, dim]), got {q}, {k}, {v}"
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        return f"q {q} and k {k} differ in head dim, or k and v {v} in length"
    if q.rank >= 3 and k.shape[-3] and q.shape[-3] % k.shape[-3]:
        return f"{q.shape[-3]} query heads are not a multiple of {k.shape[-3]} key/value heads"
    if len(ts) > 3 and ts[3].dtype != "bool" and ts[3].dtype != q.dtype:
        return f"mask {ts[3]} must be bool (keep) or additive in q's dtype {q.dtype}"
    return None


def _sdpa_macs(i, o, a):
    q, k, v = i[:3]
    batch = _prod(q.shape[:-2])
    return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


register(OpDef(
    "scaled_dot_product_attention", ("q", "k", "v", "mask?"), scaled_dot_product_attention,
    kind="nn", attrs={"causal": Attr("bool", False), "scale": Attr("float", None, optional=True)},
    roles={"mask": "constant"},
    check_fn=_sdpa_check, macs_fn=_sdpa_macs,
    flops_fn=lambda i, o, a: 3 * _prod(i[0].shape[:-1]) * i[1].shape[-2],
    doc="softmax(q @ k^T * scale + mask) @ v over [..., heads, seq, dim]; scale none = "
        "1/sqrt(dim); a bool mask keeps True; causal masks j > i; fewer k/v heads than q "
        "heads are shared by groups of q heads."))


# ---------------------------------------------------------------------------- upsample
_UPSAMPLE_MODES = ("nearest", "bilinear")


def upsample(x, *, size, mode, align_corners):
    return F.interpolate(x, size=tuple(size), mode=mode,
                         align_corners=align_corners if mode == "bilinear" else None)


register(OpDef(
    "upsample", ("x",), upsample, kind="other",
    attrs={"size": Attr("ints"), "mode": Attr("str", "nearest"),
           "align_corners": Attr("bool", False)},
    check_fn=lambda ts, a: (f"mode {a['mode']!r} is not one of {list(_UPSAMPLE_MODES)}"
                            if a["mode"] not in _UPSAMPLE_MODES else
                            None if ts[0].rank == 4 and len(a["size"]) == 2
                            else f"needs NCHW input and a 2-value size, got {ts[0]}"),
    flops_fn=lambda i, o, a: o[0].numel * (4 if a["mode"] == "bilinear" else 1),
    doc="resize the spatial dims of NCHW to size: nearest (torch's: floor of out * in / "
        "out) or bilinear (align_corners as torch)."))
