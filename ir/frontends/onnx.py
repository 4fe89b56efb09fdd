"""ONNX frontend: ``load_onnx(path_or_model, input_shapes=None)`` → IR, via onnx-graphsurgeon.

Steps, each with one kind of error (``OnnxImportError``, never a traceback):

1. read and check the model (a truncated or corrupt file, a missing external-data file, a
   model that fails ``onnx.checker``); opsets 13–21 (older ones are upgraded with
   ``onnx.version_converter``, newer ones are tried with a warning);
2. resolve symbolic input dims from ``input_shapes`` (``{"x": (1, 3, 32, 32)}``, or
   ``{"*": shape}`` for every input with symbolic dims), then ``onnx.shape_inference``;
3. ``gs.import_onnx`` and ``fold_constants``: ``Shape → Gather → Unsqueeze → Concat`` chains
   become constants once shapes are static (QuantizeLinear/DequantizeLinear are never folded,
   so a QDQ model stays quantized); ``cleanup``;
4. fusions on the graphsurgeon graph (``FUSIONS``): Erf- and Tanh-pattern GELU → ``gelu``,
   ``x * Sigmoid(x)`` → ``silu``, ``MatMul(x, W) [+ b]`` with a constant 2-D ``W`` → ``linear``
   (weight transposed to ``[out, in]``);
5. one handler per ONNX op (``ONNX_MAP``) emits IR ops. Initializers become constants under
   their ONNX names (a constant used transposed or reshaped keeps the name the first time);
   each node's ``loc`` is the ONNX node name (or the ``shrinkc.loc`` metadata written by
   ``backends/onnx.py``, so ONNX → IR → ONNX → IR gives an equal graph). IR output types are
   checked against ONNX shape inference; the result is verified.

An op without a handler raises one error naming the node and the op type.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ..graph import Graph, IRError, Value
from ..types import TensorType, dtype_from_numpy, to_numpy_dtype
from ..verify import VerificationError, verify

log = logging.getLogger(__name__)

OPSET_MIN, OPSET_MAX = 13, 21
LOC_KEY = "shrinkc.loc"  # NodeProto metadata written by backends/onnx.py: the IR loc ("" = none)
FUSED_DOMAIN = "ai.shrinkc"  # ops made by the fusions below exist only inside this frontend
_NO_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear"})

ONNX_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "f32", TensorProto.DOUBLE: "f64", TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16", TensorProto.INT8: "i8", TensorProto.UINT8: "u8",
    TensorProto.INT16: "i16", TensorProto.INT32: "i32", TensorProto.INT64: "i64",
    TensorProto.BOOL: "bool",
}


class OnnxImportError(IRError):
    """An ONNX model that cannot be brought into the IR."""


def f32(x: Any) -> float:
    """A float stored as float32 in ONNX, as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06), so IR → ONNX → IR keeps attributes such as ``eps`` unchanged."""
    return float(str(np.float32(x)))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ============================================================================ 1. read
def read_model(src: str | Path | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The (unchecked) ModelProto and a name for messages."""
    if isinstance(src, onnx.ModelProto):
        return src, "load_onnx"
    if isinstance(src, (bytes, bytearray)):
        what = "load_onnx(<bytes>)"
        try:
            return onnx.load_from_string(bytes(src)), what
        except Exception as e:
            raise OnnxImportError(f"{what}: not an ONNX model ({_first_line(e)})") from None
    path = Path(src)
    if not path.is_file():
        raise OnnxImportError(f"load_onnx: {path}: no such file")
    try:
        return onnx.load(str(path)), f"load_onnx: {path}"
    except Exception as e:  # DecodeError, missing external data, …
        raise OnnxImportError(f"load_onnx: {path} is not a readable ONNX file (truncated or "
                              f"corrupt?): {type(e).__name__}: {_first_line(e)}") from None


