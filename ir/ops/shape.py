"""Data-movement and reduction ops: reshape, flatten, permute, concat, split, slice, expand,
pad, tile, gather, gather_elements; mean, sum, max, min, cumsum.

``pad`` takes ONNX's layout: ``pads = [begin_0, …, begin_{r-1}, end_0, …, end_{r-1}]`` over
every dim (a negative pad crops, constant mode only). ``gather`` is numpy's ``take`` along
``axis`` with N-D indices (ONNX Gather, ``index_select``); ``gather_elements`` is
``torch.gather`` (ONNX GatherElements, ``take_along_dim``). Negative indices count from the
end, as in ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Attr, OpDef, register


def reshape(x, *, shape):
    return torch.reshape(x, shape)


def flatten(x, *, start_dim, end_dim):
    return torch.flatten(x, start_dim, end_dim)


def permute(x, *, perm):
    return torch.permute(x, perm)


def concat(*xs, axis):
    return torch.cat(xs, axis)


def split(x, *, axis, sizes):
    return tuple(torch.split(x, list(sizes), axis))


def slice_(x, *, axis, start, end, step):
    n = x.shape[axis]
    s, e = max(min(start, n), -n), max(min(end, n), -n)
    idx = [slice(None)] * x.dim()
    idx[axis] = slice(s, e, step)
    return x[tuple(idx)]


slice_.__name__ = "slice"


def expand(x, like=None, *, shape):
    if like is not None:  # a 0 takes like's size in that dim: the batch, read at run time
        shape = [like.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.expand(shape)


def mean(x, *, axes, keepdim):
    return torch.mean(x, axes, keepdim)


def sum_(x, *, axes, keepdim):
    return torch.sum(x, axes, keepdim)


sum_.__name__ = "sum"


def _reshape_check(ts, a):
    shape = a["shape"]
    if any(d < -1 for d in shape) or list(shape).count(-1) > 1:
        return f"shape {list(shape)} may hold one -1 (the dim that takes the rest) and no other " \
               f"negative size"
    known = 1
    for d in shape:
        known *= d if d != -1 else 1
    n = ts[0].numel
    if -1 in shape:
        return None if known and n % known == 0 else f"cannot reshape {ts[0]} to {list(shape)}"
    return None if known == n else f"cannot reshape {ts[0]} to {list(shape)}"


def _expand_check(ts, a):
    shape, r = a["shape"], ts[0].rank
    if len(shape) < r:
        return f"shape {list(shape)} has fewer dims than {ts[0]}"
    lead = len(shape) - r
    if any(d == -1 for d in shape[:lead]) or any(d < -1 for d in shape):
        return f"shape {list(shape)}: -1 (keep the dim) is allowed only for dims of {ts[0]}"
    if len(ts) > 1:
        like = ts[1]
        bad = [i for i, d in enumerate(shape) if d == 0 and i >= like.rank]
        if bad:
            return (f"shape {list(shape)}: the 0 in dim {bad[0]} takes that dim of like "
                    f"{like}, which it does not have")
    return None


def _split_check(ts, a):
    ax = a["axis"] % max(ts[0].rank, 1)
    if ts[0].rank == 0 or sum(a["sizes"]) != ts[0].shape[ax]:
        return f"sizes {list(a['sizes'])} do not add up to dim {a['axis']} of {ts[0]}"
    return None


def _concat_check(ts, a):
    if not ts:
        return "needs at least one operand"
    r = ts[0].rank
    ax = a["axis"] % max(r, 1)
    for t in ts[1:]:
        if t.rank != r or t.dtype != ts[0].dtype or any(
                d1 != d2 for i, (d1, d2) in enumerate(zip(t.shape, ts[0].shape)) if i != ax):
            return f"operands {', '.join(str(t) for t in ts)} do not match off axis {a['axis']}"
    return None


register(OpDef("reshape", ("x",), reshape, kind="shape", attrs={"shape": Attr("ints")},
               check_fn=_reshape_check,
               doc="reshape; one dim may be -1 (the rest: batch-relative shapes)."))
register(OpDef("flatten", ("x",), flatten, kind="shape",
               attrs={"start_dim": Attr("int", 1), "end_dim": Attr("int", -1)},
               doc="merge dims start_dim..end_dim."))
register(OpDef("permute", ("x",), permute, kind="shape", attrs={"perm": Attr("ints")},
               check_fn=lambda ts, a: (None if sorted(d % max(ts[0].rank, 1) for d in a["perm"])
                                       == list(range(ts[0].rank))
                                       else f"perm {list(a['perm'])} is not a permutation "
                                            f"of the {ts[0].rank} dims of {ts[0]}"),
               doc="permute dims (transpose is a permute)."))
register(OpDef("concat", ("*xs",), concat, kind="shape", attrs={"axis": Attr("int")},
               check_fn=_concat_check, doc="concatenate along axis."))
register(OpDef("split", ("x",), split, kind="shape",
               attrs={"axis": Attr("int"), "sizes": Attr("ints")},
               check_fn=_split_check, doc="split along axis into pieces of the given sizes."))
register(OpDef("slice", ("x",), slice_, kind="shape",
               attrs={"axis": Attr("int"), "start": Attr("int"), "end": Attr("int"),
                      "step": Attr("int", 1)},
               check_fn=lambda ts, a: (None if a["step"] > 0 and ts[0].rank > 0 else
                                       "step must be positive and the input not a scalar"),
               doc="x[start:end:step] along one axis (python clamping)."))
register(OpDef("expand", ("x", "like?"), expand, kind="shape", attrs={"shape": Attr("ints")},
               check_fn=_expand_check,
               doc="broadcast to shape (numpy rules); -1 keeps the input's dim; with like, "
                   "0 takes like's size in that dim (expand to the batch)."))
register(OpDef("mean", ("x",), mean, kind="reduce",
               attrs={"axes": Attr("ints"), "keepdim": Attr("bool", False)},
               flops_fn=lambda i, o, a: i[0].numel, doc="mean over axes."))
register(OpDef("sum", ("x",), sum_, kind="reduce",
               attrs={"axes": Attr("ints"), "keepdim": Attr("bool", False)},
               flops_fn=lambda i, o, a: i[0].numel, doc="sum over axes."))


def max_(x, *, axes, keepdim):
    return torch.amax(x, axes, keepdim)


max_.__name__ = "max"


def min_(x, *, axes, keepdim):
    return torch.amin(x, axes, keepdim)


min_.__name__ = "min"


def cumsum(x, *, axis):
    return torch.cumsum(x, axis)


register(OpDef("max", ("x",), max_, kind="reduce",
               attrs={"axes": Attr("ints"), "keepdim": Attr("bool", False)},
               flops_fn=lambda i, o, a: i[0].numel, doc="maximum over axes (values)."))
register(OpDef("min", ("x",), min_, kind="reduce",
               attrs={"axes": Attr("ints"), "keepdim": Attr("bool", False)},
               flops_fn=lambda i, o, a: i[0].numel, doc="minimum over axes (values)."))
register(OpDef("cumsum", ("x",), cumsum, kind="reduce", attrs={"axis": Attr("int")},
               flops_fn=lambda i, o, a: i[0].numel,
               doc="inclusive prefix sum along axis (ints sum to i64, as torch)."))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "replicate"}


def pad(x, *, pads, mode, value):
    r = x.dim()
    if mode != "constant":  # torch pads only the trailing dims in these modes
        # torch pads k trailing dims of a (k+1)- or (k+2)-D tensor in these modes
        lead = min(next((d for d in range(r) if pads[d] or pads[r + d]), r), max(r - 2, 1))
        torch_pads = []
        for d in reversed(range(lead, r)):
            torch_pads += [pads[d], pads[r + d]]
        return F.pad(x, torch_pads, mode=_PAD_MODES[mode]) if torch_pads else x
    torch_pads = []
    for d in reversed(range(r)):
        torch_pads += [pads[d], pads[r + d]]
    return F.pad(x, torch_pads, mode="constant", value=value)


def _pad_check(ts, a):
    r, p = ts[0].rank, a["pads"]
    if len(p) != 2 * r:
        return f"pads {list(p)} must have 2 x rank = {2 * r} values (all begins, then all ends)"
    if a["mode"] not in _PAD_MODES:
        return f"mode {a['mode']!r} is not one of {sorted(_PAD_MODES)}"
    if a["mode"] != "constant":
        if min(p) < 0:
            return f"negative pads (cropping) only in constant mode, got {list(p)}"
        padded = [d for d in range(r) if p[d] or p[r + d]]
        if padded and (padded[0] < max(1, r - 3) or r > 5):
            return (f"{a['mode']} padding pads at most the last 3 dims and never the first, "
                    f"got {list(p)} for {ts[0]}")
        for d in padded:
            if a["mode"] == "reflect" and max(p[d], p[r + d]) >= ts[0].shape[d]:
                return f"reflect padding {p[d]}/{p[r + d]} must be smaller than dim {d} of {ts[0]}"
    return None


register(OpDef("pad", ("x",), pad, kind="shape",
               attrs={"pads": Attr("ints"), "mode": Attr("str", "constant"),
                      "value": Attr("float", 0.0)},
               check_fn=_pad_check,
               doc="pad every dim by pads[d] before and pads[rank + d] after; mode constant "
                   "(value), reflect (mirror without the edge) or replicate (edge)."))


def tile(x, *, repeats):
    return x.repeat(tuple(repeats))


register(OpDef("tile", ("x",), tile, kind="shape", attrs={"repeats": Attr("ints")},
               check_fn=lambda ts, a: (None if len(a["repeats"]) == ts[0].rank
                                       and min(a["repeats"], default=1) >= 1
                                       else f"repeats {list(a['repeats'])} must give a count "
                                            f">= 1 for each of the {ts[0].rank} dims"),
               doc="repeat the whole tensor repeats[d] times along each dim (ONNX Tile)."))


def _wrap(idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.where(idx < 0, idx + n, idx).long()


def gather(x, indices, *, axis):
    n = x.shape[axis]
    flat = torch.index_select(x, axis, _wrap(indices, n).reshape(-1))
    ax = axis % x.dim()
    return flat.reshape(tuple(x.shape[:ax]) + tuple(indices.shape) + tuple(x.shape[ax + 1:]))


def gather_elements(x, indices, *, axis):
    return torch.gather(x, axis, _wrap(indices, x.shape[axis]))


def _index_check(ts, a):
    x, i = ts
    if i.dtype not in ("i32", "i64"):
        return f"indices must be i32 or i64, got {i}"
    if x.rank == 0 or not -x.rank <= a["axis"] < x.rank:
        return f"axis {a['axis']} is out of range for {x}"
    return None


register(OpDef("gather", ("x", "indices"), gather, kind="shape", attrs={"axis": Attr("int", 0)},
               roles={"indices": "index"},
               check_fn=_index_check,
               doc="numpy take: out = x[..., indices, ...] at axis; out shape is "
                   "x.shape[:axis] + indices.shape + x.shape[axis+1:]."))
register(OpDef("gather_elements", ("x", "indices"), gather_elements, kind="shape",
               attrs={"axis": Attr("int", 0)}, roles={"indices": "index"},
               check_fn=lambda ts, a: _index_check(ts, a) or (
                   None if ts[1].rank == ts[0].rank
                   else f"indices {ts[1]} must have the rank of {ts[0]}"),
               doc="torch.gather: out[i][j] = x[indices[i][j]][j] (axis 0); out has the "
                   "indices' shape."))
