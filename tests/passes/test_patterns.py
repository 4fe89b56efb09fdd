"""passes/patterns.py: patterns as data, the matcher's bindings and reasons, rules to a
fixpoint with counters, and the explanations of rules that did not fire."""

from __future__ import annotations

import logging

import pytest
from shrinkc.ir import IRError
from shrinkc.ir.text import graph_diff
from shrinkc.ir.verify import verify
from shrinkc.passes.patterns import NoMatch, Pat, Rule, apply_rules, explaining, match

GRAPH = """
graph "g" (%x: f32[1,3,8,8]) {
  %w: f32[4,3,1,1] = const #1
  %b: f32[4] = const #2
  %one: f32[] = const 1.0
  %c1: f32[1,4,8,8] = conv2d(%x, %w, %b) loc("conv1")
  %c2: f32[1,4,8,8] = conv2d(%x, %w) loc("conv2")
  %r: f32[1,4,8,8] = relu(%c1)
  %m: f32[1,4,8,8] = mul(%r, %r)
  %s: f32[1,4,8,8] = mul(%m, %c2)
  %t: f32[1,4,8,8] = mul(%s, %one)
  return %t, %c2
}
"""

CONV = Pat("conv2d", [Pat(name="x"), Pat(name="w", const=True),
                      Pat(name="b", const=True, optional=True)], name="conv")


def test_match_binds_nodes_and_values(ir):
    g = ir(GRAPH)
    m = match(Pat("relu", [CONV], name="act"), g.node("r"), g)
    assert m and m.root is g.node("r") and m["act"] is g.node("r")
    assert m["conv"] is g.node("c1") and m["w"] is g.constants["w"] and m["b"] is g.constants["b"]
    assert m["x"] is g.inputs[0]
    m2 = match(CONV, g.node("c2"), g)  # the optional bias is absent
    assert m2 and "b" not in m2 and m2.get("b") is None
    assert match(Pat("mul", [Pat("mul", single_use=True), ...]), g.node("t"), g)


def test_a_name_bound_twice_must_bind_the_same_value(ir):
    g = ir(GRAPH)
    square = Pat("mul", [Pat(name="y"), Pat(name="y")])
    assert match(square, g.node("m"), g)
    no = match(square, g.node("s"), g)
    assert not no and no.reason == "operand 1 %c2: y is already bound to another value"


def test_ellipsis_lets_further_operands_through(ir):
    g = ir(GRAPH)
    assert match(Pat("conv2d", [Pat(name="x"), ...]), g.node("c1"), g)
    no = match(Pat("conv2d", [Pat(name="x")]), g.node("c1"), g)
    assert no.reason == "c1 (conv1) has 3 operands, the pattern takes 1"
    assert match(CONV, g.node("c1").output, g)  # a value matches through its producer


@pytest.mark.parametrize("pattern, at, reason", [
    (Pat("relu", [Pat("linear")]), "r", "operand 0 %c1: c1 (conv1) is conv2d, not linear"),
    (Pat("conv2d", [Pat("relu"), ...]), "c1", "operand 0 %x: %x is a graph input, not relu"),
    (Pat("conv2d", [Pat(name="x", const=True), ...]), "c1", "operand 0 %x: %x is not a constant"),
    (Pat("conv2d", [Pat(), Pat(const=False), ...]), "c1", "operand 1 %w: %w is a constant"),
    (Pat("mul", [Pat(), Pat("conv2d", single_use=True)]), "s",
     "operand 1 %c2: %c2 has 1 uses and a graph output (a single use wanted)"),
    (Pat("mul", [Pat(dtype="f16"), ...]), "t", "operand 0 %s: %s is f32, not f16"),
    (Pat("mul", [Pat(), Pat(rank={1, 2})]), "t", "operand 1 %one: %one has rank 0, not 1 | 2"),
    (Pat("mul", where=lambda n: False), "t", "<lambda> does not hold"),
    (Pat({"add", "sub"}), "t", "t is mul, not add | sub"),
])
def test_non_match_reasons_say_where_and_why(ir, pattern, at, reason):
    g = ir(GRAPH)
    m = match(pattern, g.node(at), g)
    assert isinstance(m, NoMatch) and m.reason == reason


def test_named_predicates_are_named_in_the_reason(ir):
    g = ir(GRAPH)

    def is_square(node):
        return node.inputs[0] is node.inputs[1]

    assert match(Pat("mul", where=is_square), g.node("m"), g)
    assert match(Pat("mul", where=is_square), g.node("s"), g).reason == "is_square does not hold"


@pytest.mark.parametrize("kwargs, message", [
    ({"op": "mul", "inputs": [..., Pat()]}, "'...' may only end"),
    ({"op": "mul", "inputs": [Pat(optional=True), Pat()]}, "optional operands must be trailing"),
    ({"inputs": [Pat()]}, "operand patterns need an op"),
])
def test_malformed_patterns_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pat(**kwargs)


