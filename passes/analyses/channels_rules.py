"""Channel coupling rules: one entry per op of the op table, read by ``analyses.channels``.

An op's rule says, for every axis of every operand and result, how its elements relate:

* ``c.same(a, ax, b, bx)`` — element ``i`` of ``a`` along ``ax`` is element ``i`` of ``b``
  along ``bx`` (an activation, BN, a residual add, a conv's output channel and its weight
  row): removed together, and the op still computes every element that is left;
* ``c.pairs(a, ax, ai, b, bx, bi)`` — the same for explicit index pairs (concat, split,
  slice offsets; flatten / reshape / depthwise block maps; grouped-conv local indices);
* ``c.sink(k, ax)`` — operand ``k`` is *summed* over this axis here (a conv's or linear's
  input channels, a matmul contraction, ``sum``): dropping an element is exactly feeding
  it zeros. The test oracle and the Taylor / APoZ criteria work at these edges;
* ``c.freeze(v, ax, reason)`` — never removable (a softmax or layer-norm axis, a mean over
  channels, a convolution window, a view that regroups axes, …), with the reason shown;
* ``c.free(v, ax)`` — removable with nothing else (an expanded axis);
* ``c.role(v, ax, role)`` — what a constant's axis is, for the importance criteria:
  ``"out"`` (a filter / weight row), ``"in"`` (a weight column), ``"bias"``, ``"bn"`` (a
  normalization's scale).

An axis a rule does not mention is frozen ("the rule does not cover it"), and an op without
a rule freezes all its axes: a new op is never pruned through by assumption. The test
``test_every_op_has_a_channel_rule`` fails when an op of the op table has no entry.

A rule's optional ``resize(node, new)`` gives the attributes the node needs once its
operands and results have the new shapes (``reshape``'s shape, ``split``'s sizes, a
depthwise conv's groups, …). ``new`` maps a value to its new shape; ``new.removed(v, ax)``
is the sorted array of removed indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...ir.graph import Node

__all__ = ["RULES", "ChannelRule"]


@dataclass(frozen=True)
class ChannelRule:
    couple: Callable[[Any], None]
    resize: Callable[[Node, Any], dict[str, Any]] | None = None


RULES: dict[str, ChannelRule] = {}


def _rule(*ops: str, resize=None):
    def deco(fn):
        for op in ops:
            RULES[op] = ChannelRule(fn, resize)
        return fn

    return deco


def _ax(axis: int, rank: int) -> int:
    return axis % rank if rank else 0


def _same_all(c, a, b) -> None:
    for ax in range(a.type.rank):
        c.same(a, ax, b, ax)


def _broadcast(c, x, out) -> None:
    """``x`` broadcast to ``out`` (numpy rules): equal sizes are the same elements."""
    off = out.type.rank - x.type.rank
    for ax, n in enumerate(x.shape):
        if n == out.shape[ax + off]:
            c.same(x, ax, out, ax + off)
        else:
            c.freeze(x, ax, "a size-1 axis broadcast")
    for ax in range(out.type.rank):
        if ax < off or x.shape[ax - off] != out.shape[ax]:
            c.free(out, ax)


# ---------------------------------------------------------------------------- element-wise
@_rule("relu", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
       "identity", "dropout", "neg", "sqrt", "exp", "erf", "cast")
def _unary(c) -> None:
    _same_all(c, c.x(0), c.out())


@_rule("add", "sub", "mul", "div", "pow")
def _binary(c) -> None:
    for x in c.node.inputs:
        _broadcast(c, x, c.out())


@_rule("dynamic_quantize")
def _dynamic_quant(c) -> None:
    # q is x element for element; the scale and zero point are 0-d (the whole tensor's range)
    _same_all(c, c.x(0), c.out())


@_rule("quantize", "dequantize", "fake_quantize")
def _quant(c) -> None:
    x, scale, zp = c.node.inputs
    _same_all(c, x, c.out())
    if scale.type.rank == 1:
        ax = _ax(c.node.attrs["axis"], x.type.rank)
        c.same(scale, 0, x, ax)
        c.same(zp, 0, x, ax)


# ---------------------------------------------------------------------------- norms
@_rule("batch_norm")
def _batch_norm(c) -> None:
    x = c.x(0)
    _same_all(c, x, c.out())
    for p in c.node.inputs[1:]:
        c.same(p, 0, x, 1)
    c.role(c.x(1), 0, "bn")


@_rule("layer_norm")
def _layer_norm(c) -> None:
    x, out = c.x(0), c.out()
    first = x.type.rank - len(c.node.attrs["normalized_shape"])
    for ax in range(x.type.rank):
        if ax < first:
            c.same(x, ax, out, ax)
        else:
            c.freeze(x, ax, "layer_norm normalizes over this axis")
            c.freeze(out, ax, "layer_norm normalizes over this axis")
    for p in c.node.inputs[1:]:
        for ax in range(p.type.rank):
            c.freeze(p, ax, "a layer_norm parameter (its axis is normalized over)")


def _group_norm_resize(node: Node, new) -> dict[str, Any]:
    x = node.inputs[0]
    per_group = x.shape[1] // node.attrs["num_groups"]
    return {"num_groups": new.shape(x)[1] // per_group}


@_rule("group_norm", resize=_group_norm_resize)
def _group_norm(c) -> None:
    x, out = c.x(0), c.out()
    c.same(x, 0, out, 0)
    c.same(x, 1, out, 1)
    cg = x.shape[1] // c.node.attrs["num_groups"]
    ch = np.arange(x.shape[1])
    c.pairs(x, 1, ch, x, 1, ch - ch % cg)  # a whole normalization group or nothing
    for ax in range(2, x.type.rank):
        c.freeze(x, ax, "group_norm normalizes over this axis")
        c.freeze(out, ax, "group_norm normalizes over this axis")
    for p in c.node.inputs[1:]:
        c.same(p, 0, out, 1)
    if len(c.node.inputs) > 1:
        c.role(c.x(1), 0, "bn")


@_rule("softmax", "log_softmax")
def _softmax(c) -> None:
    x, out = c.x(0), c.out()
    axis = _ax(c.node.attrs["axis"], x.type.rank)
    for ax in range(x.type.rank):
        if ax == axis:
            c.freeze(x, ax, f"{c.node.op} normalizes over this axis")
            c.freeze(out, ax, f"{c.node.op} normalizes over this axis")
        else:
            c.same(x, ax, out, ax)


@_rule("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
def _pool(c) -> None:
    x, out = c.x(0), c.out()
    for ax in range(x.type.rank):
        if ax < x.type.rank - 2:
            c.same(x, ax, out, ax)
        else:
            c.freeze(x, ax, "a pooling window")
            c.freeze(out, ax, "a pooling window")


# ---------------------------------------------------------------------------- layers
def _window(c, *values) -> None:
    for v in values:
        for ax in (2, 3):
            c.freeze(v, ax, "a convolution window")


def _out_channels(c, w, w_axis: int) -> None:
    out = c.out()
    c.same(w, w_axis, out, 1)
    c.role(w, w_axis, "out")
    if len(c.node.inputs) > 2:
        c.same(c.x(2), 0, out, 1)
        c.role(c.x(2), 0, "bias")


def _conv_resize(node: Node, new) -> dict[str, Any]:
    x, w = node.inputs[0], node.inputs[1]
    if node.attrs["groups"] > 1 and w.shape[1] == 1:  # depthwise: one group per channel
        return {"groups": new.shape(x)[1]}
    return {}


@_rule("conv2d", resize=_conv_resize)
def _conv2d(c) -> None:
    x, w, out = c.x(0), c.x(1), c.out()
    g = c.node.attrs["groups"]
    c.same(x, 0, out, 0)
    _window(c, x, w, out)
    _out_channels(c, w, 0)
    cin, cout, cin_g = x.shape[1], w.shape[0], w.shape[1]
    if g == 1:
        c.same(x, 1, w, 1)
        c.sink(0, 1)
        c.role(w, 1, "in")
    elif cin_g == 1:  # depthwise (channel multiplier m = cout / cin): output block i <- input i
        o = np.arange(cout)
        c.pairs(out, 1, o, x, 1, o // (cout // cin))
        c.freeze(w, 1, "a depthwise filter's single input channel")
    else:
        # grouped: the same local index in every group (groups stay divisible)
        i, o = np.arange(cin), np.arange(cout)
        c.pairs(x, 1, i, w, 1, i % cin_g)
        c.sink(0, 1)
        c.role(w, 1, "in")
        c.pairs(out, 1, o, out, 1, o % (cout // g))


@_rule("conv_transpose2d")
def _conv_transpose2d(c) -> None:
    x, w, out = c.x(0), c.x(1), c.out()
    c.same(x, 0, out, 0)
    _window(c, x, w, out)
    if c.node.attrs["groups"] != 1:
        reason = "grouped conv_transpose2d is not supported by channel pruning"
        for v, ax in ((x, 1), (out, 1), (w, 0), (w, 1)):
            c.freeze(v, ax, reason)
        if len(c.node.inputs) > 2:
            c.freeze(c.x(2), 0, reason)
        return
    c.same(x, 1, w, 0)
    c.sink(0, 1)
    c.role(w, 0, "in")
    _out_channels(c, w, 1)


@_rule("linear")
def _linear(c) -> None:
    x, w, out = c.x(0), c.x(1), c.out()
    r = x.type.rank
    for ax in range(r - 1):
        c.same(x, ax, out, ax)
    c.same(x, r - 1, w, 1)
    c.sink(0, r - 1)
    c.role(w, 1, "in")
    c.same(w, 0, out, r - 1)
    c.role(w, 0, "out")
    if len(c.node.inputs) > 2:
        c.same(c.x(2), 0, out, r - 1)
        c.role(c.x(2), 0, "bias")


@_rule("matmul")
def _matmul(c) -> None:
    a, b, out = c.x(0), c.x(1), c.out()
    ra, rb, ro = a.type.rank, b.type.rank, out.type.rank
    if ra < 2 or rb < 2:
        for v in (a, b, out):
            for ax in range(v.type.rank):
                c.freeze(v, ax, "matmul with a vector operand")
        return
    c.same(a, ra - 1, b, rb - 2)  # the contraction
    c.sink(0, ra - 1)
    c.sink(1, rb - 2)
    c.same(a, ra - 2, out, ro - 2)
    c.same(b, rb - 1, out, ro - 1)
    for v, r in ((a, ra), (b, rb)):
        off = ro - r
        for ax in range(r - 2):
            if v.shape[ax] == out.shape[ax + off]:
                c.same(v, ax, out, ax + off)
            else:
                c.freeze(v, ax, "a size-1 axis broadcast")
    for ax in range(ro - 2):
        c.free(out, ax)  # broadcast batch axes; the others are linked above
    if b.is_constant:
        c.role(b, rb - 2, "in")
        c.role(b, rb - 1, "out")


@_rule("circulant_matmul")
def _circulant_matmul(c) -> None:
    x, w, out = c.x(0), c.x(1), c.out()
    r = x.type.rank
    for ax in range(r - 1):
        c.same(x, ax, out, ax)
    reason = "a circulant block mixes all of its k features (prune whole blocks: not supported)"
    c.freeze(x, r - 1, reason)
    c.freeze(out, r - 1, reason)
    for ax in range(3):
        c.freeze(w, ax, reason)


@_rule("embedding")
def _embedding(c) -> None:
    idx, w, out = c.x(0), c.x(1), c.out()
    for ax in range(idx.type.rank):
        c.same(idx, ax, out, ax)
    c.freeze(w, 0, "embedding rows are selected by the indices")
    c.same(w, 1, out, out.type.rank - 1)
    c.role(w, 1, "out")


# ---------------------------------------------------------------------------- shapes
def _keep_relative(node: Node, shape) -> tuple[int, ...]:
    """The new shape attribute, keeping the batch-relative sizes of the old one (ir/batch.py:
    a reshape's -1 rest, an expand's -1 kept dim, and the 0 an expand with a second operand
    reads from it)."""
    keep = {-1, 0} if node.op == "expand" and len(node.inputs) > 1 else {-1}
    return tuple(old if old in keep else int(d) for old, d in zip(node.attrs["shape"], shape))


def _reshape_resize(node: Node, new) -> dict[str, Any]:
    return {"shape": _keep_relative(node, new.shape(node.outputs[0]))}


def _blocks(a: tuple[int, ...], b: tuple[int, ...]):
    """Align two shapes of equal size into blocks of axes with equal products; size-1 axes
    not inside a block come alone. Yields ``(a_axes, b_axes)``."""
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            yield [i], []
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            yield [], [j]
            j += 1
            continue
        ia, jb, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                ia.append(i)
                pa *= a[i]
                i += 1
            else:
                jb.append(j)
                pb *= b[j]
                j += 1
        yield ia, jb


def _shuffle_carrier(out, part_axes: list[int]) -> int | None:
    """The part of a split that a channel shuffle merges back as the outer axis.

    ``reshape(x, [.., g, C/g, ..]) -> permute -> reshape(.., C, ..)`` is a channel
    permutation (ShuffleNet). Pruning it is exact when whole slices of the part that becomes
    the *outer* axis of the merge go (``C/g`` here: ``g`` channels at a time, one from each
    group); that part carries the split's elements instead of the outermost one."""
    if len(out.uses) != 1 or out.uses[0].op != "permute":
        return None
    perm_node = out.uses[0]
    moved = perm_node.outputs[0]
    if len(moved.uses) != 1 or moved.uses[0].op not in ("reshape", "flatten"):
        return None
    perm = [p % out.type.rank for p in perm_node.attrs["perm"]]
    where = {perm.index(a): a for a in part_axes}  # position after the permute -> part
    for ia, jb in _blocks(moved.shape, moved.uses[0].outputs[0].shape):
        if len(jb) == 1 and len(ia) > 1 and set(ia) == set(where):
            return where[ia[0]]
    return None


