"""Channel-pruning benchmark: accuracy, params, MACs and latency (PyTorch and onnxruntime,
side by side, one run) of reference models pruned by ``prune-channels`` at several ratios.

For each model (default ResNet-18 and VGG-11, trained on MNIST-5k by ``tools/train.py``
and cached): trace at batch 1, prune at each ratio (default 0.3, 0.5, 0.7) with the given
criterion and scope, and measure

- test accuracy on the 1,000 MNIST-5k test images (through onnxruntime), right after
  pruning and, with ``--recover-epochs N``, after N epochs of recovery (the ``recover``
  pass: distillation from the unpruned model on the 4,000 training images);
- parameters and MACs (the op table's cost model);
- latency at batch 1: PyTorch (``to_torch`` of each graph, the unpruned one included, so
  every row runs the same kind of module) and onnxruntime (``to_onnx`` of each graph), each
  warmed up, then timed round-robin over every row and backend, so load on a shared
  machine hits all alike. Medians (p10–p90) and the speed-up over the unpruned graph on the
  same backend.

Run on a quiet machine for numbers that mean something::

    python -m shrinkc.tools.bench_prune --models resnet18,vgg11_bn --ratios 0.3,0.5,0.7 \\
        --recover-epochs 8 --threads 2 --repeat 50

``--smoke`` (2 timed runs, 200 test images) checks that it works; ``--untrained`` uses
random weights (no training; accuracy is then meaningless).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .bench import Timing, speedup

log = logging.getLogger(__name__)

__all__ = ["PruneRow", "bench_prune", "main", "markdown"]


@dataclass
class PruneRow:
    model: str
    ratio: float
    params: int
    macs: int
    accuracy: float | None
    channels_removed: int
    recover_epochs: int = 0  # recovery (distillation from the unpruned model) after pruning
    timings: dict[str, Timing] = field(default_factory=dict)
    max_diff_ort: float | None = None  # onnxruntime vs PyTorch, same graph

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = {b: {"median_ms": t.median, "p10_ms": t.percentile(10),
                            "p90_ms": t.percentile(90)} for b, t in self.timings.items()}
        return d


def bench_prune(models=("resnet18", "vgg11_bn"), ratios=(0.3, 0.5, 0.7), *,
                criterion: str = "l1", scope: str = "local", threads: int = 1,
                warmup: int = 5, repeat: int = 30, test_images: int | None = None,
                trained: bool = True, seed: int = 0, recover_epochs: int = 0,
                recover_lr: float = 3e-3, train_images: int | None = None) -> list[PruneRow]:
    """Rows for every model at ratio 0 (unpruned) and at each of ``ratios``; with
    ``recover_epochs``, each pruned graph also after that many epochs of recovery
    (``recover``: distillation from the unpruned model on the training images)."""
    from .. import optimize, trace
    from . import benchkit as bk
    from . import data, train, zoo

    bk.set_threads(threads)
    X, y = data.load("mnist", "test")
    if test_images is not None:
        X, y = X[:test_images], y[:test_images]
    Xtr, ytr = data.load("mnist", "train")
    if train_images is not None:
        keep = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(seed))
        Xtr, ytr = Xtr[keep[:train_images]], ytr[keep[:train_images]]
    calib = data.calibration_batches("mnist", n=64, batch_size=1)
    rows: list[PruneRow] = []
    pool = bk.LatencyPool(warmup)
    for name in models:
        if trained:
            model, metrics = train.train(name)
            log.info("%s: trained model (%.1f%% test accuracy%s)", name,
                     100 * metrics.test_accuracy, ", cached" if metrics.cached else "")
        else:
            torch.manual_seed(seed)
            recipe = train.RECIPES.get(name, train.DEFAULT_RECIPE)
            model = zoo.get_model(name, dataset="mnist", **dict(recipe.model_kwargs)).eval()
        x = X[:1].clone()
        graph = trace(model, (x,), name=name)
        steps = [(0.0, 0)] + [(r, 0) for r in ratios]
        if recover_epochs:
            steps += [(r, recover_epochs) for r in ratios]
        for ratio, epochs in steps:
            t0 = time.perf_counter()
            artifacts: dict[str, Any] = {}
            pipeline = f"prune-channels(ratio={ratio}, criterion={criterion}, scope={scope})"
            if epochs:
                pipeline += f",recover(epochs={epochs}, lr={recover_lr})"
            g = graph if ratio == 0 else optimize(
                graph, pipeline, example_inputs=[x], calibration=[[c] for c in calib],
                training=(Xtr, ytr), seed=seed, artifacts=artifacts)
            plan = artifacts.get("prune-plan")
            params, macs = bk.cost_of(g)
            runners = {"torch": bk.torch_graph(g, x), "onnxruntime": bk.ort_graph(g, x, threads)}
            _, predict, batch = runners["onnxruntime"]
            row = PruneRow(name, ratio, params, macs, bk.accuracy(predict, X, y, batch),
                           plan.channels_removed if plan is not None else 0,
                           recover_epochs=epochs)
            want = runners["torch"][1](x)
            got = runners["onnxruntime"][1](x)
            row.max_diff_ort = float(np.max(np.abs(got.astype(np.float64) - want)))
            for b, (run, _, _) in runners.items():
                row.timings[b] = pool.add(run)
            rows.append(row)
            log.info("%s ratio %.2f%s: %d params, %.1f%% (%.1fs)", name, ratio,
                     f" + {epochs} recovery epochs" if epochs else "", params,
                     100 * (row.accuracy or 0), time.perf_counter() - t0)
    pool.run(repeat)  # round-robin over every row and backend
    return rows


def markdown(rows: list[PruneRow], *, threads: int, repeat: int) -> str:
    from .table import human

    base = {r.model: r for r in rows if r.ratio == 0}
    lines = [f"channel pruning (prune-channels), batch 1, {threads} thread(s), {repeat} timed "
             f"runs each, round-robin; speed-up = unpruned median / pruned median, same "
             f"backend; recovery = epochs of distillation from the unpruned model", "",
             "| model | ratio | recovery | params | MACs | test acc | channels removed | "
             "PyTorch ms | onnxruntime ms | PyTorch speed-up | onnxruntime speed-up | "
             "max Δ ORT vs PyTorch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base[r.model]

        def speed(k: str, r=r, b=b) -> str:
            return speedup(b.timings[k], r.timings[k])

        t = {k: (v.fmt() if v.runs_ms else "-") for k, v in r.timings.items()}
        acc = f"{100 * r.accuracy:.1f}%" if r.accuracy is not None else "-"
        rec = f"{r.recover_epochs} epochs" if r.recover_epochs else "-"
        lines.append(f"| {r.model} | {r.ratio:g} | {rec} | {human(r.params)} | {human(r.macs)} "
                     f"| {acc} "
                     f"| {r.channels_removed} | {t['torch']} | {t['onnxruntime']} | "
                     f"{speed('torch')} | {speed('onnxruntime')} | {r.max_diff_ort:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_prune",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,vgg11_bn")
    p.add_argument("--ratios", default="0.3,0.5,0.7")
    p.add_argument("--criterion", default="l1")
    p.add_argument("--scope", default="local", choices=["local", "global"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--smoke", action="store_true",
                   help="2 timed runs and 200 test images: checks that it works")
    p.add_argument("--untrained", action="store_true", help="random weights (no training)")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="accuracy on the first N test images (default: all 1,000; 200 with "
                        "--smoke)")
    p.add_argument("--recover-epochs", type=int, default=0, metavar="N",
                   help="also each ratio after N epochs of recovery (distillation; default 0)")
    p.add_argument("--recover-lr", type=float, default=3e-3, help="recovery's peak lr")
    p.add_argument("--train-images", type=int, metavar="N",
                   help="recover on a seeded sample of N training images (default: all 4,000)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("shrinkc.passes").setLevel(logging.WARNING)  # the pipeline line
    warmup, repeat = (1, 2) if args.smoke else (args.warmup, args.repeat)
    rows = bench_prune([m for m in args.models.split(",") if m],
                       [float(r) for r in args.ratios.split(",") if r], criterion=args.criterion,
                       scope=args.scope, threads=args.threads, warmup=warmup, repeat=repeat,
                       test_images=args.test_images or (200 if args.smoke else None),
                       trained=not args.untrained, recover_epochs=args.recover_epochs,
                       recover_lr=args.recover_lr, train_images=args.train_images)
    print(markdown(rows, threads=args.threads, repeat=repeat))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
