"""passes/fake_quantize.py: QDQ → fake_quantize is exact, leaves float weights that train
through straight-through gradients (interpreter and to_torch), and round-trips with
fold-fake-quantize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc import optimize, to_torch, write_back
from shrinkc.ir.interpreter import run


def _calib(g, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(v.shape, generator=gen) for v in g.inputs] for _ in range(n)]


@pytest.fixture(scope="module")
def qdq(reference_graphs):
    _, x, g = reference_graphs("resnet18")
    g = optimize(g, "fold-bn")
    return g, optimize(g, "quantize", calibration=_calib(g)), x


def test_fake_quantize_is_exact_and_leaves_float_weights(qdq):
    _, q, x = qdq
    from shrinkc.passes import PassContext, PassManager

    pm = PassManager("fake-quantize", PassContext())
    f = q.clone()
    pm.run(f)
    stats = pm.steps[0].result.stats
    convs = sum(n.op == "conv2d" for n in q.nodes)
    assert stats["weights"] == convs + 1 and stats["biases"] == convs + 1  # + the fc
    assert stats["activations"] == sum(n.op == "quantize" for n in q.nodes
                                       if not n.inputs[0].is_constant)
    assert not any(n.op in ("quantize", "dequantize") for n in f.nodes)
    for name, v in f.constants.items():  # integer constants are gone: zero points only
        assert v.type.is_float or name.endswith(".zero_point"), name
    assert "conv1.weight" in f.constants  # the float weight's own name again
    with torch.no_grad():
        assert torch.equal(run(f, [x])[0], run(q, [x])[0])  # the same arithmetic


def params_of(m, name: str) -> torch.nn.Parameter:
    attr = next(a for a, n in m.shrinkc_names.items() if n == name)
    return dict(m.named_parameters())[attr]


def test_straight_through_gradients_train_the_float_weights(qdq):
    _, q, x = qdq
    f = optimize(q, "fake-quantize")
    m = to_torch(f).train()
    params = dict(m.named_parameters())
    names = m.shrinkc_names
    trained = {names[a] for a in params}
    assert "conv1.weight" in trained and "fc.bias" in trained
    assert not any(n.endswith((".scale", ".zero_point")) for n in trained)  # buffers
    gen = torch.Generator().manual_seed(3)
    xb = torch.randn(x.shape, generator=gen)
    target = torch.tensor([3])
    opt = torch.optim.SGD(m.parameters(), lr=1e-4)
    losses = []
    for step in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(xb), target)
        loss.backward()
        if step == 0:  # through every quantizer down to the first layer
            assert params_of(m, "conv1.weight").grad.abs().sum() > 0
        losses.append(float(loss))
        opt.step()
    assert losses[-1] < losses[0]
    # the interpreter's autograd takes the same straight-through path
    w = torch.tensor(f.constants["conv1.weight"].data, requires_grad=True)
    out = run(f, [xb], params={"conv1.weight": w})[0]
    torch.nn.functional.cross_entropy(out, target).backward()
    assert w.grad.abs().sum() > 0
    # written back and folded: QDQ with int8 weights computing what the module computes
    trained_g = write_back(f, m.eval())
    folded = optimize(trained_g, "fold-fake-quantize(int32_bias=false)")
    assert folded.constants["conv1.weight.q"].dtype == "i8"
    with torch.no_grad():
        assert torch.equal(run(folded, [xb])[0], m(xb))


def test_weight_range_survives_training(ir):
    """7-bit weights (±64) stay 7-bit: fake_quantize clamps at the weights' own range."""
    g = ir('graph "l" (%x: f32[2,8]) {\n  %w: f32[4,8] = const #1\n'
           '  %y: f32[2,4] = linear(%x, %w)\n  %r: f32[2,4] = relu(%y)\n  return %r\n}\n')
    q = optimize(g, "quantize(reduce_range=true)", calibration=_calib(g))
    f = optimize(q, "fake-quantize")
    fq = f.value("w.dq").producer
    assert (fq.op, fq.attrs["qmin"], fq.attrs["qmax"]) == ("fake_quantize", -64, 64)
    f.constants["w"].data = f.constants["w"].data * 10  # as if training blew the weights up
    back = optimize(f, "fold-fake-quantize")
    assert np.abs(back.constants["w.q"].data).max() == 64


def test_binary_weights_stay_quantized(ir):
    g = ir('graph "l" (%x: f32[2,8]) {\n  %w: f32[4,8] = const #1\n'
           '  %y: f32[2,4] = linear(%x, %w)\n  return %y\n}\n')
    b = optimize(g, "quantize-weights(bits=1)")
    from shrinkc.passes import PassContext, PassManager

    pm = PassManager("fake-quantize", PassContext())
    f = b.clone()
    pm.run(f)
    assert pm.steps[0].result.stats["skipped_binary"] == 1
    assert not pm.steps[0].result.changed
