"""Low-rank benchmark: params, MACs, accuracy and latency (PyTorch and onnxruntime side by
side, one run) of reference models after ``tucker-conv``, ``cp-conv`` and ``svd-linear``.

For each model (default ResNet-18 and VGG-11, trained on MNIST-5k by ``tools/train.py``
and cached): trace at batch 1, run ``fold-bn`` (the baseline row) and then each pass at
each rank setting (default ``energy=0.9`` — each mode keeps 90% of its singular-value
energy; ``cp-conv`` then also requires relative error <= sqrt(0.1) — and ``ratio=0.5`` —
each decomposed layer keeps at most half its parameters; the passes' other options at
their defaults), and measure

- parameters and MACs (the op table's cost model) and the layers decomposed;
- test accuracy on the 1,000 MNIST-5k test images (``to_torch`` of each graph), right
  after the pass and after recovery: ``shrinkc.recover`` (distillation from the baseline
  graph, hard labels too) for ``--recover-epochs`` epochs (default 1) on the 4,000 training
  images (the recovered graph has the decomposed graph's structure, so its latency is the
  row's);
- the largest relative reconstruction error of a decomposed weight and the seconds the
  pass took (compile time, measured on whatever machine runs this);
- latency at batch 1: PyTorch (``to_torch`` of every graph, the baseline included, so every
  row runs the same kind of module) and onnxruntime (``to_onnx`` of every graph), each
  warmed up, then timed round-robin over every row and backend with the order rotated by
  one per round (``benchkit.LatencyPool``: no runner always follows the same one), so load
  on a shared machine hits all alike. Medians (p10–p90) and the speed-up over the baseline on the same
  backend. MACs saved are not time saved: a chain of thin convolutions runs below the
  kernels' peak, so both columns are reported.

Run on a quiet machine for numbers that mean something::

    python -m shrinkc.tools.bench_lowrank --models resnet18,vgg11_bn \\
        --settings "energy=0.9;ratio=0.5" --recover-epochs 1 --threads 2 --repeat 50 \\
        --json lowrank.json

``--smoke`` (2 timed runs, 200 test images, recovery on 256 training images) checks that it
works; ``--untrained`` uses random weights (no training; accuracy is then meaningless);
``--recover-epochs 0`` skips recovery.
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

from . import benchkit as bk
from .bench import Timing, set_threads, speedup

log = logging.getLogger(__name__)

__all__ = ["LowRankRow", "PASSES", "accuracy", "bench_lowrank", "main", "markdown"]

#: The passes benchmarked, in row order.
PASSES = ("tucker-conv", "cp-conv", "svd-linear")


@dataclass
class LowRankRow:
    model: str
    pipeline: str  # what ran after fold-bn ("" for the baseline)
    params: int
    macs: int
    accuracy: float | None
    decomposed: int = 0
    max_error: float = 0.0
    pass_s: float = 0.0
    recovered_accuracy: float | None = None  # after shrinkc.recover
    recover_s: float = 0.0
    timings: dict[str, Timing] = field(default_factory=dict)
    max_diff_ort: float | None = None  # onnxruntime vs PyTorch, same graph

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = {b: {"median_ms": t.median, "p10_ms": t.percentile(10),
                            "p90_ms": t.percentile(90)} for b, t in self.timings.items()}
        return d


def accuracy(graph, X: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    """Top-1 accuracy of ``graph`` (through ``to_torch``) on images ``X`` with labels ``y``."""
    from .. import to_torch

    module = to_torch(graph).eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            correct += int((module(X[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(len(X), 1)


def bench_lowrank(models=("resnet18", "vgg11_bn"), settings=("energy=0.9", "ratio=0.5"), *,
                  passes=PASSES, threads: int = 1, warmup: int = 5, repeat: int = 30,
                  test_images: int | None = None, recover_epochs: int = 1,
                  train_images: int | None = None, trained: bool = True,
                  seed: int = 0) -> list[LowRankRow]:
    """A baseline row (``fold-bn``) per model, then one per pass and setting."""
    from .. import optimize, recover, to_torch, trace
    from ..backends.onnx import OnnxRuntimeSession
    from ..passes import PassContext, PassManager
    from ..passes.analyses.cost import summarize
    from . import data, train, zoo

    set_threads(threads)
    X, y = data.load("mnist", "test")
    if test_images is not None:
        X, y = X[:test_images], y[:test_images]
    Xt, yt = data.load("mnist", "train")
    if train_images is not None:
        Xt, yt = Xt[:train_images], yt[:train_images]
    rows: list[LowRankRow] = []
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
        base = optimize(trace(model, (x,), name=name), "fold-bn", seed=seed)
        for pipeline in ["", *(f"{p}({s})" for p in passes for s in settings)]:
            t0 = time.perf_counter()
            g, stats = base, {}
            if pipeline:
                g = base.clone()
                pm = PassManager(pipeline, PassContext(seed=seed))
                pm.run(g)
                stats = pm.steps[-1].result.stats
            pass_s = time.perf_counter() - t0
            s = summarize(g)
            row = LowRankRow(name, pipeline, s.params, s.macs, accuracy(g, X, y),
                             int(stats.get("decomposed", 0)), float(stats.get("max_error", 0.0)),
                             pass_s)
            if pipeline and recover_epochs > 0 and row.decomposed:
                t0 = time.perf_counter()
                recovered = recover(g, base, (Xt, yt), epochs=recover_epochs, seed=seed)
                row.recovered_accuracy = accuracy(recovered, X, y)
                row.recover_s = time.perf_counter() - t0
            module = to_torch(g).eval()
            sess = OnnxRuntimeSession(g, threads)
            feeds = sess.feeds([x])
            with torch.inference_mode():
                want = module(x).numpy()
            got = sess.session.run(None, feeds)[0]
            row.max_diff_ort = float(np.max(np.abs(got.astype(np.float64) - want)))

            def torch_run(module=module):
                with torch.inference_mode():
                    return module(x)

            def ort_run(sess=sess, feeds=feeds):
                return sess.session.run(None, feeds)

            for b, fn in (("torch", torch_run), ("onnxruntime", ort_run)):
                row.timings[b] = pool.add(fn)
            rows.append(row)
            log.info("%s %s: %d params, %d MACs, %.1f%% (pass %.1fs)%s", name,
                     pipeline or "baseline", s.params, s.macs, 100 * (row.accuracy or 0), pass_s,
                     "" if row.recovered_accuracy is None else
                     f", recovered {100 * row.recovered_accuracy:.1f}% in {row.recover_s:.0f}s")
    pool.run(repeat)  # round-robin over every row and backend, rotated
    return rows


def markdown(rows: list[LowRankRow], *, threads: int, repeat: int) -> str:
    from .bench import machine_info
    from .table import human

    base = {r.model: r for r in rows if not r.pipeline}
    lines = [f"low-rank passes after fold-bn, batch 1, {repeat} timed runs each, round-robin "
             f"(rotated); "
             f"speed-up = baseline median / row median, same backend; recovered = after "
             f"shrinkc.recover (distillation from the baseline); {machine_info(threads)}", "",
             "| model | pass | layers | params | MACs | test acc | recovered acc | "
             "max weight error | pass s | recover s | PyTorch ms | onnxruntime ms | "
             "PyTorch speed-up | onnxruntime speed-up | max Δ ORT vs PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base[r.model]

        def speed(k: str, r=r, b=b) -> str:
            return speedup(b.timings[k], r.timings[k])

        t = {k: (v.fmt() if v.runs_ms else "-") for k, v in r.timings.items()}
        acc = f"{100 * r.accuracy:.1f}%" if r.accuracy is not None else "-"
        rec = f"{100 * r.recovered_accuracy:.1f}%" if r.recovered_accuracy is not None else "-"
        lines.append(
            f"| {r.model} | {r.pipeline or 'fold-bn (baseline)'} | {r.decomposed} | "
            f"{human(r.params)} | {human(r.macs)} | {acc} | {rec} | "
            f"{r.max_error:.3f} | {r.pass_s:.1f} | {r.recover_s:.0f} | {t['torch']} | "
            f"{t['onnxruntime']} | "
            f"{speed('torch')} | {speed('onnxruntime')} | {r.max_diff_ort:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_lowrank",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,vgg11_bn")
    p.add_argument("--passes", default=",".join(PASSES))
    p.add_argument("--settings", default="energy=0.9;ratio=0.5",
                   help="rank settings, ';'-separated, each the options of every pass "
                        "(default 'energy=0.9;ratio=0.5')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--smoke", action="store_true",
                   help="2 timed runs and 200 test images: checks that it works")
    p.add_argument("--untrained", action="store_true", help="random weights (no training)")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="accuracy on the first N test images (default: all 1,000; 200 with "
                        "--smoke)")
    p.add_argument("--recover-epochs", type=int, default=1, metavar="N",
                   help="epochs of shrinkc.recover after each pass (default 1; 0: none)")
    p.add_argument("--train-images", type=int, metavar="N",
                   help="recover on the first N training images (default: all 4,000; 256 "
                        "with --smoke)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("shrinkc.passes").setLevel(logging.WARNING)  # per-layer lines
    warmup, repeat = (1, 2) if args.smoke else (args.warmup, args.repeat)
    rows = bench_lowrank([m for m in args.models.split(",") if m],
                         [s.strip() for s in args.settings.split(";") if s.strip()],
                         passes=[q for q in args.passes.split(",") if q], threads=args.threads,
                         warmup=warmup, repeat=repeat,
                         test_images=args.test_images or (200 if args.smoke else None),
                         recover_epochs=args.recover_epochs,
                         train_images=args.train_images or (256 if args.smoke else None),
                         trained=not args.untrained)
    print(markdown(rows, threads=args.threads, repeat=repeat))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
