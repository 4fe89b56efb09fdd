"""PyTorch backend: IR → ``torch.fx.GraphModule`` whose weights are ``nn.Parameter``s.

Each node calls its op's torch reference from the op table, so the module computes exactly
what the interpreter computes, and can be trained (fine-tuning, distillation). Float
constants become parameters, integer constants buffers. ``write_back`` copies trained
weights into a graph.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from ..ir import ops
from ..ir.graph import Graph, IRError
from ..ir.interpreter import as_tensor


def _attr_name(name: str, taken: set[str]) -> str:
    base = "w_" + "".join(ch if ch.isalnum() else "_" for ch in name)
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


class ShrinkcModule(torch.fx.GraphModule):
    """A GraphModule that remembers which IR constant each parameter/buffer holds."""

    shrinkc_names: dict[str, str]  # attribute name -> IR constant name


def to_torch(graph: Graph, trainable: bool = True) -> ShrinkcModule:
    """Compile ``graph`` to an fx GraphModule (eval mode)."""
    root = torch.nn.Module()
    fx = torch.fx.Graph()
    env: dict[int, torch.fx.Node] = {}
    taken: set[str] = set()
    names: dict[str, str] = {}
    for v in graph.inputs:
        env[id(v)] = fx.placeholder("".join(ch if ch.isalnum() else "_" for ch in v.name))
    for name, v in graph.constants.items():
        attr = _attr_name(name, taken)
        t = as_tensor(v.data.copy())
        if v.type.is_float:
            root.register_parameter(attr, torch.nn.Parameter(t, requires_grad=trainable))
        else:
            root.register_buffer(attr, t)
        names[attr] = name
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
    return gm.eval()


def write_back(graph: Graph, module: torch.nn.Module, inplace: bool = False) -> Graph:
    """A graph whose constants hold ``module``'s current weights (e.g. after fine-tuning)."""
    names = getattr(module, "shrinkc_names", None)
    if names is None:
        raise IRError("write_back needs a module made by shrinkc.to_torch")
    g = graph if inplace else graph.clone()
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    for attr, cname in names.items():
        if cname not in g.constants:
            raise IRError(f"write_back: graph has no constant %{cname} (was it changed since "
                          f"to_torch?)")
        v = g.constants[cname]
        arr = tensors[attr].detach().cpu().numpy()
        if arr.shape != v.shape:
            raise IRError(f"write_back: %{cname} is {v.type} in the graph but "
                          f"{list(arr.shape)} in the module")
        v.data = np.ascontiguousarray(arr.astype(v.data.dtype))
    return g
