"""Recovery by distillation (passes/distill.py): it restores accuracy a lossy pass lost,
keeps masks and codebooks, is deterministic, runs label-free, at any batch, and two gloo
processes compute what one process computes at the doubled batch."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

import shrinkc
from shrinkc.ir.encoding import Sparse, codebook_of
from shrinkc.ir.trainable import GraphParams
from shrinkc.passes.distill import (
    RecoverError,
    TrainingData,
    distill,
    evaluate,
    forward,
    recalibrate_bn,
)
from shrinkc.tools import data
from suite import assert_close


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions on a loaded 2-core machine: one thread (two spin against load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class SmallCNN(nn.Module):
    """conv-bn-relu ×2, pool, linear: scikit-learn digits (1×8×8) in about a second."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        return self.fc(torch.flatten(x, 1))


@functools.cache
def _digits():
    Xtr, ytr = data.digits("train")
    Xte, yte = data.digits("test")
    return Xtr, ytr, Xte, yte


@functools.cache
def _trained(kind: str):
    """A model trained on digits (seeded; BN in train mode) and its graph."""
    Xtr, ytr, _, _ = _digits()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN() if kind == "cnn" else nn.Sequential(
            nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for epoch in range(3):
            perm = torch.randperm(len(Xtr))
            model.train()
            for i in range(0, len(Xtr), 32):
                idx = perm[i:i + 32]
                loss = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    g = shrinkc.trace(model, (Xtr[:1],), name=kind)
    return model, g


def _subset(n: int, seed: int = 0):
    Xtr, ytr, _, _ = _digits()
    idx = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(seed))[:n]
    return Xtr[idx], ytr[idx]


def test_recovery_restores_accuracy_after_channel_pruning():
    """The must-show: fixed seed, small budget, accuracy after > before (and BN re-estimated)."""
    _, g = _trained("cnn")
    _, _, Xte, yte = _digits()
    pruned = shrinkc.optimize(g, "prune-channels(ratio=0.75)")
    before = evaluate(pruned, Xte, yte)
    hist: list = []
    out = shrinkc.recover(pruned, g, _subset(400), epochs=2, lr=3e-3, batch_size=32, seed=0,
                          history=hist)
    after = evaluate(out, Xte, yte)
    assert evaluate(g, Xte, yte) > 0.9
    assert after > before + 0.1, (before, after)
    shrinkc.verify(out)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[-1]["loss"] < hist[0]["loss"]
    # the input graph is untouched; the result has the same structure
    assert evaluate(pruned, Xte, yte) == before
    assert [n.op for n in out.nodes] == [n.op for n in pruned.nodes]


def test_masks_and_codebooks_stay_intact():
    _, g = _trained("mlp")
    _, _, Xte, yte = _digits()
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.8),share-weights(bits=2)")
    before = evaluate(lossy, Xte, yte)
    out = shrinkc.recover(lossy, g, _subset(400), epochs=3, lr=1e-2, batch_size=32)
    assert evaluate(out, Xte, yte) > before
    shrinkc.verify(out)  # the verifier checks every encoding
    for name, v in lossy.constants.items():
        w = out.constants[name]
        assert type(w.encoding) is type(v.encoding)
        if isinstance(v.encoding, Sparse):
            assert np.array_equal(w.encoding.mask, v.encoding.mask)
            assert np.all(w.data[~v.encoding.mask] == 0)
        if codebook_of(v) is not None:
            kept = w.data[v.encoding.mask] if isinstance(v.encoding, Sparse) else w.data
            assert len(np.unique(kept)) <= 4
            assert not np.array_equal(w.data, v.data)  # the centroids trained


def test_deterministic_under_a_seed():
    _, g = _trained("mlp")
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.7)")
    runs = [shrinkc.recover(lossy, g, _subset(200), epochs=1, batch_size=16, seed=s)
            for s in (3, 3, 4)]
    for name in lossy.constants:
        assert np.array_equal(runs[0].constants[name].data, runs[1].constants[name].data)
    assert any(not np.array_equal(runs[0].constants[n].data, runs[2].constants[n].data)
               for n in lossy.constants)


