"""``shrinkc bench [MODEL ...]``: latency of PyTorch eager, onnxruntime and untuned TVM on the
reference models at batch 1, in one run, as a Markdown table (medians and p10–p90 of
``--repeat`` runs after ``--warmup``; ratios vs PyTorch; params, MACs, size; threads).

``shrinkc bench --recipes LIST|all [MODEL ...]``: compression recipes on the trained
reference models (default resnet18), each with recovery, against the original in PyTorch
eager, onnxruntime fp32 and onnxruntime's quantize_static int8: accuracy, params, MACs,
bytes on disk, latency per backend, ratios; a terminal table, and report.md, report.json
and PNG plots in --output DIR (default shrinkc-bench). ``--list-recipes`` shows them,
``--quick`` checks that it runs (see tools/bench_recipes.py).

MODEL is a zoo name (``resnet18`` or ``zoo:resnet18``); default: every reference model at its
default input shape. On a shared machine timings are noisy: compare medians, and rerun.
"""

from __future__ import annotations

import argparse

from .load import parse_shape


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency table: PyTorch vs onnxruntime vs TVM (untuned)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL", help="zoo models (default: all)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset of torch,onnxruntime,tvm (default: all; "
                        "with --quick, no tvm)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per backend (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    from .bench import STEADY_SETTLE

    p.add_argument("--settle", type=int, default=STEADY_SETTLE,
                   help="untimed runs after each block's idle pause (default %(default)s: the steady "
                        "state; 1 also times the runs right after idle)")
    p.add_argument("--threads", type=int, help="threads per backend (default: physical cores; "
                   "with --recipes 1)")
    p.add_argument("--target", default=None, help="TVM target preset or JSON dict (default host)")
    p.add_argument("--width", type=float, help="zoo width multiplier (default: each model's 1.0)")
    p.add_argument("--input-shape", help="input shape for every model, e.g. 1,3,64,64")
    p.add_argument("-o", "--output", metavar="FILE.md|DIR",
                   help="also write the table to FILE.md; with --recipes the report folder")
    p.add_argument("--untrained", action="store_true",
                   help="with --recipes: random weights, no training (accuracy meaningless)")
    from .bench_recipes import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..ir.files import atomic_write_text, check_output_file
    from . import zoo
    from .bench import BACKENDS, run_bench

    names = [m.removeprefix("zoo:") for m in args.models]
    for n in names:
        if n not in zoo.MODELS:
            raise ValueError(f"unknown model {n!r}; known models: {', '.join(sorted(zoo.MODELS))}")
    backends = [b.strip() for b in (args.backends or ",".join(BACKENDS)).split(",")
                if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"--backends {args.backends!r}: choose from {', '.join(BACKENDS)}")
    if args.repeat < 1 or args.warmup < 0 or args.settle < 1:
        raise ValueError("--repeat and --settle must be >= 1 and --warmup >= 0")
    if args.recipes or args.list_recipes:
        from .bench_recipes import run_cli

        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads {args.threads}: must be >= 1")
        return run_cli(args, names, backends)
    if args.quick or args.untrained:
        raise ValueError("--quick and --untrained go with --recipes")
    names = names or list(zoo.MODELS)
    if args.output:  # before the benchmark, not after it
        check_output_file(args.output, "-o")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be >= 1")
    target = args.target
    if target and target.strip().startswith("{"):
        target = json.loads(target)
    kwargs = {"width": args.width} if args.width else None
    from .progress import Status

    with Status("bench", quiet=getattr(args, "quiet", False)) as status:
        _, table = run_bench(names, backends=backends, warmup=args.warmup, repeat=args.repeat,
                             threads=args.threads, target=target,
                             input_shape=parse_shape(args.input_shape), model_kwargs=kwargs,
                             settle=args.settle,
                             progress=status if status.bar is not None else None)
    print(table)
    if args.output:
        atomic_write_text(args.output, table, "-o")
    return 0
