"""PyTorch backend: IR → ``torch.fx.GraphModule`` for evaluation and fine-tuning.

Each node calls its op's torch reference from the op table, so the module computes exactly
what the interpreter computes. What a constant becomes — weights ``nn.Parameter``s,
everything else (batch-norm statistics, quantization scales and zero points, indices,
literal scalars) buffers, encoded weights small modules that keep the encoding
(:class:`MaskedWeight` for ``sparse``, :class:`SharedWeight` for ``codebook``) — is decided
in one place, ``ir/trainable.py`` (:class:`~shrinkc.ir.trainable.GraphParams`), which the
recovery pass uses too; this module builds the fx graph over it.

``write_back`` (also from ``ir/trainable.py``) puts a module's current values back into a
graph through the same check as every other data change (``Graph.replace_constants``: type
and encoding, all or nothing), so a weight that left its mask or its codebook is one clear
error, never a silently broken encoding.

For training code::

    m = shrinkc.to_torch(g)                       # every weight trainable
    m = shrinkc.to_torch(g, trainable={"fc1.weight", "fc1.bias"})   # only these
    opt = torch.optim.SGD(m.trainable_parameters(), lr=1e-2)
    ... m.train(); loss.backward(); opt.step() ...
    g2 = shrinkc.write_back(g, m)                 # encodings checked
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ir import ops
from ..ir.graph import Graph
from ..ir.trainable import (
    GraphParams,
    MaskedWeight,
    SharedWeight,
    Trainable,
    encoded_module,
    write_back,
)

__all__ = ["MaskedWeight", "SharedWeight", "ShrinkcModule", "TorchRuntime", "Trainable",
           "encoded_module", "to_torch", "write_back"]


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


def to_torch(graph: Graph, trainable: Trainable = True) -> ShrinkcModule:
    """Compile ``graph`` to an fx GraphModule (eval mode).

    Weights are ``nn.Parameter``s, every other constant a buffer (see the module doc).
    ``trainable`` picks the weights whose parameters have ``requires_grad``: all (True),
    none (False), a collection of constant names (each must be a weight), or a predicate
    on the constant's ``Value``.
    """
    root = GraphParams(graph, trainable)
    attrs = root.attr_of()
    fx = torch.fx.Graph()
    env: dict[int, torch.fx.Node] = {}
    for v in graph.inputs:
        env[id(v)] = fx.placeholder("".join(ch if ch.isalnum() else "_" for ch in v.name))
    for name, v in graph.constants.items():
        attr = attrs[name]
        if isinstance(getattr(root, attr), torch.nn.Module):
            env[id(v)] = fx.call_module(attr, ())
        else:
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
    gm.shrinkc_names = dict(root.shrinkc_names)
    gm.shrinkc_roles = dict(root.shrinkc_roles)
    return gm.eval()


class TorchRuntime:
    """A graph's ``to_torch`` module, run in inference (no autograd): the torch backend's
    side of the runtime protocol (``backends/runtime.py``). Saved as the graph itself
    (``model.shrk`` + its weights), so it loads without pickle."""

    backend = "torch"
    runs_here = True
    FILE = "model.shrk"

    def __init__(self, graph: Graph):
        self.graph = graph
        self.module = to_torch(graph, trainable=False)
        self.threads = torch.get_num_threads()

    @torch.no_grad()
    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().cpu().numpy() for o in outs]

    def save(self, directory: str | Path) -> dict[str, Any]:
        from ..ir.serialize import save, weights_path

        path = save(self.graph, Path(directory) / self.FILE)
        return {"files": {"model": path.name, "weights": weights_path(path).name}}

    @classmethod
    def load(cls, directory: str | Path, entry: Mapping[str, Any], inputs: Any = None,
             outputs: Any = None) -> TorchRuntime:
        from ..ir.serialize import load

        return cls(load(Path(directory) / entry["files"]["model"]))
