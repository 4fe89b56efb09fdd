"""The channel analysis: dims, groups as components, index maps, reasons, the explanation."""

from __future__ import annotations

import numpy as np
from shrinkc.passes.analyses.channels import Dim, analyze_channels

RESIDUAL = """
graph "g" (%x: f32[1,3,6,6]) {
  %w0: f32[4,3,3,3] = const #1
  %w1: f32[5,4,3,3] = const #2
  %w2: f32[4,5,3,3] = const #3
  %w3: f32[2,4,1,1] = const #4
  %s: f32[1,4,6,6] = conv2d(%x, %w0) {padding=[1, 1]} loc("stem")
  %a: f32[1,5,6,6] = conv2d(%s, %w1) {padding=[1, 1]} loc("a")
  %r: f32[1,5,6,6] = relu(%a)
  %b: f32[1,4,6,6] = conv2d(%r, %w2) {padding=[1, 1]} loc("b")
  %sum: f32[1,4,6,6] = add(%s, %b)
  %h: f32[1,2,6,6] = conv2d(%sum, %w3) loc("head")
  return %h
}
"""


def test_groups_members_roles_and_sinks(ir):
    a = analyze_channels(ir(RESIDUAL))
    stream, inner = a.prunable
    assert stream.anchor == Dim("s", 1) and stream.size == 4
    assert set(stream.members) == {Dim("s", 1), Dim("b", 1), Dim("sum", 1), Dim("w0", 0),
                                   Dim("w2", 0), Dim("w1", 1), Dim("w3", 1)}
    assert stream.roles[Dim("w0", 0)] == "out" and stream.roles[Dim("w1", 1)] == "in"
    assert sorted(s.node.loc for s in stream.sinks) == ["a", "head"]
    assert inner.anchor == Dim("a", 1) and inner.size == 5
    assert [s.node.loc for s in inner.sinks] == ["b"]
    assert [n.loc for n in inner.nodes if n.loc] == ["a", "b"]
    for g in a.groups:
        for d, rows in g.index.items():
            assert rows.shape[0] == g.size
    assert np.array_equal(stream.index[Dim("sum", 1)].ravel(), np.arange(4))


def test_refusals_carry_readable_reasons(ir):
    a = analyze_channels(ir(RESIDUAL))
    reasons = {r for g in a.refused for r in g.reasons}
    assert reasons == {"graph input %x", "graph output %h"}
    assert a.other_groups > 0  # batch and spatial components are not channel groups


def test_analysis_is_deterministic(ir):
    g = ir(RESIDUAL)
    first, second = analyze_channels(g), analyze_channels(g.clone())
    assert [(x.id, str(x.anchor), x.size) for x in first.groups] == \
        [(x.id, str(x.anchor), x.size) for x in second.groups]


def test_explain_lists_every_group(ir):
    text = analyze_channels(ir(RESIDUAL)).explain()
    assert text.splitlines()[0].startswith("channel groups of graph g: 2 prunable, 2 refused")
    assert "group 1 (4 channels at %s:1; layers: stem, a, b, head)" in text.replace(
        "s (stem)", "stem").replace("a (a)", "a").replace("b (b)", "b").replace("h (head)", "head")
    assert "refused: graph output %h" in text
    assert "%w0:0[out]" in text and "sinks: a (a) operand 0, h (head) operand 0" in text


def test_encoded_constants_are_frozen(ir):
    from shrinkc.ir.encoding import Encoding

    class Marker(Encoding):  # any storage encoding: slicing it is the encoding's business
        def __str__(self) -> str:
            return "marker"

    g = ir(RESIDUAL)
    g.constants["w1"].encoding = Marker()
    inner = next(x for x in analyze_channels(g).groups if x.anchor == Dim("a", 1))
    assert "constant %w1 has a storage encoding (marker)" in inner.reasons
