"""PyTorch backend: IR → ``torch.fx.GraphModule`` for evaluation and fine-tuning.

Each node calls its op's torch reference from the op table, so the module computes exactly
what the interpreter computes. What a constant becomes is decided by its role
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

``write_back`` puts a module's current values back into a graph through the same check as
every other data change (``Graph.replace_constants``: type and encoding, all or nothing),
so a weight that left its mask or its codebook is one clear error, never a silently broken
encoding.

For training code::

    m = shrinkc.to_torch(g)                       # every weight trainable
    m = shrinkc.to_torch(g, trainable={"fc1.weight", "fc1.bias"})   # only these
    opt = torch.optim.SGD(m.trainable_parameters(), lr=1e-2)
    ... m.train(); loss.backward(); opt.step() ...
    g2 = shrinkc.write_back(g, m)                 # encodings checked
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from ..ir import ops
from ..ir.encoding import Sparse, codebook_of, split_codebook
from ..ir.graph import Graph, IRError, Value
from ..ir.interpreter import as_tensor
from ..ir.types import to_numpy_dtype

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


class ShrinkcModule(torch.fx.GraphModule):
    """A GraphModule that remembers which IR constant each parameter/buffer holds."""

    shrinkc_names: dict[str, str]  # attribute (or submodule) name -> IR constant name
    shrinkc_roles: dict[str, str]  # IR constant name -> role (ir.ops.ROLES)

    def constant_tensor(self, name: str) -> torch.Tensor:
        """The current value of IR constant ``name`` (an encoded weight computed dense)."""
        for attr, cname in self.shrinkc_names.items():
            if cname == name:
                obj = getattr(self, attr)
                return obj() if isinstance(obj, torch.nn.Module) else obj
        raise KeyError(f"no IR constant %{name} in this module")

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters that train (``requires_grad``): what an optimizer takes."""
        return (p for p in self.parameters() if p.requires_grad)


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


def _encoded_module(v: Value, train: bool) -> torch.nn.Module:
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


def to_torch(graph: Graph, trainable: Trainable = True) -> ShrinkcModule:
    """Compile ``graph`` to an fx GraphModule (eval mode).

    Weights are ``nn.Parameter``s, every other constant a buffer (see the module doc).
    ``trainable`` picks the weights whose parameters have ``requires_grad``: all (True),
    none (False), a collection of constant names (each must be a weight), or a predicate
    on the constant's ``Value``.
    """
    roles = ops.constant_roles(graph)
    train = _selector(graph, roles, trainable)
    root = torch.nn.Module()
    fx = torch.fx.Graph()
    env: dict[int, torch.fx.Node] = {}
    taken: set[str] = set()
    names: dict[str, str] = {}
    for v in graph.inputs:
        env[id(v)] = fx.placeholder("".join(ch if ch.isalnum() else "_" for ch in v.name))
    for name, v in graph.constants.items():
        attr = _attr_name(name, taken)
        names[attr] = name
        weight = roles[name] == ops.TRAINABLE_ROLE
        if weight and v.encoding is not None:
            root.add_module(attr, _encoded_module(v, bool(train(v))))
            env[id(v)] = fx.call_module(attr, ())
            continue
        t = as_tensor(v.data.copy())
        if weight:
            root.register_parameter(attr, torch.nn.Parameter(t, requires_grad=bool(train(v))))
        else:
            root.register_buffer(attr, t)
        env[id(v)] = fx.get_attr(attr)
    for node in graph.nodes:
        opdef = ops.get(node.op)
        call = fx.call_function(opdef.ref, tuple(env[id(v)] for v in node.inputs), dict(node.attrs))
        if len(node.outputs) == 1:
            env[id(node.outputs[0])] = call
        else:
            for i, o in enumerate(node.outputs):
                env[id(o)] = fx.call_function(operator.getitem, (call, i))
    outs = [env[id(v)] for v in graph.outputs]
    fx.output(outs[0] if len(outs) == 1 else tuple(outs))
    gm = ShrinkcModule(root, fx, class_name=f"Shrinkc_{graph.name}".replace("-", "_"))
    gm.shrinkc_names = names
    gm.shrinkc_roles = roles
    return gm.eval()


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if dtype == "bf16":  # numpy has no bfloat16: through the bits
        return t.view(torch.int16).numpy().view(to_numpy_dtype("bf16")).copy()
    return t.numpy().astype(to_numpy_dtype(dtype), copy=True)


def write_back(graph: Graph, module: torch.nn.Module, inplace: bool = False) -> Graph:
    """A graph whose constants hold ``module``'s current values (e.g. after fine-tuning).

    The new data goes in through ``Graph.replace_constants`` (``ir/edit.py``), the check
    every data change passes: each constant keeps its type and its encoding (a pruned
    weight its zeros, a shared one its codebook), or one IRError names the constant and
    nothing is changed.
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
