"""Tuned-TVM benchmark: PyTorch eager, onnxruntime, TVM untuned and TVM MetaSchedule-tuned on
the same graph, in one process, side by side; for the original (fp32) graph and a compressed
(int8) one.

    python -m shrinkc.tools.bench_tuned [--models resnet18,mobilenet_v2] [--sizes 64,224]
        [--variants fp32,int8] [--trials 128] [--budget 10m] [--db-root /tmp/shrinkc-bench-tuned]
        [--passes 'prune-channels(ratio=0.5)']
        [--threads 2] [--repeat 30] [--population 64] [--stem auto|cifar|imagenet]
        [--layout NHWC|NCHW] [--no-prepack] [--out FILE.md]

For each model (zoo factory, width 1.0, batch 1, 3×S×S, random weights) and variant: trace,
apply ``fold-bn`` (exact), then ``--passes`` if given (a compressed graph: pruned channels,
CP / Tucker chains); for ``int8`` also the ``quantize`` pass (min/max calibration on
four random batches: QDQ with u8 activations, i8 per-channel weights, i32 biases). Then

- ``torch``: the float ``nn.Module`` eager, ``torch.inference_mode`` (fp32 rows only);
- ``onnxruntime``: ``to_onnx`` of the graph (QDQ for int8: onnxruntime's QLinear kernels);
- ``tvm``: the graph built for the host target without a tuning database;
- ``tvm-tuned``: ``backends.tvm.tuning.tune`` with a budget of ``--trials`` and / or
  ``--budget`` (time per row) into a database
  (``<db-root>/<model>-<S>-<layout>[-prepack][-int8]``; a second run reuses it and tunes
  only up to the budget; delete it to re-tune from scratch), then built with the database
  applied. Convolutions in NHWC with prepacked weights unless ``--layout`` / ``--no-prepack``.

Backends are timed in interleaved blocks (``bench.time_in_blocks``); medians of ``--repeat``
runs; ratios are backend median / onnxruntime median (< 1 = faster than onnxruntime). All
backends use ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench import (STEADY_SETTLE, _ort_runner, _torch_runner, machine_info, rounds_of,
                    set_threads, time_in_blocks)

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


def bench_one(name: str, size: int, *, trials: int | None, db_root: Path, threads: int,
              warmup: int, repeat: int, prepack: bool | None = None,
              max_trials_per_task: int | None = None, population: int | None = None,
              stem: str = "auto", seed: int = 0, layout: str | None = None,
              variant: str = "fp32", budget: str | None = None,
              passes: str | None = None, settle: int = STEADY_SETTLE) -> dict[str, Any]:
    from .. import optimize
    from ..backends import tvm as btvm
    from ..backends.tvm import tuning as tt
    from ..ir.cost import graph_cost
    from ..ir.frontends.torch import trace
    from . import zoo

    set_threads(threads)
    torch.manual_seed(seed)
    model = zoo.get_model(name, input_size=size, width=1.0, stem=stem).eval()
    x = torch.randn(1, 3, size, size)
    graph = trace(model, (x,), name=name)
    pipeline_text = PIPELINE + (f",{passes}" if passes else "")
    graph = optimize(graph, pipeline_text, example_inputs=(x,), seed=seed)
    if variant == "int8":
        # the quantize pass: min/max calibration on random inputs, u8 activations, i8
        # per-channel weights (7-bit on CPUs without VNNI), i32 biases
        gen = torch.Generator().manual_seed(seed + 1)
        calib = [[torch.randn(1, 3, size, size, generator=gen).numpy()] for _ in range(4)]
        graph = optimize(graph, "quantize", calibration=calib)
    elif variant != "fp32":
        raise ValueError(f"variant {variant!r}: choose fp32 or int8")
    cost = graph_cost(graph)
    row: dict[str, Any] = {"model": name if stem == "auto" else f"{name} ({stem} stem)",
                           "variant": variant, "input": f"1×3×{size}×{size}",
                           "macs": cost.total.macs, "params": cost.params,
                           "param_bytes": cost.param_bytes,
                           "pipeline": pipeline_text + (" + int8 QDQ" if variant == "int8" else ""),
                           "passes": passes,
                           "prepack": prepack}
    xn = x.numpy()
    with torch.inference_mode():
        reference = model(x).numpy().astype(np.float64)
    runners = {}
    t0 = time.perf_counter()
    if variant == "fp32":  # eager PyTorch runs the float model only
        runners["torch"] = _torch_runner(model, x)
    # onnxruntime with its default spinning threads, as TVM's pool spins: without it, at
    # batch 1 each of its small ops waits for a sleeping thread to wake
    runners["onnxruntime"] = _ort_runner(graph, xn, threads, spinning=True)
    row["ort_build_s"] = time.perf_counter() - t0

    tgt = btvm.resolve_target(None)
    row["target"] = tgt
    lowered = btvm.lower(graph)
    t0 = time.perf_counter()
    layout = layout or btvm.DEFAULT_CONV_LAYOUT
    row["layout"] = layout
    if prepack is None:
        prepack = btvm.default_prepack(lowered.mod)
    row["prepack"] = prepack

    def untuned(mod: Any, target_dict: dict[str, Any]) -> Any:
        return btvm.optimize_relax(mod, target_dict, layout=layout)

    runners["tvm"] = _tvm_module_runner(
        btvm.build_lowered(lowered, tgt, pipeline=untuned, name=name), xn)
    row["tvm_build_s"] = time.perf_counter() - t0

    db = db_root / (f"{name}-{size}" if stem == "auto" else f"{name}-{size}-{stem}")
    db = db.with_name(db.name + f"-{layout.lower()}" + ("-prepack" if prepack else "")
                      + ("-int8" if variant == "int8" else "")
                      + (f"-{_slug(passes)}" if passes else ""))
    db.mkdir(parents=True, exist_ok=True)
    what = " and ".join(w for w in (f"{trials} trials" if trials is not None else "",
                                     f"a {budget} budget" if budget else "") if w)
    print(f"[{name} {size}] tuning ({what}) into {db} ...", file=sys.stderr, flush=True)
    res = tt.tune(lowered.mod, tgt, total_trials=trials, budget=budget, db_dir=db,
                  max_trials_per_task=max_trials_per_task, progress=False,
                  cpu_weight_prepack=prepack, population_size=population, layout=layout)
    print(res.table(), file=sys.stderr, flush=True)
    summary = tt.database_summary(db)
    row.update(population=population, new_trials=res.new_trials, tune_s=res.seconds,
               ended_by=res.ended_by, budget=budget,
               build_errors=res.build_errors,
               run_errors=res.run_errors, tasks=len(res.tasks), db=str(db),
               db_records=summary["records"], db_valid=summary["valid"])

    def pipeline(mod: Any, target_dict: dict[str, Any]) -> Any:
        return tt.apply_database(mod, target_dict, db, cpu_weight_prepack=prepack,
                                 layout=layout)

    t0 = time.perf_counter()
    runners["tvm-tuned"] = _tvm_module_runner(
        btvm.build_lowered(lowered, tgt, pipeline=pipeline, name=name), xn)
    row["tvm_tuned_build_s"] = time.perf_counter() - t0

    outputs = {}
    for b, (run, to_np) in runners.items():
        out = None
        for _ in range(max(warmup, 1)):
            out = run()
        outputs[b] = np.asarray(to_np(out), dtype=np.float64)
    # interleaved blocks: a pause, `settle` untimed runs, 10 timed, the order rotating
    # (see time_in_blocks)
    names = list(runners)
    timings = dict(zip(names, time_in_blocks([runners[b][0] for b in names],
                                              rounds_of(repeat), settle=settle)))
    row["max_diff"] = {b: float(np.max(np.abs(o - reference))) for b, o in outputs.items()}
    # the compiled graphs against each other (for int8 the error vs fp32 is quantization's)
    row["tuned_vs_ort"] = float(np.max(np.abs(outputs["tvm-tuned"] - outputs["onnxruntime"])))
    row["output_scale"] = float(np.max(np.abs(reference)))
    row["ms"] = {b: t.median for b, t in timings.items()}
    row["ms_fmt"] = {b: t.fmt() for b, t in timings.items()}
    row["first_ms"] = {b: statistics.median(t.first_ms) for b, t in timings.items()}
    row["settle"] = settle
    row["load"] = os.getloadavg()
    return row


def _slug(text: str) -> str:
    """A file-name-safe form of a pass pipeline (its database directory's suffix)."""
    import hashlib
    import re

    short = re.sub(r"[^A-Za-z0-9.=-]+", "_", text)[:40].strip("_")
    return f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _first_run(row: dict[str, Any]) -> str:
    first = row.get("first_ms") or {}
    if "onnxruntime" not in first or "tvm-tuned" not in first:
        return "-"
    return f"{first['onnxruntime']:.2f}, {first['tvm-tuned'] / first['onnxruntime']:.2f}×"


def markdown(rows: list[dict[str, Any]], threads: int, warmup: int, repeat: int,
             settle: int = STEADY_SETTLE) -> str:
    from .table import human

    lines = ["| model | variant | input | MACs | weights | PyTorch ms | onnxruntime ms | "
             "TVM untuned ms | TVM tuned ms | tuned / ORT | tuned / fp32 ORT | untuned / ORT | "
             "trials (tasks) | tuning min | build fails | max Δ vs fp32 torch | "
             "max Δ tuned vs ORT | first run after idle: ORT ms, tuned / ORT |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
             "---:|"]
    fp32_ort = {(r["model"], r["input"]): r["ms"]["onnxruntime"] for r in rows
                if r.get("variant", "fp32") == "fp32" and not r.get("passes")}
    for r in rows:
        ms, f = r["ms"], r["ms_fmt"]
        ort = ms["onnxruntime"]
        base = fp32_ort.get((r["model"], r["input"]))
        vs_fp32 = f"{ms['tvm-tuned'] / base:.2f}×" if base else "-"
        variant = (f"{r.get('variant', 'fp32')}, {r.get('layout', 'NCHW')}"
                   f"{' prepack' if r['prepack'] else ''}"
                   f"{', `' + r['passes'] + '`' if r.get('passes') else ''}")
        lines.append(
            f"| {r['model']} | {variant} | {r['input']} | {human(r['macs'])} | "
            f"{r.get('param_bytes', 0) / 2**20:.1f} MiB | {f.get('torch', '-')} | "
            f"{f['onnxruntime']} | {f['tvm']} | {f['tvm-tuned']} | "
            f"{ms['tvm-tuned'] / ort:.2f}× | {vs_fp32} | {ms['tvm'] / ort:.1f}× | "
            f"{r['new_trials']} new, {r['db_valid']} in db ({r['tasks']}) | "
            f"{r['tune_s'] / 60:.1f} | {r['build_errors']} | "
            f"{max(v for k, v in r['max_diff'].items() if k != 'torch'):.1e} "
            f"(of {r.get('output_scale', float('nan')):.1f}) | "
            f"{r.get('tuned_vs_ort', float('nan')):.1e} | {_first_run(r)} |")
    return "\n".join(lines) + (
        f"\n\nBatch 1, width 1.0, pipeline `{PIPELINE}` (exact); int8 rows add min/max QDQ "
        f"(the `quantize` pass: u8 activations, i8 per-channel weights, i32 bias), "
        f"which onnxruntime runs with its QLinear "
        f"kernels and TVM with the integer lowering of `backends/tvm/int8.py`. "
        f"onnxruntime with its default thread spinning (TVM's pool spins too). "
        f"{machine_info(threads)}. Medians of {repeat} runs after {warmup} warm-ups "
        f"(p10–p90), backends timed in interleaved blocks in one process (a 0.3 s pause, "
        f"{settle} untimed runs, 10 timed runs: the steady state of back-to-back inference; "
        f"the last column is the median first run after the pause). Ratios: "
        f"backend median / onnxruntime median on the same graph (< 1 = faster); "
        f"tuned / fp32 ORT: against onnxruntime on the original fp32 graph.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_tuned",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--sizes", default="64", help="comma-separated input sizes, e.g. 64,224")
    p.add_argument("--trials", type=int, default=None,
                   help="MetaSchedule trials per model (its database's budget; see tune()); "
                        "default 128 unless --budget is given")
    p.add_argument("--budget", default=None,
                   help="tuning time per row (e.g. 10m, 1h; with --trials, whichever comes "
                        "first), counted from the tune() call")
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
    p.add_argument("--settle", type=int, default=STEADY_SETTLE,
                   help="untimed runs after each block's idle pause before its timed runs "
                        "(default %(default)s: the steady state; 1 times the runs right after idle, "
                        "where the weights are coming back into the cache)")
    p.add_argument("--no-prepack", action="store_true",
                   help="cpu_weight_prepack=False (default: on, as shrinkc compile builds)")
    p.add_argument("--variants", default="fp32",
                   help="comma-separated: fp32 (the original graph), int8 (QDQ, compressed)")
    p.add_argument("--layout", default=None, choices=("NCHW", "NHWC"),
                   help="conv2d data layout for TVM (default: backends.tvm.DEFAULT_CONV_LAYOUT)")
    p.add_argument("--passes", default=None,
                   help="a compression pipeline after fold-bn for every row (e.g. "
                        "'prune-channels(ratio=0.5)', 'cp-conv(ratio=0.5)'): TVM against "
                        "onnxruntime on the compressed graph")
    p.add_argument("--out", type=Path, help="also write the Markdown (and .json) here")
    args = p.parse_args(argv)
    if args.settle < 1:
        p.error(f"--settle {args.settle}: must be >= 1 (the first run after the pause)")
    if args.trials is None and args.budget is None:
        args.trials = 128
    if args.budget is not None:
        from ..backends.tvm import parse_budget
        try:
            parse_budget(args.budget, "--budget")
        except ValueError as e:
            p.error(str(e))
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for size, name, variant in [(int(s), m.strip(), v.strip())
                                for s in args.sizes.split(",")
                                for m in args.models.split(",") if m.strip()
                                for v in args.variants.split(",") if v.strip()]:
        rows.append(bench_one(name, size, trials=args.trials, db_root=args.db_root,
                              threads=args.threads, warmup=args.warmup, repeat=args.repeat,
                              prepack=False if args.no_prepack else None,
                              max_trials_per_task=args.max_trials_per_task,
                              population=args.population, stem=args.stem,
                              layout=args.layout, variant=variant, budget=args.budget,
                              passes=args.passes, settle=args.settle))
        md = markdown(rows, args.threads, args.warmup, args.repeat, args.settle)
        print(md, flush=True)
        if args.out:
            args.out.write_text(md)
            args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
