"""PyTorch frontend: ``trace(model, example_inputs)`` → IR, through ``torch.export``.

The exported program is an fx graph of ATen ops (no decompositions, so ``aten.conv2d``,
``aten.linear``, ``aten.batch_norm`` … stay whole). Each ATen op maps to IR ops through
``ATEN_MAP``; parameters and buffers become constants named by their module path
(``layer1.0.conv1.weight``); every node keeps the module path in ``meta["loc"]``. An op
that does not map raises one ``TraceError`` naming the ATen op, the module path and the
source line, and no graph is returned.

Batch: by default the model is exported with a dynamic batch (``torch.export.Dim`` on dim 0
of every input whose dim 0 is the first input's; an example of batch 1 is traced as a
batch-2 copy, since torch.export specialises sizes 0 and 1). Every size is then an int or
an expression in the batch, so the converter knows which dims follow the batch: reshapes
and expands get -1 there. The program is converted at two batches and the two graphs
merged (``ir.batch.merge``: what a handler computed from the batch differs between them
and becomes -1, or is refused), then given the example's batch (``torch.arange(batch)``
used as the batch index of an advanced index — how transformers builds padding masks — is
converted to the identity on the batch, ``_batch_arange``); the graph is marked
batch-polymorphic once ``ir/batch.py`` proves it. When torch.export cannot keep the batch
dynamic (the model's code specialises it: a view with a literal batch, a branch on the batch
size) or the proof fails (a reduction over the batch, a batch-free tensor expanded to the
batch, …), the model is traced again with static shapes at the example's batch, and the
graph records why (``graph.meta["batch_static"]``; running it at another batch says so).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import batch as ir_batch
from ..graph import Graph, IRError, Value
from ..types import TensorType, dtype_from_torch
from . import torch_fold

log = logging.getLogger(__name__)
aten = torch.ops.aten


class TraceError(IRError):
    """A model that cannot be brought into the IR."""


class _NotBatch(Exception):
    """The dynamic-batch conversion met something the IR cannot keep batch-relative."""


class _Sym:
    """A python int computed from sizes (``x.shape[0] * 4``): its value at the nominal batch
    and whether it depends on the batch."""

    def __init__(self, value: int, depends: bool):
        self.value, self.depends = value, depends


class _BatchArange:
    """``torch.arange(batch)`` viewed as ``[batch, 1, …, 1]`` (``rank`` dims): the batch index
    of each sample, as Hugging Face's mask builders make it (``sdpa_mask``) to index the
    padding mask per sample. It is no tensor of the IR — a value computed across the batch
    — but indexing dim 0 of a tensor by it is the identity on the batch, so
    ``x[arange(B)[:, None, …], i]`` becomes ``x[:, i[0]]`` (``_batch_arange``)."""

    def __init__(self, rank: int):
        self.rank = rank


def _batch_arange(c, node: torch.fx.Node) -> Any:
    """The conversion of ``node`` when it creates or reads a ``_BatchArange``, or
    ``NotImplemented`` when it does neither. Raises ``_NotBatch`` for any other use (the
    model is then traced with a static batch)."""
    def marker(a):
        return c.env.get(a.name) if isinstance(a, torch.fx.Node) else None

    t, args = node.target, node.args
    if t is aten.arange.default and len(args) == 1 and node.kwargs.get("dtype") in (
            None, torch.int64):
        sym = marker(args[0])
        if isinstance(sym, _Sym) and sym.depends:
            val = node.meta.get("val")
            if (isinstance(val, torch.Tensor) and val.dim() == 1
                    and isinstance(val.shape[0], torch.SymInt)
                    and val.shape[0].node.expr in c.batch_syms and val.dtype == torch.int64):
                return _BatchArange(1)
        return NotImplemented
    leaves = [a for a in args if isinstance(marker(a), _BatchArange)]
    nested = [a for a in (args[1] if t is aten.index.Tensor and len(args) > 1 else [])
              if isinstance(marker(a), _BatchArange)]
    if not leaves and not nested:
        return NotImplemented
    if leaves:
        m = marker(leaves[0])
        if t is aten.slice.Tensor and args[0] is leaves[0]:
            dim = args[1] if len(args) > 1 else 0
            start = args[2] if len(args) > 2 else 0
            end = args[3] if len(args) > 3 else None
            step = args[4] if len(args) > 4 else 1
            if dim == 0 and start in (0, None) and step == 1 and (
                    end is None or (isinstance(end, int) and end >= 2 ** 62)):
                return m
        if t is aten.unsqueeze.default and args[0] is leaves[0]:
            d = args[1] if args[1] >= 0 else args[1] + m.rank + 1
            if 1 <= d <= m.rank:
                return _BatchArange(m.rank + 1)
        raise _NotBatch(f"{c.where()}: uses arange(batch) as {t}, which the IR cannot keep "
                        f"batch-relative")
    # x[arange(B)[:, None, …], i]: the batch index first, one more index tensor
    idx = list(args[1])
    if len(idx) != 2 or idx[0] is not nested[0] or not isinstance(idx[1], torch.fx.Node):
        raise _NotBatch(f"{c.where()}: indexes by arange(batch) in a form other than "
                        f"x[arange(batch)[:, None, …], i]")
    m = marker(idx[0])
    x, i = c.v(args[0]), c.v(idx[1])
    if i.type.rank == m.rank:  # drop its leading 1 (it broadcast against the batch index)
        if i.shape[0] != 1:
            raise _NotBatch(f"{c.where()}: the index beside arange(batch) has {i.shape[0]} "
                            f"rows, not one")
        arr = i.data if i.is_constant else None
        i = (c.g.add_constant(np.ascontiguousarray(arr[0]), c.g.fresh_name(f"{node.name}_idx"))
             if arr is not None else
             c.emit("reshape", [i], {"shape": i.shape[1:]}, name=f"{node.name}_idx"))
    elif i.type.rank > m.rank:
        raise _NotBatch(f"{c.where()}: the index beside arange(batch) has more dims than it")
    # x[:, i'] = gather along dim 1 (nothing when i' selects every column in order), then
    # the broadcast of the batch index's trailing ones
    want = c.out_shape()
    n = x.shape[1] if x.type.rank > 1 else 0
    if i.is_constant and i.data.size == n and np.array_equal(i.data.reshape(-1), np.arange(n)):
        y = x
    else:
        y = c.emit("gather", [x, i], {"axis": 1})
    if y.shape != want:
        y = c.emit("reshape", [y], {"shape": (-1,) + want[1:]}, name=f"{node.name}_view")
    return y


class _Ctx:
    """State while converting one exported program."""

    def __init__(self, graph: Graph, nominal: int | None = None):
        self.g = graph
        self.env: dict[str, Any] = {}  # fx node name -> Value | tuple[Value] | python value
        self.node: torch.fx.Node | None = None
        self.loc: str | None = None
        self.nominal = nominal  # the batch symbolic sizes are evaluated at
        self.batch_syms: set = set()  # sympy symbols of the dynamic batch

    # ------------------------------------------------------------------ sizes
    def size(self, d) -> int:
        """A size (int or SymInt) at the nominal batch."""
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            free = getattr(expr, "free_symbols", set())
            if free and free <= self.batch_syms:
                return int(expr.xreplace({s: self.nominal for s in free}))
            if not free:
                return int(expr)
            raise TraceError(f"{self.where()}: size {d} is not static")
        return int(d)

    def depends(self, d) -> bool:
        """Whether a size (int or SymInt) depends on the batch."""
        return isinstance(d, torch.SymInt) and bool(
            getattr(d.node.expr, "free_symbols", set()) & self.batch_syms)

    def sym_shape(self, val) -> tuple:
        return tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in val.shape)

    def ir_type(self, val) -> TensorType:
        return TensorType(dtype_from_torch(val.dtype), tuple(self.size(d) for d in val.shape))

    def batch_dims(self, val) -> list[int]:
        return [i for i, d in enumerate(val.shape) if self.depends(d)]

    def same_shape(self, a, b) -> bool:
        """Whether two fx values have the same shape at every batch."""
        return self.sym_shape(a) == self.sym_shape(b)

    def view_shape(self, val) -> tuple[int, ...]:
        """The ``reshape`` attribute for a result of shape ``val.shape``: -1 where it
        depends on the batch (one dim at most)."""
        shape = [self.size(d) for d in val.shape]
        dims = self.batch_dims(val)
        if len(dims) > 1:
            raise _NotBatch(f"{self.where()}: the result {tuple(val.shape)} has the batch in "
                            f"dims {dims}; a reshape attribute can make one dim batch-relative")
        for i in dims:
            shape[i] = -1
        return tuple(shape)

    def no_batch(self, x: torch.fx.Node, dim: int, what: str) -> None:
        """Refuse (for the dynamic batch) an op that takes a static size along ``dim``."""
        val = x.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() and self.depends(val.shape[dim]):
            raise _NotBatch(f"{self.where()}: {what} along the batch dim")

    def v(self, arg) -> Value:
        if isinstance(arg, torch.fx.Node):
            val = self.env[arg.name]
            if not isinstance(val, Value):
                raise TraceError(f"{self.where()}: operand {arg.name} is not a single tensor")
            return val
        raise TraceError(f"{self.where()}: expected a tensor operand, got {arg!r}")

    def scalar(self, x, like: Value) -> Value:
        """A 0-d constant for a python number, in the dtype of the tensor it meets."""
        if isinstance(x, torch.fx.Node):
            return self.v(x)
        dtype = like.dtype if like.type.is_float or isinstance(x, int) else "f32"
        from ..types import to_numpy_dtype

        return self.g.add_constant(np.array(x, dtype=to_numpy_dtype(dtype)),
                                   self.g.fresh_name(f"{self.node.name}_scalar"))

    def emit(self, op: str, inputs: list[Value], attrs: dict | None = None, name: str | None = None):
        n = self.g.add_node(op, inputs, attrs or {}, names=[self.g.fresh_name(name or self.node.name)],
                            loc=self.loc)
        return n.output

    def emit_multi(self, op: str, inputs: list[Value], attrs: dict, count: int):
        base = self.node.name
        names = [self.g.fresh_name(base if i == 0 else f"{base}_{i}") for i in range(count)]
        # fresh_name does not reserve; make the names distinct among themselves
        seen: set[str] = set()
        for i, n in enumerate(names):
            while n in seen:
                n = n + "_"
            names[i] = n
            seen.add(n)
        return tuple(self.g.add_node(op, inputs, attrs, names=names, loc=self.loc).outputs)

    def out_val(self) -> torch.Tensor:
        val = self.node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise TraceError(f"{self.where()}: no static output shape recorded")
        return val

    def out_shape(self) -> tuple[int, ...]:
        val = self.out_val()
        try:
            return tuple(self.size(d) for d in val.shape)
        except (TypeError, ValueError):
            raise TraceError(f"{self.where()}: output shape {tuple(val.shape)} is not static") from None

    def where(self) -> str:
        n = self.node
        if n is None:
            return "trace"
        line = _source_line(n)
        return (f"{n.target} at {self.loc or '<top>'}" + (f" ({line})" if line else ""))


def _source_line(n: torch.fx.Node) -> str:
    st = n.meta.get("stack_trace") or ""
    lines = [s.strip() for s in st.strip().splitlines() if s.strip().startswith("File ")]
    return lines[-1] if lines else ""


def _module_path(n: torch.fx.Node) -> str | None:
    stack = n.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    # torch.export writes paths like "L['self'].layer1[0].conv1" in some versions
    path = path.replace("L['self'].", "").replace("L['self']", "")
    import re

    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\[['\"]([^'\"]+)['\"]\]", r".\1", path)
    return path.strip(".") or None


def _pair(x, n: int = 2) -> tuple[int, ...]:
    if isinstance(x, int):
        return (x,) * n
    x = tuple(int(i) for i in x)
    return x * n if len(x) == 1 else x


# ============================================================================ op mapping
Handler = Callable[[_Ctx, tuple, dict], Any]
ATEN_MAP: dict[Any, Handler] = {}


def _maps(*targets):
    def deco(fn):
        for t in targets:
            ATEN_MAP[t] = fn
        return fn

    return deco


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


@_maps(aten.conv2d.default)
def _conv2d(c, a, k):
    x, w = c.v(a[0]), c.v(a[1])
    b = _arg(a, k, 2, "bias")
    ins = [x, w] + ([c.v(b)] if b is not None else [])
    return c.emit("conv2d", ins, {
        "stride": _pair(_arg(a, k, 3, "stride", 1)), "padding": _pair(_arg(a, k, 4, "padding", 0)),
        "dilation": _pair(_arg(a, k, 5, "dilation", 1)), "groups": int(_arg(a, k, 6, "groups", 1))})


@_maps(aten.conv2d.padding)
def _conv2d_padding(c, a, k):
    pad = _arg(a, k, 4, "padding", "valid")
    w = c.v(a[1])
    if pad == "valid":
        p = (0, 0)
    else:
        dil = _pair(_arg(a, k, 5, "dilation", 1))
        total = [d * (s - 1) for d, s in zip(dil, w.shape[2:])]
        if any(t % 2 for t in total):
            raise TraceError(f"{c.where()}: padding='same' with an even kernel needs asymmetric "
                             f"padding, which conv2d does not support")
        p = tuple(t // 2 for t in total)
    b = _arg(a, k, 2, "bias")
    ins = [c.v(a[0]), w] + ([c.v(b)] if b is not None else [])
    return c.emit("conv2d", ins, {"stride": _pair(_arg(a, k, 3, "stride", 1)), "padding": p,
                                  "dilation": _pair(_arg(a, k, 5, "dilation", 1)),
                                  "groups": int(_arg(a, k, 6, "groups", 1))})


@_maps(aten.convolution.default)
def _convolution(c, a, k):
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = a[:9]
    if len(w.meta["val"].shape) != 4:
        raise TraceError(f"{c.where()}: only 2-D convolutions are supported")
    ins = [c.v(x), c.v(w)] + ([c.v(b)] if b is not None else [])
    attrs = {"stride": _pair(stride), "padding": _pair(padding), "dilation": _pair(dilation),
             "groups": int(groups)}
    if transposed:
        attrs["output_padding"] = _pair(output_padding)
        return c.emit("conv_transpose2d", ins, attrs)
    return c.emit("conv2d", ins, attrs)


@_maps(aten.conv_transpose2d.input)
def _conv_t(c, a, k):
    b = _arg(a, k, 2, "bias")
    ins = [c.v(a[0]), c.v(a[1])] + ([c.v(b)] if b is not None else [])
    return c.emit("conv_transpose2d", ins, {
        "stride": _pair(_arg(a, k, 3, "stride", 1)), "padding": _pair(_arg(a, k, 4, "padding", 0)),
        "output_padding": _pair(_arg(a, k, 5, "output_padding", 0)),
        "groups": int(_arg(a, k, 6, "groups", 1)), "dilation": _pair(_arg(a, k, 7, "dilation", 1))})


@_maps(aten.linear.default)
def _linear(c, a, k):
    b = _arg(a, k, 2, "bias")
    return c.emit("linear", [c.v(a[0]), c.v(a[1])] + ([c.v(b)] if b is not None else []))


@_maps(aten.matmul.default, aten.bmm.default, aten.mm.default)
def _matmul(c, a, k):
    return c.emit("matmul", [c.v(a[0]), c.v(a[1])])


@_maps(aten.addmm.default)
def _addmm(c, a, k):
    if _arg(a, k, 3, "beta", 1) != 1 or _arg(a, k, 4, "alpha", 1) != 1:
        raise TraceError(f"{c.where()}: addmm with beta/alpha != 1 is not supported")
    mm = c.emit("matmul", [c.v(a[1]), c.v(a[2])], name=f"{c.node.name}_mm")
    return c.emit("add", [mm, c.v(a[0])])


def _bn_params(c, w, b, channels: int, like: Value):
    from ..types import to_numpy_dtype

    npdt = to_numpy_dtype(like.dtype)
    wv = c.v(w) if w is not None else c.g.add_constant(np.ones(channels, npdt),
                                                       c.g.fresh_name(f"{c.node.name}_weight"))
    bv = c.v(b) if b is not None else c.g.add_constant(np.zeros(channels, npdt),
                                                       c.g.fresh_name(f"{c.node.name}_bias"))
    return wv, bv


@_maps(aten.batch_norm.default)
def _batch_norm(c, a, k):
    x = c.v(a[0])
    w, b, mean, var = a[1], a[2], a[3], a[4]
    training, eps = a[5], a[7]
    if training:
        raise TraceError(f"{c.where()}: batch_norm in training mode (call model.eval())")
    if mean is None or var is None:
        raise TraceError(f"{c.where()}: batch_norm without running statistics "
                         f"(track_running_stats=False) is not supported")
    wv, bv = _bn_params(c, w, b, x.shape[1], x)
    return c.emit("batch_norm", [x, wv, bv, c.v(mean), c.v(var)], {"eps": float(eps)})


@_maps(aten._native_batch_norm_legit_no_training.default)
def _bn_legit(c, a, k):
    x = c.v(a[0])
    wv, bv = _bn_params(c, a[1], a[2], x.shape[1], x)
    out = c.emit("batch_norm", [x, wv, bv, c.v(a[3]), c.v(a[4])], {"eps": float(a[6])})
    return (out, None, None)


@_maps(aten.layer_norm.default)
def _layer_norm(c, a, k):
    w, b = _arg(a, k, 2, "weight"), _arg(a, k, 3, "bias")
    ins = [c.v(a[0])]
    if w is not None:
        ins.append(c.v(w))
    if b is not None:
        if w is None:
            raise TraceError(f"{c.where()}: layer_norm with bias but no weight")
        ins.append(c.v(b))
    return c.emit("layer_norm", ins, {"normalized_shape": tuple(a[1]),
                                      "eps": float(_arg(a, k, 4, "eps", 1e-5))})


@_maps(aten.group_norm.default)
def _group_norm(c, a, k):
    w, b = _arg(a, k, 2, "weight"), _arg(a, k, 3, "bias")
    ins = [c.v(a[0])] + ([c.v(w)] if w is not None else []) + ([c.v(b)] if b is not None else [])
    if b is not None and w is None:
        raise TraceError(f"{c.where()}: group_norm with bias but no weight")
    return c.emit("group_norm", ins, {"num_groups": int(a[1]),
                                      "eps": float(_arg(a, k, 4, "eps", 1e-5))})


def _unary(op):
    return lambda c, a, k: c.emit(op, [c.v(a[0])])


for _t, _op in ((aten.relu.default, "relu"), (aten.relu_.default, "relu"),
                (aten.silu.default, "silu"), (aten.silu_.default, "silu"),
                (aten.sigmoid.default, "sigmoid"), (aten.tanh.default, "tanh"),
                (aten.hardswish.default, "hardswish"), (aten.hardswish_.default, "hardswish"),
                (aten.hardsigmoid.default, "hardsigmoid"), (aten.neg.default, "neg"),
                (aten.sqrt.default, "sqrt"), (aten.exp.default, "exp"), (aten.erf.default, "erf")):
    ATEN_MAP[_t] = _unary(_op)


@_maps(aten.hardtanh.default, aten.hardtanh_.default)
def _hardtanh(c, a, k):
    return c.emit("hardtanh", [c.v(a[0])], {"min_val": float(_arg(a, k, 1, "min_val", -1.0)),
                                           "max_val": float(_arg(a, k, 2, "max_val", 1.0))})


@_maps(aten.relu6.default)
def _relu6(c, a, k):
    return c.emit("hardtanh", [c.v(a[0])], {"min_val": 0.0, "max_val": 6.0})


@_maps(aten.clamp.default)
def _clamp(c, a, k):
    lo, hi = _arg(a, k, 1, "min"), _arg(a, k, 2, "max")
    if lo is None or hi is None:
        if lo == 0 or (lo is not None and hi is None and float(lo) == 0.0):
            return c.emit("relu", [c.v(a[0])])
        raise TraceError(f"{c.where()}: one-sided clamp is only supported as clamp(min=0)")
    return c.emit("hardtanh", [c.v(a[0])], {"min_val": float(lo), "max_val": float(hi)})


@_maps(aten.gelu.default)
def _gelu(c, a, k):
    return c.emit("gelu", [c.v(a[0])], {"approximate": _arg(a, k, 1, "approximate", "none")})


@_maps(aten.softmax.int, aten._softmax.default)
def _softmax(c, a, k):
    return c.emit("softmax", [_in_out_dtype(c, c.v(a[0]))], {"axis": int(a[1])})


@_maps(aten.log_softmax.int, aten._log_softmax.default)
def _log_softmax(c, a, k):
    return c.emit("log_softmax", [_in_out_dtype(c, c.v(a[0]))], {"axis": int(a[1])})


def _in_out_dtype(c, x: Value) -> Value:
    """``softmax(x, dtype=…)`` casts x first: the operand in the output's dtype."""
    want = dtype_from_torch(c.node.meta["val"].dtype)
    return x if want == x.dtype else c.emit("cast", [x], {"dtype": want},
                                            name=f"{c.node.name}_cast")


