"""Cost of nodes and graphs: MACs, FLOPs, parameters and bytes, from the op table.

MACs come from each op's ``macs_fn`` (textbook formulas for conv2d / conv_transpose2d /
linear / matmul; 0 for other ops); FLOPs are ``2 * MACs`` plus each op's element-wise
work (``flops_fn``: one per output element for activations, the window for pools, …). A constant's parameters and bytes are charged to the first node that uses it
(shared weights count once); bytes use the constant's encoding when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ops
from .graph import Graph, Node



@dataclass
class Cost:
    macs: int = 0
    flops: int = 0
    params: int = 0
    param_bytes: int = 0
    activation_bytes: int = 0

    def __iadd__(self, other: Cost) -> Cost:
        for f in ("macs", "flops", "params", "param_bytes", "activation_bytes"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self


@dataclass
class NodeCost:
    node: Node
    cost: Cost


@dataclass
class GraphCost:
    nodes: list[NodeCost] = field(default_factory=list)
    total: Cost = field(default_factory=Cost)
    # whole-graph storage: every constant once (including any no node uses)
    params: int = 0
    param_bytes: int = 0


def node_macs(node: Node) -> int:
    opdef = ops.get(node.op)
    return opdef.macs([v.type for v in node.inputs], [o.type for o in node.outputs], node.attrs)


def graph_cost(graph: Graph) -> GraphCost:
    seen: set[int] = set()
    result = GraphCost()
    for node in graph.nodes:
        opdef = ops.get(node.op)
        ins, outs = [v.type for v in node.inputs], [o.type for o in node.outputs]
        c = Cost(macs=opdef.macs(ins, outs, node.attrs), flops=opdef.flops(ins, outs, node.attrs))
        for v in node.inputs:
            if v.is_constant and id(v) not in seen:
                seen.add(id(v))
                c.params += v.type.numel
                c.param_bytes += v.nbytes
        c.activation_bytes = sum(o.type.nbytes for o in node.outputs)
        result.nodes.append(NodeCost(node, c))
        result.total += c
    result.params = sum(v.type.numel for v in graph.constants.values())
    result.param_bytes = sum(v.nbytes for v in graph.constants.values())
    return result
