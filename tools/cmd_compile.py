"""``shrinkc compile MODEL [--passes P] [--backend B] [--target T] [--tune-trials N]
[--tune-budget 5m] -o DIR``:
compile a model into a deployable directory that ``shrinkc.load_compiled(DIR)`` loads.

The model goes through the pass pipeline (if any), is compiled for the backend and checked
against the original on a random input of ``--input-shape``; the report (backend and why,
pipeline, params, MACs, size, error, compile/tune times) is printed.

Backends: ``tvm`` (a target: preset ``host``, ``x86-avx2``, ``x86-avx512``, ``aarch64``, or
a TVM target dict as JSON), ``onnxruntime``, ``torch``. Without ``--backend`` shrinkc picks
TVM when ``--target`` is given; when tuning is asked (``--tune-trials``, ``--tune-budget``) or
the tuning database already covers the model, it builds tuned TVM and onnxruntime, times
both on the check input and keeps the faster (the report names both medians); else
onnxruntime (untuned TVM is only built and timed when tuning is asked).
"""

from __future__ import annotations

import argparse
import json

from .load import (
    CALIBRATION_HELP,
    TARGET_HELP,
    load_calibration,
    load_model,
    parse_shape,
    parse_target,
)


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a model for TVM, onnxruntime or torch",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help="zoo:NAME, package.module:factory, FILE.shrk or FILE.onnx")
    p.add_argument("-o", "--output", metavar="DIR", help="write the compiled model into DIR")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                   help="pass pipeline run before compiling, e.g. 'fold-bn,dce'")
    p.add_argument("-b", "--backend", choices=("tvm", "onnxruntime", "torch"),
                   help="backend (default: picked, see above)")
    p.add_argument("-t", "--target", metavar="TARGET",
                   help=TARGET_HELP)
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials (TVM; default 0 = untuned, or the database's)")
    p.add_argument("--tune-budget", metavar="TIME",
                   help="time budget for tuning: 90s, 5m, 1h, 1h30m (TVM; with --tune-trials: "
                        "whichever comes first)")
    p.add_argument("--tuning-db", metavar="DIR", help="tuning database directory")
    p.add_argument("--keep-params", action="store_true",
                   help="TVM: weights beside the library (params.safetensors), not inside it")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32")
    p.add_argument("--calibration", metavar="FILE.npz|zoo-data:NAME", help=CALIBRATION_HELP)
    p.add_argument("--calibration-samples", type=int, default=256, metavar="N",
                   help="how many zoo-data images to calibrate with (default 256)")
    p.add_argument("--calibration-batch-size", type=int, metavar="N",
                   help="calibration batch size (default: 32 for a model that runs at "
                        "any batch, else its input batch)")
    p.add_argument("--seed", type=int, default=0, help="seed for passes and the check input")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import shrinkc

    from ..ir.files import check_output_dir

    if args.output:  # before the work: a compile can take minutes
        check_output_dir(args.output, "-o")
    if args.tune_trials < 0:
        raise ValueError(f"--tune-trials {args.tune_trials}: must be >= 0")
    from ..backends.tvm.budget import parse_budget

    budget_s = parse_budget(args.tune_budget, "--tune-budget")
    target = parse_target(args.target)
    from .progress import Status

    with Status(f"compile {args.model}", quiet=getattr(args, "quiet", False)) as status:
        status("loading the model")
        graph = load_model(args.model, parse_shape(args.input_shape), seed=args.seed)
        calibration = (load_calibration(args.calibration, graph, args.calibration_samples,
                                        args.calibration_batch_size)
                       if args.calibration else None)
        cm = shrinkc.compile(graph, None, passes=args.passes or None, backend=args.backend,
                             target=target, tune_trials=args.tune_trials, tune_budget=budget_s,
                             tuning_db=args.tuning_db, keep_params=args.keep_params,
                             seed=args.seed, calibration=calibration,
                             progress=status if status.bar is not None else None)
        if args.output:
            status("save")
            out = cm.save(args.output)
    report = cm.report()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1, default=str))
    else:
        print(report)
        if args.output:
            print(f"saved      {out} (shrinkc.load_compiled({str(out)!r}))")
    return 0
