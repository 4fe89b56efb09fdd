"""Batch-polymorphic graphs: traced at one batch size, run at any.

A graph's types are those at its *nominal* batch: the batch it was traced or imported at
(the cost model's MACs and bytes are at that batch too). ``graph.meta["batch"]``
(``BatchAxes``) lists the inputs and outputs that carry the batch at axis 0, and the text
form marks them (``%x: f32[1,3,32,32] batch`` … ``return %y batch``). A graph with batch
inputs is *batch-polymorphic*: it runs at any batch ``n >= 1`` (every batch input with
dim 0 = ``n``, its other dims as typed), and the result is what running each sample alone
and concatenating along axis 0 gives — the samples are independent. Attributes that would
store a batch-dependent size are batch-relative: ``reshape(shape=[-1, 512])``, ``expand``
with -1 (keep that dim). A graph without marks is *static-batch*; the frontends record
why in ``graph.meta["batch_static"]``.

``check(graph)`` is the proof, and the verifier runs it on every marked graph. It re-infers
every type at batches 2 and 3 (two sizes, neither 1, so no dim of size 1 broadcasting
against the batch can pass for it) and requires that

1. every node infers at both (no attribute stores the nominal batch);
2. every node treats the batch-dependent dims of its operands as independent samples
   (``SAMPLE_DIMS``: any dim of an element-wise op, dim 0 of a conv, every dim but the
   last of a linear, every dim but the reduced ones of a mean or softmax, …); so a softmax
   or mean over the batch, a concat / split / slice along it, a matmul contracting it, a
   reshape that moves it out of dim 0 are refused, naming the node;
3. no node drops every batch-dependent dim (a reduction over the batch) or makes more of
   them than an operand has (an outer product over the batch);
4. every graph output computed from a batch input is marked, has the batch in dim 0 only
   and exactly (not ``4 × batch``); batch inputs agree on the nominal batch.

``specialize(graph, n)`` is the same graph at nominal batch ``n`` (types re-inferred):
what a backend with static shapes (TVM) compiles. ``mark(graph)`` proves and marks a graph
built by hand or parsed without marks. ``merge(ga, gb, …)`` makes one batch-polymorphic
graph of two brought in at two batches (``MERGE_PROBES``: the torch frontend converts its
dynamic-batch program at both, the ONNX frontend folds its shape chains at both): the
attributes that differ become batch-relative where they can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from . import ops
from .errors import IRError
from .graph import Graph, Node, Value
from .types import TensorType

__all__ = ["KEY", "MERGE_PROBES", "PROBES", "SAMPLE_DIMS", "STATIC_KEY", "BatchAxes", "BatchError", "analyze",
           "batch_inputs", "batch_outputs", "batch_values", "check", "is_polymorphic", "mark",
           "marks", "merge", "nominal_batch", "set_marks", "set_static", "specialize",
           "static_message"]

KEY = "batch"  # graph.meta key: BatchAxes
STATIC_KEY = "batch_static"  # graph.meta key: why the graph is static-batch
PROBES = (2, 3)  # the batches check() re-infers at
# the batches the frontends bring a model in at, for merge(): not 1 or 2, which a model's own
# literal sizes often are (a size that happens to equal the batch changes no decision)
MERGE_PROBES = (3, 5)


class BatchError(IRError):
    """A graph that cannot run (or be specialised) at the batch asked for."""


@dataclass(frozen=True)
class BatchAxes:
    """Which graph inputs / outputs (by position) carry the batch at axis 0."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


# ============================================================================ marks
def marks(graph: Graph) -> BatchAxes | None:
    return graph.meta.get(KEY)


def is_polymorphic(graph: Graph) -> bool:
    """Whether ``graph`` is marked batch-polymorphic (has batch inputs)."""
    m = marks(graph)
    return m is not None and bool(m.inputs)


def batch_inputs(graph: Graph) -> list[Value]:
    m = marks(graph)
    return [graph.inputs[i] for i in m.inputs] if m else []


def batch_outputs(graph: Graph) -> list[Value]:
    m = marks(graph)
    return [graph.outputs[i] for i in m.outputs] if m else []


def nominal_batch(graph: Graph) -> int | None:
    """The batch the graph's types are at (dim 0 of its batch inputs); None if static."""
    ins = batch_inputs(graph)
    return ins[0].shape[0] if ins and ins[0].type.rank else None