def test_a_diverging_run_keeps_the_weights_it_started_from():
    """keep_better (default): a learning rate far too high makes the loss on the training
    data worse, so the input weights come back (with BN re-estimated, as before training),
    flagged in the stats; keep_better=False returns the diverged weights."""
    _, g = _trained("mlp")
    _, _, Xte, yte = _digits()
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.7)")
    kw = _defaults({"epochs": 1, "lr": 50.0, "batch_size": 32})
    kept = distill(lossy, g, _subset(200), **kw)
    assert kept.stats["kept_input"] == 1
    assert kept.stats["loss_after"] > kept.stats["loss_before"]
    for name, v in lossy.constants.items():
        assert np.array_equal(kept.graph.constants[name].data, v.data), name
    diverged = distill(lossy, g, _subset(200), keep_better=False, **kw)
    assert "kept_input" not in diverged.stats
    assert evaluate(diverged.graph, Xte, yte) < evaluate(kept.graph, Xte, yte)
    # a run that trains keeps its weights
    good = distill(lossy, g, _subset(200), **{**kw, "lr": 1e-3})
    assert good.stats["kept_input"] == 0 and good.stats["loss_after"] < good.stats["loss_before"]


def test_label_free_distillation_matches_the_teacher():
    _, g = _trained("mlp")
    X, _ = _subset(400)
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.85)")

    def agreement(graph):
        with torch.no_grad():
            return float((forward(graph, [X])[0].argmax(1) == forward(g, [X])[0].argmax(1))
                         .float().mean())

    batches = [[X[i:i + 50]] for i in range(0, 400, 50)]  # calibration-style input batches
    res = distill(lossy, g, batches, epochs=3, lr=1e-2, batch_size=32, bn_stats=False,
                  temperature=4.0, alpha=0.9, optimizer="adamw", weight_decay=0.0,
                  bn_samples=64, seed=0, output=0, threads=1)
    assert res.stats["labels"] == 0 and res.stats["distilled"] == 1
    assert agreement(res.graph) > agreement(lossy)
    assert res.stats["loss_last_epoch"] < res.stats["loss_first_epoch"]


def test_mse_matches_the_teachers_outputs_as_features():
    """loss="mse": the student's outputs move toward the teacher's (here the logits as
    features); where they are equal (the teacher itself) nothing moves."""
    _, g = _trained("mlp")
    X, _ = _subset(400)
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.85)")

    def mse(graph):
        with torch.no_grad():
            return float((forward(graph, [X])[0] - forward(g, [X])[0]).pow(2).mean())

    opts = dict(epochs=3, lr=1e-2, batch_size=32, bn_stats=False, loss="mse", seed=0,
                threads=1)
    trained = shrinkc.recover(lossy, g, X, **opts)
    assert mse(trained) < 0.5 * mse(lossy)
    same = shrinkc.recover(g, g, X, **opts)  # zero loss, zero gradient: unchanged weights
    for name, v in g.constants.items():
        np.testing.assert_array_equal(same.constants[name].data, v.data, err_msg=name)
    text = shrinkc.optimize(lossy, "recover(epochs=1, loss=mse, bn_stats=false)", teacher=g,
                            calibration=[[X[i:i + 50]] for i in range(0, 400, 50)])
    assert mse(text) < mse(lossy)


def test_labels_alone_without_a_teacher():
    _, g = _trained("mlp")
    _, _, Xte, yte = _digits()
    lossy = shrinkc.optimize(g, "prune-weights(sparsity=0.85)")
    out = shrinkc.recover(lossy, None, _subset(400), epochs=2, lr=1e-2, batch_size=32)
    assert evaluate(out, Xte, yte) > evaluate(lossy, Xte, yte)
    with pytest.raises(RecoverError, match="needs a teacher or labelled data"):
        shrinkc.recover(lossy, None, _subset(40)[0])