def test_rule_needs_a_root_op():
    with pytest.raises(ValueError, match="root pattern needs an op"):
        Rule("r", Pat(name="x"), rewrite=lambda g, m: None)


# ------------------------------------------------------------------ rules to a fixpoint
def _forward_x(graph, m):
    graph.replace_all_uses(m.root.output, m["x"])
    graph.erase(m.root)


def all_zero(v):
    return not v.data.any()


X = Pat(name="x")
TIMES_ZERO = Rule("times-zero", Pat("mul", [Pat(), Pat(name="x", const=True, where=all_zero)]),
                  rewrite=_forward_x)
DOUBLE_NEG = Rule("double-neg", Pat("neg", [Pat("neg", [X], single_use=True)]),
                  rewrite=_forward_x, unmatched="neg_unmatched")

CHAIN = """
graph "g" (%x: f32[2,3]) {
  %z: f32[2,3] = const [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
  %a: f32[2,3] = neg(%x)
  %b: f32[2,3] = neg(%a)
  %c: f32[2,3] = mul(%a, %z)
  %d: f32[2,3] = add(%b, %c)
  return %d
}
"""


def test_rules_run_to_a_fixpoint_with_counters(ir):
    # sweep 1: neg(neg) does not match (%a has two uses), a*0 becomes the zeros; sweep 2:
    # now %a has one use and neg(neg(x)) becomes x; sweep 3 changes nothing
    g = ir(CHAIN)
    res = apply_rules(g, [DOUBLE_NEG, TIMES_ZERO])
    assert [n.name for n in g.nodes] == ["a", "d"]  # %a is dead now (dce's job)
    g.dce()
    expected = ir("""
    graph "g" (%x: f32[2,3]) {
      %z: f32[2,3] = const [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
      %d: f32[2,3] = add(%x, %z)
      return %d
    }""")
    assert graph_diff(g, expected) is None
    verify(g)
    assert res.sweeps == 3 and res.changed
    assert [n.name for n in res.rewritten] == ["c", "b"]
    # %a is anchored by double-neg, and not matched (its operand is no neg): counted
    assert res.stats == {"double-neg": 1, "times-zero": 1, "neg_unmatched": 1}
    assert [(r, n.name) for r, n, _ in res.reasons] == [("double-neg", "a")]
    assert res.reasons[0][2] == "not matched: operand 0 %x: %x is a graph input, not neg"


def test_check_reasons_are_counted_once_per_node(ir):
    g = ir(CHAIN)
    rule = Rule("times-zero", TIMES_ZERO.pattern, rewrite=_forward_x,
                check=lambda g, m: "kept_for_test", counter="removed")
    res = apply_rules(g, [rule, DOUBLE_NEG])
    assert res.stats == {"removed": 0, "kept_for_test": 1, "double-neg": 0, "neg_unmatched": 2}
    assert not res.changed and res.sweeps == 1


def test_results_are_deterministic(ir):
    a, b = ir(CHAIN), ir(CHAIN)
    ra, rb = apply_rules(a, [DOUBLE_NEG, TIMES_ZERO]), apply_rules(b, [DOUBLE_NEG, TIMES_ZERO])
    assert ra.stats == rb.stats and [n.name for n in ra.rewritten] == [n.name for n in rb.rewritten]
    assert graph_diff(a, b) is None


def test_a_rule_that_never_settles_is_an_error(ir):
    g = ir(CHAIN)

    def renew(graph, m):  # replaces the node by an equal one: always matches again
        n = graph.add_node("mul", list(m.root.inputs), after=m.root)
        graph.replace_all_uses(m.root.output, n.output)
        graph.erase(m.root)

    with pytest.raises(IRError, match="rules loop did not reach a fixpoint after 5 sweeps"):
        apply_rules(g, [Rule("loop", TIMES_ZERO.pattern, rewrite=renew)], max_sweeps=5)


def test_explanations_are_logged_and_written(ir, caplog):
    g = ir(CHAIN)
    rule = Rule("times-zero", TIMES_ZERO.pattern, rewrite=_forward_x,
                check=lambda g, m: "kept_for_test")
    with caplog.at_level(logging.DEBUG, logger="shrinkc.passes.patterns"):
        apply_rules(g, [rule, DOUBLE_NEG])
    assert "rule times-zero: c refused: kept_for_test" in caplog.messages
    assert ("rule double-neg: b not matched: operand 0 %a: %a has 2 uses (a single use "
            "wanted)") in caplog.messages
    lines: list[str] = []
    with explaining(lines.append):
        apply_rules(ir(CHAIN), [DOUBLE_NEG, TIMES_ZERO])
    assert lines == ["explain rule times-zero: rewrote c", "explain rule double-neg: rewrote b",
                     "explain rule double-neg: a not matched: operand 0 %x: %x is a graph "
                     "input, not neg"]
    assert not logging.getLogger("shrinkc.passes.patterns").handlers  # removed again
