"""prune-explain: the channel analysis explained, as an artifact; the graph is unchanged."""

from __future__ import annotations

import torch
from shrinkc import trace
from shrinkc.ir.text import graph_diff
from shrinkc.passes import PassContext, PassManager
from torch import nn


class Regroup(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu(self.a(x)).reshape(1, 4, 12, 6).reshape(1, 8, 6, 6)
        return self.fc(torch.relu(self.b(y)).mean((2, 3)))


def test_lists_groups_members_sinks_and_refusals():
    g = trace(Regroup().eval(), (torch.randn(1, 3, 6, 6),))
    ctx = PassContext()
    after = g.clone()
    pm = PassManager("prune-explain", ctx)
    pm.run(after)
    text = ctx.artifacts["prune-explain"]
    assert graph_diff(after, g) is None and not pm.steps[0].result.changed
    assert text.startswith("channel groups of graph")
    assert "REFUSED" in text and "regroups axes" in text
    assert "graph input %x" in text and "graph output %linear" in text
    assert "members: %" in text and "sinks: conv2d_1 (b) operand 0" in text
    stats = pm.steps[0].result.stats
    assert stats["prunable"] == 1 and stats["channels_prunable"] == 4  # b's output only
    assert stats["groups"] == stats["prunable"] + stats["refused"]
