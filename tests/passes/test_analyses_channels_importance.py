"""Channel importance criteria: each against its definition on a small graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc.ir.interpreter import run
from shrinkc.passes import PassContext
from shrinkc.passes.analyses.channels import analyze_channels
from shrinkc.passes.analyses.channels_importance import batches, scores

NET = """
graph "g" (%x: f32[1,2,5,5]) {
  %w1: f32[3,2,3,3] = const #1
  %g: f32[3] = const [0.5, -2.0, 1.0]
  %be: f32[3] = const [0.1, -0.2, 0.3]
  %m: f32[3] = const [0.0, 0.1, -0.1]
  %v: f32[3] = const [1.0, 0.5, 2.0]
  %w2: f32[4,3,1,1] = const #2
  %c1: f32[1,3,5,5] = conv2d(%x, %w1) {padding=[1, 1]} loc("c1")
  %bn: f32[1,3,5,5] = batch_norm(%c1, %g, %be, %m, %v)
  %r: f32[1,3,5,5] = relu(%bn)
  %c2: f32[1,4,5,5] = conv2d(%r, %w2) loc("c2")
  %f: f32[1,100] = flatten(%c2) {start_dim=1}
  return %f
}
"""


@pytest.fixture
def net(ir):
    g = ir(NET)
    a = analyze_channels(g)
    [grp] = a.prunable
    return g, a, grp


def test_l1_l2_are_the_filter_norms(net):
    g, a, grp = net
    w = g.constants["w1"].data.astype(np.float64)
    l1 = scores(a, [grp], "l1", PassContext())[grp.id]
    l2 = scores(a, [grp], "l2", PassContext())[grp.id]
    np.testing.assert_allclose(l1, np.abs(w).sum((1, 2, 3)))
    np.testing.assert_allclose(l2, np.sqrt((w * w).sum((1, 2, 3))))


def test_bn_scale_is_abs_gamma(net):
    g, a, grp = net
    np.testing.assert_allclose(scores(a, [grp], "bn-scale", PassContext())[grp.id],
                               [0.5, 2.0, 1.0])


def test_taylor_is_the_first_order_change_of_the_loss(net):
    g, a, grp = net
    xs = [torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    got = scores(a, [grp], "taylor", PassContext(calibration=[[x] for x in xs]))[grp.id]
    # the criterion's loss on 2-D outputs: the cross-entropy against the model's own top-1;
    # d loss / d (mask on c2's input) = sum over batch and pixels of r * dL/dr
    want = np.zeros(3)
    for x in xs:
        _, cap = run(g, [x], capture=["r"])
        r = cap["r"].detach().requires_grad_(True)
        y = torch.conv2d(r, torch.as_tensor(g.constants["w2"].data)).flatten(1)
        torch.nn.functional.cross_entropy(y, y.detach().argmax(1), reduction="sum").backward()
        want += np.abs((r * r.grad).sum((0, 2, 3)).detach().double().numpy())
    np.testing.assert_allclose(got, want / len(xs), rtol=1e-4, atol=1e-7)


def test_apoz_is_the_share_of_nonzero_activations(net):
    g, a, grp = net
    x = torch.randn(1, 2, 5, 5)
    got = scores(a, [grp], "apoz", PassContext(example_inputs=[x]))[grp.id]
    _, cap = run(g, [x], capture=["r"])
    np.testing.assert_allclose(got, (cap["r"] != 0).double().mean((0, 2, 3)).numpy())


def test_random_follows_the_seed(net):
    g, a, grp = net
    one = scores(a, [grp], "random", PassContext(seed=4))[grp.id]
    two = scores(a, [grp], "random", PassContext(seed=4))[grp.id]
    three = scores(a, [grp], "random", PassContext(seed=5))[grp.id]
    assert np.array_equal(one, two) and not np.array_equal(one, three)


def test_bigger_calibration_batches_are_split_to_the_graph_batch(net):
    g, _, _ = net
    ctx = PassContext(calibration=[[torch.randn(4, 2, 5, 5)]])
    got = batches(g, ctx)
    assert len(got) >= 1 and all(b[0].shape[1:] == (2, 5, 5) for b in got)
    assert sum(b[0].shape[0] for b in got) == 4
