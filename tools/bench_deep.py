"""Deep Compression on the reference models: compression rate and accuracy per stage.

    python -m shrinkc.tools.bench_deep [--models lenet_300_100,lenet5,vgg11_bn] [--quick]

For each model: the trained reference (``tools/train.py``, cached) is traced, then

1. **pruned** — ``prune-weights`` in ``steps`` rounds up to the recipe's per-layer
   sparsities, each followed by masked retraining (``to_torch`` keeps the pruned weights at
   zero), for batch-norm models after re-estimating the running statistics the pruned
   features need (``recalibrate_bn``; retraining itself keeps them, as buffers);
2. **shared** — ``share-weights`` (k-means, linear init) with the recipe's bits, then
   retraining of the centroids (gradients summed per cluster);
3. **Huffman** — the ``.shrkz`` file (CSR with relative indices, Huffman-coded gaps and
   indices), written and loaded back, and checked to be the same graph bit for bit.

Retraining is plain cross-entropy on MNIST-5k's 4,000 training images (as the paper
retrained; the general distillation-based recovery is a separate piece and can replace
``finetune``). Accuracy is top-1 on the 1,000 test images, through the interpreter's torch
references (``to_torch``). Compression rate = dense fp32 bytes of all constants / bytes of
the stage (``ir.compress.storage_report``); the last column also counts the whole file.
Storage only: the dense graph is what every backend runs.

One torch thread; a few minutes for all three models. ``--quick`` (one retraining epoch
per stage, one pruning round) only checks that everything runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import load, optimize, save, to_torch, trace, write_back
from ..ir.compress import storage_report
from ..ir.graph import Graph
from ..ir.text import graph_diff
from . import data
from .train import random_shift, train


@dataclass(frozen=True)
class DeepRecipe:
    """Per-layer sparsity and bits (patterns on layer locs), retraining epochs and rates."""

    sparsity: dict[str, float]
    bits: dict[str, int]
    steps: int = 4  # pruning rounds (the kept fraction falls geometrically)
    prune_epochs: int = 8  # retraining after each round (Adam, cosine from lr)
    share_epochs: int = 6  # retraining of the centroids
    lr: float = 1e-3
    share_lr: float = 1e-3
    index_bits: int | None = None  # None: 8 for conv, 5 for fc (the paper's)


#: Per-layer settings after the paper's (Han et al. 2016, tables 2-3: fc layers pruned
#: hardest, conv1 least), with fewer bits than its 8 / 5 for these small layers: a 2**8
#: table costs more than the 288 weights of LeNet-5's conv2 that it codes.
RECIPES: dict[str, DeepRecipe] = {
    "lenet_300_100": DeepRecipe(sparsity={"fc1": 0.96, "fc2": 0.92, "fc3": 0.75},
                                bits={"fc3": 5, "fc*": 4}),
    "lenet5": DeepRecipe(sparsity={"conv1": 0.34, "conv2": 0.88, "fc1": 0.96, "fc2": 0.9,
                                   "fc3": 0.8},
                         bits={"conv*": 5, "fc3": 5, "fc*": 4}),
    "vgg11_bn": DeepRecipe(sparsity={"features.0*": 0.5, "features*": 0.85,
                                     "classifier*": 0.95},
                           bits={"features*": 5, "classifier*": 4}, steps=3, prune_epochs=3,
                           share_epochs=3),
}


def finetune(graph: Graph, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
             seed: int = 0, shift: int = 1) -> Graph:
    """``epochs`` of Adam on cross-entropy through ``to_torch`` (encodings kept), cosine
    learning rate, the training recipe's one-pixel shifts; the retrained graph."""
    if epochs <= 0:
        return graph
    m = to_torch(graph)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=lr)
    steps = epochs * -(-len(X) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    m.train()
    for epoch in range(epochs):
        for xb, yb in data.batches(X, y, 64, shuffle=True, seed=seed * 1000 + epoch):
            if shift:
                xb = random_shift(xb, shift, gen)
            opt.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            opt.step()
            sched.step()
    return write_back(graph, m)


@torch.no_grad()
def recalibrate_bn(graph: Graph, X: torch.Tensor) -> Graph:
    """Batch-norm running statistics re-estimated on the training images ``X`` (pruning
    changes the features they normalise; they are buffers, never trained). A new graph."""
    from ..ir import ops

    bns = [n for n in graph.nodes if n.op == "batch_norm"]
    if not bns:
        return graph
    ref = ops.get("batch_norm").ref
    sums: list[list] = []

    class Capture(torch.fx.Interpreter):
        """Batch norm as in training mode: each batch normalised by its own statistics
        (so every layer sees what the recalibrated layers before it produce), recorded."""

        def call_function(self, target, args, kwargs):
            if target is ref:
                x = args[0]
                t = x.double().transpose(0, 1).reshape(x.shape[1], -1)
                sums.append([t.sum(1), (t * t).sum(1), t.shape[1]])
                mean, var = t.mean(1).to(x.dtype), t.var(1, unbiased=False).to(x.dtype)
                args = (x, args[1], args[2], mean, var)
            return super().call_function(target, args, kwargs)

    m = to_torch(graph, trainable=False)
    totals = None
    for xb in data.batches(X, None, 250):
        sums.clear()
        Capture(m).run(xb)
        totals = sums[:] if totals is None else [
            [a[0] + b[0], a[1] + b[1], a[2] + b[2]] for a, b in zip(totals, sums)]
    g = graph.clone()
    new = {}
    for n, (s1, s2, cnt) in zip([n for n in g.nodes if n.op == "batch_norm"], totals):
        mean = s1 / cnt
        var = (s2 / cnt - mean * mean).clamp_min(0)
        new[n.inputs[3]] = mean.numpy().astype(n.inputs[3].data.dtype)
        new[n.inputs[4]] = var.numpy().astype(n.inputs[4].data.dtype)
    g.replace_constants(new)
    return g


@torch.no_grad()
def accuracy(graph: Graph, X: torch.Tensor, y: torch.Tensor) -> float:
    m = to_torch(graph, trainable=False)
    correct = sum(int((m(xb).argmax(1) == yb).sum()) for xb, yb in data.batches(X, y, 250))
    return correct / len(y)


def _schedule(target: float, steps: int) -> list[float]:
    """Sparsities of ``steps`` rounds whose kept fractions fall geometrically to 1-target."""
    keep = 1.0 - target
    return [round(1.0 - keep ** ((i + 1) / steps), 6) for i in range(steps)]


def _per_layer(values: dict, fn) -> str:
    return "{" + ", ".join(f'"{k}": {fn(v)}' for k, v in values.items()) + "}"


def run_model(name: str, recipe: DeepRecipe, quick: bool = False, seed: int = 0) -> list[dict]:
    model, _ = train(name, seed=seed)
    model.eval()
    Xtr, ytr = data.load("mnist", "train")
    Xte, yte = data.load("mnist", "test")
    if quick:  # the split is sorted by class: a random subset
        pick = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed))[:512]
        Xtr, ytr = Xtr[pick], ytr[pick]
    g = trace(model, (Xte[:1],), name=name)
    rows = []

    def record(stage: str, graph: Graph, t0: float) -> None:
        rep = storage_report(graph)
        dense = rep.total("dense")
        b = {"dense": dense, "pruned": rep.total("pruned"), "shared": rep.total("shared"),
             "huffman": rep.total("huffman")}[stage]
        rows.append({"model": name, "stage": stage, "accuracy": accuracy(graph, Xte, yte),
                     "bytes": b, "ratio": dense / b, "file_bytes": rep.file_bytes,
                     "file_ratio": dense / rep.file_bytes, "seconds": time.time() - t0,
                     "sparse_macs": rep.sparse_macs, "macs": rep.macs})

    t0 = time.time()
    record("dense", g, t0)
    steps = 1 if quick else recipe.steps
    ep = 1 if quick else recipe.prune_epochs
    for i in range(steps):
        per = {k: _schedule(v, steps)[i] for k, v in recipe.sparsity.items()}
        g = optimize(g, f"prune-weights(sparsity=0.0, per_layer={_per_layer(per, float)}"
                        f", index_bits={recipe.index_bits})", seed=seed)
        g = finetune(recalibrate_bn(g, Xtr), Xtr, ytr, ep, recipe.lr, seed=seed + i)
    record("pruned", g, t0)
    g = optimize(g, f"share-weights(per_layer={_per_layer(recipe.bits, int)})", seed=seed)
    g = finetune(recalibrate_bn(g, Xtr), Xtr, ytr, 1 if quick else recipe.share_epochs,
                 recipe.share_lr, seed=seed + 100)
    record("shared", g, t0)
    with tempfile.TemporaryDirectory() as d:
        path = save(g, Path(d) / f"{name}.shrkz")
        back = load(path)
        if graph_diff(g, back) is not None:
            raise AssertionError(f"{name}: the .shrkz file does not load back bit for bit")
        file_bytes = path.stat().st_size
    record("huffman", back, t0)
    assert rows[-1]["file_bytes"] == file_bytes
    return rows