def batch_values(graph: Graph) -> set[int]:
    """``id`` of every value computed from a batch input (the batch inputs included). In a
    graph whose marks hold, each carries the batch; a reshape's or flatten's in dim 0."""
    ids = {id(v) for v in batch_inputs(graph)}
    for node in graph.nodes:
        if any(id(v) in ids for v in node.inputs):
            ids.update(id(o) for o in node.outputs)
    return ids


def set_marks(graph: Graph, inputs: Iterable[int], outputs: Iterable[int]) -> None:
    """Record batch inputs / outputs by position, unchecked (``check`` / the verifier check)."""
    graph.meta[KEY] = BatchAxes(tuple(sorted(set(inputs))), tuple(sorted(set(outputs))))
    graph.meta.pop(STATIC_KEY, None)


def set_static(graph: Graph, reason: str | None) -> None:
    """Drop the marks; ``reason`` says why the graph is static-batch (kept for errors)."""
    graph.meta.pop(KEY, None)
    if reason:
        graph.meta[STATIC_KEY] = reason


# ============================================================================ per-op rules
# For each op: the dims of each operand that may carry the batch, i.e. that the op treats as
# independent samples (None = every dim). An op without a rule and not element-wise (kind
# "unary" / "binary") may not take a batch-dependent operand.
Rule = Callable[[list[TensorType], dict], list[frozenset[int] | None]]
_NONE: frozenset[int] = frozenset()


