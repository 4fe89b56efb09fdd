"""``shrinkc tune MODEL [--passes P] [--target T] [--trials N] [--budget 5m] [--tuning-db DIR]``:
tune a model's TVM workloads ahead of time with MetaSchedule, into the persistent tuning
database.

A later ``shrinkc compile MODEL --backend tvm`` with the same ``--passes``, ``--input-shape``
and ``--target`` (and ``--tuning-db``, if one was given here) applies the database without new
trials. Tuning is incremental, and running the same command twice does no new trials the
second time: ``--trials`` is the model's budget, and trials spent on the same workloads by
earlier runs count against it (``--trials 1000`` after ``--trials 600`` does 400 more).
MetaSchedule's gradient-based scheduler gives each task one round, then spends the budget
where the latency is. With ``--max-trials-per-task N`` the budget is instead this run's, spread
evenly, each task capped at N measurements over the database's history.

``--budget 5m`` (90s, 5m, 1h, 1h30m) is a time budget, counted from the start: no new
candidates after it, the batches in flight finish. Alone it tunes for that long; with
``--trials`` the first of the two ends the run. The progress bar shows the model's latency
estimate (sum over tasks of weight x best latency) and the time left; the summary says what
ended the run, when the first trial was measured, and the run's timeline file
(``shrinkc_tuning.log`` beside MetaSchedule's logs).

Convolutions are tuned in NHWC with weight prepacking (MetaSchedule picks each weight
layout, folded into the constants when compiling), as ``shrinkc compile`` builds them.

Measurement happens on this machine, or, with ``--rpc-tracker HOST:PORT --rpc-key KEY``, on
the RPC servers registered to that tracker under KEY (``python -m tvm.exec.rpc_tracker``,
``python -m tvm.exec.rpc_server --tracker=HOST:PORT --key=KEY``); ``--target`` should then
describe the remote device.
"""

from __future__ import annotations

import argparse
import json
import socket

