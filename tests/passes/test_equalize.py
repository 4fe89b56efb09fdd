"""passes/equalize.py: cross-layer equalization — ranges equalized, exact through ReLU (in
float64), ReLU6 replaced or kept, depthwise pairs, refusals, and the per-tensor int8 error
it removes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc import optimize
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run
from shrinkc.passes import PassContext, PassManager
from suite import as_f64, assert_close

CHAIN = """\
graph "chain" (%x: f32[1,4,6,6]) {
  %w1: f32[8,4,1,1] = const #1
  %b1: f32[8] = const #2
  %w2: f32[8,1,3,3] = const #3
  %b2: f32[8] = const #4
  %w3: f32[5,8,1,1] = const #5
  %y1: f32[1,8,6,6] = conv2d(%x, %w1, %b1) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("expand")
  %r1: f32[1,8,6,6] = hardtanh(%y1) {min_val=0.0, max_val=6.0} loc("relu6_a")
  %y2: f32[1,8,6,6] = conv2d(%r1, %w2, %b2) {stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=8} loc("dw")
  %r2: f32[1,8,6,6] = relu(%y2) loc("relu_b")
  %y3: f32[1,5,6,6] = conv2d(%r2, %w3) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("project")
  return %y3
}
"""


def _run(graph: Graph, pipeline: str):
    pm = PassManager(pipeline, PassContext())
    g = graph.clone()
    pm.run(g)
    return g, pm.steps[-1].result.stats


def _ranges(g: Graph, w: str, axis: int) -> np.ndarray:
    a = np.abs(np.asarray(g.constants[w].data, np.float64))
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "mobilenet_v2"])
def test_exact_through_relu_in_float64(reference_graphs, name):
    """The default (ReLU6 kept) is exact, MobileNetV2 included."""
    _, x, g = reference_graphs(name)
    g = as_f64(optimize(g, "fold-bn"))
    e, stats = _run(g, "equalize")
    assert stats["pairs"] > 0 and stats["relu6_replaced"] == 0
    assert stats["range_ratio_after"] < stats["range_ratio_before"]
    with torch.no_grad():
        assert_close(run(e, [x.double()]), run(g, [x.double()]))  # float64: 1e-9 of the scale


def test_ranges_become_equal_and_relu6_is_replaced(ir):
    g = ir(CHAIN)
    e, stats = _run(g, "equalize(relu6=replace)")
    assert stats["pairs"] == 2 and stats["relu6_replaced"] == 1 and stats["sweeps"] > 1
    assert e.node("relu6_a").op == "relu" and e.node("r1").outputs[0].name == "r1"
    # expand's output channels vs dw's (its only input channel each), dw's outputs vs project
    np.testing.assert_allclose(_ranges(e, "w1", 0), _ranges(e, "w2", 0), rtol=2e-3)
    np.testing.assert_allclose(_ranges(e, "w2", 0), _ranges(e, "w3", 1), rtol=2e-3)
    # with the ReLU6 kept (the default), only dw -> project is equalized, and exactly
    k, stats = _run(g, "equalize")
    assert stats["pairs"] == 1 and stats["skipped_relu6"] == 1
    assert k.node("relu6_a").op == "hardtanh"
    x = torch.rand(1, 4, 6, 6, dtype=torch.float64) * 0.1  # below 6: ReLU6 is ReLU here
    with torch.no_grad():
        assert_close(run(as_f64(k), [x]), run(as_f64(g), [x]), tol=1e-6)  # f32 weights
        assert_close(run(as_f64(e), [x]), run(as_f64(g), [x]), tol=1e-6)


def test_does_not_fire_across_shared_weights_batch_norm_or_outputs(ir):
    shared = ir(CHAIN.replace("%w3: f32[5,8,1,1] = const #5", "%w3: f32[8,8,1,1] = const #5")
                .replace("%y3: f32[1,5,6,6] = conv2d(%r2, %w3)", "%y3: f32[1,8,6,6] = conv2d(%r2, %w3)")
                .replace("return %y3", "%y4: f32[1,8,6,6] = conv2d(%y3, %w3) {stride=[1, 1], "
                         "padding=[0, 0], dilation=[1, 1], groups=1}\n  return %y4"))
    _, stats = _run(shared, "equalize(relu6=keep)")
    assert stats["skipped_shared"] >= 1
    out = ir(CHAIN.replace("return %y3", "return %y3, %r2"))
    _, stats = _run(out, "equalize(relu6=keep)")
    assert stats["pairs"] == 0
    plain = ir('graph "p" (%x: f32[2,3]) {\n  %y: f32[2,3] = relu(%x)\n  return %y\n}\n')
    pm = PassManager("equalize", PassContext())
    pm.run(plain)
    assert not pm.steps[0].result.changed


def test_equalized_weights_quantize_better_per_tensor():
    """Channels whose ranges differ by 10^4 lose the small ones in a per-tensor int8 scale;
    equalized first, they do not."""
    rng = np.random.default_rng(0)
    g = Graph("imbalanced")
    x = g.add_input(TensorType("f32", (1, 4, 6, 6)), "x")
    w1 = rng.standard_normal((8, 4, 3, 3)) * np.logspace(-2, 2, 8)[:, None, None, None]
    w2 = rng.standard_normal((6, 8, 1, 1)) / np.logspace(-2, 2, 8)[None, :, None, None]
    y = g.add_node("conv2d", [x, g.add_constant(w1.astype(np.float32), "w1")],
                   {"padding": (1, 1)}).output
    r = g.add_node("relu", [y]).output
    g.outputs = [g.add_node("conv2d", [r, g.add_constant(w2.astype(np.float32), "w2")]).output]
    calib = [[torch.randn(1, 4, 6, 6)] for _ in range(4)]
    x0 = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        want = run(g, [x0])[0]
        errs = {}
        for pipe in ("quantize(per_channel=false)", "equalize,quantize(per_channel=false)"):
            got = run(optimize(g, pipe, calibration=calib), [x0])[0]
            errs[pipe] = float((got - want).norm() / want.norm())
    assert errs["equalize,quantize(per_channel=false)"] < 0.2 * errs["quantize(per_channel=false)"]
