"""Trace-time constant folding for the torch frontend.

What a model computes only from constants and static shapes becomes a constant while the
exported program is converted, instead of IR ops (or a failure): ``arange`` and position ids,
``ne`` / ``eq`` masks over buffers, the causal and padding mask arithmetic of Hugging Face
models, ``new_ones`` / ``full_like`` of a known shape. A node folds when

* it creates a tensor from sizes alone (``arange``, ``zeros``, ``full``, …) or from another
  tensor's *shape and dtype* only (``new_ones``, ``zeros_like``, … — ``SHAPE_ONLY``), or
* every tensor it reads is a constant that is not a parameter: a buffer (``position_ids``), a
  lifted tensor constant, or an earlier folded result.

Folding runs the ATen op itself on real tensors, so the constant is exactly what eager
PyTorch computes. Parameters are never folded into (``weight.t()`` stays an op on the named
weight, which passes and ``write_back`` rely on). Metadata checks (``_assert_*``) are dropped:
the IR's types are checked against torch's after every node anyway. Folded constants that
end up unused (index arithmetic whose result became an attribute) are removed by the final
``dce``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..graph import Value

aten = torch.ops.aten

#: Nodes that check metadata and compute nothing: dropped.
DROP = frozenset({
    aten._assert_tensor_metadata.default, aten._assert_scalar.default,
    aten._assert_async.default, aten._assert_async.msg,
    aten.sym_constrain_range_for_size.default, aten.sym_constrain_range.default,
})

#: Ops that read only the shape and dtype of their tensor operands.
SHAPE_ONLY = frozenset({
    aten.new_ones.default, aten.new_zeros.default, aten.new_full.default,
    aten.new_empty.default, aten.zeros_like.default, aten.ones_like.default,
    aten.full_like.default, aten.empty_like.default,
})

#: Ops whose result is not defined by their operands' values (folding them would freeze one
#: random draw, or uninitialised memory is read as zeros where ``empty`` is filled later).
NEVER = frozenset({aten.rand.default, aten.randn.default, aten.randint.default,
                   aten.bernoulli.default, aten.native_dropout.default})

NOT_FOLDED = object()


def _leaves(x: Any) -> list[torch.fx.Node]:
    if isinstance(x, torch.fx.Node):
        return [x]
    if isinstance(x, (list, tuple)):
        return [n for e in x for n in _leaves(e)]
    if isinstance(x, dict):
        return [n for e in x.values() for n in _leaves(e)]
    return []


def _static(val: Any) -> bool:
    return isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape)


def fold(node: torch.fx.Node, env: dict[str, Any], params: set[int]) -> Any:
    """The value of ``node`` computed now (tensors, tuples of them, python values), or
    ``NOT_FOLDED`` when it depends on a graph input or a parameter."""
    if node.target in NEVER or not callable(node.target):
        return NOT_FOLDED
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and not _static(val):
        return NOT_FOLDED
    if isinstance(val, (list, tuple)) and not all(_static(v) for v in val if v is not None):
        return NOT_FOLDED
    shape_only = node.target in SHAPE_ONLY
    real: dict[str, torch.Tensor] = {}
    for leaf in _leaves((node.args, node.kwargs)):
        got = env.get(leaf.name)
        if shape_only:
            meta = leaf.meta.get("val")
            if not _static(meta):
                return NOT_FOLDED
            real[leaf.name] = torch.zeros(tuple(meta.shape), dtype=meta.dtype)
        elif isinstance(got, Value) and got.is_constant and id(got) not in params:
            real[leaf.name] = torch.from_numpy(np.array(got.data))
        else:
            return NOT_FOLDED

    def sub(x: Any) -> Any:
        if isinstance(x, torch.fx.Node):
            return real[x.name]
        if isinstance(x, (list, tuple)):
            return type(x)(sub(e) for e in x)
        if isinstance(x, dict):
            return {k: sub(e) for k, e in x.items()}
        return x

    with torch.no_grad():
        try:
            return node.target(*sub(node.args), **sub(node.kwargs))
        except Exception:  # not evaluable here (a custom op, …): convert it as usual
            return NOT_FOLDED


__all__ = ["DROP", "NOT_FOLDED", "SHAPE_ONLY", "fold"]
