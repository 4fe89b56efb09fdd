"""Steps 1–3 of the ONNX import: read and check the model (opsets), make the input shapes
static, and bring it into onnx-graphsurgeon (shape inference, constant folding, cleanup)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ...onnx_common import LOC_KEY, ONNX_DTYPES, OPSET_MAX, OPSET_MIN
from .context import OnnxImportError, first_line

log = logging.getLogger(__name__)

_NO_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


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
            raise OnnxImportError(f"{what}: not an ONNX model ({first_line(e)})") from None
    path = Path(src)
    if not path.is_file():
        raise OnnxImportError(f"load_onnx: {path}: no such file")
    try:
        return onnx.load(str(path)), f"load_onnx: {path}"
    except Exception as e:  # DecodeError, missing external data, …
        raise OnnxImportError(f"load_onnx: {path} is not a readable ONNX file (truncated or "
                              f"corrupt?): {type(e).__name__}: {first_line(e)}") from None


def model_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check_model(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    if not model.HasField("graph") or not model.graph.output:
        raise OnnxImportError(f"{what}: not an ONNX model (no graph with outputs; truncated or "
                              f"corrupt?)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        if "is deprecated" not in str(e):  # e.g. GroupNormalization-18: still runs
            raise OnnxImportError(f"{what}: not a valid ONNX model (truncated or corrupt?): "
                                  f"{first_line(e)}") from None
        log.warning("%s: %s (importing anyway)", what, first_line(e))
    opset = model_opset(model)
    if opset is None:
        raise OnnxImportError(f"{what}: the model imports no default-domain opset")
    if opset < OPSET_MIN:
        log.info("%s: upgrading opset %d to %d", what, opset, OPSET_MIN)
        try:
            model = onnx.version_converter.convert_version(model, OPSET_MIN)
        except Exception as e:
            raise OnnxImportError(f"{what}: opset {opset} is older than {OPSET_MIN} and could "
                                  f"not be upgraded: {first_line(e)}") from None
    elif opset > OPSET_MAX:
        log.warning("%s: opset %d is newer than the tested range %d-%d; trying anyway", what,
                    opset, OPSET_MIN, OPSET_MAX)
    return model


# ============================================================================ 2. input shapes
def input_dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
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
        dims = input_dims(vi)
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


#: Rounds of shape inference and folding: a ``Shape`` whose input ONNX shape inference
#: cannot size (behind an ``Expand`` to a computed shape, as torch.onnx writes BERT's
#: attention mask) folds in a later round, once the constants before it have folded.
FOLD_ROUNDS = 4


def to_graphsurgeon(model: onnx.ModelProto, what: str = "load_onnx") -> gs.Graph:
    """Shape inference, import, constant folding (Q/DQ kept) and cleanup — again while that
    leaves fewer ``Shape`` / ``Size`` nodes than the round before."""
    pending = None
    for round_ in range(FOLD_ROUNDS):
        graph = _fold_once(model, what)
        left = sum(n.op in ("Shape", "Size") for n in graph.nodes)
        if not left or (pending is not None and left >= pending) or round_ == FOLD_ROUNDS - 1:
            break
        pending = left
        model = _reexport(graph)
    if any(not _static(t) for t in graph.tensors().values()):
        graph = _fold_once(_reexport(graph), what)  # the shapes again, all chains folded
    return graph


def _static(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant) or (isinstance(t.shape, (list, tuple)) and all(
        isinstance(d, int) for d in t.shape))


def _reexport(graph: gs.Graph) -> onnx.ModelProto:
    with _quiet_gs():
        model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]  # symbolic dims of the last round: infer them again
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    return model


def _fold_once(model: onnx.ModelProto, what: str) -> gs.Graph:
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                  data_prop=True)
    except Exception as e:
        raise OnnxImportError(f"{what}: ONNX shape inference failed: {first_line(e)}") from None
    with _quiet_gs():
        try:
            graph = gs.import_onnx(model)
        except Exception as e:
            raise OnnxImportError(f"{what}: onnx-graphsurgeon cannot import the model: "
                                  f"{first_line(e)}") from None
        # ONNX graphs are topologically sorted (the checker requires it); graphsurgeon's own
        # toposort is not stable, and the node order must survive ONNX -> IR -> ONNX -> IR
        keep = lambda n: n.op in _NO_FOLD
        try:  # one onnxruntime run for the whole constant subgraph …
            graph.fold_constants(error_ok=False, should_exclude_node=keep)
        except Exception as e:  # … or, if some node fails there, part by part
            log.debug("%s: constant folding in one piece failed (%s); partitioning", what,
                      first_line(e))
            graph.fold_constants(partitioning="basic", should_exclude_node=keep)
        graph.cleanup()
    return graph


def node_locs(model: onnx.ModelProto) -> dict[str, str | None]:
    """First output name → loc: the ``shrinkc.loc`` metadata if present, else the node name."""
    locs: dict[str, str | None] = {}
    for node in model.graph.node:
        if not node.output:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        loc = meta.get(LOC_KEY, node.name)
        locs[node.output[0]] = loc or None
    return locs
