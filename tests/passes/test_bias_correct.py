"""passes/bias_correct.py: empirical bias correction after quantize — the per-channel mean
error it removes, int32 / f32 / missing biases, what it needs, and its stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc import optimize
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run
from shrinkc.passes import PassContext, PassError, PassManager


def _biased_layer() -> Graph:
    """Per-tensor int8 weights whose small channels round to zero: with a positive input
    mean, each such output channel loses its mean (the bias bias-correct puts back)."""
    rng = np.random.default_rng(0)
    g = Graph("biased")
    x = g.add_input(TensorType("f32", (4, 16)), "x")
    w = rng.standard_normal((6, 16)) * np.array([3.0, 1.0, 0.004, 0.003, 0.002, 0.5])[:, None]
    w[2:5] += 0.003  # channels with a systematic mean, below half a step of max|W| / 127
    b = rng.standard_normal(6) * 0.1
    y = g.add_node("linear", [x, g.add_constant(w.astype(np.float32), "w"),
                              g.add_constant(b.astype(np.float32), "b")], loc="fc").output
    r = g.add_node("relu", [g.add_node("linear", [y, g.add_constant(
        rng.standard_normal((3, 6)).astype(np.float32), "w2")], loc="head").output]).output
    g.outputs = [r]
    return g


def _batches(n: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.rand(4, 16, generator=gen) + 0.5] for _ in range(n)]  # mean 1


def _channel_means(g: Graph, value: str, batches) -> np.ndarray:
    with torch.no_grad():
        ys = [run(g, b, capture=[value])[1][value] for b in batches]
    return torch.cat(ys).mean(0).numpy()


def test_removes_the_mean_error_per_channel():
    g = _biased_layer()
    calib = _batches(8, 0)
    art: dict = {}
    pm = PassManager("quantize(per_channel=false),bias-correct",
                     PassContext(calibration=calib, artifacts=art))
    q = g.clone()
    pm.run(q)
    stats = pm.steps[-1].result.stats
    assert stats["corrected"] == 2 and stats["mean_shift"] > 0
    plain = optimize(g, "quantize(per_channel=false)", calibration=calib)
    test = _batches(8, 1)  # fresh data
    want = _channel_means(g, "linear", test)
    before = np.abs(_channel_means(plain, "linear", test) - want)
    after = np.abs(_channel_means(q, "linear", test) - want)
    assert before[2:5].min() > 1e-3  # the rounded-away channels lost their mean
    assert after[2:5].max() < 0.1 * before[2:5].min()
    # the bias stays int32 at sx*sw, shifted by whole steps
    bq, bq0 = q.constants["b.q"].data, plain.constants["b.q"].data
    assert bq.dtype == np.int32 and np.any(bq != bq0)


def test_layer_without_bias_gets_one(ir):
    g = ir('graph "n" (%x: f32[4,16]) {\n  %w: f32[6,16] = const #1\n'
           '  %y: f32[4,6] = linear(%x, %w) loc("fc")\n  %r: f32[4,6] = relu(%y)\n'
           '  return %r\n}\n')
    q = optimize(g, "quantize(per_channel=false),bias-correct", calibration=_batches(4, 0))
    fc = q.node("fc")
    assert len(fc.inputs) == 3 and fc.inputs[2].producer.inputs[0].dtype == "i32"


def test_dynamic_layers_get_float_corrections(reference_graphs):
    _, x, g = reference_graphs("vit")
    calib = [[torch.randn(x.shape)] for _ in range(2)]
    pm = PassManager("quantize(activations=dynamic),bias-correct",
                     PassContext(calibration=calib))
    q = g.clone()
    pm.run(q)
    stats = pm.steps[-1].result.stats
    assert stats["corrected"] == sum(n.op == "linear" for n in q.nodes)


def test_needs_quantize_before_it_and_calibration(ir):
    g = ir('graph "n" (%x: f32[4,16]) {\n  %w: f32[6,16] = const #1\n'
           '  %y: f32[4,6] = linear(%x, %w)\n  return %y\n}\n')
    pm = PassManager("bias-correct", PassContext(calibration=_batches(2, 0)))
    pm.run(g.clone())  # a float graph: nothing to correct
    assert not pm.steps[0].result.changed
    q = optimize(g, "quantize", calibration=_batches(2, 0))  # its plan is not in this context
    with pytest.raises(PassError, match="run it after quantize in the same pipeline"):
        optimize(q, "bias-correct", calibration=_batches(2, 0))
    with pytest.raises(PassError, match="bias-correct needs calibration data"):
        optimize(g, "quantize(activations=dynamic),bias-correct")