from .load import TARGET_HELP, load_model, parse_shape, parse_target
from .progress import enabled as progress_enabled


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="tune a model for TVM ahead of time (MetaSchedule)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help="zoo:NAME, package.module:factory, FILE.shrk or FILE.onnx")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                   help="pass pipeline run before tuning (use the same one to compile)")
    p.add_argument("-t", "--target", metavar="TARGET",
                   help=TARGET_HELP)
    p.add_argument("-n", "--trials", type=int, metavar="N",
                   help="MetaSchedule trials for this model, counting earlier runs' (default 64, "
                        "none with --budget alone)")
    p.add_argument("--budget", metavar="TIME",
                   help="time budget: 90s, 5m, 1h, 1h30m (with --trials: whichever comes first)")
    p.add_argument("--max-trials-per-task", type=int, metavar="N",
                   help="instead: N new trials for this run, each task capped at N over the "
                        "database's history")
    p.add_argument("--tuning-db", metavar="DIR",
                   help="tuning database directory (default: per target, under the user cache)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure on RPC servers registered to this tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="device key of the RPC servers")
    p.add_argument("--population", type=int, metavar="N",
                   help="evolutionary search population (MetaSchedule default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed for passes and the search")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (as -q; there is none when stderr is not a terminal)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def parse_tracker(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--rpc-tracker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    if host.startswith("[") and host.endswith("]"):  # [::1]:9190
        host = host[1:-1]
    return host, int(port)


def _rpc_config(args):
    if not args.rpc_tracker and not args.rpc_key:
        return None
    host, port = parse_tracker(args.rpc_tracker)
    try:
        with socket.create_connection((host, port), timeout=3.0):
            pass
    except OSError as e:
        raise ValueError(f"--rpc-tracker {args.rpc_tracker}: cannot connect to the tracker "
                         f"({e.strerror or e})") from None
    from ..backends.tvm.tuning import RPCConfig

    cfg = RPCConfig(host, port, args.rpc_key)
    n = cfg.count_servers()
    if n == 0:
        raise ValueError(f"--rpc-tracker {args.rpc_tracker}: no RPC server registered under key "
                         f"{args.rpc_key!r}")
    return cfg


def _check_args(args) -> float | None:
    """Checks the options (before the slow imports); returns the time budget in seconds."""
    from ..backends.tvm.budget import parse_budget

    budget_s = parse_budget(args.budget, "--budget")
    if args.trials is None and budget_s is None:
        args.trials = 64
    if args.trials is not None and args.trials < 0:
        raise ValueError(f"--trials {args.trials}: must be >= 0")
    if args.max_trials_per_task is not None and args.max_trials_per_task < 1:
        raise ValueError(f"--max-trials-per-task {args.max_trials_per_task}: must be >= 1")
    if args.population is not None and args.population < 2:
        raise ValueError(f"--population {args.population}: must be >= 2")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise ValueError("--rpc-tracker and --rpc-key go together")
    if args.rpc_tracker:
        parse_tracker(args.rpc_tracker)
    return budget_s


def run(args) -> int:
    budget_s = _check_args(args)  # before the (slow) TVM import and model load
    target = parse_target(args.target)

    from ..backends import tvm as btvm

    btvm.import_tvm()
    tgt = btvm.resolve_target(target)  # a bad target fails here, before loading the model
    tt = btvm.tuning_module()
    if tt is None:
        raise ValueError("tuning is not available (MetaSchedule's xgboost cost model does "
                         "not import)")
    runner = _rpc_config(args)

    graph = load_model(args.model, parse_shape(args.input_shape), seed=args.seed)
    if args.passes:
        from .. import optimize

        graph = optimize(graph, args.passes, seed=args.seed)
    lowered = btvm.lower(graph)  # what `shrinkc compile --backend tvm` tunes and builds
    from pathlib import Path

    db = Path(args.tuning_db) if args.tuning_db else Path(tt.default_db_dir(tgt))
    result = tt.tune(lowered.mod, tgt, total_trials=args.trials, budget=budget_s,
                     max_trials_per_task=args.max_trials_per_task, db_dir=db,
                     progress=not args.no_progress and progress_enabled(
                         getattr(args, "quiet", False)), runner=runner,
                     population_size=args.population, seed=args.seed)
    summary = tt.database_summary(db)
    if args.json:
        print(json.dumps({
            "model": args.model, "target": str(result.target), "db": str(result.db_dir),
            "new_trials": result.new_trials, "build_errors": result.build_errors,
            "run_errors": result.run_errors, "seconds": round(result.seconds, 2),
            "ended_by": result.ended_by, "budget_s": result.budget_s,
            "first_trial_s": result.first_trial_s, "model_estimate_ms": result.model_ms,
            "timeline": result.timeline,
            "tasks": [t.__dict__ if hasattr(t, "__dict__") else str(t) for t in result.tasks],
            "database": summary}, indent=1, default=str))
        return 0
    print(result.table())
    tuned = sum(1 for t in result.tasks if t.new_trials)
    print(f"\nnew trials {result.new_trials} on {tuned}/{len(result.tasks)} tasks in "
          f"{result.seconds:.1f} s (ended by {result.ended_by}); failures: "
          f"{result.build_errors} build, {result.run_errors} run")
    if result.first_trial_s is not None:
        print(f"first trial measured {result.first_trial_s:.1f} s after the start")
    est = result.model_ms
    missing = sum(t.best_ms is None for t in result.tasks)
    print("model      " + (f"≈ {est:.3f} ms estimated (sum over tasks of weight x best)"
                           if est is not None else
                           f"estimate unknown: {missing} of {len(result.tasks)} tasks unmeasured"))
    print(f"database   {result.db_dir}: {summary['workloads']} workloads, {summary['records']} "
          f"records ({summary['valid']} valid)")
    if result.log_dir:
        print(f"logs       {result.log_dir}")
    if result.timeline:
        print(f"timeline   {result.timeline}")
    if result.failures and result.error_samples:
        print(f"first error: {result.error_samples[0].strip().splitlines()[-1]}")
    hint = f" --tuning-db {args.tuning_db}" if args.tuning_db else ""
    print(f"next       shrinkc compile {args.model} --backend tvm"
          f"{' --passes ' + repr(args.passes) if args.passes else ''}"
          f"{' --target ' + repr(args.target) if args.target else ''}{hint}")
    return 0
