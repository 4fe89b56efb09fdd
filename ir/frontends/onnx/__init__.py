"""ONNX frontend: ``load_onnx(path_or_model, input_shapes=None)`` → IR, via onnx-graphsurgeon.

Steps, each with one kind of error (``OnnxImportError``, never a traceback):

Modules, one per step: ``read`` (1–3), ``fuse`` (4), ``convert`` (5) with the handlers in
``ops_nn``, ``ops_elementwise``, ``ops_shape`` and ``ops_quant`` and their shared ``context``.
What the ONNX backend needs too (dtypes, opset range, loc key) is in ``ir/onnx_common.py``.

1. read and check the model (a truncated or corrupt file, a missing external-data file, a
   model that fails ``onnx.checker``); opsets 13–21 (older ones are upgraded with
   ``onnx.version_converter``, newer ones are tried with a warning);
2. resolve symbolic input dims from ``input_shapes`` (``{"x": (1, 3, 32, 32)}``, or
   ``{"*": shape}`` for every input with symbolic dims), then ``onnx.shape_inference``;
3. ``gs.import_onnx`` and ``fold_constants``: ``Shape → Gather → Unsqueeze → Concat`` chains
   become constants once shapes are static (QuantizeLinear/DequantizeLinear are never folded,
   so a QDQ model stays quantized); ``cleanup``;
4. fusions on the graphsurgeon graph (``Fuser``): Erf- and Tanh-pattern GELU → ``gelu``,
   ``x * Sigmoid(x)`` → ``silu``, ``MatMul(x, W) [+ b]`` with a constant 2-D ``W`` → ``linear``
   (weight transposed to ``[out, in]``);
5. one handler per ONNX op (``ONNX_MAP``, registered with ``@maps``) emits IR ops.
   Initializers become constants under their ONNX names (a constant used transposed or
   reshaped keeps the name the first time); each node's ``loc`` is the ONNX node name (or
   the ``shrinkc.loc`` metadata written by ``backends/onnx.py``, so ONNX → IR → ONNX → IR
   gives an equal graph). IR output types are checked against ONNX shape inference; the
   result is verified.

An op without a handler raises one error naming the node and the op type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from ...graph import Graph
from ...onnx_common import LOC_KEY, ONNX_DTYPES, OPSET_MAX, OPSET_MIN
from .batch import load_batched
from .context import ONNX_MAP, OnnxImportError, f32
from .convert import from_graphsurgeon, supported_ops
from .fuse import Fuser
from .read import (
    check_model,
    model_opset,
    node_locs,
    read_model,
    resolve_input_shapes,
    to_graphsurgeon,
)

log = logging.getLogger(__name__)


def load_onnx(path_or_model: str | Path | bytes | onnx.ModelProto,
              input_shapes: Mapping[str, Sequence[int]] | Sequence[int] | None = None) -> Graph:
    """ONNX file (or ``ModelProto`` / serialized bytes) → IR graph.

    ``input_shapes`` resolves symbolic input dims: ``{"input_name": (1, 3, 224, 224)}``, or
    ``{"*": shape}`` for every input that has symbolic dims. A symbolic dim 0 is the batch:
    the graph is batch-polymorphic when that is provable (``batch.py``), at the nominal
    batch ``input_shapes`` gives (default 1). Raises ``OnnxImportError`` (an ``IRError``)
    with one readable message on any problem.
    """
    src, what = read_model(path_or_model)
    model = onnx.ModelProto()
    model.CopyFrom(src)  # never change the caller's proto
    model = check_model(model, what)
    opset = model_opset(model)
    locs = node_locs(model)
    name = model.graph.name or (Path(path_or_model).stem if isinstance(path_or_model, (str, Path))
                                else "main")

    def import_at(shapes) -> Graph:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        resolve_input_shapes(m, shapes, what)
        gsg = to_graphsurgeon(m, what)
        stats = Fuser(gsg, locs).run()
        if stats:
            log.info("%s: fused %s", what, dict(stats))
        return from_graphsurgeon(gsg, locs, opset, name=name, what=what,
                                 initializer_order=[t.name for t in m.graph.initializer])

    g = load_batched(model, input_shapes, what, import_at)
    g.meta.update({"source": "onnx", "opset": opset, "producer": model.producer_name})
    return g


__all__ = ["LOC_KEY", "ONNX_DTYPES", "ONNX_MAP", "OPSET_MAX", "OPSET_MIN", "OnnxImportError",
           "f32", "from_graphsurgeon", "load_onnx", "model_opset", "read_model",
           "resolve_input_shapes", "supported_ops", "to_graphsurgeon"]
