"""Small rewriting helpers shared by passes (on top of the Graph verbs).

* ``replace_data(value, array)`` — new contents for a constant of the same type. Passes
  never write into a constant's array (snapshots share arrays); they give it a new one.
  For data of another shape or dtype use ``Graph.replace_constant(s)`` (``ir/edit.py``),
  which re-infers the users' types.
* ``replace_with_constants(graph, node, arrays)`` — a node's outputs become constants that
  keep the outputs' names; the node is erased.
* ``remove_unused_constants(graph, values)`` — drop those of ``values`` nothing uses.
* ``to_numpy(tensor, dtype)`` — a torch result as a numpy array of an IR dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..ir.graph import Graph, IRError, Node, Value
from ..ir.types import TensorType, to_numpy_dtype

__all__ = ["remove_unused_constants", "replace_data", "replace_with_constants", "to_numpy"]


def replace_data(value: Value, array: np.ndarray) -> None:
    """Give constant ``value`` new contents of exactly its type."""
    if not value.is_constant:
        raise IRError(f"%{value.name} is not a constant")
    array = np.asarray(array)  # (np.ascontiguousarray alone would make a 0-d array 1-d)
    array = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    if TensorType.of(array) != value.type:
        raise IRError(f"new data for %{value.name} is {TensorType.of(array)}, expected "
                      f"{value.type}")
    if value.encoding is not None:
        reason = value.encoding.check(array)
        if reason:
            raise IRError(f"new data for %{value.name} breaks its encoding "
                          f"{value.encoding}: {reason}")
    value.data = array


def to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    """``t`` as a numpy array of IR dtype ``dtype`` (bf16 through its bits)."""
    t = t.detach().cpu().contiguous()
    if dtype == "bf16":
        return t.view(torch.int16).numpy().view(to_numpy_dtype("bf16")).copy()
    return t.numpy().astype(to_numpy_dtype(dtype), copy=True)


def replace_with_constants(graph: Graph, node: Node, arrays: Sequence[np.ndarray]) -> list[Value]:
    """Replace every output of ``node`` by a constant holding the matching array, under the
    output's own name (so graph outputs and text dumps keep their names); erase ``node``."""
    if len(arrays) != len(node.outputs):
        raise IRError(f"{node.describe()}: {len(arrays)} arrays for {len(node.outputs)} outputs")
    consts = []
    for o, a in zip(node.outputs, arrays):
        c = graph.add_constant(a, graph.fresh_name(f"{o.name}.folded"))
        if c.type != o.type:
            raise IRError(f"{node.describe()}: computed {c.type} for %{o.name}: {o.type}")
        consts.append(c)
    names = [o.name for o in node.outputs]
    for o, c in zip(node.outputs, consts):
        graph.replace_all_uses(o, c)
    graph.erase(node)
    for c, name in zip(consts, names):
        graph.rename(c, name)
    return consts


def remove_unused_constants(graph: Graph, values: Iterable[Value]) -> int:
    """Remove the constants among ``values`` that nothing uses any more; how many."""
    removed, seen = 0, set()
    for v in values:
        if id(v) in seen or not v.is_constant:
            continue
        seen.add(id(v))
        if not v.uses and v not in graph.outputs and graph.constants.get(v.name) is v:
            graph.remove_constant(v)
            removed += 1
    return removed
