"""ir/trainable.py: a graph's constants as torch state (weights parameters, the rest
buffers, encoded weights as modules that keep the encoding) — shared by to_torch and
recovery — and write_back from either."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shrinkc
from shrinkc.ir import IRError
from shrinkc.ir.interpreter import run
from shrinkc.ir.trainable import GraphParams, MaskedWeight, SharedWeight, write_back
from suite import assert_close


@pytest.fixture(scope="module")
def lenet():
    from shrinkc.tools import zoo

    torch.manual_seed(0)
    m = zoo.get_model("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    g = shrinkc.trace(m, (x,))
    return shrinkc.optimize(g, "prune-weights(sparsity=0.5),share-weights(bits=3)"), x, g


def test_roles_and_encoded_modules(lenet):
    g, _, _ = lenet
    p = GraphParams(g)
    assert set(p.shrinkc_names.values()) == set(g.constants)
    kinds = {p.shrinkc_names[a]: type(getattr(p, a)) for a in p.shrinkc_names}
    assert kinds["conv1.weight"] is SharedWeight and kinds["conv1.bias"] is torch.nn.Parameter
    assert all(t.requires_grad for t in p.trainable_parameters())
    frozen = GraphParams(g, trainable=False)
    assert list(frozen.trainable_parameters()) == []
    sparse = shrinkc.optimize(lenet[2], "prune-weights(sparsity=0.5)")
    masked = GraphParams(sparse).w_conv1_weight
    assert isinstance(masked, MaskedWeight) and masked.dense.requires_grad
    assert not masked.mask.requires_grad and "mask" in dict(masked.named_buffers())


def test_tensors_run_the_interpreter_like_the_graph(lenet):
    g, x, _ = lenet
    p = GraphParams(g)
    with torch.no_grad():
        assert_close(run(g, [x], params=p.tensors())[0], run(g, [x])[0], tol=0.0)


def test_write_back_from_graph_params_keeps_encodings(lenet):
    g, _, _ = lenet
    p = GraphParams(g)
    with torch.no_grad():
        p.w_conv1_weight.centroids.add_(0.01)
        p.w_fc3_bias.add_(1.0)
    g2 = write_back(g, p)
    shrinkc.verify(g2)
    assert np.allclose(g2.constants["fc3.bias"].data, g.constants["fc3.bias"].data + 1.0)
    mask = g.constants["conv1.weight"].encoding.mask
    assert np.all(g2.constants["conv1.weight"].data[~mask] == 0)
    assert not np.array_equal(g2.constants["conv1.weight"].data, g.constants["conv1.weight"].data)
    with torch.no_grad():
        p.w_fc3_weight.mask[...] = True  # a pruned weight that left its mask
    with pytest.raises(IRError, match="mask of %fc3.weight"):
        write_back(g, p)