def _every(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [None] * len(ts)


def _first(*dims: int) -> Rule:
    return lambda ts, a: [frozenset(dims)] + [_NONE] * (len(ts) - 1)


def _but_axis(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [frozenset(range(t.rank)) - {a["axis"] % max(t.rank, 1)} for t in ts]


def _but_axes(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    r = ts[0].rank
    axes = {d % max(r, 1) for d in a["axes"]} if a["axes"] else set(range(r))
    return [frozenset(range(r)) - axes]


def _linear(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [frozenset(range(ts[0].rank - 1))] + [_NONE] * (len(ts) - 1)


def _matmul(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    ra, rb = ts[0].rank, ts[1].rank  # contracted: a's last dim, b's second to last
    return [frozenset(range(ra)) - {ra - 1},
            frozenset(range(rb)) - {rb - 2} if rb >= 2 else _NONE]


def _layer_norm(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [frozenset(range(ts[0].rank - len(a["normalized_shape"])))] + [_NONE] * (len(ts) - 1)


def _batch_norm(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [frozenset(range(ts[0].rank)) - {1}] + [_NONE] * (len(ts) - 1)


def _data_only(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [None] + [_NONE] * (len(ts) - 1)


def _but_channels(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [frozenset(range(ts[0].rank)) - {1}] + [_NONE] * (len(ts) - 1)


def _gather(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    r = ts[0].rank
    return [frozenset(range(r)) - {a["axis"] % max(r, 1)}, None]


def _gather_elements(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    return [frozenset(range(t.rank)) - {a["axis"] % max(t.rank, 1)} for t in ts]


def _unpadded(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    r, p = ts[0].rank, a["pads"]
    return [frozenset(d for d in range(r) if p[d] == 0 and p[r + d] == 0)]


def _untiled(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    reps = a["repeats"]
    lead = ts[0].rank - len(reps)  # torch.tile: repeats align to the trailing dims
    return [frozenset(d for d in range(ts[0].rank) if d < lead or reps[d - lead] == 1)]


def _expand(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    # like gives sizes only, in the dims where the shape says 0 (its batch, for instance)
    return [None] + ([frozenset(i for i, d in enumerate(a["shape"]) if d == 0)]
                     if len(ts) > 1 else [])


def _attention(ts: list[TensorType], a: dict) -> list[frozenset[int] | None]:
    q, k, v = (t.rank for t in ts[:3])  # q [..., L, E], k [..., S, E], v [..., S, Ev]
    out = [frozenset(range(q - 1)), frozenset(range(k - 2)), frozenset(range(v)) - {v - 2}]
    if len(ts) > 3:  # mask [..., L, S]
        out.append(frozenset(range(ts[3].rank - 1)))
    return out


SAMPLE_DIMS: dict[str, Rule] = {
    "conv2d": _first(0), "conv_transpose2d": _first(0), "group_norm": _first(0),
    "max_pool2d": _first(0, 1), "avg_pool2d": _first(0, 1), "adaptive_avg_pool2d": _first(0, 1),
    "linear": _linear, "matmul": _matmul, "batch_norm": _batch_norm, "layer_norm": _layer_norm,
    "embedding": _data_only, "quantize": _data_only, "dequantize": _data_only,
    "softmax": _but_axis, "log_softmax": _but_axis, "mean": _but_axes, "sum": _but_axes,
    "concat": _but_axis, "split": _but_axis, "slice": _but_axis,
    # row-major reshapes keep each sample a contiguous block only while the batch is dim 0
    # (possibly merged with the dims after it), before and after: also checked on the output
    "reshape": _first(0), "flatten": _first(0),
    "permute": _every, "expand": _expand, "where": _every,
    "conv3d": _first(0), "max_pool3d": _first(0, 1), "avg_pool3d": _first(0, 1),
    "upsample": _first(0, 1), "lrn": _but_channels, "circulant_matmul": _linear,
    "max": _but_axes, "min": _but_axes, "cumsum": _but_axis,
    "gather": _gather, "gather_elements": _gather_elements, "pad": _unpadded,
    "tile": _untiled, "scaled_dot_product_attention": _attention,
    "fake_quantize": _data_only,
    # ONNX's DynamicQuantizeLinear: the scale and zero point (outputs 1, 2) are the range of
    # the whole tensor, batch included, so its samples are not independent — the one op
    # allowed to be so: the graph runs at any batch, and its results depend on the batch's
    # range exactly as onnxruntime's do
    "dynamic_quantize": _every,
}
_DIM0_OUT = frozenset({"reshape", "flatten"})
# outputs that are statistics over the whole batch (exempt from "drops the batch")
_BATCH_WIDE_OUTPUTS: dict[str, frozenset[int]] = {"dynamic_quantize": frozenset({1, 2})}


def _rule(op: str) -> Rule | None:
    if op in SAMPLE_DIMS:
        return SAMPLE_DIMS[op]
    kind = ops.OPS[op].kind if op in ops.OPS else None
    return _every if kind in ("unary", "binary") else None


# ============================================================================ the proof
def _probe(graph: Graph, ids: set[int], n: int) -> dict[int, TensorType] | tuple[Node, str]:
    """Every value's type with the inputs in ``ids`` at batch ``n``; or (node, error)."""
    types: dict[int, TensorType] = {}
    for v in graph.inputs:
        types[id(v)] = v.type.with_shape((n,) + v.shape[1:]) if id(v) in ids else v.type
    for v in graph.constants.values():
        types[id(v)] = v.type
    for node in graph.nodes:
        try:
            outs = ops.get(node.op).infer([types[id(v)] for v in node.inputs], node.attrs)
        except IRError as e:
            return node, str(e)
        except KeyError:
            return node, "an operand is not defined before it"
        for o, t in zip(node.outputs, outs):
            types[id(o)] = t
    return types


def _dims(ds: Iterable[int]) -> str:
    ds = sorted(ds)
    return f"dim {ds[0]}" if len(ds) == 1 else f"dims {ds}"


def analyze(graph: Graph, inputs: Sequence[Value]) -> tuple[list[int], str | None]:
    """Treat axis 0 of ``inputs`` as the batch: the positions of the outputs that carry it,
    and None — or ``([], reason)`` naming the first node (or value) that breaks a rule of the
    module docstring."""
    if not inputs:
        return [], "no input carries a batch"
    for v in inputs:
        if v.type.rank == 0:
            return [], f"input %{v.name} is a scalar: it has no batch dim"
    n0 = {v.shape[0] for v in inputs}
    if len(n0) > 1:
        return [], (f"the batch inputs disagree on dim 0 ("
                    + ", ".join(f"%{v.name}: {v.shape[0]}" for v in inputs) + ")")
    nominal = n0.pop()
    if nominal < 1:
        return [], f"the batch inputs have dim 0 = {nominal}"
    ids = {id(v) for v in inputs}
    probes = []
    for b in PROBES:
        got = _probe(graph, ids, b)
        if isinstance(got, tuple):
            node, err = got
            return [], f"node {node.describe()}: at batch {b}: {err}"
        probes.append(got)

    def batch_dims(v: Value) -> frozenset[int] | None:
        shapes = [v.shape] + [p[id(v)].shape for p in probes]
        if any(len(s) != len(v.shape) for s in shapes):
            return None
        return frozenset(i for i in range(len(v.shape)) if len({s[i] for s in shapes}) > 1)

    dims: dict[int, frozenset[int]] = {id(v): frozenset({0}) for v in inputs}
    for node in graph.nodes:
        ins = [dims.get(id(v), _NONE) for v in node.inputs]
        outs = []
        for o in node.outputs:
            d = batch_dims(o)
            if d is None:
                return [], f"node {node.describe()}: the rank of %{o.name} changes with the batch"
            dims[id(o)] = d
            outs.append(d)
        where = f"node {node.describe()}: {node.op}"
        if not any(ins):
            if any(outs):
                return [], f"{where}: its result depends on the batch but no operand does"
            continue
        rule = _rule(node.op)
        if rule is None:
            return [], (f"{where} has no batch rule (shrinkc.ir.batch.SAMPLE_DIMS), so whether "
                        f"it keeps the samples of a batch apart is unknown")
        allowed = rule([v.type for v in node.inputs], node.attrs)
        for i, (v, d) in enumerate(zip(node.inputs, ins)):
            ok = allowed[i] if i < len(allowed) else _NONE
            if d and ok is not None and not d <= ok:
                return [], (f"{where} mixes the samples of a batch: operand %{v.name} carries "
                            f"the batch in {_dims(d - ok)}, which {node.op} does not treat as "
                            f"independent samples")
        most = max(len(d) for d in ins)
        wide = _BATCH_WIDE_OUTPUTS.get(node.op, _NONE)
        for k, (o, d) in enumerate(zip(node.outputs, outs)):
            if not d and k in wide:
                continue
            if not d:
                return [], f"{where} drops the batch: %{o.name} has no batch-dependent dim"
            if len(d) > most:
                return [], (f"{where} combines the batch dims of its operands into %{o.name} "
                            f"({_dims(d)}): an outer product over the batch")
            if node.op in _DIM0_OUT and d != {0}:
                return [], (f"{where} moves the batch out of dim 0: %{o.name} has it in "
                            f"{_dims(d)}")
    out_idx = []
    for i, v in enumerate(graph.outputs):
        d = dims.get(id(v), _NONE)
        if not d:
            continue
        if d != {0}:
            return [], f"graph output %{v.name} carries the batch in {_dims(d)}, not dim 0 alone"
        sizes = [v.shape[0]] + [p[id(v)].shape[0] for p in probes]
        if sizes != [nominal, *PROBES]:
            at = ", ".join(f"{s} at batch {b}" for s, b in zip(sizes, [nominal, *PROBES]))
            return [], f"graph output %{v.name} has dim 0 = {at}: not the batch itself"
        out_idx.append(i)
    return out_idx, None


def check(graph: Graph) -> str | None:
    """Why the batch marks of ``graph`` do not hold (None when they do, or it has none)."""
    m = marks(graph)
    if m is None:
        return None
    if not m.inputs:
        return "batch outputs are marked but no batch input" if m.outputs else None
    for what, idx, n in (("input", m.inputs, len(graph.inputs)),
                         ("output", m.outputs, len(graph.outputs))):
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            return f"batch {what} position(s) {bad} out of range (the graph has {n})"
    outs, reason = analyze(graph, [graph.inputs[i] for i in m.inputs])
    if reason:
        return reason
    for i in sorted(set(outs) - set(m.outputs)):
        return (f"graph output %{graph.outputs[i].name} carries the batch but is not marked "
                f"(after editing a graph's inputs or outputs, shrinkc.ir.batch.mark(graph) "
                f"marks it again)")
    for i in sorted(set(m.outputs) - set(outs)):
        return (f"graph output %{graph.outputs[i].name} is marked as carrying the batch but "
                f"does not depend on a batch input")
    return None


def _candidates(graph: Graph) -> list[Value]:
    """Default batch inputs of an unmarked graph: those whose dim 0 is the first input's."""
    if not graph.inputs or graph.inputs[0].type.rank == 0:
        return []
    n = graph.inputs[0].shape[0]
    return [v for v in graph.inputs if v.type.rank and v.shape[0] == n]


def mark(graph: Graph, inputs: Iterable[Value | str] | None = None) -> Graph:
    """Prove that axis 0 of ``inputs`` (default: every input whose dim 0 is the first
    input's) is a batch and mark ``graph`` (in place; returned). Raises ``BatchError``
    with the reason when it is not."""
    if inputs is None:
        values = _candidates(graph)
    else:
        values = [graph.value(v) if isinstance(v, str) else v for v in inputs]
    outs, reason = analyze(graph, values)
    if reason:
        raise BatchError(f"graph {graph.name} is not batch-polymorphic: {reason}")
    ids = {id(v) for v in values}
    set_marks(graph, [i for i, v in enumerate(graph.inputs) if id(v) in ids], outs)
    return graph


def static_message(graph: Graph, n: int, inputs: Sequence[Value] | None = None) -> str:
    """Why ``graph`` cannot run at batch ``n`` (for a static-batch graph)."""
    reason = graph.meta.get(STATIC_KEY)
    cands = list(inputs) if inputs is not None else _candidates(graph)
    if reason is None:
        _, reason = analyze(graph, cands) if cands else ([], "no input has a batch dim")
    if reason is None:
        reason = ("it has no batch marks (shrinkc.ir.batch.mark(graph) proves and marks "
                  "them)")
    at = f" (its types are at batch {cands[0].shape[0]})" if cands else ""
    return f"graph {graph.name} is static-batch{at}; it cannot run at batch {n}: {reason}"


def specialize(graph: Graph, n: int, *, share_data: bool = False) -> Graph:
    """A copy of ``graph`` at nominal batch ``n``: batch inputs at dim 0 = ``n``, every type
    re-inferred forward (marks kept). For backends and passes that need static shapes.
    A static-batch graph can only be "specialised" to the batch it has (a plain copy);
    otherwise ``BatchError`` says why it is static."""
    n = int(n)
    if n < 1:
        raise BatchError(f"graph {graph.name}: batch must be >= 1, got {n}")
    if not is_polymorphic(graph):
        cands = _candidates(graph)
        if cands and cands[0].shape[0] == n:
            return graph.clone(share_data=share_data)
        raise BatchError(static_message(graph, n))
    g = graph.clone(share_data=share_data)
    if nominal_batch(g) == n:
        return g
    ins = batch_inputs(g)
    for v in ins:
        v.type = v.type.with_shape((n,) + v.shape[1:])
    try:
        g.reinfer(*ins)
    except IRError as e:
        raise BatchError(f"cannot specialise graph {graph.name} to batch {n}: {e}") from None
    return g


def _repeated_row(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> np.ndarray | None:
    """The one row that ``a`` (``na`` rows) and ``b`` (``nb`` rows) repeat, or None."""
    if a.ndim == 0 or a.shape[1:] != b.shape[1:] or (a.shape[0], b.shape[0]) != (na, nb):
        return None
    nan = a.dtype.kind == "f"
    row = a[:1]
    if all(np.array_equal(x, np.broadcast_to(row, x.shape), equal_nan=nan) for x in (a, b)):
        return np.ascontiguousarray(row)
    return None


def merge(ga: Graph, gb: Graph, inputs: Sequence[str], na: int, nb: int) -> Graph:
    """One batch-polymorphic graph (at nominal batch ``na``; its constants share ``ga``'s
    arrays) from ``ga`` and ``gb``: the same model brought into the IR with the ``inputs``
    (names) at batch ``na`` and ``nb``.

    They must have the same nodes, names and constants; a ``reshape`` / ``expand`` shape that
    differs becomes -1 where it can (one dim of a reshape; an expand's dim that the input
    already has), and an expand of a batch-free dim to the batch in dim 0 reads it from the
    first batch input (``expand(x, like) {shape=[0, …]}``) — also when it was folded into a
    constant that repeats one row batch times. Anything else that differs — another attribute, a constant computed from
    the batch size, a different node — raises ``BatchError`` naming it, as does ``analyze``
    on the result."""
    def fail(msg: str) -> BatchError:
        return BatchError(f"{msg} (brought in at batch {na} and {nb})")

    if [v.name for v in ga.inputs] != [v.name for v in gb.inputs] or len(ga.nodes) != len(
            gb.nodes) or set(ga.constants) != set(gb.constants):
        first = next((x for x, y in zip(ga.nodes, gb.nodes) if x.op != y.op or [
            o.name for o in x.outputs] != [o.name for o in y.outputs]), None)
        where = f" from node {first.describe()} on" if first is not None else ""
        raise fail(f"the graph changes with the batch{where}")
    rows: dict[str, np.ndarray] = {}  # constants that are one row repeated batch times
    for name, v in ga.constants.items():
        w = gb.constants[name]
        if v.type == w.type and np.array_equal(v.data, w.data, equal_nan=v.type.is_float):
            continue
        row = _repeated_row(v.data, w.data, na, nb)
        if row is None:
            user = v.uses[0].describe() if v.uses else "no node"
            raise fail(f"constant %{name} (used by {user}) changes with the batch: it is "
                       f"computed from the batch size")
        rows[name] = row
    new_attrs: list[tuple[int, str, tuple]] = []
    likes: list[int] = []  # expands that read the batch from the first batch input
    for i, (x, y) in enumerate(zip(ga.nodes, gb.nodes)):
        if (x.op != y.op or [v.name for v in x.inputs] != [v.name for v in y.inputs]
                or [o.name for o in x.outputs] != [o.name for o in y.outputs]):
            raise fail(f"the graph changes with the batch at node {x.describe()}")
        for k, a in x.attrs.items():
            b = y.attrs[k]
            if a == b:
                continue
            shown = [list(v) if isinstance(v, tuple) else v for v in (a, b)]
            stored = (f"node {x.describe()}: {x.op} attribute {k} is {shown[0]} at batch {na} "
                      f"but {shown[1]} at batch {nb}")
            if x.op not in ("reshape", "expand") or k != "shape" or len(a) != len(b):
                raise fail(f"{stored}: a batch-dependent size the IR stores statically")
            pos = [j for j, (p, q) in enumerate(zip(a, b)) if p != q]
            if x.op == "reshape" and len(pos) > 1:
                raise fail(f"{stored}: more than one dim depends on the batch")
            shape = [-1 if j in pos else d for j, d in enumerate(a)]
            if x.op == "expand":
                lead = len(a) - x.inputs[0].type.rank
                for j in pos:
                    src = (x.inputs[0].shape[j - lead], y.inputs[0].shape[j - lead]) \
                        if j >= lead else (1, 1)
                    if src == (a[j], b[j]):
                        continue  # a batch dim the input has: -1 keeps it
                    # expanded to the batch (cls_token.expand(B, -1, -1), ones(B, S)):
                    # dim 0 of the first batch input gives it, as expand's like operand
                    if src != (1, 1) or j != 0 or (a[j], b[j]) != (na, nb) or len(
                            x.inputs) > 1:
                        raise fail(f"{stored}: it expands to a size computed from the batch "
                                   f"other than the batch itself in dim 0")
                    shape[j] = 0
                    likes.append(i)
            new_attrs.append((i, k, tuple(shape)))
    g = ga.clone(share_data=True)
    for i, k, value in new_attrs:
        g.nodes[i].attrs[k] = value
    values = [g.value(n) for n in inputs]
    for i in likes:
        g.add_operand(g.nodes[i], values[0], reinfer=False)  # the types do not change
    for name, row in rows.items():  # a folded expand to the batch: expand the row again
        old = g.constants[name]
        g.rename(old, g.fresh_name(f"{name}.folded"))
        src = g.add_constant(row, g.fresh_name(f"{name}.row"))
        node = g.add_node("expand", [src, values[0]], {"shape": (0,) + row.shape[1:]},
                          names=[name], before=g.nodes[0] if g.nodes else None)
        g.replace_all_uses(old, node.output)
        g.remove_constant(old)
    outs, reason = analyze(g, values)
    if reason:
        raise BatchError(f"graph {g.name} is not batch-polymorphic: {reason}")
    ids = {id(v) for v in values}
    set_marks(g, [i for i, v in enumerate(g.inputs) if id(v) in ids], outs)
    return g
