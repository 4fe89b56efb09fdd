"""A symbolic first dim → a batch-polymorphic graph (``ir/batch.py``).

An input whose dim 0 is symbolic (``batch``, ``N``, unnamed) is a batch input. The model is
imported twice, with the batch inputs at batch 3 and 5 (``ir.batch.MERGE_PROBES``; every
other dim as the file or
``input_shapes`` gives it), so every ``Shape → Gather → Concat → Reshape`` chain folds to a
constant at each; ``ir.batch.merge`` compares the two graphs, turns the reshape / expand
shapes that differ into batch-relative ones (-1) and proves the result. The graph then gets
its nominal batch: dim 0 of ``input_shapes`` for a batch input, else the ``shrinkc.batch``
metadata that ``to_onnx`` writes, else 1. When the two imports cannot be merged (a size
computed from the batch used as data, a reshape that splits the batch, …) or the proof
fails, the model is imported once more at the nominal batch as a static-batch graph whose
``meta["batch_static"]`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import onnx

from ... import batch as ir_batch
from ...graph import Graph
from ...onnx_common import BATCH_KEY
from .context import OnnxImportError
from .read import input_dims

log = logging.getLogger(__name__)

Shapes = dict[str, Sequence[int]]


def batch_inputs(model: onnx.ModelProto) -> list[str]:
    """The inputs (not initializers) whose dim 0 is symbolic."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        dims = input_dims(vi)
        if vi.name not in inits and dims and isinstance(dims[0], str):
            out.append(vi.name)
    return out


def _shapes_at(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
               names: Sequence[str], n: int) -> Shapes:
    """``input_shapes`` with every batch input at batch ``n`` (where its shape is known)."""
    shapes: Shapes = dict(input_shapes)
    vis = {vi.name: vi for vi in model.graph.input}
    for name in names:
        dims = input_dims(vis[name])
        given = input_shapes.get(name, input_shapes.get("*"))
        if given is not None and len(given) == len(dims):
            shapes[name] = (n,) + tuple(given[1:])
        elif given is None and all(isinstance(d, int) for d in dims[1:]):
            shapes[name] = (n,) + tuple(dims[1:])
        # else: left as given, and resolve_input_shapes says what is missing or wrong
    return shapes


def nominal(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
            names: Sequence[str]) -> int:
    for name in names:
        given = input_shapes.get(name, input_shapes.get("*"))
        if given:
            return int(given[0])
    meta = {p.key: p.value for p in model.metadata_props}
    return int(meta[BATCH_KEY]) if meta.get(BATCH_KEY, "").isdigit() else 1


def load_batched(model: onnx.ModelProto, input_shapes, what: str,
                 import_at: Callable[[Shapes], Graph]) -> Graph:
    """The graph of ``model``: batch-polymorphic when its batch inputs allow it.
    ``import_at(shapes)`` imports the model with those input shapes."""
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        input_shapes = {"*": input_shapes}
    input_shapes = dict(input_shapes or {})
    names = batch_inputs(model)
    if not names:
        return import_at(input_shapes)
    n0 = nominal(model, input_shapes, names)
    probes = ir_batch.MERGE_PROBES
    try:
        ga, gb = (import_at(_shapes_at(model, input_shapes, names, n)) for n in probes)
        g = ir_batch.specialize(ir_batch.merge(ga, gb, names, *probes), n0, share_data=True)
        return g
    except ir_batch.BatchError as e:
        reason = str(e)
    except OnnxImportError as e:
        reason = f"at batch {probes[0]} or {probes[1]}: {e}"
    g = import_at(_shapes_at(model, input_shapes, names, n0))
    log.info("%s: static batch %d: %s", what, n0, reason)
    ir_batch.set_static(g, reason)
    return g


__all__ = ["batch_inputs", "load_batched", "nominal"]
