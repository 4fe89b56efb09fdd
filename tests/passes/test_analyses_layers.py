"""Layer views of the low-rank passes (passes/analyses/layers.py)."""

import numpy as np
import pytest
from shrinkc.ir.text import parse_graph
from shrinkc.passes.analyses import rank as R
from shrinkc.passes.analyses.layers import conv_layer, dense_layer, group_slices

G = """
graph "g" (%x: f32[2,16,8,8], %t: f32[3,5,24], %q: f32[3,24,5]) {
  %w: f32[32,8,3,3] = const #1
  %b: f32[32] = const #2
  %dw: f32[16,1,3,3] = const #3
  %fc: f32[40,24] = const #4
  %mr: f32[24,12] = const #5
  %ml: f32[7,24] = const #6
  %c: f32[2,32,4,4] = conv2d(%x, %w, %b) {stride=[2, 2], padding=[1, 1], groups=2}
  %d: f32[2,16,8,8] = conv2d(%x, %dw) {padding=[1, 1], groups=16}
  %l: f32[3,5,40] = linear(%t, %fc)
  %r: f32[3,5,12] = matmul(%t, %mr)
  %m: f32[3,7,5] = matmul(%ml, %q)
  %a: f32[3,5,5] = matmul(%t, %q)
  return %c, %d, %l, %r, %m, %a
}
"""


@pytest.fixture
def g():
    return parse_graph(G, missing_weights="random")


def test_conv_layer_sizes_and_groups(g):
    layer = conv_layer(g, g.node("c"), allow_pointwise=False)
    assert layer.groups == 2 and layer.bias.name == "b" and layer.x.name == "x"
    assert layer.macs == 2 * 32 * 4 * 4 * 8 * 9 and layer.params == 32 * 8 * 9 + 32
    assert layer.info == {"in_pixels": 2 * 64, "out_pixels": 2 * 16, "c_in": 16, "c_out": 32,
                          "k": (3, 3)}
    blocks = group_slices(layer)
    assert [b.shape for b in blocks] == [(16, 8, 3, 3)] * 2 and blocks[0].dtype == np.float64
    assert conv_layer(g, g.node("d"), allow_pointwise=False) == "skipped_depthwise"


@pytest.mark.parametrize("name,kind,shape,rows,x_index", [
    ("l", "linear", (40, 24), 15, 0), ("r", "matmul_right", (12, 24), 15, 0),
    ("m", "matmul_left", (7, 24), 15, 1)])
def test_dense_layer_is_the_out_by_in_matrix(g, name, kind, shape, rows, x_index):
    layer = dense_layer(g, g.node(name))
    assert layer.info["kind"] == kind and layer.w.shape == shape
    assert layer.info["rows"] == rows and layer.x_index == x_index
    assert layer.macs == rows * shape[0] * shape[1]
    w = layer.weight.data
    np.testing.assert_array_equal(layer.w, w.T if kind == "matmul_right" else w)


def test_dense_layer_refusals(g):
    assert dense_layer(g, g.node("a")) == "skipped_activations"
    g2 = parse_graph(G.replace("%l: f32[3,5,40] = linear(%t, %fc)",
                               "%l: f32[3,5,40] = linear(%t, %fc)\n  %l2: f32[3,5,40] = "
                               "linear(%t, %fc)").replace("return %c,", "return %l2, %c,"),
                     missing_weights="random")
    assert dense_layer(g2, g2.node("l")) == "skipped_shared_weight"


def test_mode_errors_are_the_discarded_energy(g):
    layer = conv_layer(g, g.node("c"), allow_pointwise=False)
    layer.modes = [[R.unfold(b, 1), R.unfold(b, 0)] for b in group_slices(layer)]
    total = np.sum(layer.w ** 2)
    for r_in, r_out in [(1, 1), (4, 9), (8, 16), (100, 100)]:
        want_in = sum(np.sum(R.singular_values(R.unfold(b, 1))[r_in:] ** 2)
                      for b in group_slices(layer)) / total
        want_out = sum(np.sum(R.singular_values(R.unfold(b, 0))[r_out:] ** 2)
                       for b in group_slices(layer)) / total
        assert layer.mode_errors((r_in, r_out)) == pytest.approx([want_in, want_out])
    assert layer.spectra[0][0].shape == (8,) and layer.left_svds[1][1][0].shape == (16, 16)