def _reshape(c) -> None:
    x, out = c.x(0), c.out()
    for ia, jb in _blocks(x.shape, out.shape):
        if not jb or not ia:
            for v, axes in ((x, ia), (out, jb)):
                for ax in axes:
                    c.free(v, ax)  # a size-1 axis dropped or added
        elif len(ia) == 1 and len(jb) == 1:
            c.same(x, ia[0], out, jb[0])
        elif len(ia) == 1 or len(jb) == 1:
            # one axis split into several (or several merged into one): its elements follow
            # one of the several, the carrier — the outermost, or for a channel shuffle the
            # part it merges back as outer; the others cannot shrink
            whole, whole_ax, parts, part_axes = ((x, ia[0], out, jb) if len(ia) == 1
                                                 else (out, jb[0], x, ia))
            carrier = (_shuffle_carrier(out, jb) if parts is out else None) or part_axes[0]
            k = part_axes.index(carrier)
            inner = int(np.prod([parts.shape[a] for a in part_axes[k + 1:]]))
            e = np.arange(whole.shape[whole_ax])
            c.pairs(whole, whole_ax, e, parts, carrier, (e // inner) % parts.shape[carrier])
            for ax in part_axes:
                if ax != carrier:
                    c.freeze(parts, ax, f"a part of a {c.node.op} that "
                             f"{'splits' if parts is out else 'merges'} axes other than the "
                             f"one that can shrink (%{parts.name}:{carrier})")
        else:
            for v, axes in ((x, ia), (out, jb)):
                for ax in axes:
                    c.freeze(v, ax, f"{c.node.op} regroups axes {ia} of {x.type} into {jb} of "
                             f"{out.type} (not a split or a merge)")


_rule("reshape", resize=_reshape_resize)(_reshape)
_rule("flatten")(_reshape)


@_rule("permute")
def _permute(c) -> None:
    x, out = c.x(0), c.out()
    for i, p in enumerate(c.node.attrs["perm"]):
        c.same(out, i, x, _ax(p, x.type.rank))


@_rule("concat")
def _concat(c) -> None:
    out = c.out()
    axis = _ax(c.node.attrs["axis"], out.type.rank)
    off = 0
    for x in c.node.inputs:
        for ax in range(x.type.rank):
            if ax != axis:
                c.same(x, ax, out, ax)
        n = x.shape[axis]
        c.pairs(x, axis, np.arange(n), out, axis, off + np.arange(n))
        off += n


def _split_resize(node: Node, new) -> dict[str, Any]:
    axis = _ax(node.attrs["axis"], node.inputs[0].type.rank)
    return {"sizes": tuple(new.shape(o)[axis] for o in node.outputs)}


@_rule("split", resize=_split_resize)
def _split(c) -> None:
    x = c.x(0)
    axis = _ax(c.node.attrs["axis"], x.type.rank)
    off = 0
    for out in c.node.outputs:
        for ax in range(x.type.rank):
            if ax != axis:
                c.same(x, ax, out, ax)
        n = out.shape[axis]
        c.pairs(out, axis, np.arange(n), x, axis, off + np.arange(n))
        off += n


def _selected(node: Node) -> np.ndarray:
    a = node.attrs
    x = node.inputs[0]
    axis = _ax(a["axis"], x.type.rank)
    n = x.shape[axis]
    s, e = max(min(a["start"], n), -n), max(min(a["end"], n), -n)  # as the reference
    return np.arange(n)[s:e:a["step"]]


def _slice_resize(node: Node, new) -> dict[str, Any]:
    x, out = node.inputs[0], node.outputs[0]
    axis = _ax(node.attrs["axis"], x.type.rank)
    removed = new.removed(x, axis)
    if not len(removed):
        return {}
    first = int(_selected(node)[0])
    start = first - int(np.searchsorted(removed, first))
    return {"start": start, "end": start + new.shape(out)[axis]}


@_rule("slice", resize=_slice_resize)
def _slice(c) -> None:
    x, out = c.x(0), c.out()
    axis = _ax(c.node.attrs["axis"], x.type.rank)
    for ax in range(x.type.rank):
        if ax != axis:
            c.same(x, ax, out, ax)
    sel = _selected(c.node)
    if c.node.attrs["step"] != 1 or not len(sel):
        c.freeze(x, axis, "a strided or empty slice")
        c.freeze(out, axis, "a strided or empty slice")
        return
    c.pairs(out, axis, np.arange(len(sel)), x, axis, sel)
    rest = np.setdiff1d(np.arange(x.shape[axis]), sel)
    if len(rest):
        c.sink(0, axis, rest)  # not read: dropping them changes nothing


def _expand_resize(node: Node, new) -> dict[str, Any]:
    return {"shape": _keep_relative(node, new.shape(node.outputs[0]))}


@_rule("expand", resize=_expand_resize)
def _expand(c) -> None:
    _broadcast(c, c.x(0), c.out())


@_rule("mean", "sum")
def _reduce(c) -> None:
    x, out = c.x(0), c.out()
    r = x.type.rank
    axes = {_ax(a, r) for a in c.node.attrs["axes"]}
    keep = c.node.attrs["keepdim"]
    j = 0
    for ax in range(r):
        if ax in axes:
            if c.node.op == "sum":
                c.sink(0, ax)
            else:
                c.freeze(x, ax, "mean over this axis (dropping a channel changes the count)")
            if keep:
                c.free(out, j)
                j += 1
        else:
            c.same(x, ax, out, j)
            j += 1


# ---------------------------------------------------------------------------- issue 19's ops
RULES.update({op: RULES["relu"] for op in (
    "abs", "log", "rsqrt", "leaky_relu", "elu", "selu", "softplus", "softsign", "logical_not")})
RULES.update({op: RULES["add"] for op in (
    "maximum", "minimum", "prelu", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "where")})  # numpy broadcasting of every operand, as add


def _freeze_all(c, reason: str) -> None:
    for v in list(c.node.inputs) + list(c.node.outputs):
        for ax in range(v.type.rank):
            c.freeze(v, ax, reason)


def _same_except(c, frozen: set[int], reason: str) -> None:
    """Axis ``ax`` of operand 0 is axis ``ax`` of the result, except the ``frozen`` ones."""
    x, out = c.x(0), c.out()
    for ax in range(x.type.rank):
        if ax in frozen:
            c.freeze(x, ax, reason)
            c.freeze(out, ax, reason)
        else:
            c.same(x, ax, out, ax)


@_rule("max", "min")
def _reduce_extreme(c) -> None:
    x, out = c.x(0), c.out()
    r = x.type.rank
    axes = {_ax(a, r) for a in c.node.attrs["axes"]}
    j = 0
    for ax in range(r):
        if ax in axes:
            c.freeze(x, ax, f"{c.node.op} over this axis")
            if c.node.attrs["keepdim"]:
                c.free(out, j)
                j += 1
        else:
            c.same(x, ax, out, j)
            j += 1


@_rule("cumsum")
def _cumsum(c) -> None:
    _same_except(c, {_ax(c.node.attrs["axis"], c.x(0).type.rank)}, "a prefix sum along it")


@_rule("pad")
def _pad(c) -> None:
    p, r = c.node.attrs["pads"], c.x(0).type.rank
    _same_except(c, {d for d in range(r) if p[d] or p[r + d]}, "a padded axis")


@_rule("tile")
def _tile(c) -> None:
    _same_except(c, {d for d, k in enumerate(c.node.attrs["repeats"]) if k != 1},
                 "a tiled axis")


@_rule("max_pool3d", "avg_pool3d", "upsample")
def _spatial_window(c) -> None:
    _same_except(c, set(range(2, c.x(0).type.rank)), "a pooling / resampling window")


@_rule("lrn")
def _lrn(c) -> None:
    _same_except(c, {1}, "LRN normalizes over neighbouring channels")


@_rule("gather", "gather_elements", "conv3d")
def _opaque(c) -> None:
    _freeze_all(c, {"gather": "indexed by a gather", "gather_elements": "indexed by a gather",
                    "conv3d": "3-D convolutions are not pruned yet"}[c.node.op])


@_rule("scaled_dot_product_attention")
def _sdpa(c) -> None:
    """Heads go whole: q, k, v and the result share the head axis (with fewer k/v heads, k/v
    head ``j`` takes its ``g`` query heads along). Queries are independent rows; the keys
    are softmaxed over (frozen); the value dim passes through. The q·k dim is a contraction
    (a sink) when the scale is explicit; with the default ``1/sqrt(dim)`` it is frozen."""
    q, k, v, out = c.x(0), c.x(1), c.x(2), c.out()
    r = q.type.rank
    hd, ld, dd = r - 3, r - 2, r - 1
    for t in (q, k, v):
        for ax in range(hd):
            if t.shape[ax] == out.shape[ax]:
                c.same(t, ax, out, ax)
            else:
                c.freeze(t, ax, "a size-1 axis broadcast")
    c.same(q, hd, out, hd)
    hq, hk = q.shape[hd], k.shape[hd]
    h = np.arange(hq)
    c.pairs(q, hd, h, k, hd, h // (hq // hk))
    c.same(v, hd, k, hd)
    c.same(q, ld, out, ld)
    for t in (k, v):
        c.freeze(t, ld, "the keys of an attention (softmax over them)")
    if c.node.attrs["scale"] is not None:
        c.same(q, dd, k, dd)
        c.sink(0, dd)
        c.sink(1, dd)
    else:
        for t in (q, k):
            c.freeze(t, dd, "the q·k head dim sets the default scale 1/sqrt(dim)")
    c.same(v, dd, out, dd)
    if len(c.node.inputs) > 3:  # the mask broadcasts to the scores [..., heads, q, keys]
        m = c.x(3)
        off = r - m.type.rank
        for ax in range(m.type.rank):
            pos, n = ax + off, m.shape[ax]
            if pos == dd:
                c.freeze(m, ax, "the keys of an attention (softmax over them)")
            elif n != q.shape[pos]:
                c.freeze(m, ax, "a size-1 axis broadcast")
            else:
                c.same(m, ax, q, pos)
