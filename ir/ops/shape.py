"""Data-movement and reduction ops: reshape, flatten, permute, concat, split, slice, mean."""

from __future__ import annotations

import torch

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


def expand(x, *, shape):
    return x.expand(shape)


def mean(x, *, axes, keepdim):
    return torch.mean(x, axes, keepdim)


def sum_(x, *, axes, keepdim):
    return torch.sum(x, axes, keepdim)


sum_.__name__ = "sum"


def _reshape_check(ts, a):
    shape = a["shape"]
    if any(d < 0 for d in shape):
        return f"shape {list(shape)} must be fully static (no -1)"
    n = 1
    for d in shape:
        n *= d
    return None if n == ts[0].numel else f"cannot reshape {ts[0]} to {list(shape)}"


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
               check_fn=_reshape_check, doc="reshape to a static shape."))
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
register(OpDef("expand", ("x",), expand, kind="shape", attrs={"shape": Attr("ints")},
               doc="broadcast to a static shape (numpy rules)."))
register(OpDef("mean", ("x",), mean, kind="reduce",
               attrs={"axes": Attr("ints"), "keepdim": Attr("bool", False)},
               flops_fn=lambda i, o, a: i[0].numel, doc="mean over axes."))
register(OpDef("sum", ("x",), sum_, kind="reduce",
               attrs={"axes": Attr("ints"), "keepdim": Attr("bool", False)},
               flops_fn=lambda i, o, a: i[0].numel, doc="sum over axes."))
