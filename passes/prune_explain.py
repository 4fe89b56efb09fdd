"""``prune-explain``: list every channel group, its members, its sinks and every refusal.

An analysis, not a rewrite (exact): runs the channel analysis (``analyses/channels.py``) on
the graph as it is at this point of the pipeline and stores its explanation in
``ctx.artifacts["prune-explain"]`` (``shrinkc opt --explain`` prints it); the graph is not
changed. No options. Stats: ``groups``, ``prunable``, ``refused``, ``channels_prunable``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .analyses.channels import analyze_channels
from .base import Pass, PassContext, PassResult
from .registry import register_pass

__all__ = ["PruneExplain", "explain_graph"]


def explain_graph(graph: Graph) -> str:
    """The channel analysis of ``graph``, explained."""
    return analyze_channels(graph).explain()


@register_pass("prune-explain")
@dataclass
class PruneExplain(Pass):
    """List every channel group, its members and every refusal (changes nothing)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        a = analyze_channels(graph)
        ctx.artifacts["prune-explain"] = a.explain()
        return PassResult(False, {"groups": len(a.groups), "prunable": len(a.prunable),
                                  "refused": len(a.refused),
                                  "channels_prunable": sum(g.size for g in a.prunable)})
