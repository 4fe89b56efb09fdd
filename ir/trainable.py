"""A graph's constants as torch state that trains: what training may change, encodings kept.

One owner for what a constant becomes when a graph trains, used by ``to_torch``
(``backends/torch.py``, the fx module) and by recovery (``passes/distill.py``, through the
interpreter — a pass imports no backend). What a constant becomes is decided by its role
(``ir.ops.constant_roles``, from the operand roles the op table declares):

* a ``weight`` is an ``nn.Parameter`` (``requires_grad`` as ``trainable`` selects);
* everything else — batch-norm statistics, quantization scales and zero points, indices,
  literal scalars, integer constants — is a buffer: an optimizer never sees it.

Encoded weights stay encoded while they train (a small module computes the weight):

* ``sparse``: :class:`MaskedWeight`, ``weight = where(mask, dense, 0)`` with the mask a
  buffer, so the pruned positions get zero gradient and stay zero;
* ``codebook``: :class:`SharedWeight`, ``weight = centroids[indices]`` with the centroids
  a parameter and the indices a buffer — autograd sums the gradients of each cluster into
  its centroid (Deep Compression's trained quantization); stacked on ``sparse``,
  ``weight = where(mask, centroids[indices], 0)``.

:class:`GraphParams` holds them (``tensors()``: every constant's current value by IR name,
what ``interpreter.run(params=...)`` takes). ``write_back`` puts a module's current values
back into a graph through the same check as every other data change
(``Graph.replace_constants``: type and encoding, all or nothing), so a weight that left its
mask or its codebook is one clear error, never a silently broken encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from . import ops
from .encoding import Sparse, codebook_of, split_codebook
from .graph import Graph, IRError, Value
from .interpreter import as_tensor
from .types import to_numpy_dtype

__all__ = ["GraphParams", "MaskedWeight", "SharedWeight", "Trainable", "encoded_module",
           "write_back"]

Trainable = bool | Iterable[str] | Callable[[Value], bool]


def _attr_name(name: str, taken: set[str]) -> str:
    base = "w_" + "".join(ch if ch.isalnum() else "_" for ch in name)
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


class MaskedWeight(torch.nn.Module):
    """A pruned weight: ``where(mask, dense, 0)`` (``mask`` a buffer; pruned positions stay
    zero)."""

    def __init__(self, dense: torch.Tensor, mask: torch.Tensor, trainable: bool):
        super().__init__()
        self.dense = torch.nn.Parameter(dense, requires_grad=trainable)
        self.register_buffer("mask", mask)

    def forward(self) -> torch.Tensor:  # where, not *: pruned positions are +0.0, never -0.0
        return torch.where(self.mask, self.dense, torch.zeros((), dtype=self.dense.dtype))


class SharedWeight(torch.nn.Module):
    """A weight-shared weight: ``centroids[indices]`` (zero outside ``mask`` when it is also
    pruned).
    The centroids train; each one's gradient is the sum over the positions that use it."""

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor,
                 mask: torch.Tensor | None, trainable: bool):
        super().__init__()
        self.centroids = torch.nn.Parameter(centroids, requires_grad=trainable)
        self.register_buffer("indices", indices)
        self.mask: torch.Tensor | None
        self.register_buffer("mask", mask)

    def forward(self) -> torch.Tensor:
        w = self.centroids[self.indices]
        if self.mask is None:
            return w
        return torch.where(self.mask, w, torch.zeros((), dtype=w.dtype))


def encoded_module(v: Value, train: bool) -> torch.nn.Module:
    """The module that computes encoded weight ``v`` (sparse, codebook, or both)."""
    enc = v.encoding
    mask = torch.from_numpy(enc.mask.copy()) if isinstance(enc, Sparse) else None
    cb = codebook_of(v)
    if cb is None:
        return MaskedWeight(as_tensor(v.data.copy()), mask, train)
    kept = v.data[enc.mask] if mask is not None else v.data
    centroids, idx = split_codebook(kept)
    if mask is not None:
        indices = np.zeros(v.shape, np.int64)
        indices[enc.mask] = idx
    else:
        indices = idx
    return SharedWeight(as_tensor(centroids.copy()), torch.from_numpy(indices), mask, train)


