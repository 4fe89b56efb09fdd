"""ir/dot.py: the graph as Graphviz DOT (op, shape, loc per node), what a pass changed,
rendering with Graphviz's ``dot`` (skipped where it is not installed)."""

from __future__ import annotations

import re
import shutil

import pytest

from shrinkc.ir import dot
from shrinkc.ir.errors import IRError
from shrinkc.ir.text import parse_graph
from shrinkc.passes import optimize

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot program is not installed")

TEXT = """graph "g\\"q" (%x: f32[1,3,8,8]) {
  %w: f32[4,3,3,3] = const #1
  %gamma: f32[4] = const [1.5, 0.5, 2.0, 1.0]
  %beta: f32[4] = const [0.1, -0.2, 0.3, 0.0]
  %mean: f32[4] = const [0.0, 0.1, -0.1, 0.2]
  %var: f32[4] = const [1.0, 2.0, 0.5, 1.5]
  %conv: f32[1,4,8,8] = conv2d(%x, %w) {stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1} loc("stem.conv")
  %bn: f32[1,4,8,8] = batch_norm(%conv, %gamma, %beta, %mean, %var) {eps=1e-05} loc("stem.bn")
  %relu: f32[1,4,8,8] = relu(%bn)
  return %relu
}
"""


@pytest.fixture
def g():
    return parse_graph(TEXT, missing_weights="random")


def _nodes(text: str) -> dict[str, str]:
    return dict(re.findall(r'^  ("[^"]*") \[(.*)\];$', text, re.M))


def test_to_dot_has_op_shape_and_loc_per_node(g):
    text = dot.to_dot(g)
    assert text.startswith('digraph "g\\"q" {') and text.rstrip().endswith("}")
    nodes = _nodes(text)
    assert 'label="conv2d  (+1 const)\\nf32[1,4,8,8]\\nstem.conv"' in nodes['"n:conv"']
    assert 'label="batch_norm  (+4 const)\\nf32[1,4,8,8]\\nstem.bn"' in nodes['"n:bn"']
    assert "%x\\nf32[1,3,8,8]" in nodes['"in:x"'] and "return %relu" in nodes['"out:0"']
    edges = re.findall(r"^  (\"[^\"]*\") -> (\"[^\"]*\")", text, re.M)
    assert edges == [('"in:x"', '"n:conv"'), ('"n:conv"', '"n:bn"'), ('"n:bn"', '"n:relu"'),
                     ('"n:relu"', '"out:0"')]  # constants are not drawn


def test_diff_dot_highlights_what_fold_bn_changed(g):
    after = optimize(g, "fold-bn")
    text, counts = dot.diff_dot(g, after, title="after fold-bn")
    assert counts == {"added": [], "changed": ["conv"], "removed": ["bn"]}
    nodes = _nodes(text)
    assert f'fillcolor="{dot.CHANGED}"' in nodes['"n:conv"']
    assert "fillcolor" not in nodes['"n:relu"']  # rewired past the removed BN, not changed
    assert "removed: batch_norm" in nodes['"n:bn"'] and "dashed" in nodes['"n:bn"']
    assert '"n:conv" -> "n:bn" [style=dashed];' in text
    assert "after fold-bn: 0 added, 1 changed, 1 removed" in text


def test_diff_dot_marks_added_nodes(g):
    after = g.clone()
    relu = after.node("relu")
    extra = after.add_node("relu", [relu.outputs[0]], names=["again"])
    after.outputs = [extra.outputs[0]]
    text, counts = dot.diff_dot(g, after)
    assert counts["added"] == ["again"] and f'fillcolor="{dot.ADDED}"' in _nodes(text)['"n:again"']


def test_render_dot_text_and_refusals(g, tmp_path, monkeypatch):
    p = dot.render(dot.to_dot(g), tmp_path / "g.dot")
    assert p.read_text().startswith("digraph")
    with pytest.raises(IRError, match=r"g.txt: a graph picture is .dot, .gv, or rendered as "
                                      r".svg, .png, .pdf"):
        dot.check_target(tmp_path / "g.txt")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(IRError, match="rendering .svg needs Graphviz's 'dot' program, which is "
                                      "not on PATH"):
        dot.check_target(tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == [p]


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG")])
def test_render_with_graphviz(g, tmp_path, fmt, magic):
    text, _ = dot.diff_dot(g, optimize(g, "fold-bn"))
    p = dot.render(text, tmp_path / f"g.{fmt}")
    assert p.read_bytes().startswith(magic)
    assert [q.name for q in tmp_path.iterdir()] == [f"g.{fmt}"]  # no temp file left