def model_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    if not model.HasField("graph") or not model.graph.output:
        raise OnnxImportError(f"{what}: not an ONNX model (no graph with outputs; truncated or "
                              f"corrupt?)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        if "is deprecated" not in str(e):  # e.g. GroupNormalization-18: still runs
            raise OnnxImportError(f"{what}: not a valid ONNX model (truncated or corrupt?): "
                                  f"{_first_line(e)}") from None
        log.warning("%s: %s (importing anyway)", what, _first_line(e))
    opset = model_opset(model)
    if opset is None:
        raise OnnxImportError(f"{what}: the model imports no default-domain opset")
    if opset < OPSET_MIN:
        log.info("%s: upgrading opset %d to %d", what, opset, OPSET_MIN)
        try:
            model = onnx.version_converter.convert_version(model, OPSET_MIN)
        except Exception as e:
            raise OnnxImportError(f"{what}: opset {opset} is older than {OPSET_MIN} and could "
                                  f"not be upgraded: {_first_line(e)}") from None
    elif opset > OPSET_MAX:
        log.warning("%s: opset %d is newer than the tested range %d-%d; trying anyway", what,
                    opset, OPSET_MIN, OPSET_MAX)
    return model


# ============================================================================ 2. input shapes
def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    """Static dims as ints, symbolic ones as their name ('?' when unnamed); None = no shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
            else (d.dim_param or "?") for d in tt.shape.dim]


def resolve_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
                         | Sequence[int] | None, what: str = "load_onnx") -> dict[str, tuple]:
    """Static shapes for every graph input, written into ``model`` (a copy the caller owns).
    Returns ``{input name: shape}``."""
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        input_shapes = {"*": input_shapes}
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    unknown = sorted(set(shapes) - {vi.name for vi in inputs} - {"*"})
    if unknown:
        raise OnnxImportError(f"{what}: input_shapes names {unknown}, which are not inputs of the "
                              f"model (inputs: {[vi.name for vi in inputs]}; '*' means every "
                              f"input with symbolic dims)")
    resolved: dict[str, tuple] = {}
    missing: list[str] = []
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise OnnxImportError(f"{what}: input {vi.name!r} is not a tensor")
        elem = vi.type.tensor_type.elem_type
        if elem not in ONNX_DTYPES:
            raise OnnxImportError(f"{what}: input {vi.name!r} has element type "
                                  f"{TensorProto.DataType.Name(elem)}, which the IR does not have")
        dims = _dims(vi)
        symbolic = dims is None or any(isinstance(d, str) for d in dims)
        given = shapes.get(vi.name, shapes.get("*") if symbolic else None)
        if not symbolic and vi.name not in shapes and "*" in shapes and tuple(
                shapes["*"]) != tuple(dims):
            log.warning("%s: input %r has the static shape %s; input_shapes['*'] = %s applies "
                        "only to inputs with symbolic dims and is ignored for it", what, vi.name,
                        _fmt_dims(dims), list(shapes["*"]))
        if given is None:
            if symbolic:
                if dims is None:
                    missing.append(f"input {vi.name!r} has no shape")
                else:
                    missing += [f"input {vi.name!r} dim {i} ({d!r}) is symbolic"
                                for i, d in enumerate(dims) if isinstance(d, str)]
                continue
            resolved[vi.name] = tuple(dims)
            continue
        if any(d <= 0 for d in given):
            raise OnnxImportError(f"{what}: input_shapes gives {list(given)} for input "
                                  f"{vi.name!r}; dims must be positive")
        if dims is not None:
            if len(given) != len(dims):
                raise OnnxImportError(f"{what}: input {vi.name!r} has rank {len(dims)} "
                                      f"({_fmt_dims(dims)}) but input_shapes gives "
                                      f"{list(given)}")
            for i, (d, g) in enumerate(zip(dims, given)):
                if isinstance(d, int) and d != g:
                    raise OnnxImportError(f"{what}: input {vi.name!r} dim {i} is {d} in the "
                                          f"model but input_shapes gives {g}")
        resolved[vi.name] = given
    if missing:
        example = ", ".join(f"{vi.name!r}: (...)" for vi in inputs if vi.name not in resolved)
        raise OnnxImportError(f"{what}: {'; '.join(missing)}. Give its shape with "
                              f"input_shapes={{{example}}} (or {{'*': (...)}} for every input "
                              f"with symbolic dims; --input-shape on the command line)")
    for vi in inputs:
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in resolved[vi.name]:
            shape.dim.add().dim_value = d
    # stale value_info / output shapes may carry the symbolic dims: re-infer from the inputs
    del model.graph.value_info[:]
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    return resolved


def _fmt_dims(dims: Sequence[int | str]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


# ============================================================================ 3. graphsurgeon
@contextlib.contextmanager
def _quiet_gs() -> Iterator[None]:
    """graphsurgeon logs every folding step, and the onnxruntime sessions it folds with warn
    about their own graph optimisations; keep both to errors meanwhile. (onnxruntime has no
    getter for its default severity: it is put back to its default, warnings.)"""
    import onnxruntime as ort

    old = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        gs.logger.G_LOGGER.severity = old
        ort.set_default_logger_severity(2)


def to_graphsurgeon(model: onnx.ModelProto, what: str = "load_onnx") -> gs.Graph:
    """Shape inference, import, constant folding (Q/DQ kept) and cleanup."""
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                  data_prop=True)
    except Exception as e:
        raise OnnxImportError(f"{what}: ONNX shape inference failed: {_first_line(e)}") from None
    with _quiet_gs():
        try:
            graph = gs.import_onnx(model)
        except Exception as e:
            raise OnnxImportError(f"{what}: onnx-graphsurgeon cannot import the model: "
                                  f"{_first_line(e)}") from None
        # ONNX graphs are topologically sorted (the checker requires it); graphsurgeon's own
        # toposort is not stable, and the node order must survive ONNX -> IR -> ONNX -> IR
        keep = lambda n: n.op in _NO_FOLD
        try:  # one onnxruntime run for the whole constant subgraph …
            graph.fold_constants(error_ok=False, should_exclude_node=keep)
        except Exception as e:  # … or, if some node fails there, part by part
            log.debug("%s: constant folding in one piece failed (%s); partitioning", what,
                      _first_line(e))
            graph.fold_constants(partitioning="basic", should_exclude_node=keep)
        graph.cleanup()
    return graph


# ============================================================================ 4. fusions
def _const(t: gs.Tensor) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _scalar(t: gs.Tensor) -> float | None:
    a = _const(t)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _near(t: gs.Tensor, value: float, rel: float = 1e-4) -> bool:
    s = _scalar(t)
    return s is not None and math.isclose(s, value, rel_tol=rel)


def _producer(t: gs.Tensor, *ops: str) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op in ops else None


class _Fuser:
    """Pattern rewrites on the graphsurgeon graph. Each rule returns True when it fired."""

    def __init__(self, graph: gs.Graph, locs: dict[str, str | None]):
        self.graph, self.locs = graph, locs
        self.outputs = {id(t) for t in graph.outputs}
        self.done: set[int] = set()  # nodes absorbed by a fusion
        self.stats: Counter[str] = Counter()

    def sole(self, t: gs.Tensor, *ops: str) -> gs.Node | None:
        """The single consumer of ``t`` (an op in ``ops``), if ``t`` is an internal tensor."""
        if id(t) in self.outputs or len(t.outputs) != 1 or t.outputs[0].op not in ops:
            return None
        n = t.outputs[0]
        return None if id(n) in self.done else n

    @staticmethod
    def other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
        if len(node.inputs) != 2:
            return None
        a, b = node.inputs
        return b if a is t else a if b is t else None

    def replace(self, nodes: list[gs.Node], op: str, inputs: list[gs.Tensor], out: gs.Tensor,
                attrs: dict[str, Any] | None = None, loc_from: gs.Node | None = None) -> None:
        """Replace ``nodes`` (whose last one produces ``out``) by one node, which takes the
        last one's place in the (topological) node order."""
        last = nodes[-1]
        anchor = loc_from or last
        loc = self.locs.get(anchor.outputs[0].name, anchor.name or None) if anchor.outputs \
            else anchor.name or None
        last.outputs.clear()
        fused = gs.Node(op, name=last.name, attrs=dict(attrs or {}), inputs=inputs, outputs=[out],
                        domain=FUSED_DOMAIN)
        self.graph.nodes.insert(self.graph.nodes.index(last), fused)
        self.locs[out.name] = loc
        self.done.update(id(n) for n in nodes)
        self.stats[op] += 1

    # ------------------------------------------------------------------ GELU
    def gelu_tail(self, x: gs.Tensor, core: gs.Node) -> tuple[list[gs.Node], gs.Tensor] | None:
        """Match ``0.5 * x * (1 + core)`` after ``core`` (Erf or Tanh); the nodes and output."""
        add = self.sole(core.outputs[0], "Add")
        if add is None or not _near(self.other(add, core.outputs[0]), 1.0):
            return None
        m1 = self.sole(add.outputs[0], "Mul")
        if m1 is None:
            return None
        o = self.other(m1, add.outputs[0])
        if o is x:  # x * (1 + e) * 0.5
            m2 = self.sole(m1.outputs[0], "Mul")
            if m2 is not None and _near(self.other(m2, m1.outputs[0]), 0.5):
                return [add, m1, m2], m2.outputs[0]
            return None
        if o is not None and _near(o, 0.5):  # (1 + e) * 0.5 * x
            m2 = self.sole(m1.outputs[0], "Mul")
            if m2 is not None and self.other(m2, m1.outputs[0]) is x:
                return [add, m1, m2], m2.outputs[0]
            return None
        h = _producer(o, "Mul") if o is not None else None  # (x * 0.5) * (1 + e)
        if h is not None and id(h) not in self.done and id(o) not in self.outputs and \
                len(o.outputs) == 1 and ((h.inputs[0] is x and _near(h.inputs[1], 0.5)) or
                                         (h.inputs[1] is x and _near(h.inputs[0], 0.5))):
            return [h, add, m1], m1.outputs[0]
        return None

    def gelu_erf(self, erf: gs.Node) -> bool:
        d = _producer(erf.inputs[0], "Div", "Mul")
        if d is None or self.sole(erf.inputs[0], "Erf") is not erf:
            return False
        if (d.op == "Div" and _near(d.inputs[1], math.sqrt(2.0))) or (
                d.op == "Mul" and _near(d.inputs[1], 1 / math.sqrt(2.0))):
            x = d.inputs[0]
        elif d.op == "Mul" and _near(d.inputs[0], 1 / math.sqrt(2.0)):
            x = d.inputs[1]
        else:
            return False
        tail = self.gelu_tail(x, erf)
        if tail is None:
            return False
        nodes, out = tail
        self.replace([d, erf] + nodes, "Gelu", [x], out, {"approximate": "none"})
        return True

    def gelu_tanh(self, tanh: gs.Node) -> bool:
        """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
        c = _producer(tanh.inputs[0], "Mul")
        if c is None or self.sole(tanh.inputs[0], "Tanh") is not tanh:
            return False
        k = 0 if _near(c.inputs[0], math.sqrt(2 / math.pi)) else 1
        if not _near(c.inputs[k], math.sqrt(2 / math.pi)):
            return False
        b = _producer(c.inputs[1 - k], "Add")
        if b is None or self.sole(c.inputs[1 - k], "Mul") is not c:
            return False
        for j in (0, 1):
            a = _producer(b.inputs[j], "Mul")
            x = b.inputs[1 - j]
            if a is None or self.sole(b.inputs[j], "Add") is not b:
                continue
            ka = 0 if _near(a.inputs[0], 0.044715) else 1
            if not _near(a.inputs[ka], 0.044715):
                continue
            p = _producer(a.inputs[1 - ka], "Pow")
            if p is None or p.inputs[0] is not x or not _near(p.inputs[1], 3.0) or \
                    self.sole(a.inputs[1 - ka], "Mul") is not a:
                continue
            tail = self.gelu_tail(x, tanh)
            if tail is None:
                return False
            nodes, out = tail
            self.replace([p, a, b, c, tanh] + nodes, "Gelu", [x], out, {"approximate": "tanh"})
            return True
        return False

    # ------------------------------------------------------------------ SiLU, linear
    def silu(self, sig: gs.Node) -> bool:
        x = sig.inputs[0]
        m = self.sole(sig.outputs[0], "Mul")
        if m is None or self.other(m, sig.outputs[0]) is not x:
            return False
        self.replace([sig, m], "Silu", [x], m.outputs[0])
        return True

    def linear(self, mm: gs.Node) -> bool:
        x, w = mm.inputs
        wa = _const(w)
        if wa is None or wa.ndim != 2 or isinstance(x, gs.Constant):
            return False
        add = self.sole(mm.outputs[0], "Add")
        b = self.other(add, mm.outputs[0]) if add is not None else None
        ba = _const(b) if b is not None else None
        if ba is not None and ba.shape == (wa.shape[1],) and ba.dtype == wa.dtype:
            self.replace([mm, add], "Linear", [x, w, b], add.outputs[0], loc_from=mm)
        else:
            self.replace([mm], "Linear", [x, w], mm.outputs[0])
        return True

    def run(self) -> Counter[str]:
        rules: dict[str, Callable[[gs.Node], bool]] = {
            "Erf": self.gelu_erf, "Tanh": self.gelu_tanh, "Sigmoid": self.silu,
            "MatMul": self.linear}
        for node in list(self.graph.nodes):
            rule = rules.get(node.op)
            if rule is not None and id(node) not in self.done and node.domain in ("", None):
                rule(node)
        if self.stats:
            self.graph.cleanup()
        return self.stats


# ============================================================================ 5. conversion
Handler = Callable[["_Ctx", gs.Node], None]
ONNX_MAP: dict[str, Handler] = {}


def _maps(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            ONNX_MAP[op] = fn
        return fn

    return deco


def _T(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


class _Ctx:
    """State while converting one graphsurgeon graph."""

    def __init__(self, g: Graph, gsg: gs.Graph, locs: dict[str, str | None], opset: int,
                 what: str):
        self.g, self.gsg, self.locs, self.opset, self.what = g, gsg, locs, opset, what
        self.env: dict[str, Value] = {}
        self.consts: dict[tuple[str, str], Value] = {}
        self.outputs = {id(t) for t in gsg.outputs}
        self.reserved = {t.name for t in gsg.tensors().values()}
        self.node: gs.Node | None = None
        self.loc: str | None = None

    # ------------------------------------------------------------------ errors, names
    def fail(self, msg: str) -> NoReturn:
        n = self.node
        where = f"node {n.name!r} ({n.op})" if n is not None else "graph"
        raise OnnxImportError(f"{self.what}: {where}: {msg}")

    def fresh(self, base: str) -> str:
        name, i = self.g.fresh_name(base), 0
        while name in self.reserved:
            i += 1
            name = self.g.fresh_name(f"{base}_{i}")
        return name

    # ------------------------------------------------------------------ operands
    def inp(self, i: int) -> gs.Tensor | None:
        """Input ``i`` of the current node, None when absent (optional inputs)."""
        ins = self.node.inputs
        return ins[i] if i < len(ins) and ins[i].name != "" else None

    def v(self, t: gs.Tensor, transform: Callable[[np.ndarray], np.ndarray] | None = None,
          tag: str = "") -> Value:
        """The IR value of a tensor; constants are made on first use (``transform``ed data
        under the tensor's own name the first time it is asked for, ``name_tag`` later)."""
        if isinstance(t, gs.Constant):
            key = (t.name, tag)
            if key not in self.consts:
                data = np.asarray(t.values)
                if transform is not None:
                    data = transform(data)
                taken = any(k[0] == t.name for k in self.consts)
                name = self.fresh(f"{t.name}_{tag or 'c'}") if taken or not t.name else t.name
                try:
                    self.consts[key] = self.g.add_constant(data, name)
                except TypeError as e:
                    self.fail(f"constant {t.name!r}: {e}")
            return self.consts[key]
        if t.name not in self.env:
            self.fail(f"input {t.name!r} is not computed (unsupported producer?)")
        return self.env[t.name]

    def array(self, t: gs.Tensor | None, what: str) -> np.ndarray:
        a = _const(t) if t is not None else None
        if a is None:
            self.fail(f"{what} must be a constant (after constant folding), got "
                      f"{'nothing' if t is None else repr(t.name)}")
        return a

    def ints(self, t: gs.Tensor | None, what: str) -> list[int]:
        return [int(i) for i in self.array(t, what).reshape(-1)]

    def attr_or_input(self, attr: str, i: int) -> list[int] | None:
        if attr in self.node.attrs:
            return [int(a) for a in self.node.attrs[attr]]
        t = self.inp(i)
        return None if t is None else self.ints(t, attr)

    def scalar(self, value: float, dtype: str, what: str) -> Value:
        return self.g.add_constant(np.array(value, dtype=to_numpy_dtype(dtype)),
                                   self.fresh(f"{self.node.outputs[0].name}_{what}"))

    # ------------------------------------------------------------------ results
    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None, *,
             out: gs.Tensor | None = None, suffix: str = "tmp") -> Value:
        """One IR node; named after ``out`` (an ONNX output) or a fresh ``<out0>_<suffix>``."""
        name = out.name if out is not None else self.fresh(f"{self.node.outputs[0].name}_{suffix}")
        try:
            node = self.g.add_node(op, inputs, attrs or {}, names=[name], loc=self.loc)
        except IRError as e:
            self.fail(str(e))
        if out is not None:
            self.env[out.name] = node.output
        return node.output

    def emit_multi(self, op: str, inputs: list[Value], attrs: dict[str, Any],
                   outs: list[gs.Tensor]) -> None:
        try:
            node = self.g.add_node(op, inputs, attrs, names=[t.name for t in outs], loc=self.loc)
        except IRError as e:
            self.fail(str(e))
        for t, v in zip(outs, node.outputs):
            self.env[t.name] = v

    def alias(self, out: gs.Tensor, value: Value) -> None:
        """``out`` is ``value`` (no IR node) — unless it is a graph output (kept by name)."""
        if id(out) in self.outputs:
            self.emit("identity", [value], out=out)
        else:
            self.env[out.name] = value

    def unused(self, i: int, what: str) -> None:
        outs = self.node.outputs
        if i < len(outs) and outs[i].name and (outs[i].outputs or id(outs[i]) in self.outputs):
            self.fail(f"output {i} ({what}) is used; only inference outputs are supported")

    def x(self) -> Value:
        return self.v(self.node.inputs[0])

    def axis(self, axis: int, rank: int) -> int:
        if not -max(rank, 1) <= axis < max(rank, 1):
            self.fail(f"axis {axis} is out of range for rank {rank}")
        return axis % max(rank, 1)


def _pair(values: Sequence[int] | None, default: int, c: _Ctx, what: str) -> tuple[int, int]:
    if values is None:
        return (default, default)
    values = tuple(int(v) for v in values)
    if len(values) != 2:
        c.fail(f"{what} {list(values)}: only 2-D (NCHW) is supported")
    return values


def _pads(c: _Ctx, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> tuple[int, int]:
    """Symmetric (h, w) padding from ``pads`` / ``auto_pad``; asymmetric padding is refused."""
    a = c.node.attrs
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return (0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            if total % 2:
                c.fail(f"auto_pad={auto} needs asymmetric padding ({total} in total) for input "
                       f"size {n}; the IR has symmetric padding only (no pad op)")
            pads.append(total // 2)
        return tuple(pads)
    if auto != "NOTSET":
        c.fail(f"auto_pad={auto} is not supported")
    p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
    if len(p) != 4:
        c.fail(f"pads {p}: only 2-D (NCHW) is supported")
    if p[0] != p[2] or p[1] != p[3]:
        c.fail(f"asymmetric pads {p} (begin {p[:2]} != end {p[2:]}) are not supported: the IR's "
               f"convolutions and pools pad symmetrically and there is no pad op")
    return (p[0], p[1])


def _need_4d(c: _Ctx, x: Value) -> None:
    if x.type.rank != 4:
        c.fail(f"only 2-D (4-D NCHW input) is supported, got {x.type}")


# ---------------------------------------------------------------------------- conv, dense
@_maps("Conv")
def _conv(c: _Ctx, n: gs.Node) -> None:
    x, w = c.x(), c.v(n.inputs[1])
    _need_4d(c, x)
    if w.type.rank != 4:
        c.fail(f"weight {w.type} is not OIHW")
    strides = _pair(n.attrs.get("strides"), 1, c, "strides")
    dil = _pair(n.attrs.get("dilations"), 1, c, "dilations")
    pads = _pads(c, x.shape[2:], w.shape[2:], strides, dil)
    b = c.inp(2)
    c.emit("conv2d", [x, w] + ([c.v(b)] if b is not None else []),
           {"stride": strides, "padding": pads, "dilation": dil,
            "groups": int(n.attrs.get("group", 1))}, out=n.outputs[0])


@_maps("ConvTranspose")
def _conv_t(c: _Ctx, n: gs.Node) -> None:
    x, w = c.x(), c.v(n.inputs[1])
    _need_4d(c, x)
    if "output_shape" in n.attrs:
        c.fail("output_shape is not supported (give pads and output_padding)")
    if n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        c.fail(f"auto_pad={n.attrs['auto_pad']} is not supported")
    strides = _pair(n.attrs.get("strides"), 1, c, "strides")
    dil = _pair(n.attrs.get("dilations"), 1, c, "dilations")
    pads = _pads(c, x.shape[2:], w.shape[2:], strides, dil)
    b = c.inp(2)
    c.emit("conv_transpose2d", [x, w] + ([c.v(b)] if b is not None else []),
           {"stride": strides, "padding": pads, "dilation": dil,
            "output_padding": _pair(n.attrs.get("output_padding"), 0, c, "output_padding"),
            "groups": int(n.attrs.get("group", 1))}, out=n.outputs[0])


@_maps("Gemm")
def _gemm(c: _Ctx, n: gs.Node) -> None:
    b_t, c_t = n.inputs[1], c.inp(2)
    alpha, beta = f32(n.attrs.get("alpha", 1.0)), f32(n.attrs.get("beta", 1.0))
    ta, tb = int(n.attrs.get("transA", 0)), int(n.attrs.get("transB", 0))
    out = n.outputs[0]
    b_arr = _const(b_t)
    linear = b_arr is not None and b_arr.ndim == 2
    n_out = (b_arr.shape[0] if tb else b_arr.shape[1]) if linear else None
    c_arr = _const(c_t) if c_t is not None and beta != 0.0 else None
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
            w = c.v(b_t) if tb else c.v(b_t, _T, "T")
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


@_maps("MatMul")
def _matmul(c: _Ctx, n: gs.Node) -> None:
    c.emit("matmul", [c.x(), c.v(n.inputs[1])], out=n.outputs[0])


def _linear(c: _Ctx, n: gs.Node) -> None:
    """Made by the MatMul (+ Add) fusion: the weight is stored [in, out]."""
    ins = [c.x(), c.v(n.inputs[1], _T, "T")]
    if len(n.inputs) > 2:
        ins.append(c.v(n.inputs[2]))
    c.emit("linear", ins, out=n.outputs[0])


def _silu(c: _Ctx, n: gs.Node) -> None:
    """Made by the ``x * Sigmoid(x)`` fusion."""
    c.emit("silu", [c.x()], out=n.outputs[0])


# ---------------------------------------------------------------------------- norms
@_maps("BatchNormalization")
def _batch_norm(c: _Ctx, n: gs.Node) -> None:
    if int(n.attrs.get("training_mode", 0)):
        c.fail("training_mode=1 is not supported (export the model in eval mode)")
    for i in (1, 2):
        c.unused(i, "running statistics")
    c.emit("batch_norm", [c.v(t) for t in n.inputs[:5]],
           {"eps": f32(n.attrs.get("epsilon", 1e-5))}, out=n.outputs[0])


@_maps("LayerNormalization")
def _layer_norm(c: _Ctx, n: gs.Node) -> None:
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
        arr = _const(t)
        if arr is not None and arr.shape != ns:
            ins.append(c.v(t, lambda a: np.ascontiguousarray(np.broadcast_to(a, ns)), "full"))
        else:
            ins.append(c.v(t))
    if len(ins) == 1 and c.inp(2) is not None:
        c.fail("bias without scale")
    c.emit("layer_norm", ins, {"normalized_shape": ns,
                               "eps": f32(n.attrs.get("epsilon", 1e-5))}, out=n.outputs[0])


@_maps("GroupNormalization")
def _group_norm(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    groups = int(n.attrs["num_groups"])
    channels = x.shape[1] if x.type.rank >= 2 else 0
    ins = [x]
    for i in (1, 2):
        t = c.inp(i)
        arr = _const(t) if t is not None else None
        if c.opset < 21 and arr is not None and arr.shape == (groups,) and groups != channels:
            # GroupNormalization-18: one scale/bias per group; the IR has one per channel
            ins.append(c.v(t, lambda a: np.repeat(a, channels // groups), "per_channel"))
        elif c.opset < 21 and groups != channels:
            c.fail("GroupNormalization-18 with non-constant per-group scale/bias")
        else:
            ins.append(c.v(t))
    c.emit("group_norm", ins, {"num_groups": groups, "eps": f32(n.attrs.get("epsilon", 1e-5))},
           out=n.outputs[0])


# ---------------------------------------------------------------------------- activations
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish",
          "Erf": "erf", "Sqrt": "sqrt", "Exp": "exp", "Neg": "neg"}


@_maps(*_UNARY)
def _unary(c: _Ctx, n: gs.Node) -> None:
    c.emit(_UNARY[n.op], [c.x()], out=n.outputs[0])


@_maps("Gelu")
def _gelu(c: _Ctx, n: gs.Node) -> None:
    approx = n.attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx not in ("none", "tanh"):
        c.fail(f"approximate={approx!r}")
    c.emit("gelu", [c.x()], {"approximate": approx}, out=n.outputs[0])


@_maps("HardSigmoid")
def _hardsigmoid(c: _Ctx, n: gs.Node) -> None:
    alpha, beta = f32(n.attrs.get("alpha", 0.2)), f32(n.attrs.get("beta", 0.5))
    x = c.x()
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6):
        c.emit("hardsigmoid", [x], out=n.outputs[0])
        return
    y = c.emit("mul", [x, c.scalar(alpha, x.dtype, "alpha")], suffix="alpha")
    y = c.emit("add", [y, c.scalar(beta, x.dtype, "beta")], suffix="beta")
    c.emit("hardtanh", [y], {"min_val": 0.0, "max_val": 1.0}, out=n.outputs[0])


@_maps("Clip")
def _clip(c: _Ctx, n: gs.Node) -> None:
    bounds = []
    for i, attr in ((1, "min"), (2, "max")):
        t = c.inp(i)
        if t is not None:
            bounds.append(f32(c.array(t, f"Clip {attr}").reshape(-1)[0]))
        elif attr in n.attrs:
            bounds.append(f32(n.attrs[attr]))
        else:
            bounds.append(None)
    lo, hi = bounds
    if lo == 0.0 and hi is None:
        c.emit("relu", [c.x()], out=n.outputs[0])
    elif lo is None and hi is None:
        c.alias(n.outputs[0], c.x())
    else:
        c.emit("hardtanh", [c.x()], {"min_val": -math.inf if lo is None else lo,
                                     "max_val": math.inf if hi is None else hi}, out=n.outputs[0])


@_maps("Softmax", "LogSoftmax")
def _softmax(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    axis = int(n.attrs.get("axis", -1))
    c.axis(axis, x.type.rank)
    c.emit("softmax" if n.op == "Softmax" else "log_softmax", [x], {"axis": axis},
           out=n.outputs[0])


@_maps("Identity")
def _identity(c: _Ctx, n: gs.Node) -> None:
    c.alias(n.outputs[0], c.x())


@_maps("Dropout")
def _dropout(c: _Ctx, n: gs.Node) -> None:
    t = c.inp(2)
    if t is not None and bool(c.array(t, "training_mode").reshape(-1)[0]):
        c.fail("training_mode=true is not supported")
    c.unused(1, "mask")
    r = c.inp(1)
    p = f32(c.array(r, "ratio").reshape(-1)[0]) if r is not None else f32(
        n.attrs.get("ratio", 0.5))
    c.emit("dropout", [c.x()], {"p": p}, out=n.outputs[0])


# ---------------------------------------------------------------------------- arithmetic
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow"}


@_maps(*_BINARY)
def _binary(c: _Ctx, n: gs.Node) -> None:
    a, b = c.v(n.inputs[0]), c.v(n.inputs[1])
    if n.op == "Div" and not a.type.is_float and not b.type.is_float:
        c.fail(f"integer Div ({a.type} / {b.type}) is not supported: the IR's div is true "
               f"division")
    c.emit(_BINARY[n.op], [a, b], out=n.outputs[0])


@_maps("Cast")
def _cast(c: _Ctx, n: gs.Node) -> None:
    to = int(n.attrs["to"])
    if to not in ONNX_DTYPES:
        c.fail(f"cast to {TensorProto.DataType.Name(to)}, which the IR does not have")
    x = c.x()
    if x.dtype == ONNX_DTYPES[to]:
        c.alias(n.outputs[0], x)
    else:
        c.emit("cast", [x], {"dtype": ONNX_DTYPES[to]}, out=n.outputs[0])


@_maps("Constant")
def _constant(c: _Ctx, n: gs.Node) -> None:
    a = n.attrs
    if "value" in a:
        arr = np.asarray(a["value"].values if isinstance(a["value"], gs.Constant) else a["value"])
    elif "value_float" in a:
        arr = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        arr = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        arr = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        arr = np.array(a["value_ints"], np.int64)
    else:
        c.fail(f"unsupported Constant attribute(s) {sorted(a)}")
    c.v(gs.Constant(n.outputs[0].name, arr))
    c.env[n.outputs[0].name] = c.consts[(n.outputs[0].name, "")]


# ---------------------------------------------------------------------------- shapes
@_maps("Concat")
def _concat(c: _Ctx, n: gs.Node) -> None:
    xs = [c.v(t) for t in n.inputs]
    axis = int(n.attrs["axis"])
    c.axis(axis, xs[0].type.rank)
    c.emit("concat", xs, {"axis": axis}, out=n.outputs[0])


@_maps("Split")
def _split(c: _Ctx, n: gs.Node) -> None:
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


@_maps("Slice")
def _slice(c: _Ctx, n: gs.Node) -> None:
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


def _reshape_to(c: _Ctx, n: gs.Node, x: Value, shape: Sequence[int]) -> None:
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        c.alias(n.outputs[0], x)
    else:
        c.emit("reshape", [x], {"shape": shape}, out=n.outputs[0])


@_maps("Reshape")
def _reshape(c: _Ctx, n: gs.Node) -> None:
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


@_maps("Flatten")
def _flatten(c: _Ctx, n: gs.Node) -> None:
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


@_maps("Unsqueeze")
def _unsqueeze(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    axes = c.attr_or_input("axes", 1) or []
    r = x.type.rank + len(axes)
    axes = sorted(a + r if a < 0 else a for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    _reshape_to(c, n, x, shape)


@_maps("Squeeze")
def _squeeze(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    axes = c.attr_or_input("axes", 1)
    axes = {c.axis(a, x.type.rank) for a in axes} if axes is not None else {
        i for i, d in enumerate(x.shape) if d == 1}
    if any(x.shape[a] != 1 for a in axes):
        c.fail(f"cannot squeeze axes {sorted(axes)} of {x.type}")
    _reshape_to(c, n, x, [d for i, d in enumerate(x.shape) if i not in axes])


@_maps("Transpose")
def _transpose(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    perm = tuple(int(p) for p in n.attrs.get("perm", reversed(range(x.type.rank))))
    if perm == tuple(range(x.type.rank)):
        c.alias(n.outputs[0], x)
    else:
        c.emit("permute", [x], {"perm": perm}, out=n.outputs[0])


@_maps("Expand")
def _expand(c: _Ctx, n: gs.Node) -> None:
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


@_maps("Shape", "Size")
def _shape(c: _Ctx, n: gs.Node) -> None:
    c.fail("could not be folded to a constant (are all input shapes static? give input_shapes)")


# ---------------------------------------------------------------------------- pools, reduce
def _pool_attrs(c: _Ctx, n: gs.Node, x: Value) -> dict[str, Any]:
    _need_4d(c, x)
    kernel = _pair(n.attrs.get("kernel_shape"), 1, c, "kernel_shape")
    stride = _pair(n.attrs.get("strides"), 1, c, "strides")
    dil = _pair(n.attrs.get("dilations"), 1, c, "dilations")
    return {"kernel": kernel, "stride": stride,
            "padding": _pads(c, x.shape[2:], kernel, stride, dil),
            "ceil_mode": bool(int(n.attrs.get("ceil_mode", 0))), "dilation": dil}


@_maps("MaxPool")
def _max_pool(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    c.unused(1, "Indices")
    c.emit("max_pool2d", [x], _pool_attrs(c, n, x), out=n.outputs[0])


@_maps("AveragePool")
def _avg_pool(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    attrs = _pool_attrs(c, n, x)
    if attrs.pop("dilation") != (1, 1):
        c.fail("dilated average pooling is not supported")
    attrs["count_include_pad"] = bool(int(n.attrs.get("count_include_pad", 0)))
    c.emit("avg_pool2d", [x], attrs, out=n.outputs[0])


@_maps("GlobalAveragePool")
def _global_avg_pool(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    _need_4d(c, x)
    c.emit("adaptive_avg_pool2d", [x], {"output_size": (1, 1)}, out=n.outputs[0])


@_maps("ReduceMean", "ReduceSum")
def _reduce(c: _Ctx, n: gs.Node) -> None:
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
    c.emit("mean" if n.op == "ReduceMean" else "sum", [x],
           {"axes": tuple(axes), "keepdim": bool(int(n.attrs.get("keepdims", 1)))}, out=n.outputs[0])


# ---------------------------------------------------------------------------- gather
@_maps("Gather")
def _gather(c: _Ctx, n: gs.Node) -> None:
    data_t, idx_t = n.inputs[0], n.inputs[1]
    axis = int(n.attrs.get("axis", 0))
    data, idx = _const(data_t), _const(idx_t)
    if data is not None and idx is None:
        if data.ndim != 2 or axis != 0:
            c.fail(f"Gather from a constant is supported as an embedding lookup (2-D table, "
                   f"axis 0), got a {list(data.shape)} table with axis {axis}")
        c.emit("embedding", [c.v(idx_t), c.v(data_t)], out=n.outputs[0])
        return
    if idx is None:
        c.fail("Gather with computed indices from a computed tensor is not supported")
    x = c.v(data_t)
    axis = c.axis(axis, x.type.rank)
    dim = x.shape[axis]
    flat = [int(i) + dim if int(i) < 0 else int(i) for i in idx.reshape(-1)]
    if idx.ndim > 1 or not flat:
        c.fail(f"Gather with {idx.ndim}-D indices is not supported")
    step = flat[1] - flat[0] if len(flat) > 1 else 1
    if step <= 0 or any(b - a != step for a, b in itertools.pairwise(flat)):
        c.fail(f"Gather indices {flat} are not an increasing arithmetic progression (a slice)")
    attrs = {"axis": axis, "start": flat[0], "end": flat[-1] + 1, "step": step}
    if idx.ndim == 1:
        c.emit("slice", [x], attrs, out=n.outputs[0])
    else:
        s = c.emit("slice", [x], attrs, suffix="slice")
        c.emit("reshape", [s], {"shape": x.shape[:axis] + x.shape[axis + 1:]}, out=n.outputs[0])


# ---------------------------------------------------------------------------- quantization
def _qparams(c: _Ctx, n: gs.Node, x: Value, q_dtype: str | None) -> tuple[Value, Value, int | None]:
    if int(n.attrs.get("block_size", 0)):
        c.fail("blocked quantization (block_size) is not supported")
    s_t, z_t = n.inputs[1], c.inp(2)
    s_arr = _const(s_t)
    scalar = s_arr is not None and s_arr.size == 1 and s_arr.ndim > 0
    scale = c.v(s_t, lambda a: a.reshape(()), "scalar") if scalar else c.v(s_t)
    if scale.dtype != "f32":
        c.fail(f"scale must be f32, got {scale.type}")
    if z_t is None:
        dtype = q_dtype or "u8"
        zp = c.g.add_constant(np.zeros(scale.shape, to_numpy_dtype(dtype)),
                              c.fresh(f"{n.outputs[0].name}_zero_point"))
    else:
        z_arr = _const(z_t)
        zp = c.v(z_t, lambda a: a.reshape(()), "scalar") if (
            z_arr is not None and z_arr.size == 1 and z_arr.ndim > 0) else c.v(z_t)
    axis = None if scale.type.rank == 0 else c.axis(int(n.attrs.get("axis", 1)), x.type.rank)
    return scale, zp, axis


@_maps("QuantizeLinear")
def _quantize(c: _Ctx, n: gs.Node) -> None:
    x = c.x()
    z_t = c.inp(2)
    if z_t is not None:
        dtype = c.v(z_t).dtype if not isinstance(z_t, gs.Constant) else dtype_from_numpy(
            np.asarray(z_t.values).dtype)
    else:
        dtype = ONNX_DTYPES.get(int(n.attrs.get("output_dtype", 0)) or TensorProto.UINT8)
    if dtype not in ("i8", "u8", "i16"):
        c.fail(f"quantizing to {dtype} is not supported (i8, u8, i16)")
    scale, zp, axis = _qparams(c, n, x, dtype)
    c.emit("quantize", [x, scale, zp], {"dtype": dtype, "axis": axis}, out=n.outputs[0])


@_maps("DequantizeLinear")
def _dequantize(c: _Ctx, n: gs.Node) -> None:
    q = c.x()
    if q.type.is_float:
        c.fail(f"dequantizing {q.type} (float8?) is not supported")
    scale, zp, axis = _qparams(c, n, q, q.dtype)
    c.emit("dequantize", [q, scale, zp], {"axis": axis}, out=n.outputs[0])


# ============================================================================ driver
def _locs(model: onnx.ModelProto) -> dict[str, str | None]:
    """First output name → loc: the ``shrinkc.loc`` metadata if present, else the node name."""
    locs: dict[str, str | None] = {}
    for node in model.graph.node:
        if not node.output:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        loc = meta.get(LOC_KEY, node.name)
        locs[node.output[0]] = loc or None
    return locs


def _check_type(c: _Ctx, t: gs.Tensor) -> None:
    if t.name not in c.env:
        return
    v = c.env[t.name]
    shape = t.shape
    if isinstance(shape, (list, tuple)) and all(isinstance(d, int) for d in shape) and (
            tuple(shape) != v.shape):
        c.fail(f"IR type {v.type} of output {t.name!r} differs from ONNX shape inference "
               f"{list(shape)}")


def from_graphsurgeon(gsg: gs.Graph, locs: dict[str, str | None], opset: int,
                      name: str = "main", what: str = "load_onnx",
                      initializer_order: Sequence[str] = ()) -> Graph:
    """Convert a (folded, fused, topologically sorted) graphsurgeon graph to the IR.
    Constants are listed in ``initializer_order`` (the file's), then in order of first use."""
    g = Graph(name)
    c = _Ctx(g, gsg, locs, opset, what)
    for t in gsg.inputs:
        if isinstance(t, gs.Constant):
            continue
        shape = t.shape
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise OnnxImportError(f"{what}: input {t.name!r} has no static shape ({shape})")
        c.env[t.name] = g.add_input(TensorType(dtype_from_numpy(t.dtype), tuple(shape)), t.name)
    for node in gsg.nodes:
        c.node, c.loc = node, locs.get(node.outputs[0].name, node.name or None) if node.outputs \
            else node.name or None
        domain = node.domain or ""
        handler = (FUSED_MAP.get(node.op) if domain == FUSED_DOMAIN else
                   ONNX_MAP.get(node.op) if domain in ("", "ai.onnx") else None)
        if handler is None:
            op = f"{domain}::{node.op}" if domain else node.op
            raise OnnxImportError(f"{what}: node {node.name!r}: unsupported ONNX op {op!r}. "
                                  f"Supported ops: {', '.join(supported_ops())}")
        handler(c, node)
        for t in node.outputs:
            _check_type(c, t)
    c.node = None
    outs = []
    for t in gsg.outputs:
        if isinstance(t, gs.Constant):
            outs.append(c.v(t))
        elif t.name in c.env:
            outs.append(c.env[t.name])
        else:
            raise OnnxImportError(f"{what}: graph output {t.name!r} is not computed")
    g.outputs = outs
    g.dce()
    rank = {n: i for i, n in enumerate(initializer_order)}
    keys = {n: (rank.get(n, len(rank)), i) for i, n in enumerate(g.constants)}
    g.constants = dict(sorted(g.constants.items(), key=lambda kv: keys[kv[0]]))
    try:
        verify(g)
    except VerificationError as e:
        raise OnnxImportError(f"{what}: the imported graph is invalid (a frontend bug): {e}") \
            from None
    return g


#: Ops made by ``_Fuser`` (domain ``ai.shrinkc``); they never leave this module.
FUSED_MAP: dict[str, Handler] = {"Gelu": _gelu, "Silu": _silu, "Linear": _linear}


def supported_ops() -> list[str]:
    """The ONNX op types the frontend maps."""
    return sorted(ONNX_MAP)


def load_onnx(path_or_model: str | Path | bytes | onnx.ModelProto,
              input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None = None) -> Graph:
    """ONNX file (or ``ModelProto`` / serialized bytes) → IR graph.

    ``input_shapes`` resolves symbolic input dims: ``{"input_name": (1, 3, 224, 224)}``, or
    ``{"*": shape}`` for every input that has symbolic dims. Raises ``OnnxImportError`` (an
    ``IRError``) with one readable message on any problem.
    """
    src, what = read_model(path_or_model)
    model = onnx.ModelProto()
    model.CopyFrom(src)  # never change the caller's proto
    model = _check(model, what)
    opset = model_opset(model)
    locs = _locs(model)
    resolve_input_shapes(model, input_shapes, what)
    gsg = to_graphsurgeon(model, what)
    stats = _Fuser(gsg, locs).run()
    if stats:
        log.info("%s: fused %s", what, dict(stats))
    name = model.graph.name or (Path(path_or_model).stem if isinstance(path_or_model, (str, Path))
                                else "main")
    g = from_graphsurgeon(gsg, locs, opset, name=name, what=what,
                          initializer_order=[t.name for t in model.graph.initializer])
    g.meta.update({"source": "onnx", "opset": opset, "producer": model.producer_name})
    return g


__all__ = ["ONNX_MAP", "OnnxImportError", "load_onnx", "read_model", "resolve_input_shapes",
           "supported_ops"]
