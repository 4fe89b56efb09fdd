"""The ``recover`` pass: a pipeline step that distils from the pipeline's input graph on the
context's training data (or its calibration batches, label-free), without a backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shrinkc
from shrinkc.passes import PassContext, PassError, PassManager
from shrinkc.passes.distill import evaluate
from shrinkc.tools import data


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mlp():
    """An MLP trained on scikit-learn digits (seeded), its graph and the data."""
    Xtr, ytr = data.digits("train")
    Xte, yte = data.digits("test")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            for i in range(0, len(Xtr), 32):
                loss = nn.functional.cross_entropy(model(Xtr[i:i + 32]), ytr[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    g = shrinkc.trace(model.eval(), (Xtr[:1],), name="mlp")
    idx = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(0))[:400]
    return g, (Xtr[idx], ytr[idx]), (Xte, yte)


def test_recipe_in_one_pipeline_restores_accuracy(mlp):
    g, train, (Xte, yte) = mlp
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.85)")
    arts: dict = {}
    out = shrinkc.optimize(g, "prune-weights(sparsity=0.85),recover(epochs=3, lr=0.01, "
                              "batch_size=32)", training=train, artifacts=arts)
    assert evaluate(out, Xte, yte) > evaluate(lossy, Xte, yte) + 0.05
    mask = lossy.constants["1.weight"].encoding.mask
    assert np.array_equal(out.constants["1.weight"].encoding.mask, mask)
    assert len(arts["recover"]) == 1 and [h["epoch"] for h in arts["recover"][0]] == [1, 2, 3]


def test_stats_and_the_teacher_is_the_pipelines_input(mlp):
    g, train, _ = mlp
    pm = PassManager("prune-weights(sparsity=0.8),recover(epochs=1, batch_size=50)",
                     PassContext(training=train, seed=5))
    pm.run(lossy := g.clone())
    stats = pm.steps[-1].result.stats
    assert stats["epochs"] == 1 and stats["steps"] == 8 and stats["samples"] == 400
    assert stats["labels"] == 1 and stats["distilled"] == 1 and stats["world_size"] == 1
    assert stats["loss_last_epoch"] > 0 and 0 <= stats["train_accuracy"] <= 1
    # the same with the teacher given explicitly: the default teacher is the input graph
    pm2 = PassManager("prune-weights(sparsity=0.8),recover(epochs=1, batch_size=50)",
                      PassContext(training=train, seed=5, teacher=g))
    pm2.run(other := g.clone())
    for name, v in lossy.constants.items():
        assert np.array_equal(v.data, other.constants[name].data)


def test_label_free_on_the_calibration_batches(mlp):
    g, (X, _), _ = mlp
    pm = PassManager("prune-weights(sparsity=0.8),recover(epochs=1, batch_size=50)",
                     PassContext(calibration=[[X[i:i + 100]] for i in range(0, 400, 100)]))
    pm.run(g.clone())
    stats = pm.steps[-1].result.stats
    assert stats["labels"] == 0 and stats["distilled"] == 1 and stats["samples"] == 400


def test_original_kept_only_for_passes_that_need_it(mlp):
    g, train, _ = mlp
    ctx = PassContext()
    PassManager("dce", ctx).run(g.clone())
    assert ctx.original is None
    ctx = PassContext(training=train)
    PassManager("recover(epochs=0, bn_stats=false)", ctx).run(g.clone())
    assert ctx.original is not None and ctx.original is not g


def test_without_data_one_clear_error(mlp):
    g, _, _ = mlp
    with pytest.raises(PassError, match=r"pass 'recover\(.*no training data: give "
                                        r"optimize\(\.\.\., training="):
        shrinkc.optimize(g, "recover")


def test_nothing_to_train_is_an_error():
    from shrinkc.ir import Graph, TensorType

    g = Graph("int")
    x = g.add_input(TensorType("f32", (1, 4)), "x")
    g.outputs = [g.add_node("relu", [x]).output]
    with pytest.raises(PassError, match="no float weights to train"):
        shrinkc.optimize(g, "recover(epochs=1)", training=torch.randn(8, 4))


def test_command_line_training_data(capsys):
    from shrinkc.tools.cli import main

    code = main(["opt", "zoo:lenet5", "--passes", "prune-channels(ratio=0.5),recover(epochs=1, "
                 "batch_size=50)", "--training", "zoo-data:mnist", "--training-samples", "100",
                 "--stats"])
    assert code == 0
    err = capsys.readouterr()
    line = next(x for x in (err.out + err.err).splitlines() if "002_recover" in x)
    assert "samples=100" in line and "labels=1" in line and "steps=2" in line
