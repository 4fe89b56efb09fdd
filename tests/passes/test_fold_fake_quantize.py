"""passes/fold_fake_quantize.py: fake_quantize back to QDQ — integer weights within their
range, activations and dynamic quantizers, int32 biases, and the round trip with
fake-quantize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc import optimize
from shrinkc.ir.interpreter import run
from shrinkc.passes import PassContext, PassManager
from suite import assert_close


def _calib(g, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(v.shape, generator=gen) for v in g.inputs] for _ in range(n)]


@pytest.fixture(scope="module")
def qdq(reference_graphs):
    _, x, g = reference_graphs("resnet18")
    g = optimize(g, "fold-bn")
    return g, optimize(g, "quantize", calibration=_calib(g)), x


def test_round_trip_gives_back_the_qdq_graph(qdq):
    _, q, x = qdq
    back = optimize(q, "fake-quantize,fold-fake-quantize")
    assert [n.op for n in back.nodes] == [n.op for n in q.nodes]
    for name, v in q.constants.items():
        np.testing.assert_array_equal(back.constants[name].data, v.data, err_msg=name)
    with torch.no_grad():
        assert torch.equal(run(back, [x])[0], run(q, [x])[0])


def test_dynamic_graphs_round_trip(reference_graphs):
    _, x, g = reference_graphs("vit")
    q = optimize(g, "quantize(activations=dynamic)")
    f = optimize(q, "fake-quantize")
    assert sum(n.op == "fake_quantize" for n in f.nodes) == 2 * sum(
        n.op == "dynamic_quantize" for n in q.nodes)  # the input and the weight of each
    with torch.no_grad():
        assert_close(run(f, [x]), run(q, [x]), tol=1e-6)  # dequantize(q) vs (q - z)·s
    back = optimize(f, "fold-fake-quantize")
    assert sorted(n.op for n in back.nodes) == sorted(n.op for n in q.nodes)
    with torch.no_grad():
        assert_close(run(back, [x]), run(q, [x]), tol=1e-6)


def test_float_biases_become_int32_and_only_they_move(qdq):
    _, q, x = qdq
    f = optimize(q, "fake-quantize")
    pm = PassManager("fold-fake-quantize", PassContext())
    back = f.clone()
    pm.run(back)
    stats = pm.steps[0].result.stats
    assert stats["bias_int32"] == sum(n.op == "conv2d" and len(n.inputs) > 2 for n in q.nodes) + 1
    f.constants["conv1.bias"].data = f.constants["conv1.bias"].data + np.float32(1e-3)
    exact = optimize(f, "fold-fake-quantize(int32_bias=false)")
    rounded = optimize(f, "fold-fake-quantize")
    with torch.no_grad():
        assert torch.equal(run(exact, [x])[0], run(f, [x])[0])
        assert_close(run(rounded, [x]), run(f, [x]), tol=0.05)  # half a bias step


def test_narrowed_activation_ranges_stay_fake(ir):
    g = ir('graph "a" (%x: f32[2,3]) {\n  %s: f32[] = const 0.1\n  %z: i8[] = const 0\n'
           '  %y: f32[2,3] = fake_quantize(%x, %s, %z) {dtype="i8", axis=none, qmin=-8, qmax=8}\n'
           '  return %y\n}\n')
    pm = PassManager("fold-fake-quantize", PassContext())
    pm.run(g)
    assert pm.steps[0].result.stats["skipped_narrow"] == 1 and not pm.steps[0].result.changed
