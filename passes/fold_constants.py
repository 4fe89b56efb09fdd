"""``fold-constants``: constant folding (exact).

Matches every node whose inputs are all constants and replaces its outputs by constants
computed with the op's torch reference (the same function the interpreter runs, so the
result is bit-identical); the new constants keep the outputs' names. Runs in graph order,
so chains of constant nodes fold in one sweep. Inputs left unused are removed.

Not folded:

* results that would take more than ``max_growth`` times the bytes of the node's constant
  inputs (``expand`` of a scalar to an activation shape, a broadcast ``add`` of a row and a
  column, an i8 → f32 ``cast``): folding them would grow the model;
* ``dequantize``: a quantized weight stays stored as integers (folding it back to f32
  would undo quantization).

Options:

* ``max_growth`` (float, >= 1, default 1.0): the size guard above.

Stats: ``folded``, ``skipped_size``, ``skipped_quantized``, ``constants_removed`` (inputs
and intermediate folded constants nothing uses any more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import ops
from ..ir.graph import Graph
from ..ir.interpreter import as_tensor
from ..ir.types import TensorType
from .base import Pass, PassContext, PassError, PassResult, option
from .registry import register_pass
from .rewrite import remove_unused_constants, replace_with_constants, to_numpy

KEEP_OPS = frozenset({"dequantize"})


@register_pass("fold-constants")
@dataclass
class FoldConstants(Pass):
    """Replace each node whose inputs are all constants by the constants it computes."""

    exact = True
    max_growth: float = option(1.0, ge=1.0, help="fold only if the result takes at most "
                               "this many times the bytes of the node's inputs")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = {"folded": 0, "skipped_size": 0, "skipped_quantized": 0, "constants_removed": 0}
        inputs_seen = []
        for node in list(graph.nodes):
            if not node.inputs or not all(v.is_constant for v in node.inputs):
                continue
            if node.op in KEEP_OPS:
                stats["skipped_quantized"] += 1
                continue
            unique = {id(v): v for v in node.inputs}.values()
            in_bytes = sum(v.nbytes for v in unique)
            out_bytes = sum(o.type.nbytes for o in node.outputs)
            if out_bytes > self.max_growth * in_bytes:
                ctx.logger.debug("fold-constants: not folding %s (%d bytes from %d)",
                                 node.describe(), out_bytes, in_bytes)
                stats["skipped_size"] += 1
                continue
            try:
                with torch.no_grad():
                    out = ops.get(node.op).ref(*[as_tensor(v.data) for v in node.inputs],
                                               **node.attrs)
            except Exception as e:
                raise PassError(f"{node.op} failed on its constant inputs: {e}",
                                node=node) from e
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            for t, o in zip(outs, node.outputs):
                if TensorType.of(t) != o.type:
                    raise PassError(f"{node.op} computed {TensorType.of(t)} for %{o.name}: "
                                    f"{o.type}", node=node)
            arrays = [to_numpy(t, o.type.dtype) for t, o in zip(outs, node.outputs)]
            inputs_seen.extend(node.inputs)
            replace_with_constants(graph, node, arrays)
            stats["folded"] += 1
        stats["constants_removed"] = remove_unused_constants(graph, inputs_seen)
        return PassResult(stats["folded"] > 0, stats)
