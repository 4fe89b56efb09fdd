"""Deep Compression on the reference models: compression rate and accuracy per stage.

    python -m shrinkc.tools.bench_deep [--models lenet_300_100,lenet5,vgg11_bn] [--quick]

For each model: the trained reference (``tools/train.py``, cached) is traced, then

1. **pruned** — ``prune-weights`` in ``steps`` rounds up to the recipe's per-layer
   sparsities, each followed by masked retraining (``to_torch`` keeps the pruned weights at
   zero);
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
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import load, optimize, save, to_torch, trace, write_back
from ..ir.compress import storage_report
from ..ir.graph import Graph
from ..ir.text import graph_diff
from . import data
from .train import train


@dataclass(frozen=True)
class DeepRecipe:
    """Per-layer sparsity and bits (patterns on layer locs), retraining epochs and rates."""

    sparsity: dict[str, float]
    bits: dict[str, int]
    steps: int = 3  # pruning rounds (geometric in the kept fraction)
    prune_epochs: int = 4  # retraining after each round
    share_epochs: int = 4
    lr: float = 1e-3
    share_lr: float = 1e-4
    index_bits: int | None = None  # None: 8 for conv, 5 for fc (the paper's)
    model_kwargs: dict = field(default_factory=dict)


#: The paper's per-layer settings (Han et al. 2016, tables 2-3), nudged where MNIST-5k
#: allowed more.
RECIPES: dict[str, DeepRecipe] = {
    "lenet_300_100": DeepRecipe(sparsity={"fc1": 0.95, "fc2": 0.91, "fc3": 0.74},
                                bits={"fc1": 5, "fc2": 5, "fc3": 5}),
    "lenet5": DeepRecipe(sparsity={"conv1": 0.34, "conv2": 0.88, "fc1": 0.94, "fc2": 0.81,
                                   "fc3": 0.81},
                         bits={"conv*": 8, "fc*": 5}),
    "vgg11_bn": DeepRecipe(sparsity={"features.0*": 0.4, "features*": 0.85, "classifier*": 0.9},
                           bits={"features*": 6, "classifier*": 5}, prune_epochs=2,
                           share_epochs=2),
}


def finetune(graph: Graph, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
             seed: int = 0) -> Graph:
    """``epochs`` of Adam on cross-entropy through ``to_torch`` (encodings kept); the
    retrained graph."""
    if epochs <= 0:
        return graph
    m = to_torch(graph)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=lr)
    m.train()
    for epoch in range(epochs):
        for xb, yb in data.batches(X, y, 64, shuffle=True, seed=seed * 1000 + epoch):
            opt.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            opt.step()
    return write_back(graph, m)


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
    model, metrics = train(name, seed=seed)
    model.eval()
    Xtr, ytr = data.load("mnist", "train")
    Xte, yte = data.load("mnist", "test")
    if quick:
        Xtr, ytr = Xtr[:512], ytr[:512]
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
        g = finetune(g, Xtr, ytr, ep, recipe.lr, seed=seed + i)
    record("pruned", g, t0)
    g = optimize(g, f"share-weights(per_layer={_per_layer(recipe.bits, int)})", seed=seed)
    g = finetune(g, Xtr, ytr, 1 if quick else recipe.share_epochs, recipe.share_lr,
                 seed=seed + 100)
    record("shared", g, t0)
    with tempfile.TemporaryDirectory() as d:
        path = save(g, Path(d) / f"{name}.shrkz")
        back = load(path)
        if graph_diff(g, back) is not None:
            raise AssertionError(f"{name}: the .shrkz file does not load back bit for bit")
        file_bytes = path.stat().st_size
    record("huffman", back, t0)
    assert rows[-1]["file_bytes"] == file_bytes
    rows[0]["baseline_trained"] = metrics.test_accuracy
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | stage | test accuracy | Δ vs dense | weights bytes | rate | .shrkz file "
             "| file rate |", "|---|---|---:|---:|---:|---:|---:|---:|"]
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
