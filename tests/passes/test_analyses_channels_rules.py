"""The channel coupling rules: every op has one; each rule's links, sinks and freezes."""

from __future__ import annotations

import pytest
from shrinkc.ir import ops
from shrinkc.passes.analyses.channels import analyze_channels
from shrinkc.passes.analyses.channels_rules import RULES, _blocks


def test_every_op_has_a_channel_rule():
    """A new op must say how its channels couple: without a rule it would be frozen, and a
    pruner that freezes silently is as useless as one that prunes through it."""
    missing = sorted(set(ops.OPS) - set(RULES))
    assert not missing, f"ops without a channel rule in channels_rules.RULES: {missing}"


def test_rules_name_only_known_ops():
    assert set(RULES) <= set(ops.OPS)


@pytest.mark.parametrize("a, b, blocks", [
    ((1, 16, 16), (1, 16, 2, 8), [([0], []), ([], [0]), ([1], [1]), ([2], [2, 3])]),
    ((1, 8, 4, 4), (1, 128), [([0], []), ([], [0]), ([1, 2, 3], [1])]),
    ((2, 4, 3), (4, 2, 3), [([0, 1], [0, 1]), ([2], [2])]),
    ((6, 1, 4), (24,), [([0, 1, 2], [0])]),
])
def test_reshape_blocks(a, b, blocks):
    assert list(_blocks(a, b)) == blocks


def _analysis(ir, body: str, inputs: str = "%x: f32[1,4,6,6]"):
    return analyze_channels(ir(f'graph "g" ({inputs}) {{\n{body}\n}}'))


def _group(a, value: str):
    return next(g for g in a.groups if g.anchor.value == value)


CONV_IN = """
  %w1: f32[6,4,1,1] = const #1
  %c1: f32[1,6,6,6] = conv2d(%x, %w1)
"""
CONV_OUT = """
  %w2: f32[3,{c},1,1] = const #2
  %c2: f32[1,3,6,6] = conv2d(%{v}, %w2)
  return %c2
"""


@pytest.mark.parametrize("op, prunable, reason", [
    ("relu(%c1)", True, None),
    ("softmax(%c1) {axis=1}", False, "softmax normalizes over this axis"),
    ("mean(%c1) {axes=[1], keepdim=true}", False, "mean over this axis"),
    ("max(%c1) {axes=[1], keepdim=true}", False, "max over this axis"),
    ("layer_norm(%c1) {normalized_shape=[6, 6]}", True, None),  # over H, W: channels free
    ("hardtanh(%c1) {min_val=0.0, max_val=6.0}", True, None),
])
def test_channel_rules_of_ops_between_two_convs(ir, op, prunable, reason):
    out_c = 1 if op.startswith(("mean", "max")) else 6
    body = CONV_IN + f"  %y: f32[1,{out_c},6,6] = {op}\n" + CONV_OUT.format(c=out_c, v="y")
    a = _analysis(ir, body)
    g = _group(a, "c1")
    assert g.prunable == prunable, g.reasons
    if reason:
        assert any(reason in r for r in g.reasons), g.reasons


def test_sum_over_channels_is_a_sink(ir):
    body = CONV_IN + """
  %s: f32[1,6,6] = sum(%c1) {axes=[1]}
  return %s
"""
    a = _analysis(ir, body)
    g = _group(a, "c1")
    assert g.prunable and [s.node.op for s in g.sinks] == ["sum"]


def test_an_axis_the_rule_does_not_cover_is_frozen(ir, monkeypatch):
    from shrinkc.passes.analyses import channels_rules

    def lazy(c):  # links nothing: every axis is left uncovered
        pass

    monkeypatch.setitem(channels_rules.RULES, "relu", channels_rules.ChannelRule(lazy))
    a = _analysis(ir, CONV_IN + "  %y: f32[1,6,6,6] = relu(%c1)\n" + CONV_OUT.format(c=6, v="y"))
    g = _group(a, "c1")
    assert not g.prunable
    assert any("the relu rule does not cover axis 1 of %c1" in r for r in g.reasons)


def test_an_op_without_a_rule_freezes_everything(ir, monkeypatch):
    from shrinkc.passes.analyses import channels_rules

    monkeypatch.delitem(channels_rules.RULES, "relu")
    a = _analysis(ir, CONV_IN + "  %y: f32[1,6,6,6] = relu(%c1)\n" + CONV_OUT.format(c=6, v="y"))
    assert any("op has no channel rule" in r for r in _group(a, "c1").reasons)
