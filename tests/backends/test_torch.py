import numpy as np
import pytest
import torch

from shrinkc import IRError, to_torch, write_back
from shrinkc.ir.interpreter import run
from suite import assert_close  # the suite's comparison policy


def test_weights_are_trainable_parameters(reference_graphs):
    _, x, g = reference_graphs("resnet18")
    m = to_torch(g)
    params = dict(m.named_parameters())
    floats = [v for v in g.constants.values() if v.type.is_float]
    assert len(params) == len(floats) and all(p.requires_grad for p in params.values())
    assert set(m.shrinkc_names.values()) == set(g.constants)
    assert not m.training


def test_fine_tune_and_write_back(reference_graphs):
    model, x, g = reference_graphs("lenet5")
    m = to_torch(g)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    target = torch.tensor([3])
    before = torch.nn.functional.cross_entropy(m(x), target).item()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), target).backward()
        opt.step()
    g2 = write_back(g, m)
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(run(g2, [x])[0], target).item()
        assert_close(run(g2, [x])[0], m(x), tol=0.0)  # the same references, the same weights
    assert after < before
    assert not np.array_equal(g2.constants["conv1.weight"].data, g.constants["conv1.weight"].data)
    # the original graph is untouched
    with torch.no_grad():
        assert_close(run(g, [x])[0], model(x), depth=model)


def test_write_back_refuses_foreign_modules(reference_graphs):
    g = reference_graphs("lenet5")[2]
    with pytest.raises(IRError, match="needs a module made by shrinkc.to_torch"):
        write_back(g, torch.nn.Linear(2, 2))
