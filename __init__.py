"""shrinkc: a compiler for neural-network compression.

A model (``torch.nn.Module`` or ONNX file) becomes one IR, is rewritten by a pipeline of
passes, and goes out to PyTorch, ONNX Runtime or TVM::

    import shrinkc
    g  = shrinkc.trace(model, example_inputs)
    g2 = shrinkc.optimize(g, "fold-bn,dce", example_inputs=...)
    shrinkc.save(g2, "m.shrk"); m = shrinkc.to_torch(g2)
    cm = shrinkc.compile(model, example_inputs, passes="fold-bn", backend="onnxruntime")

Heavy backends (onnx, tvm) are imported only when used.
"""

from __future__ import annotations

from .backends.torch import to_torch, write_back
from .ir import Graph, IRError, TensorType
from .ir.frontends.torch import TraceError, trace
from .ir.interpreter import run
from .ir.serialize import load, save
from .ir.text import parse_graph as parse
from .ir.verify import VerificationError, verify

__version__ = "0.1.0"


def load_onnx(path_or_model, input_shapes=None) -> Graph:
    """ONNX file or ``onnx.ModelProto`` → IR graph (see ``ir/frontends/onnx/``)."""
    from .ir.frontends.onnx import load_onnx as _load

    return _load(path_or_model, input_shapes=input_shapes)


def to_onnx(graph: Graph, path, opset: int = 17, *, propagate_nan: bool = False):
    """Write ``graph`` as an ONNX file that ONNX Runtime runs (see ``backends/onnx.py``;
    ``propagate_nan``: max pools that keep NaN in onnxruntime, as ``compile`` writes them)."""
    from .backends.onnx import to_onnx as _to

    return _to(graph, path, opset=opset, propagate_nan=propagate_nan)


def optimize(graph: Graph, pipeline: str, **kwargs) -> Graph:
    """Run a pass pipeline (``"fold-bn,dce"``) on a copy of ``graph``; returns the new graph.
    Keyword arguments go to ``passes.PassContext`` (example_inputs, calibration, seed, …)."""
    from .passes.manager import optimize as _optimize

    return _optimize(graph, pipeline, **kwargs)


def recover(graph: Graph, teacher, data, **kwargs) -> Graph:
    """Fine-tune a compressed ``graph`` by distillation from ``teacher`` (the original: a
    graph or module) on ``data`` (``(X, y)``, ``X`` alone, or batches); returns a new graph
    with the trained weights, encodings kept. Options: ``epochs``, ``lr``, ``temperature``,
    ``alpha``, ``batch_size``, ``world_size``, ``seed``, … (see ``passes/distill.py``)."""
    from .passes.distill import recover as _recover

    return _recover(graph, teacher, data, **kwargs)


def compile(model_or_graph, example_inputs=None, **kwargs):  # noqa: A001 - the API's name
    """Trace (if needed), optimize and compile for a backend; returns a CompiledModel."""
    from .compiler import compile as _compile

    return _compile(model_or_graph, example_inputs, **kwargs)


def load_compiled(path):
    """Load a CompiledModel saved with ``.save(dir)``; runs no passes."""
    from .compiler import load_compiled as _load_compiled

    return _load_compiled(path)


__all__ = [
    "Graph", "IRError", "TensorType", "TraceError", "VerificationError", "compile", "load",
    "load_compiled", "load_onnx", "optimize", "parse", "recover", "run", "save", "to_onnx", "to_torch",
    "trace", "verify", "write_back",
]
