"""``dce``: dead-code elimination (exact).

Matches every node none of whose outputs a graph output depends on, and every constant no
node uses; removes them (``Graph.dce``). Graph inputs are kept even when unused: they are
the graph's interface. No options.

Stats: ``nodes_removed``, ``constants_removed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .base import Pass, PassContext, PassResult
from .registry import register_pass


@register_pass("dce")
@dataclass
class Dce(Pass):
    """Remove nodes and constants that no graph output depends on."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        nodes, consts = len(graph.nodes), len(graph.constants)
        graph.dce()
        stats = {"nodes_removed": nodes - len(graph.nodes),
                 "constants_removed": consts - len(graph.constants)}
        return PassResult(any(stats.values()), stats)
