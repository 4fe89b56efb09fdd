"""Runs a graph with each op's torch reference — with autograd, without any backend.

Passes that need activations or gradients (calibration, importance scores, numeric diff,
fine-tuning) use this; ``backends/torch.py`` compiles the same references into an fx
GraphModule.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import batch, ops
from .graph import Graph, IRError
from .types import FLOAT_DTYPES, dtype_from_torch, lossless_cast, to_torch_dtype


def as_tensor(x, dtype: str | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)  # not ascontiguousarray alone: it turns 0-d arrays into 1-d ones
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
    return t.to(to_torch_dtype(dtype)) if dtype is not None else t


def constant_tensors(graph: Graph) -> dict[str, torch.Tensor]:
    """Constants as torch tensors (sharing memory with the numpy arrays where possible)."""
    return {name: as_tensor(v.data) for name, v in graph.constants.items()}


def bind_inputs(graph: Graph, inputs) -> list[torch.Tensor]:
    """Accepts a tensor, a sequence of tensors/arrays, or a mapping name -> tensor.

    A batch-polymorphic graph (``ir/batch.py``) takes any batch ``n >= 1`` on its batch
    inputs (the same on all of them; the other dims as typed); a static-batch graph takes
    its types' shapes, and a different dim 0 says why the graph is static."""
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise IRError(f"graph {graph.name}: missing inputs {missing}")
        inputs = [inputs[v.name] for v in graph.inputs]
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = [inputs]
    inputs = list(inputs)
    if len(inputs) != len(graph.inputs):
        raise IRError(f"graph {graph.name} takes {len(graph.inputs)} inputs "
                      f"({', '.join('%' + v.name for v in graph.inputs)}), got {len(inputs)}")
    tensors = [as_tensor(x) for x in inputs]
    batched = {id(v) for v in batch.batch_inputs(graph)}
    n = None  # the batch of this call
    for v, t in zip(graph.inputs, tensors):
        shape = tuple(t.shape)
        same_rest = len(shape) == v.type.rank > 0 and shape[1:] == v.shape[1:]
        if id(v) in batched and same_rest and shape[0] >= 1:
            n = shape[0] if n is None else n
        elif shape == v.type.shape:
            continue
        elif same_rest and not batched:
            raise batch.BatchError(f"input %{v.name} expects {v.type}, got shape {shape}: "
                                   + batch.static_message(graph, shape[0]))
        else:
            kind = " (its dim 0 is the batch: any size)" if id(v) in batched else ""
            raise IRError(f"input %{v.name} expects {v.type}, got shape {shape}{kind}")
        if shape[0] != n:
            raise IRError(f"graph {graph.name}: the batch inputs disagree on the batch: "
                          + ", ".join(f"%{w.name} has {tuple(x.shape)[0]}"
                                      for w, x in zip(graph.inputs, tensors) if id(w) in batched))
    return [_cast(graph, v, t) for v, t in zip(graph.inputs, tensors)]


def _cast(graph: Graph, v, t: torch.Tensor) -> torch.Tensor:
    """``t`` in ``v``'s dtype: silently when lossless (``lossless_cast``: f16 -> f32, an
    int image -> f32, ...); with a warning when values may round (f64 -> f32, i64 -> f32);
    floats for an integer or bool input are refused (they would be truncated)."""
    want = v.dtype
    try:
        have = dtype_from_torch(t.dtype)
    except TypeError as e:
        raise IRError(f"graph {graph.name}: input %{v.name} expects {v.type}: {e}") from None
    if have == want:
        return t
    if have in FLOAT_DTYPES and want not in FLOAT_DTYPES:
        raise IRError(f"graph {graph.name}: input %{v.name} expects {v.type}, got {have} "
                      f"values: convert them first (they would be truncated)")
    if not lossless_cast(have, want):
        warnings.warn(f"graph {graph.name}: input %{v.name} is {have}, converted to {want} "
                      f"(values may round)", RuntimeWarning, stacklevel=4)
    return t.to(to_torch_dtype(want))


def run(graph: Graph, inputs, *, params: Mapping[str, torch.Tensor] | None = None,
        capture: Iterable[str] | bool = (), hook: Callable[[object, list], None] | None = None,
        ) -> list[torch.Tensor] | tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Evaluate ``graph`` on ``inputs``; returns the list of outputs.

    ``params`` overrides constants by name (e.g. tensors with ``requires_grad``); gradients
    flow through every op whose reference is differentiable. ``capture`` names values (or
    ``True`` for all) whose tensors are returned as a second result. ``hook(node, outs)`` is
    called after each node.
    """
    env: dict[int, torch.Tensor] = {}
    for v, t in zip(graph.inputs, bind_inputs(graph, inputs)):
        env[id(v)] = t
    params = params or {}
    for name, v in graph.constants.items():
        env[id(v)] = params[name] if name in params else as_tensor(v.data)
    want_all = capture is True
    wanted = set() if capture is True or capture is False else set(capture)
    captured: dict[str, torch.Tensor] = {}
    for node in graph.nodes:
        opdef = ops.get(node.op)
        try:
            out = opdef.ref(*[env[id(v)] for v in node.inputs], **node.attrs)
        except KeyError as e:
            raise IRError(f"node {node.describe()}: operand not computed") from e
        except Exception as e:
            raise IRError(f"node {node.describe()}: {node.op} failed: {e}") from e
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for o, t in zip(node.outputs, outs):
            env[id(o)] = t
            if want_all or o.name in wanted:
                captured[o.name] = t
        if hook is not None:
            hook(node, outs)
    results = [env[id(v)] for v in graph.outputs]
    if want_all or wanted:
        for v in graph.inputs:
            if want_all or v.name in wanted:
                captured[v.name] = env[id(v)]
        return results, captured
    return results


@torch.no_grad()
def run_numpy(graph: Graph, inputs) -> list[np.ndarray]:
    """``run`` without gradients, returning numpy arrays."""
    return [t.detach().cpu().numpy() for t in run(graph, inputs)]


def random_inputs(graph: Graph, seed: int = 0, batch_size: int | None = None
                  ) -> list[torch.Tensor]:
    """Random inputs matching the graph's input types (normal floats, small ints); with
    ``batch_size``, batch inputs of a batch-polymorphic graph get that dim 0."""
    gen = torch.Generator().manual_seed(seed)
    batched = {id(v) for v in batch.batch_inputs(graph)}
    if batch_size is not None and not batched and any(
            v.type.rank and v.shape[0] != batch_size for v in graph.inputs):
        raise batch.BatchError(batch.static_message(graph, batch_size))
    out = []
    for v in graph.inputs:
        shape = v.shape
        if batch_size is not None and id(v) in batched:
            shape = (int(batch_size),) + shape[1:]
        if v.type.is_float:
            out.append(torch.randn(shape, generator=gen).to(to_torch_dtype(v.dtype)))
        else:
            out.append(torch.randint(0, 8, shape, generator=gen).to(to_torch_dtype(v.dtype)))
    return out


def outputs_close(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], atol: float = 1e-5,
                  rtol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        torch.allclose(x.float(), y.float(), atol=atol, rtol=rtol) for x, y in zip(a, b))


