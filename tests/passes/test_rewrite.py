import numpy as np
import pytest
from shrinkc.ir.graph import IRError
from shrinkc.ir.text import graph_diff
from shrinkc.ir.verify import verify
from shrinkc.passes.rewrite import (
    remove_unused_constants,
    replace_data,
    replace_with_constants,
    to_numpy,
)

GRAPH = """
graph "g" (%x: f32[2]) {
  %a: f32[4] = const [1.0, 2.0, 3.0, 4.0]
  %lo: f32[2], %hi: f32[2] = split(%a) {axis=0, sizes=[2, 2]}
  %y: f32[2] = add(%x, %lo)
  return %y, %hi
}
"""


def test_replace_with_constants_keeps_names_and_outputs(ir):
    g = ir(GRAPH)
    split = g.node("lo")
    replace_with_constants(g, split, [np.array([1, 2], np.float32), np.array([3, 4], np.float32)])
    verify(g)
    expected = ir("""
    graph "g" (%x: f32[2]) {
      %a: f32[4] = const [1.0, 2.0, 3.0, 4.0]
      %lo: f32[2] = const [1.0, 2.0]
      %hi: f32[2] = const [3.0, 4.0]
      %y: f32[2] = add(%x, %lo)
      return %y, %hi
    }""")
    assert graph_diff(g, expected) is None
    assert remove_unused_constants(g, [g.constants["a"], g.constants["hi"]]) == 1
    assert "a" not in g.constants and "hi" in g.constants  # %hi is a graph output


def test_replace_with_constants_checks_types(ir):
    g = ir(GRAPH)
    with pytest.raises(IRError, match="computed f32\\[3\\] for %lo: f32\\[2\\]"):
        replace_with_constants(g, g.node("lo"), [np.zeros(3, np.float32), np.zeros(2, np.float32)])


def test_replace_data_keeps_the_type_and_the_old_array(ir):
    g = ir(GRAPH)
    a = g.constants["a"]
    old = a.data
    replace_data(a, np.zeros(4, np.float32))
    assert a.data is not old and old[0] == 1.0
    with pytest.raises(IRError, match="new data for %a is f64\\[4\\], expected f32\\[4\\]"):
        replace_data(a, np.zeros(4))


def test_replace_data_keeps_an_encoding_valid(ir):
    from shrinkc.ir.encoding import Codebook

    g = ir(GRAPH)
    a = g.constants["a"]
    a.encoding = Codebook(bits=1)
    with pytest.raises(IRError, match="breaks its encoding"):
        replace_data(a, np.array([1, 2, 3, 4], np.float32))
    replace_data(a, np.array([1, 2, 2, 1], np.float32))


def test_to_numpy_dtypes():
    import torch

    t = torch.tensor([1.5, -2.0])
    assert to_numpy(t, "f32").dtype == np.float32
    b = to_numpy(t.to(torch.bfloat16), "bf16")
    assert b.dtype.name == "bfloat16" and float(b[0]) == 1.5
