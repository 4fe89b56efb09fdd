import numpy as np
import pytest
import torch

from shrinkc import optimize, trace
from shrinkc.ir.encoding import Sparse
from shrinkc.ir.verify import verify
from shrinkc.tools import bench_deep


class _ConvBn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.BatchNorm2d(4)
        self.c2, self.b2 = torch.nn.Conv2d(4, 4, 3, bias=False), torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        return self.fc(torch.relu(self.b2(self.c2(x))).flatten(1))


def test_recalibrated_statistics_are_training_mode_statistics():
    torch.manual_seed(0)
    model = _ConvBn().eval()
    X = torch.randn(96, 1, 8, 8)
    g = trace(model, (X[:1],))
    g2 = bench_deep.recalibrate_bn(g, X)
    for bn in (model.b1, model.b2):  # torch's cumulative training-mode statistics
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, 96, 250):
            model(X[i:i + 250])
    for name in ("b1.running_mean", "b2.running_mean"):
        np.testing.assert_allclose(g2.constants[name].data, model.state_dict()[name].numpy(),
                                   rtol=1e-5, atol=1e-6)
    n = 96 * 6 * 6  # torch's running_var is unbiased; recalibrate_bn's is the batch's own
    np.testing.assert_allclose(g2.constants["b1.running_var"].data * n / (n - 1),
                               model.state_dict()["b1.running_var"].numpy(), rtol=1e-4)


def test_finetune_keeps_the_encodings():
    torch.manual_seed(0)
    model = _ConvBn().eval()
    X, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    g = optimize(trace(model, (X[:1],)), "prune-weights(sparsity=0.5),share-weights(bits=2)")
    g2 = bench_deep.finetune(g, X, y, epochs=1, lr=1e-2)
    verify(g2)
    for v in g2.constants.values():
        if isinstance(v.encoding, Sparse):
            assert v.encoding == g.constants[v.name].encoding
            assert not np.array_equal(v.data, g.constants[v.name].data)
    assert bench_deep._schedule(0.96, 4)[-1] == pytest.approx(0.96)


@pytest.mark.slow
def test_quick_run_on_lenet_300_100():
    rows = bench_deep.run_model("lenet_300_100", bench_deep.RECIPES["lenet_300_100"],
                                quick=True)
    assert [r["stage"] for r in rows] == ["dense", "pruned", "shared", "huffman"]
    assert rows[-1]["ratio"] > rows[1]["ratio"] > 1
