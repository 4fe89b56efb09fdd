"""shrinkc's IR: types, values, nodes, graphs, the op table, text form, verifier, interpreter."""

from .graph import Graph, IRError, Node, Value
from .types import TensorType

__all__ = ["Graph", "IRError", "Node", "TensorType", "Value"]