def table(rows: list[dict]) -> str:
    lines = [("| model | stage | test accuracy | Δ vs dense | weights bytes | rate | .shrkz file "
              "| file rate |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    base: dict[str, float] = {}
    for r in rows:
        base.setdefault(r["model"], r["accuracy"])
        d = (r["accuracy"] - base[r["model"]]) * 100
        file_ = f"{r['file_bytes']:,}" if r["stage"] == "huffman" else ""
        frate = f"{r['file_ratio']:.1f}×" if r["stage"] == "huffman" else ""
        lines.append(f"| {r['model']} | {r['stage']} | {r['accuracy']:.2%} | {d:+.2f} pt | "
                     f"{r['bytes']:,} | {r['ratio']:.1f}× | {file_} | {frate} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet_300_100,lenet5,vgg11_bn")
    ap.add_argument("--quick", action="store_true", help="one short round per stage (smoke)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        if name not in RECIPES:
            print(f"bench_deep: no recipe for {name} (have: {', '.join(RECIPES)})",
                  file=sys.stderr)
            return 2
        rows += run_model(name, RECIPES[name], quick=args.quick, seed=args.seed)
        print(table([r for r in rows if r["model"] == name]), flush=True)
    print()
    print(table(rows))
    for name in dict.fromkeys(r["model"] for r in rows):
        last = [r for r in rows if r["model"] == name][-1]
        print(f"{name}: {last['seconds']:.0f} s; a sparse-aware runtime would do "
              f"{last['sparse_macs']:,} of {last['macs']:,} MACs (the backends run all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
