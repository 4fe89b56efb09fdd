"""Tuned-TVM benchmark: PyTorch eager, onnxruntime, TVM untuned and TVM MetaSchedule-tuned on
the same graph, in one process, side by side.

    python -m shrinkc.tools.bench_tuned [--models resnet18,mobilenet_v2] [--sizes 64]
        [--trials 128] [--db-root /tmp/shrinkc-bench-tuned] [--threads 2] [--repeat 30]
        [--population 64] [--stem auto|cifar|imagenet] [--prepack] [--out FILE.md]

For each model (zoo factory, width 1.0, batch 1, 3×S×S): trace, apply the pipeline (only
``fold-bn`` for now: the compression passes do not exist yet, so the "compressed" graph is
the exact graph with BatchNorm folded), then

- ``torch``: the ``nn.Module`` eager, ``torch.inference_mode``;
- ``onnxruntime``: ``to_onnx`` of the folded graph, one session;
- ``tvm``: the folded graph built for the host target without a tuning database;
- ``tvm-tuned``: ``tvm_tuning.tune`` with ``--trials`` new trials into a dedicated database
  (``<db-root>/<model>-<S>``; delete it to re-tune from scratch), then built with the
  database applied.

Backends are timed in interleaved blocks (see ``bench_one``); medians of ``--repeat`` runs; ratios
are backend median / onnxruntime median (< 1 = faster than onnxruntime). All backends use
``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench import Timing, _ort_runner, _torch_runner, machine_info, set_threads

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tvm", "tvm-tuned")
PIPELINE = "fold-bn"


def _tvm_module_runner(module: Any, x: np.ndarray):
    module.link()
    tensors = module.to_device([x])
    module.run_device(tensors)

    def run() -> Any:
        return module.run_device(tensors)

    return run, lambda out: (out.numpy() if hasattr(out, "numpy") else out[0].numpy())


def bench_one(name: str, size: int, *, trials: int, db_root: Path, threads: int,
              warmup: int, repeat: int, prepack: bool = False,
              max_trials_per_task: int | None = None, population: int | None = None,
              stem: str = "auto", seed: int = 0) -> dict[str, Any]:
    from .. import optimize
    from ..backends import tvm as btvm
    from ..backends import tvm_tuning as tt
    from ..ir.cost import graph_cost
    from ..ir.frontends.torch import trace
    from . import zoo

    set_threads(threads)
    torch.manual_seed(seed)
    model = zoo.get_model(name, input_size=size, width=1.0, stem=stem).eval()
    x = torch.randn(1, 3, size, size)
    graph = trace(model, (x,), name=name)
    graph = optimize(graph, PIPELINE, example_inputs=(x,), seed=seed)
    cost = graph_cost(graph)
    row: dict[str, Any] = {"model": name if stem == "auto" else f"{name} ({stem} stem)",
                           "input": f"1×3×{size}×{size}", "macs": cost.total.macs,
                           "params": cost.params, "pipeline": PIPELINE, "prepack": prepack}
    xn = x.numpy()
    runners = {}
    t0 = time.perf_counter()
    runners["torch"] = _torch_runner(model, x)
    runners["onnxruntime"] = _ort_runner(graph, xn, threads)
    row["ort_build_s"] = time.perf_counter() - t0

    tgt = btvm.resolve_target(None)
    row["target"] = tgt
    lowered = btvm.lower(graph)
    t0 = time.perf_counter()
    runners["tvm"] = _tvm_module_runner(btvm.build_lowered(lowered, tgt, name=name), xn)
    row["tvm_build_s"] = time.perf_counter() - t0

    db = db_root / (f"{name}-{size}" if stem == "auto" else f"{name}-{size}-{stem}")
    db.mkdir(parents=True, exist_ok=True)
    print(f"[{name} {size}] tuning {trials} trials into {db} ...", file=sys.stderr, flush=True)
    res = tt.tune(lowered.mod, tgt, total_trials=trials, db_dir=db,
                  max_trials_per_task=max_trials_per_task, progress=False,
                  cpu_weight_prepack=prepack, population_size=population)
    print(res.table(), file=sys.stderr, flush=True)
    summary = tt.database_summary(db)
    row.update(population=population, new_trials=res.new_trials, tune_s=res.seconds,
               build_errors=res.build_errors,
               run_errors=res.run_errors, tasks=len(res.tasks), db=str(db),
               db_records=summary["records"], db_valid=summary["valid"])

    def pipeline(mod: Any, target_dict: dict[str, Any]) -> Any:
        return tt.apply_database(mod, target_dict, db, cpu_weight_prepack=prepack)

    t0 = time.perf_counter()
    runners["tvm-tuned"] = _tvm_module_runner(
        btvm.build_lowered(lowered, tgt, pipeline=pipeline, name=name), xn)
    row["tvm_tuned_build_s"] = time.perf_counter() - t0

    outputs, timings = {}, {}
    for b, (run, to_np) in runners.items():
        out = None
        for _ in range(max(warmup, 1)):
            out = run()
        outputs[b] = np.asarray(to_np(out), dtype=np.float64)
        timings[b] = Timing()
    # Interleaved blocks, not single runs round-robin: on 2 cores the thread pools of
    # onnxruntime and TVM keep spinning after a run and steal the CPU from the next backend
    # (PyTorch measured 30x slower that way). Each block: 1 untimed run, `block` timed runs,
    # then a pause so the previous backend's workers go to sleep; the order rotates.
    block = max(1, min(10, repeat))
    names = list(runners)
    done = 0
    while done < repeat:
        n = min(block, repeat - done)
        for b in names:
            run = runners[b][0]
            time.sleep(0.3)
            run()
            for _ in range(n):
                t0 = time.perf_counter()
                run()
                timings[b].runs_ms.append((time.perf_counter() - t0) * 1e3)
        names = names[1:] + names[:1]
        done += n
    row["max_diff"] = {b: float(np.max(np.abs(o - outputs["torch"]))) for b, o in outputs.items()}
    row["ms"] = {b: t.median for b, t in timings.items()}
    row["ms_fmt"] = {b: t.fmt() for b, t in timings.items()}
    row["load"] = os.getloadavg()
    return row


def markdown(rows: list[dict[str, Any]], threads: int, warmup: int, repeat: int) -> str:
    from .table import human

    lines = ["| model | input | MACs | PyTorch ms | onnxruntime ms | TVM untuned ms | "
             "TVM tuned ms | tuned / ORT | untuned / ORT | PyTorch / ORT | trials (tasks) | "
             "tuning min | build fails | max Δ |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms, f = r["ms"], r["ms_fmt"]
        ort = ms["onnxruntime"]
        lines.append(
            f"| {r['model']}{' (prepack)' if r['prepack'] else ''} | {r['input']} | "
            f"{human(r['macs'])} | {f['torch']} | {f['onnxruntime']} | {f['tvm']} | "
            f"{f['tvm-tuned']} | {ms['tvm-tuned'] / ort:.2f}× | {ms['tvm'] / ort:.1f}× | "
            f"{ms['torch'] / ort:.2f}× | {r['new_trials']} new, {r['db_valid']} in db "
            f"({r['tasks']}) | {r['tune_s'] / 60:.1f} | {r['build_errors']} | "
            f"{max(v for k, v in r['max_diff'].items() if k != 'torch'):.1e} |")
    return "\n".join(lines) + (
        f"\n\nBatch 1, fp32, width 1.0, pipeline `{PIPELINE}` only (exact; no compression passes "
        f"exist yet). {machine_info(threads)}. Medians of {repeat} runs after {warmup} warm-ups "
        f"(p10–p90), backends timed in interleaved blocks of 10 runs in one process. Ratios: backend median / "
        f"onnxruntime median (< 1 = faster than onnxruntime).\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_tuned",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--sizes", default="64", help="comma-separated input sizes, e.g. 64,224")
    p.add_argument("--trials", type=int, default=128, help="new MetaSchedule trials per model")
    p.add_argument("--max-trials-per-task", type=int, default=None)
    p.add_argument("--db-root", default="/tmp/shrinkc-bench-tuned", type=Path)
    p.add_argument("--population", type=int, default=None,
                   help="evolutionary search population (MetaSchedule default 512; 64 makes "
                        "each search round several times faster on 2 cores)")
    p.add_argument("--stem", default="auto", choices=("auto", "cifar", "imagenet"),
                   help="zoo stem: auto = CIFAR (full resolution) below 128 px, ImageNet "
                        "(stride-4 stem) from 128 px")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--prepack", action="store_true", help="cpu_weight_prepack=True")
    p.add_argument("--out", type=Path, help="also write the Markdown (and .json) here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows.append(bench_one(name, size, trials=args.trials, db_root=args.db_root,
                                  threads=args.threads, warmup=args.warmup, repeat=args.repeat,
                                  prepack=args.prepack,
                                  max_trials_per_task=args.max_trials_per_task,
                                  population=args.population, stem=args.stem))
            md = markdown(rows, args.threads, args.warmup, args.repeat)
            print(md, flush=True)
            if args.out:
                args.out.write_text(md)
                args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