def _selector(graph: Graph, roles: dict[str, str], trainable: Trainable) -> Callable[[Value], bool]:
    if isinstance(trainable, bool):
        return lambda v: trainable
    if callable(trainable):
        return trainable
    names = set(trainable)
    for n in sorted(names):
        if n not in graph.constants:
            raise IRError(f"to_torch: trainable names %{n}, which is not a constant of graph "
                          f"{graph.name}")
        if roles[n] != ops.TRAINABLE_ROLE:
            raise IRError(f"to_torch: %{n} cannot be trained: it is a {roles[n]} "
                          f"(only weights are; see ir.ops.ROLES)")
    return lambda v: v.name in names


class GraphParams(torch.nn.Module):
    """Every constant of ``graph`` as torch state, one attribute each (see the module doc):
    weights parameters (``requires_grad`` as ``trainable`` selects), the rest buffers,
    encoded weights a :class:`MaskedWeight` / :class:`SharedWeight` submodule.

    ``shrinkc_names`` maps attribute -> IR constant name, ``shrinkc_roles`` IR name -> role;
    ``tensors()`` gives every constant's current value by IR name (encoded ones computed).
    """

    shrinkc_names: dict[str, str]
    shrinkc_roles: dict[str, str]

    def __init__(self, graph: Graph, trainable: Trainable = True):
        super().__init__()
        roles = ops.constant_roles(graph)
        train = _selector(graph, roles, trainable)
        taken: set[str] = set()
        names: dict[str, str] = {}
        for name, v in graph.constants.items():
            attr = _attr_name(name, taken)
            names[attr] = name
            weight = roles[name] == ops.TRAINABLE_ROLE
            if weight and v.encoding is not None:
                self.add_module(attr, encoded_module(v, bool(train(v))))
                continue
            t = as_tensor(v.data.copy())
            if weight:
                self.register_parameter(attr, torch.nn.Parameter(t, requires_grad=bool(train(v))))
            else:
                self.register_buffer(attr, t)
        self.shrinkc_names = names
        self.shrinkc_roles = roles

    def attr_of(self) -> dict[str, str]:
        """IR constant name -> attribute name."""
        return {c: a for a, c in self.shrinkc_names.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every constant's current value by IR name (an encoded weight computed dense)."""
        out = {}
        for attr, cname in self.shrinkc_names.items():
            obj = getattr(self, attr)
            out[cname] = obj() if isinstance(obj, torch.nn.Module) else obj
        return out

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters that train (``requires_grad``): what an optimizer takes."""
        return (p for p in self.parameters() if p.requires_grad)


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if dtype == "bf16":  # numpy has no bfloat16: through the bits
        return t.view(torch.int16).numpy().view(to_numpy_dtype("bf16")).copy()
    return t.numpy().astype(to_numpy_dtype(dtype), copy=True)


def write_back(graph: Graph, module: torch.nn.Module, inplace: bool = False) -> Graph:
    """A graph whose constants hold ``module``'s current values (e.g. after fine-tuning).

    ``module`` is a ``to_torch`` module or a :class:`GraphParams` (anything with
    ``shrinkc_names``). The new data goes in through ``Graph.replace_constants``
    (``ir/edit.py``), the check every data change passes: each constant keeps its type and
    its encoding (a pruned weight its zeros, a shared one its codebook), or one IRError
    names the constant and nothing is changed.
    """
    names = getattr(module, "shrinkc_names", None)
    if names is None:
        raise IRError("write_back needs a module made by shrinkc.to_torch")
    g = graph if inplace else graph.clone()
    arrays = {}
    for attr, cname in names.items():
        if cname not in g.constants:
            raise IRError(f"write_back: graph has no constant %{cname} (was it changed since "
                          f"to_torch?)")
        v = g.constants[cname]
        obj = getattr(module, attr)
        if isinstance(obj, torch.nn.Module):
            mask = getattr(obj, "mask", None)
            if isinstance(v.encoding, Sparse) and (
                    mask is None or not np.array_equal(mask.detach().cpu().numpy(),
                                                       v.encoding.mask)):
                raise IRError(f"write_back: the mask of %{cname} in the module is not the "
                              f"graph's {v.encoding}")
            with torch.no_grad():
                t = obj()
        else:
            t = obj
        if tuple(t.shape) != v.shape:
            raise IRError(f"write_back: %{cname} is {v.type} in the graph but "
                          f"{list(t.shape)} in the module")
        arrays[v] = _to_numpy(t, v.dtype)
    try:
        g.replace_constants(arrays)
    except IRError as e:
        raise IRError(f"write_back: {e}") from None
    return g
