"""Step 5 of the ONNX import: one handler per node (``ONNX_MAP``, ``FUSED_MAP``) builds the IR
graph; every output is checked against ONNX shape inference and the result is verified."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs

from ...graph import Graph
from ...types import TensorType, dtype_from_numpy
from ...verify import VerificationError, verify
from . import ops_elementwise, ops_nn, ops_quant, ops_shape  # noqa: F401  (fill ONNX_MAP)
from .context import FUSED_DOMAIN, FUSED_MAP, ONNX_MAP, Ctx, OnnxImportError


def supported_ops() -> list[str]:
    """The ONNX op types the frontend maps."""
    return sorted(ONNX_MAP)


def _check_type(c: Ctx, t: gs.Tensor) -> None:
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
    c = Ctx(g, gsg, locs, opset, what)
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
