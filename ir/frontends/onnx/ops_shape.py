"""ONNX handlers: data movement (concat, split, slice, reshape, transpose, …) and Gather."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import Value
from .context import Ctx, const_of, maps


# ---------------------------------------------------------------------------- shapes
@maps("Concat")
def _concat(c: Ctx, n: gs.Node) -> None:
    xs = [c.v(t) for t in n.inputs]
    axis = int(n.attrs["axis"])
    c.axis(axis, xs[0].type.rank)
    c.emit("concat", xs, {"axis": axis}, out=n.outputs[0])


@maps("Split")
def _split(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axis = int(n.attrs.get("axis", 0))
    dim, k = x.shape[c.axis(axis, x.type.rank)], len(n.outputs)
    sizes = c.attr_or_input("split", 1)
    if sizes is None:
        parts = int(n.attrs.get("num_outputs", k))
        size = -(-dim // parts)
        sizes = [size] * (parts - 1) + [dim - size * (parts - 1)]
    if len(sizes) != k or sum(sizes) != dim or min(sizes) < 0:
        c.fail(f"split sizes {sizes} do not fit {k} outputs of dim {axis} of {x.type}")
    c.emit_multi("split", [x], {"axis": axis, "sizes": tuple(sizes)}, list(n.outputs))


@maps("Slice")
def _slice(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    starts, ends = c.ints(c.inp(1), "starts"), c.ints(c.inp(2), "ends")
    axes = c.ints(c.inp(3), "axes") if c.inp(3) is not None else list(range(len(starts)))
    steps = c.ints(c.inp(4), "steps") if c.inp(4) is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        c.fail("starts, ends, axes and steps differ in length")
    todo = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = c.axis(ax, x.type.rank)
        dim = x.shape[ax]
        if st <= 0:
            c.fail(f"step {st} on axis {ax}: only positive steps are supported")
        s = min(max(s + dim if s < 0 else s, 0), dim)
        e = min(max(e + dim if e < 0 else e, 0), dim)
        if not (s == 0 and e >= dim and st == 1):
            todo.append({"axis": ax, "start": s, "end": max(e, s), "step": st})
    if not todo:
        c.alias(n.outputs[0], x)
    for i, attrs in enumerate(todo):
        last = i == len(todo) - 1
        x = c.emit("slice", [x], attrs, out=n.outputs[0] if last else None,
                   suffix=f"axis{attrs['axis']}")


def _reshape_to(c: Ctx, n: gs.Node, x: Value, shape: Sequence[int]) -> None:
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        c.alias(n.outputs[0], x)
    else:
        c.emit("reshape", [x], {"shape": shape}, out=n.outputs[0])


@maps("Reshape")
def _reshape(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    shape = c.ints(c.inp(1), "shape")
    if not int(n.attrs.get("allowzero", 0)):
        shape = [x.shape[i] if d == 0 and i < x.type.rank else d for i, d in enumerate(shape)]
    if shape.count(-1) > 1:
        c.fail(f"shape {shape} has more than one -1")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or x.type.numel % known:
            c.fail(f"cannot reshape {x.type} to {shape}")
        shape[shape.index(-1)] = x.type.numel // known
    if math.prod(shape) != x.type.numel:
        c.fail(f"cannot reshape {x.type} to {shape}")
    _reshape_to(c, n, x, shape)


@maps("Flatten")
def _flatten(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    r = x.type.rank
    axis = int(n.attrs.get("axis", 1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis <= r:
        c.fail(f"axis {axis} out of range for {x.type}")
    if axis == 1 and r >= 2:
        c.emit("flatten", [x], {"start_dim": 1, "end_dim": -1}, out=n.outputs[0])
    else:
        _reshape_to(c, n, x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))


@maps("Unsqueeze")
def _unsqueeze(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axes = c.attr_or_input("axes", 1) or []
    r = x.type.rank + len(axes)
    axes = sorted(a + r if a < 0 else a for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    _reshape_to(c, n, x, shape)


@maps("Squeeze")
def _squeeze(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axes = c.attr_or_input("axes", 1)
    axes = {c.axis(a, x.type.rank) for a in axes} if axes is not None else {
        i for i, d in enumerate(x.shape) if d == 1}
    if any(x.shape[a] != 1 for a in axes):
        c.fail(f"cannot squeeze axes {sorted(axes)} of {x.type}")
    _reshape_to(c, n, x, [d for i, d in enumerate(x.shape) if i not in axes])


@maps("Transpose")
def _transpose(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    perm = tuple(int(p) for p in n.attrs.get("perm", reversed(range(x.type.rank))))
    if perm == tuple(range(x.type.rank)):
        c.alias(n.outputs[0], x)
    else:
        c.emit("permute", [x], {"perm": perm}, out=n.outputs[0])


@maps("Expand")
def _expand(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    target = c.ints(c.inp(1), "shape")
    try:
        shape = np.broadcast_shapes(x.shape, tuple(target))
    except ValueError:
        c.fail(f"cannot expand {x.type} to {target}")
    if tuple(shape) == x.shape:
        c.alias(n.outputs[0], x)
    else:
        c.emit("expand", [x], {"shape": tuple(shape)}, out=n.outputs[0])


@maps("Shape", "Size")
def _shape(c: Ctx, n: gs.Node) -> None:
    c.fail("could not be folded to a constant (are all input shapes static? give input_shapes)")




# ---------------------------------------------------------------------------- gather
@maps("Gather")
def _gather(c: Ctx, n: gs.Node) -> None:
    """A constant 2-D table at axis 0 is an ``embedding``; constant indices that are a slice
    become ``slice`` (+ ``reshape``); everything else is ``gather`` (N-D indices)."""
    data_t, idx_t = n.inputs[0], n.inputs[1]
    axis = int(n.attrs.get("axis", 0))
    data, idx = const_of(data_t), const_of(idx_t)
    if data is not None and idx is None and data.ndim == 2 and axis == 0:
        c.emit("embedding", [c.v(idx_t), c.v(data_t)], out=n.outputs[0])
        return
    x = c.v(data_t)
    axis = c.axis(axis, x.type.rank)
    dim = x.shape[axis]
    if idx is not None and idx.ndim <= 1 and idx.size:
        flat = [int(i) + dim if int(i) < 0 else int(i) for i in idx.reshape(-1)]
        step = flat[1] - flat[0] if len(flat) > 1 else 1
        if step > 0 and all(b - a == step for a, b in itertools.pairwise(flat)):
            attrs = {"axis": axis, "start": flat[0], "end": flat[-1] + 1, "step": step}
            if idx.ndim == 1:
                c.emit("slice", [x], attrs, out=n.outputs[0])
            else:
                s = c.emit("slice", [x], attrs, suffix="slice")
                c.emit("reshape", [s], {"shape": x.shape[:axis] + x.shape[axis + 1:]},
                       out=n.outputs[0])
            return
    c.emit("gather", [x, c.v(idx_t)], {"axis": axis}, out=n.outputs[0])


@maps("GatherElements")
def _gather_elements(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    axis = c.axis(int(n.attrs.get("axis", 0)), x.type.rank)
    c.emit("gather_elements", [x, c.v(n.inputs[1])], {"axis": axis}, out=n.outputs[0])


# ---------------------------------------------------------------------------- pad, tile, cumsum
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@maps("Pad")
def _pad(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    r = x.type.rank
    mode = n.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _PAD_MODES:
        c.fail(f"mode {mode!r} is not supported ({', '.join(_PAD_MODES)})")
    pads = c.ints(c.inp(1), "pads")
    axes = c.ints(c.inp(3), "axes") if c.inp(3) is not None else list(range(r))
    axes = [c.axis(a, r) for a in axes]
    if len(pads) != 2 * len(axes):
        c.fail(f"pads {pads} do not match axes {axes}")
    full = [0] * (2 * r)
    for i, a in enumerate(axes):
        full[a], full[r + a] = pads[i], pads[len(axes) + i]
    value = 0.0
    if c.inp(2) is not None:
        value = float(c.array(c.inp(2), "constant_value").reshape(-1)[0])
    if not any(full):
        c.alias(n.outputs[0], x)
        return
    c.emit("pad", [x], {"pads": tuple(full), "mode": _PAD_MODES[mode], "value": value},
           out=n.outputs[0])


@maps("Tile")
def _tile(c: Ctx, n: gs.Node) -> None:
    x = c.x()
    reps = c.ints(c.inp(1), "repeats")
    if all(r == 1 for r in reps):
        c.alias(n.outputs[0], x)
        return
    c.emit("tile", [x], {"repeats": tuple(reps)}, out=n.outputs[0])


@maps("CumSum")
def _cumsum(c: Ctx, n: gs.Node) -> None:
    if int(n.attrs.get("exclusive", 0)) or int(n.attrs.get("reverse", 0)):
        c.fail("exclusive or reverse CumSum is not supported")
    x = c.x()
    axis = c.axis(c.ints(c.inp(1), "axis")[0], x.type.rank)
    y = c.emit("cumsum", [x], {"axis": axis}, out=None if x.dtype in ("i8", "u8", "i16", "i32")
               else n.outputs[0], suffix="cumsum")
    if y.dtype != x.dtype:  # torch sums small ints in i64; ONNX keeps the type
        c.emit("cast", [y], {"dtype": x.dtype}, out=n.outputs[0])