def _binary(op):
    def handler(c, a, k):
        alpha = _arg(a, k, 2, "alpha", 1)
        if isinstance(a[0], torch.fx.Node):
            x = c.v(a[0])
            y = c.scalar(a[1], x)
        else:
            y = c.v(a[1])
            x = c.scalar(a[0], y)
        if alpha != 1:
            if op not in ("add", "sub"):
                raise TraceError(f"{c.where()}: alpha is only meaningful for add/sub")
            y = c.emit("mul", [y, c.scalar(alpha, y)], name=f"{c.node.name}_alpha")
        return c.emit(op, [x, y])

    return handler


for _t, _op in ((aten.add.Tensor, "add"), (aten.add.Scalar, "add"), (aten.add_.Tensor, "add"),
                (aten.sub.Tensor, "sub"), (aten.sub.Scalar, "sub"),
                (aten.mul.Tensor, "mul"), (aten.mul.Scalar, "mul"), (aten.mul_.Tensor, "mul"),
                (aten.div.Tensor, "div"), (aten.div.Scalar, "div"),
                (aten.pow.Tensor_Scalar, "pow"), (aten.pow.Tensor_Tensor, "pow")):
    ATEN_MAP[_t] = _binary(_op)


@_maps(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(c, a, k):
    x = c.v(a[0])
    return c.emit("sub", [c.scalar(a[1], x), x])


@_maps(aten.cat.default, aten.concat.default)
def _cat(c, a, k):
    xs = [c.v(x) for x in a[0]]
    return c.emit("concat", xs, {"axis": int(_arg(a, k, 1, "dim", 0))})


def _split_out(c, x: Value, sizes: list[int], dim: int):
    return c.emit_multi("split", [x], {"axis": dim, "sizes": tuple(sizes)}, len(sizes))


@_maps(aten.split.Tensor)
def _split(c, a, k):
    x = c.v(a[0])
    size, dim = int(a[1]), int(_arg(a, k, 2, "dim", 0))
    c.no_batch(a[0], dim, "split")
    n = x.shape[dim]
    sizes = [size] * (n // size) + ([n % size] if n % size else [])
    return _split_out(c, x, sizes, dim)


@_maps(aten.split_with_sizes.default)
def _split_sizes(c, a, k):
    c.no_batch(a[0], int(_arg(a, k, 2, "dim", 0)), "split")
    return _split_out(c, c.v(a[0]), [int(s) for s in a[1]], int(_arg(a, k, 2, "dim", 0)))


@_maps(aten.chunk.default)
def _chunk(c, a, k):
    x, chunks, dim = c.v(a[0]), int(a[1]), int(_arg(a, k, 2, "dim", 0))
    c.no_batch(a[0], dim, "chunk")
    n = x.shape[dim]
    size = -(-n // chunks)
    sizes = [size] * (n // size) + ([n % size] if n % size else [])
    return _split_out(c, x, sizes, dim)


@_maps(aten.unbind.int)
def _unbind(c, a, k):
    x, dim = c.v(a[0]), int(_arg(a, k, 1, "dim", 0))
    c.no_batch(a[0], dim, "unbind")
    parts = _split_out(c, x, [1] * x.shape[dim], dim)
    vals = c.node.meta.get("val")
    return tuple(c.emit("reshape", [p], {"shape": c.view_shape(v)}) for p, v in zip(parts, vals))


@_maps(aten.slice.Tensor)
def _slice(c, a, k):
    x = c.v(a[0])
    dim = int(_arg(a, k, 1, "dim", 0))
    start, end = _arg(a, k, 2, "start"), _arg(a, k, 3, "end")
    n = x.shape[dim]
    start = 0 if start is None else int(start)
    end = n if end is None else min(int(end), n)
    step = int(_arg(a, k, 4, "step", 1))
    val, out = a[0].meta.get("val"), c.out_val()
    if c.depends(val.shape[dim]) or c.depends(out.shape[dim]):  # along the batch, or to it
        if c.same_shape(val, out):
            return x
        raise _NotBatch(f"{c.where()}: slices along the batch dim, or to a batch-dependent size")
    if start == 0 and end >= n and step == 1:
        return x
    return c.emit("slice", [x], {"axis": dim, "start": start, "end": end, "step": step})


@_maps(aten.select.int)
def _select(c, a, k):
    x, dim, idx = c.v(a[0]), int(a[1]), int(a[2])
    c.no_batch(a[0], dim, "select")
    n = x.shape[dim]
    idx = idx % n
    s = c.emit("slice", [x], {"axis": dim, "start": idx, "end": idx + 1, "step": 1},
               name=f"{c.node.name}_slice")
    return c.emit("reshape", [s], {"shape": c.view_shape(c.out_val())})


@_maps(aten.view.default, aten.reshape.default, aten._unsafe_view.default,
       aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
       aten.view_copy.default)
def _reshape(c, a, k):
    x, val = c.v(a[0]), c.out_val()
    if c.same_shape(a[0].meta["val"], val):
        return x
    return c.emit("reshape", [x], {"shape": c.view_shape(val)})


@_maps(aten.flatten.using_ints)
def _flatten(c, a, k):
    return c.emit("flatten", [c.v(a[0])], {"start_dim": int(_arg(a, k, 1, "start_dim", 0)),
                                          "end_dim": int(_arg(a, k, 2, "end_dim", -1))})


@_maps(aten.permute.default)
def _permute(c, a, k):
    return c.emit("permute", [c.v(a[0])], {"perm": tuple(int(d) for d in a[1])})


@_maps(aten.transpose.int)
def _transpose(c, a, k):
    x = c.v(a[0])
    r = x.type.rank
    d0, d1 = int(a[1]) % r, int(a[2]) % r
    perm = list(range(r))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return c.emit("permute", [x], {"perm": tuple(perm)})


@_maps(aten.t.default, aten.numpy_T.default)
def _t(c, a, k):
    x = c.v(a[0])
    if x.type.rank < 2:
        return x
    return c.emit("permute", [x], {"perm": tuple(reversed(range(x.type.rank)))})


@_maps(aten.expand.default)
def _expand(c, a, k):
    x, val, src = c.v(a[0]), c.out_val(), a[0].meta["val"]
    if c.same_shape(src, val):
        return x
    shape = list(c.out_shape())
    lead = val.dim() - src.dim()
    for i in c.batch_dims(val):  # -1 keeps a batch dim the input has; expanding to the
        if i >= lead and c.sym_shape(src)[i - lead] == c.sym_shape(val)[i]:  # batch stays
            shape[i] = -1  # a size here, made batch-relative by ir.batch.merge (or refused)
    return c.emit("expand", [x], {"shape": tuple(shape)})


# tensors of a given size filled with one value, when the size depends on the batch (with
# static sizes torch_fold folds them): a scalar expanded to the size, which ir.batch.merge
# makes read the batch at run time (expand(x, like))
_FILLED = {aten.ones.default: 1, aten.zeros.default: 0, aten.empty.memory_format: 0,
           aten.new_ones.default: 1, aten.new_zeros.default: 0, aten.new_empty.default: 0,
           aten.ones_like.default: 1, aten.zeros_like.default: 0, aten.empty_like.default: 0}


@_maps(*_FILLED, aten.full.default, aten.new_full.default, aten.full_like.default)
def _filled(c, a, k):
    val = c.out_val()
    if c.node.target in _FILLED:
        fill = _FILLED[c.node.target]
    else:
        fill = a[1] if c.node.target == aten.full.default else a[2] if (
            c.node.target == aten.new_full.default) else a[1]
    if isinstance(fill, torch.fx.Node):
        raise TraceError(f"{c.where()}: the fill value is computed, not a constant")
    from ..types import to_numpy_dtype

    dtype = dtype_from_torch(val.dtype)
    scalar = c.g.add_constant(np.array(fill, dtype=to_numpy_dtype(dtype)),
                              c.g.fresh_name(f"{c.node.name}_fill"))
    return c.emit("expand", [scalar], {"shape": c.out_shape()})


@_maps(aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
       aten.lift_fresh_copy.default)
def _alias(c, a, k):
    return c.v(a[0])


@_maps(aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default)
def _dropout(c, a, k):
    if _arg(a, k, 2, "train", False):
        raise TraceError(f"{c.where()}: dropout in training mode (call model.eval())")
    return c.emit("dropout", [c.v(a[0])], {"p": float(_arg(a, k, 1, "p", 0.5))})


def _pool_common(c, a, k):
    kernel = _pair(a[1])
    stride = _arg(a, k, 2, "stride", None)
    stride = kernel if not stride else _pair(stride)
    return kernel, stride, _pair(_arg(a, k, 3, "padding", 0))


@_maps(aten.max_pool2d.default)
def _max_pool(c, a, k):
    kernel, stride, padding = _pool_common(c, a, k)
    return c.emit("max_pool2d", [c.v(a[0])], {
        "kernel": kernel, "stride": stride, "padding": padding,
        "dilation": _pair(_arg(a, k, 4, "dilation", 1)),
        "ceil_mode": bool(_arg(a, k, 5, "ceil_mode", False))})


@_maps(aten.max_pool2d_with_indices.default)
def _max_pool_idx(c, a, k):
    out = _max_pool(c, a, k)
    return (out, None)


@_maps(aten.avg_pool2d.default)
def _avg_pool(c, a, k):
    kernel, stride, padding = _pool_common(c, a, k)
    if _arg(a, k, 6, "divisor_override") is not None:
        raise TraceError(f"{c.where()}: avg_pool2d divisor_override is not supported")
    return c.emit("avg_pool2d", [c.v(a[0])], {
        "kernel": kernel, "stride": stride, "padding": padding,
        "ceil_mode": bool(_arg(a, k, 4, "ceil_mode", False)),
        "count_include_pad": bool(_arg(a, k, 5, "count_include_pad", True))})


@_maps(aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
def _adaptive(c, a, k):
    return c.emit("adaptive_avg_pool2d", [c.v(a[0])], {"output_size": _pair(a[1])})


@_maps(aten.mean.dim, aten.sum.dim_IntList)
def _reduce(c, a, k):
    x = c.v(a[0])
    dims = _arg(a, k, 1, "dim")
    dims = tuple(range(x.type.rank)) if dims is None else tuple(int(d) for d in (
        [dims] if isinstance(dims, int) else dims))
    if _arg(a, k, 3, "dtype") is not None:
        raise TraceError(f"{c.where()}: reductions with a dtype argument are not supported")
    op = "mean" if c.node.target == aten.mean.dim else "sum"
    return c.emit(op, [x], {"axes": dims, "keepdim": bool(_arg(a, k, 2, "keepdim", False))})


@_maps(aten.mean.default)
def _mean_all(c, a, k):
    x = c.v(a[0])
    return c.emit("mean", [x], {"axes": tuple(range(x.type.rank)), "keepdim": False})


@_maps(aten.embedding.default)
def _embedding(c, a, k):
    return c.emit("embedding", [c.v(a[1]), c.v(a[0])])


@_maps(aten._to_copy.default, aten.to.dtype)
def _to(c, a, k):
    x = c.v(a[0])
    val = c.node.meta.get("val")
    dtype = dtype_from_torch(val.dtype)
    return x if dtype == x.dtype else c.emit("cast", [x], {"dtype": dtype})


@_maps(operator.getitem)
def _getitem(c, a, k):
    src = c.env[a[0].name]
    item = src[a[1]]
    if item is None:
        raise TraceError(f"{c.where()}: uses an output that the IR does not compute")
    return item


# ============================================================================ sizes
# fx nodes that compute python ints from sizes (``b, n, c = x.shape``; ``x.shape[0] * 4``)
_SYM_OPS = {aten.sym_size.int, aten.sym_numel.default, operator.mul, operator.add,
            operator.sub, operator.floordiv, operator.mod, operator.neg, torch.sym_int,
            torch.sym_max, torch.sym_min}
# ops whose size arguments may depend on the batch: their handlers read the symbolic result
# shape instead (batch-relative attributes) or check that the result is the input
_SIZE_ARGS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
              aten.view_copy.default, aten.expand.default, aten.slice.Tensor,
              aten.ones.default, aten.zeros.default, aten.empty.memory_format,
              aten.full.default, aten.new_ones.default, aten.new_zeros.default,
              aten.new_empty.default, aten.new_full.default}


def _resolve(c: _Ctx, arg, used: list[bool]):
    """``arg`` with every fx node that computes a size replaced by its nominal value."""
    if isinstance(arg, torch.fx.Node) and isinstance(c.env.get(arg.name), _Sym):
        sym = c.env[arg.name]
        used[0] = used[0] or sym.depends
        return sym.value
    if isinstance(arg, (list, tuple)):
        return type(arg)(_resolve(c, x, used) for x in arg)
    return arg


# ============================================================================ driver
def _export(model, args: tuple, kwargs: dict, dynamic_shapes=None):
    # torch.export prints the FX graph of a failed export to stderr itself: library code
    # logs, so that text goes to the log (INFO) instead
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return torch.export.export(model, args, kwargs or None,
                                       dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        name = type(e).__name__
        text = str(e).strip().splitlines()
        first = next((s for s in text if s.strip()), name)
        if "data-dependent" in str(e) or "GuardOnDataDependent" in name or "Could not guard" in str(e):
            raise TraceError(f"trace: {type(model).__name__} has data-dependent control flow "
                             f"(a Python branch or loop on tensor values), which torch.export "
                             f"cannot capture: {first}") from None
        if dynamic_shapes is not None and ("specialized it to be a constant" in str(e)
                                           or "Constraints violated" in str(e)):
            m = re.search(r"specialized it to be a constant \((\d+)\)", str(e))
            raise _NotBatch(f"torch.export cannot keep the batch dynamic: the model's code "
                            f"specialises it to {m.group(1) if m else 'a constant'} (a view or "
                            f"reshape with a literal batch, or a branch on the batch size)"
                            ) from None
        raise TraceError(f"trace: torch.export failed on {type(model).__name__}: {name}: {first}"
                         ) from None
    finally:
        if printed.getvalue().strip():
            log.info("torch.export printed:\n%s", printed.getvalue().rstrip())


@contextlib.contextmanager
def _guards_added(out: list[str]):
    """Collect torch's "[guard added]" log lines (expression and source line) meanwhile,
    without printing them."""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.match(r"eval (.+?) \[guard added\](?: \((.+?)\))?", record.getMessage())
            if m:
                expr = re.sub(r"\bs\d+\b", "batch", m.group(1))
                out.append(expr + (f" at {m.group(2)}" if m.group(2) else ""))

    # torch gives this logger a stderr handler of its own (torch._logging): set it aside
    level, propagate, handlers = logger.level, logger.propagate, logger.handlers[:]
    logger.handlers = [Collect()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _user_guard(guards: list[str]) -> str:
    """The first guard raised outside torch itself (the model's own line), if any."""
    for gd in guards:
        where = gd.rsplit(" at ", 1)[-1]
        if " at " in gd and not re.match(r"^(_refs|_prims|_decomp|_subclasses|fx|_export|"
                                         r"torch|_meta|_ops|nn/functional)", where):
            return f" (guard {gd})"
    return ""


def _trace_dynamic(model, args: tuple, kwargs: dict, name: str) -> tuple[Graph | None, str]:
    """The batch-polymorphic graph, or (None, why not)."""
    flat = list(args) + list(kwargs.values())
    if not flat or flat[0].dim() == 0 or flat[0].shape[0] < 1:
        return None, "the first input has no batch dim"
    n0 = int(flat[0].shape[0])
    is_batch = [x.dim() > 0 and int(x.shape[0]) == n0 for x in flat]
    # torch.export specialises sizes 0 and 1: trace an example of batch 1 as two copies
    grown = [torch.cat([x, x]) if b and n0 == 1 else x for x, b in zip(flat, is_batch)]
    targs, tkwargs = tuple(grown[:len(args)]), dict(zip(kwargs, grown[len(args):]))
    dim = torch.export.Dim("batch")
    specs = [{0: dim} if b else None for b in is_batch]
    if kwargs:
        try:
            bound = inspect.signature(model.forward).bind(*targs, **tkwargs)
        except (TypeError, ValueError) as e:
            return None, f"cannot name the inputs for a dynamic batch: {e}"
        names = list(bound.arguments)
        dynamic: Any = {n: specs[i] for i, n in enumerate(names[:len(args)])}
        dynamic.update({k: specs[len(args) + i] for i, k in enumerate(kwargs)})
    else:
        dynamic = tuple(specs)
    guards: list[str] = []
    probes = ir_batch.MERGE_PROBES
    try:
        with _guards_added(guards):
            ep = _export(model, targs, tkwargs, dynamic_shapes=dynamic)
        # converted at two batches: a size a handler computed from the batch (a reshape of
        # x.shape) differs between them and is made batch-relative by merge(), or refused
        ga, gb = (from_exported(ep, name=name, batch=n) for n in probes)
    except _NotBatch as e:
        return None, f"{e}{_user_guard(guards)}"
    except TraceError as e:  # the static trace names the problem again, or gets past it
        return None, f"the dynamic-batch trace failed: {e}"
    names = [v.name for v in ir_batch.batch_inputs(ga)]
    if not names:
        return None, "no input kept a dynamic batch"
    try:
        g = ir_batch.merge(ga, gb, names, *probes)
        g = ir_batch.specialize(g, n0, share_data=True)
    except ir_batch.BatchError as e:
        return None, str(e)
    # the eager model at the example's own batch (torch.export assumed >= 2) has the shapes
    # of the graph
    leaves = [t for t in torch.utils._pytree.tree_leaves(model(*args, **kwargs))
              if isinstance(t, torch.Tensor)]
    if len(leaves) == len(g.outputs):
        got = [tuple(t.shape) for t in leaves]
        want = [v.shape for v in g.outputs]
        if got != want:
            return None, (f"at batch {n0} the model returns shapes {got}, its dynamic-batch "
                          f"trace {want} (the model treats batch {n0} specially)")
    return g, ""


def trace(model, example_inputs, *, kwargs: dict | None = None, name: str | None = None,
          batch: bool = True) -> Graph:
    """``torch.nn.Module`` → IR graph. ``example_inputs`` is a tensor or a tuple of tensors;
    keyword inputs go in ``kwargs``. The model is put in eval mode (then restored).

    ``batch=True``: axis 0 of every input whose dim 0 is the first input's is the batch; the
    graph (types at the examples' batch) is batch-polymorphic when that is provable (module
    docstring), else static-batch with the reason in ``graph.meta["batch_static"]``.
    ``batch=False``: every shape static, as in the examples."""
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"trace expects a torch.nn.Module, got {type(model).__name__}")
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    kwargs = dict(kwargs or {})
    for i, x in enumerate(list(args) + list(kwargs.values())):
        if not isinstance(x, torch.Tensor):
            raise TraceError(f"trace: example input {i} is a {type(x).__name__}, not a tensor")
    name = name or type(model).__name__
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            g, reason = _trace_dynamic(model, args, kwargs, name) if batch else (None, "")
            if g is None:
                g = from_exported(_export(model, args, kwargs), name=name)
                if batch:
                    ir_batch.set_static(g, reason)
                    log.info("trace %s: static batch: %s", name, reason)
    finally:
        model.train(was_training)
    return g


def from_exported(ep: torch.export.ExportedProgram, name: str = "main", *,
                  batch: int | None = None) -> Graph:
    """Convert an ``ExportedProgram`` (not decomposed) to the IR. A program exported with a
    dynamic dim 0 needs ``batch``: the types are at that batch, sizes that depend on it
    become batch-relative, and the inputs / outputs whose dim 0 is the dynamic dim are
    marked (unchecked: ``ir.batch.check`` proves it)."""
    sig = ep.graph_signature
    g = Graph(name)
    c = _Ctx(g, batch)
    state = dict(ep.state_dict)
    consts = dict(getattr(ep, "constants", {}) or {})
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    user_inputs = list(sig.user_inputs)
    params: set[int] = set()  # ids of the constants that are parameters (never folded into)
    batch_in: list[int] = []
    for node in ep.graph_module.graph.nodes:
        c.node, c.loc = node, _module_path(node)
        if node.op == "placeholder":
            if node.name in lifted:
                fqn = lifted[node.name]
                t = state[fqn] if fqn in state else consts[fqn]
                arr = t.detach().cpu().contiguous().numpy().copy()
                c.env[node.name] = g.add_constant(arr, g.fresh_name(fqn))
                if node.name in sig.inputs_to_parameters:
                    params.add(id(c.env[node.name]))
            elif node.name in user_inputs:
                val = node.meta["val"]
                lead = val.shape[0] if val.dim() else None
                if batch is not None and isinstance(lead, torch.SymInt) and getattr(
                        lead.node.expr, "is_Symbol", False):
                    c.batch_syms.add(lead.node.expr)
                    batch_in.append(len(g.inputs))
                try:
                    t = c.ir_type(val)
                except (TypeError, ValueError, TraceError):
                    raise TraceError(f"trace: input {node.name} has a non-static shape") from None
                c.env[node.name] = g.add_input(t, g.fresh_name(node.name))
            else:
                raise TraceError(f"trace: placeholder {node.name} is neither an input nor a weight")
        elif node.op == "call_function" and node.target in _SYM_OPS:
            val = node.meta.get("val")
            if not isinstance(val, (int, torch.SymInt)) or isinstance(val, bool):
                raise TraceError(f"trace: {c.where()}: computes {val!r}, not a size")
            c.env[node.name] = _Sym(c.size(val), c.depends(val))
        elif node.op == "call_function":
            if node.target in torch_fold.DROP:
                c.env[node.name] = None
                continue
            special = _batch_arange(c, node) if c.batch_syms else NotImplemented
            if special is not NotImplemented:
                c.env[node.name] = special
                if isinstance(special, Value):
                    _check_type(c, node)
                continue
            folded = torch_fold.fold(node, c.env, params)
            if folded is not torch_fold.NOT_FOLDED:
                c.env[node.name] = _as_constants(c, folded)
                _check_type(c, node)
                continue
            handler = ATEN_MAP.get(node.target)
            if handler is None:
                raise TraceError(f"trace: cannot map ATen op {node.target} to the IR, at "
                                 f"module {c.loc or '<top>'}"
                                 + (f" ({_source_line(node)})" if _source_line(node) else "")
                                 + ". Supported ops are listed in shrinkc.ir.frontends.torch.ATEN_MAP")
            used = [False]
            args = tuple(_resolve(c, a, used) for a in node.args)
            kwargs = {k: _resolve(c, v, used) for k, v in node.kwargs.items()}
            if used[0] and node.target not in _SIZE_ARGS:
                raise _NotBatch(f"{c.where()}: takes a size computed from the batch "
                                f"(x.shape[0]) as an argument, which the IR stores statically")
            try:
                c.env[node.name] = handler(c, args, kwargs)
            except (TraceError, _NotBatch):
                raise
            except IRError as e:
                raise TraceError(f"trace: {c.where()}: {e}") from None
            _check_type(c, node)
        elif node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            vals = []
            batch_out = []
            for o in outs:
                v = c.env.get(o.name) if isinstance(o, torch.fx.Node) else None
                if not isinstance(v, Value):
                    raise TraceError(f"trace: model output {o} is not a tensor")
                val = o.meta.get("val")
                if (c.batch_syms and isinstance(val, torch.Tensor) and val.dim()
                        and isinstance(val.shape[0], torch.SymInt)
                        and val.shape[0].node.expr in c.batch_syms):
                    batch_out.append(len(vals))
                vals.append(v)
            g.outputs = vals
            if batch_in:
                ir_batch.set_marks(g, batch_in, batch_out)
        else:
            raise TraceError(f"trace: unexpected fx node kind {node.op} ({node.name})")
    # user inputs that are aliased (identity outputs) are fine; unused constants go
    g.dce()
    return g


def _as_constants(c: _Ctx, x: Any) -> Any:
    """A folded result as IR constants (tensors), tuples of them, or python values."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().contiguous().numpy().copy()
        return c.g.add_constant(arr, c.g.fresh_name(c.node.name))
    if isinstance(x, (list, tuple)):
        return tuple(_as_constants(c, e) for e in x)
    return x


def _check_type(c: _Ctx, node: torch.fx.Node) -> None:
    val, got = node.meta.get("val"), c.env[node.name]
    if isinstance(val, torch.Tensor) and isinstance(got, Value):
        want = c.ir_type(val)
        if got.type != want:
            raise TraceError(f"trace: {c.where()}: IR type {got.type} differs from torch's {want}")


from . import torch_aten  # noqa: E402,F401  (more handlers: comparisons, indexing, attention, …)