def test_training_data_forms():
    X, y = _subset(10)
    assert TrainingData.of((X, y)).labels.tolist() == y.tolist()
    assert TrainingData.of(X).labels is None
    assert TrainingData.of((X, None)).labels is None
    labelled = TrainingData.of([(X[:4], y[:4]), (X[4:], y[4:])])
    assert len(labelled) == 10 and labelled.labels.tolist() == y.tolist()
    free = TrainingData.of([[X[:3]], [X[3:]]])
    assert len(free) == 10 and free.labels is None
    assert len(TrainingData.of([X[:5], X[5:]])) == 10  # bare tensors: one-input batches
    with pytest.raises(RecoverError, match="disagree"):
        TrainingData.of((X, y[:3]))
    with pytest.raises(RecoverError, match="takes 1 inputs"):
        TrainingData.of([[X, X, X]])


def test_static_batch_graph_runs_any_batch_in_chunks():
    model, _ = _trained("cnn")
    X, _ = _subset(7)
    g = shrinkc.trace(model, (X[:1],), name="cnn", batch=False)  # static-batch: in chunks
    with torch.no_grad():
        got = forward(g, [X])[0]
        each = torch.cat([shrinkc.run(g, [X[i:i + 1]])[0] for i in range(7)])
    assert_close(got, each, tol=0.0)


def test_any_batch_graph_and_static_chunks_train_alike():
    """A batch-polymorphic graph trains at the batch given; the same model traced with static
    shapes trains one sample at a time: the same gradients, so the same weights (to float
    sums)."""
    from shrinkc.passes.distill import runs_any_batch

    model, g = _trained("cnn")
    X, y = _subset(48)
    static = shrinkc.trace(model, (X[:1],), name="cnn", batch=False)
    assert runs_any_batch(g) and not runs_any_batch(static)
    lossy = [shrinkc.optimize(x, "prune-channels(ratio=0.5)") for x in (g, static)]
    runs = [distill(lg, teacher, (X, y), batch_size=16, **_defaults({"epochs": 1, "lr": 1e-2,
                                                                   "bn_samples": 48}))
            for lg, teacher in zip(lossy, (g, static))]
    assert runs_any_batch(runs[0].graph)
    for name, v in runs[0].graph.constants.items():
        assert_close(torch.from_numpy(runs[1].graph.constants[name].data),
                     torch.from_numpy(v.data), tol=1e-4)


def test_bn_statistics_reestimated_layer_by_layer():
    """Each BN gets the mean / variance of its input over the sample, with the BNs before
    it already re-estimated (checked in float64, recomputed with torch.nn.functional)."""
    _, g = _trained("cnn")
    X, _ = _subset(64)
    g = shrinkc.optimize(g, "prune-channels(ratio=0.5)")
    params = GraphParams(g)
    stats = recalibrate_bn(g, params, TrainingData([X]), samples=64, batch_size=16)
    assert stats == {"bn_recalibrated": 2, "bn_skipped_shared": 0}
    t = {n: v.double() for n, v in params.tensors().items()}
    bns = [n for n in g.nodes if n.op == "batch_norm"]
    x = X.double()
    for k, bn in enumerate(bns):
        conv = bn.inputs[0].producer
        z = torch.nn.functional.conv2d(x, t[conv.inputs[1].name], t[conv.inputs[2].name],
                                       padding=1)
        assert_close(t[bn.inputs[3].name], z.mean((0, 2, 3)), tol=1e-6)
        assert_close(t[bn.inputs[4].name], z.var((0, 2, 3), unbiased=False), tol=1e-6)
        scale = t[bn.inputs[1].name] / torch.sqrt(t[bn.inputs[4].name] + 1e-5)
        x = torch.relu((z - t[bn.inputs[3].name][None, :, None, None])
                       * scale[None, :, None, None] + t[bn.inputs[2].name][None, :, None, None])


