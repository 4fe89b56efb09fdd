"""Cost analysis: per-node and whole-graph MACs, FLOPs, parameters and bytes.

Wraps ``ir.cost`` (which reads each op's cost from the op table) into the two views the
pass infrastructure needs: ``node_costs`` (one ``Cost`` per node, keyed by node name) and
``summarize`` (a ``CostSummary`` of the whole graph, whose ``delta`` the ``Stats``
instrument prints after each pass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...ir.cost import Cost, graph_cost
from ...ir.graph import Graph

__all__ = ["CostSummary", "node_costs", "summarize"]


@dataclass(frozen=True)
class CostSummary:
    """Whole-graph totals. ``params``/``param_bytes`` count every constant once;
    ``activation_bytes`` is the sum of every node's output sizes."""

    nodes: int
    params: int
    param_bytes: int
    macs: int
    flops: int
    activation_bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def delta(self, before: CostSummary) -> dict[str, int]:
        """``self - before`` for every field."""
        b = before.as_dict()
        return {k: v - b[k] for k, v in self.as_dict().items()}


def node_costs(graph: Graph) -> dict[str, Cost]:
    """Each node's cost, keyed by the node's name (its first output). A constant used by
    several nodes is charged to the first."""
    return {nc.node.name: nc.cost for nc in graph_cost(graph).nodes}


def summarize(graph: Graph) -> CostSummary:
    gc = graph_cost(graph)
    return CostSummary(nodes=len(graph.nodes), params=gc.params, param_bytes=gc.param_bytes,
                       macs=gc.total.macs, flops=gc.total.flops,
                       activation_bytes=gc.total.activation_bytes)
