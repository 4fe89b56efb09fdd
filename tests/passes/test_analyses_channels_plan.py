"""Pruning plans: JSON, checks against the graph, what they remove and cost, the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc.ir.errors import IRError
from shrinkc.ir.interpreter import run
from shrinkc.passes.analyses.channels import Dim, analyze_channels
from shrinkc.passes.analyses.channels_plan import (
    GroupPlan,
    PrunePlan,
    cost_after,
    masked_copy,
    removed_indices,
    shapes_after,
    zeroed_copy,
)
from shrinkc.passes.analyses.cost import summarize
from shrinkc.passes.prune_channels import apply_plan
from suite import assert_close

NET = """
graph "g" (%x: f32[1,3,6,6]) {
  %w0: f32[4,3,3,3] = const #1
  %w1: f32[6,4,3,3] = const #2
  %w2: f32[2,10,1,1] = const #3
  %s: f32[1,4,6,6] = conv2d(%x, %w0) {padding=[1, 1]} loc("stem")
  %a: f32[1,6,6,6] = conv2d(%s, %w1) {padding=[1, 1]} loc("a")
  %cat: f32[1,10,6,6] = concat(%s, %a) {axis=1}
  %h: f32[1,2,6,6] = conv2d(%cat, %w2) loc("head")
  return %h
}
"""


@pytest.fixture
def net(ir):
    g = ir(NET)
    return g, analyze_channels(g)


def test_json_round_trip_and_file(net, tmp_path):
    g, a = net
    plan = PrunePlan.from_keep(a, {a.prunable[0].id: np.array([3, 0]),
                                   a.prunable[1].id: np.arange(6)}, {"criterion": "l1"})
    assert [gp.keep for gp in plan.groups] == [(0, 3)]  # a group that keeps all is left out
    again = PrunePlan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict() and again.channels_removed == 2
    plan.save(tmp_path / "p.json")
    assert PrunePlan.load(tmp_path / "p.json").to_dict() == plan.to_dict()
    assert plan.to_dict()["groups"][0] == {"id": a.prunable[0].id, "anchor": "%s:1", "size": 4,
                                           "keep": [0, 3], "layers": ["stem", "a", "head"]}


@pytest.mark.parametrize("edit, message", [
    (lambda gp: GroupPlan(99, gp.anchor, gp.size, gp.keep), "does not exist"),
    (lambda gp: GroupPlan(gp.id, "%a:1", gp.size, gp.keep), "another graph"),
    (lambda gp: GroupPlan(gp.id, gp.anchor, 7, gp.keep), "another graph"),
    (lambda gp: GroupPlan(gp.id, gp.anchor, gp.size, ()), "distinct indices"),
    (lambda gp: GroupPlan(gp.id, gp.anchor, gp.size, (0, 0)), "distinct indices"),
    (lambda gp: GroupPlan(gp.id, gp.anchor, gp.size, (4,)), "distinct indices"),
])
def test_plans_that_do_not_fit_are_errors(net, edit, message):
    g, a = net
    plan = PrunePlan.from_keep(a, {a.prunable[0].id: np.array([0, 1])})
    plan.groups = [edit(plan.groups[0])]
    with pytest.raises(IRError, match=message):
        plan.resolve(a)


def test_a_refused_group_cannot_be_planned(net):
    g, a = net
    refused = a.refused[0]
    plan = PrunePlan(g.name, [GroupPlan(refused.id, str(refused.anchor), refused.size, (0,))])
    with pytest.raises(IRError, match="cannot be pruned: graph input"):
        plan.resolve(a)


def test_malformed_and_versioned_json():
    with pytest.raises(IRError, match="not JSON"):
        PrunePlan.from_json("{")
    with pytest.raises(IRError, match="version"):
        PrunePlan.from_json('{"version": 7, "graph": "g", "groups": []}')
    with pytest.raises(IRError, match="malformed"):
        PrunePlan.from_json('{"version": 1, "graph": "g", "groups": [{"id": 1}]}')


def test_removed_indices_follow_the_concat_offsets(net):
    g, a = net
    stem, inner = a.prunable
    plan = PrunePlan.from_keep(a, {stem.id: np.array([0, 2]), inner.id: np.array([1, 2, 3])})
    removed = removed_indices(plan.resolve(a))
    assert removed[Dim("cat", 1)].tolist() == [1, 3, 4, 8, 9]
    assert removed[Dim("w2", 1)].tolist() == [1, 3, 4, 8, 9]
    assert removed[Dim("w1", 0)].tolist() == [0, 4, 5] and removed[Dim("w1", 1)].tolist() == [1, 3]
    assert shapes_after(g, removed)["cat"] == (1, 5, 6, 6)


def test_cost_after_is_the_cost_of_the_pruned_graph(net):
    g, a = net
    stem, inner = a.prunable
    plan = PrunePlan.from_keep(a, {stem.id: np.array([1]), inner.id: np.array([0, 5])})
    macs, params = cost_after(g, removed_indices(plan.resolve(a)))
    pruned = g.clone()
    apply_plan(pruned, a if pruned is g else analyze_channels(pruned), plan)
    s = summarize(pruned)
    assert (macs, params) == (s.macs, s.params)
    assert cost_after(g, {}) == (summarize(g).macs, summarize(g).params)


def test_masks_of_ones_change_nothing_and_the_oracle_zeroes_at_sinks(net):
    g, a = net
    masked, sites = masked_copy(g, a.prunable)
    assert sorted((s.node, s.operand, s.axis) for s in sites) == [("a", 0, 1), ("h", 0, 1)]
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert_close(run(masked, [x]), run(g, [x]))
    stem = a.prunable[0]
    plan = PrunePlan.from_keep(a, {stem.id: np.array([0, 1, 2])})
    z = zeroed_copy(g, a, plan)
    masks = {s.node: z.constants[s.mask].data.ravel().tolist() for s in sites}
    assert masks == {"a": [1, 1, 1, 0], "h": [1, 1, 1, 0] + [1] * 6}