def test_two_gloo_processes_equal_one_process_at_the_doubled_batch():
    """The must-show of data-parallel recovery: world_size=2 at batch 8 (each process its
    shard of every global batch, gradients averaged by DDP over gloo on loopback) ends with
    the weights of one process at batch 16, up to the order of float sums. (About 20 s on a
    loaded 2-core machine, mostly the two workers importing torch: the test needs real
    processes.)"""
    _, g = _trained("cnn")
    lossy = shrinkc.optimize(g, "prune-channels(ratio=0.5)")
    X, y = _subset(40)  # 40 = 2 full global batches of 16 and an uneven one of 8
    # with augmentation: the shifts are drawn per global batch, the teacher (a graph, saved
    # for the workers) runs on each process's shifted shard
    opts = {"epochs": 2, "lr": 1e-2, "seed": 1, "bn_samples": 30, "shift": 1}
    one = distill(lossy, g, (X, y), batch_size=16, world_size=1, **_defaults(opts))
    two = distill(lossy, g, (X, y), batch_size=8, world_size=2, **_defaults(opts))
    assert two.stats["world_size"] == 2 and one.stats["world_size"] == 1
    moved = 0.0
    for name, v in one.graph.constants.items():
        w = two.graph.constants[name]
        moved = max(moved, float(np.abs(v.data - lossy.constants[name].data).max()))
        assert_close(torch.from_numpy(w.data), torch.from_numpy(v.data), tol=1e-4)
    assert moved > 1e-2  # the weights did train
    assert [h["loss"] for h in one.history] == pytest.approx([h["loss"] for h in two.history],
                                                             rel=1e-4)


def _defaults(opts: dict) -> dict:
    base = {"lr": 1e-3, "temperature": 4.0, "alpha": 0.9, "optimizer": "adamw",
            "weight_decay": 0.0,
            "bn_stats": True, "bn_samples": 512, "seed": 0, "output": 0, "threads": 1,
            "shift": 0}
    return {**base, **opts}


def test_shift_augments_and_the_teacher_runs_on_each_batch():
    model, g = _trained("cnn")
    lossy = shrinkc.optimize(g, "prune-channels(ratio=0.5)")
    data_ = _subset(64)
    base = distill(lossy, g, data_, batch_size=32, **_defaults({"epochs": 1}))
    shifted = distill(lossy, g, data_, batch_size=32, **_defaults({"epochs": 1, "shift": 2}))
    again = distill(lossy, model, data_, batch_size=32, **_defaults({"epochs": 1, "shift": 2}))
    assert shifted.stats["shift"] == 2 and shifted.stats["distilled"] == 1
    names = list(lossy.constants)
    assert any(not np.array_equal(base.graph.constants[n].data, shifted.graph.constants[n].data)
               for n in names)
    for n in names:  # the eager teacher computes what its graph computes
        assert_close(torch.from_numpy(again.graph.constants[n].data),
                     torch.from_numpy(shifted.graph.constants[n].data), tol=1e-4)
    with pytest.raises(RecoverError, match="give it as an IR graph"):
        distill(lossy, model, data_, batch_size=16, world_size=2,
                **_defaults({"epochs": 1, "shift": 1}))


def test_random_shift_moves_whole_pixels():
    from shrinkc.passes.distill import shift_images

    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    moved = shift_images(x, torch.tensor([[1, 0]]))  # samples one pixel to the right
    assert moved[0, 0, :, :3].tolist() == x[0, 0, :, 1:].tolist()
    assert moved[0, 0, :, 3].tolist() == x[0, 0, :, 3].tolist()  # border repeated
    down = shift_images(x, torch.tensor([[0, -1]]))
    assert down[0, 0, 1:].tolist() == x[0, 0, :3].tolist()


def test_bad_options_and_nothing_to_train():
    _, g = _trained("mlp")
    X, y = _subset(8)
    with pytest.raises(RecoverError, match="alpha"):
        shrinkc.recover(g, g, (X, y), alpha=2.0)
    with pytest.raises(RecoverError, match="unknown optimizer"):
        shrinkc.recover(g, g, (X, y), optimizer="lbfgs")
    with pytest.raises(RecoverError, match="unknown loss 'l1'"):
        shrinkc.recover(g, g, (X, y), loss="l1")
    with pytest.raises(RecoverError, match="eval_data needs labels"):
        shrinkc.recover(g, g, (X, y), eval_data=X)
