"""``tune``: MetaSchedule's search over a Relax module's workloads, into the database.

Works on a Relax ``tvm.IRModule``; knows nothing about shrinkc's IR, passes or CLI. The
budget is the module's (see ``tune``), the design space MetaSchedule's generic LLVM rules
(``space``), the builder and measuring runner the session-long workers of ``workers.py``
(or an RPC runner, ``rpc.py``), the records the database of ``database.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import tvm

from ..pipeline import default_prepack, prepare
from ..targets import tvm_target
from ..x86_int8 import schedule_rules
from .database import (
    db_lock,
    db_stats,
    default_db_dir,
    load_state,
    module_key,
    open_db,
    save_state,
    task_key,
)
from .rpc import RPCConfig, make_rpc_runner
from .workers import fast_tvm_imports, ms_classes

logger = logging.getLogger(__name__)


def _error_tail(err: str, limit: int = 1500) -> str:
    """A builder / runner error made readable: its first line and the end of the traceback
    (where the error is), at most ``limit`` characters."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and set(ln.strip()) != {"^"}]
    if len(lines) <= 2:
        return "\n".join(lines)[-limit:]
    tail = "\n".join(lines[-6:])
    return (lines[0] + "\n...\n" + tail)[-limit:]


@functools.cache
def progress_callback_class() -> type:
    """``ProgressCallback`` (a MetaSchedule measure callback, defined lazily)."""
    fast_tvm_imports()
    from tvm.ir.utils import derived_object  # pylint: disable=import-outside-toplevel
    from tvm.s_tir.meta_schedule.measure_callback import (  # pylint: disable=import-outside-toplevel
        PyMeasureCallback,
    )

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        """Counts measured / failed candidates per task and drives a progress bar."""

        def __init__(self, bar, names: list[str]):
            super().__init__()
            self.bar = bar
            self.names = names
            self.trials = [0] * len(names)
            self.build_errors = [0] * len(names)
            self.run_errors = [0] * len(names)
            self.error_samples: list[str] = []

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):  # fmt: skip
            n = len(measure_candidates)
            self.trials[task_id] += n
            for b, r in zip(builder_results, runner_results):
                err = None
                if b.error_msg is not None:
                    self.build_errors[task_id] += 1
                    err = str(b.error_msg)
                elif r.error_msg is not None or r.run_secs is None:
                    self.run_errors[task_id] += 1
                    err = str(r.error_msg)
                if err is not None and len(self.error_samples) < 5:
                    self.error_samples.append(f"[{self.names[task_id]}] {_error_tail(err)}")
            if self.bar is not None:
                self.bar.update(n)
                fails = sum(self.build_errors) + sum(self.run_errors)
                self.bar.set_postfix_str(f"{self.names[task_id][:24]} fail={fails}")
            logger.debug(
                "task %s: %d measured (%d build / %d run errors so far)",
                self.names[task_id],
                n,
                self.build_errors[task_id],
                self.run_errors[task_id],
            )

    return ProgressCallback


@dataclasses.dataclass
class TaskSummary:
    name: str
    weight: float
    flop: float  # per call (estimate_tir_flops)
    trials_before: int  # records already in the database for this workload
    new_trials: int
    build_errors: int
    run_errors: int
    best_ms: float | None  # best measured latency in the database after tuning
    status: str  # "tuned", "skipped" (already at its cap), "partial" (global budget ran out)

    @property
    def gflops(self) -> float | None:
        if not self.best_ms or not self.flop:
            return None
        return self.flop / (self.best_ms * 1e-3) / 1e9


@dataclasses.dataclass
class TuneResult:
    db_dir: Path
    log_dir: Path | None  # MetaSchedule's logs for this run (None: nothing was tuned)
    target: str
    new_trials: int
    build_errors: int
    run_errors: int
    seconds: float
    tasks: list[TaskSummary]
    error_samples: list[str] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.build_errors + self.run_errors

    def table(self) -> str:
        rows = [f"{'task':40s} {'w':>3s} {'MFLOP':>9s} {'before':>6s} {'new':>4s} "
                f"{'fail':>4s} {'best ms':>9s} {'GFLOP/s':>8s}  status"]  # fmt: skip
        for t in self.tasks:
            best = f"{t.best_ms:9.4f}" if t.best_ms is not None else f"{'-':>9s}"
            gf = f"{t.gflops:8.1f}" if t.gflops is not None else f"{'-':>8s}"
            rows.append(
                f"{t.name[:40]:40s} {t.weight:3.0f} {t.flop / 1e6:9.2f} {t.trials_before:6d} "
                f"{t.new_trials:4d} {t.build_errors + t.run_errors:4d} {best} {gf}  {t.status}"
            )
        return "\n".join(rows)


@contextlib.contextmanager
def _quiet_metaschedule_console() -> Iterator[None]:
    """MetaSchedule logs to files in the work dir; keep only its warnings on the console."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old = ms_logger.level
    # create_loggers() uses the level it finds as the console handler's level, then sets the
    # logger itself to DEBUG so that the files get everything.
    ms_logger.setLevel(logging.WARNING)
    # create_loggers() re-lists the logger's handlers *by name*: an unnamed one (e.g. pytest's
    # LogCaptureHandler) makes it crash. Take them off while MetaSchedule configures itself.
    unnamed = [h for h in ms_logger.handlers if not h.get_name()]
    for h in unnamed:
        ms_logger.removeHandler(h)
    try:
        yield
    finally:
        ms_logger.setLevel(old)
        for h in unnamed:
            ms_logger.addHandler(h)


def _make_runner(runner, evaluator_config, runner_timeout_sec, max_worker_uses,
                 threads: int | None = None):
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig  # noqa: PLC0415

    if evaluator_config is None:
        evaluator_config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100,
                                           enable_cpu_cache_flush=False)  # fmt: skip
    elif isinstance(evaluator_config, Mapping):
        evaluator_config = EvaluatorConfig(**evaluator_config)
    if runner is None or runner == "local":
        return ms_classes()["FastLocalRunner"](runner_timeout_sec, evaluator_config,
                                               max_worker_uses, threads)
    if isinstance(runner, RPCConfig):
        return make_rpc_runner(runner, evaluator_config)
    return runner  # a MetaSchedule Runner given by the caller


def _space(target: tvm.target.Target):
    """The design-space generator. For CPU targets: MetaSchedule's generic LLVM rules
    (``x86_int8.schedule_rules``: the int8 dot-product kernels get their own schedule,
    ``schedule_dot``, with sampled tiles), not the ones MetaSchedule picks from an AVX-512 /
    VNNI ``mcpu``: those tensorize u8×i8 blocks with TVM's ``dot_16x4_vnni``, which fails
    on weights that are not packed (see ``x86_int8``) and in TVM 0.27 every such candidate
    fails to build ("VectorizeLoop before LiftStorageAlloc"; measured: 7 of 11 int8
    ResNet-18 candidates)."""
    if target.kind.name != "llvm":
        return "post-order-apply"
    from tvm.s_tir.meta_schedule.space_generator import PostOrderApply  # noqa: PLC0415

    return PostOrderApply(sch_rules=schedule_rules(), postprocs="llvm", mutator_probs="llvm")


def _strategy(population_size: int | None):
    if population_size is None:
        return "evolutionary"
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch  # noqa: PLC0415

    pop = max(8, int(population_size))
    return EvolutionarySearch(population_size=pop, init_min_unmeasured=min(50, pop))


def tune(
    mod: tvm.IRModule,
    target: Any = None,
    *,
    total_trials: int,
    max_trials_per_task: int | None = None,
    db_dir: str | os.PathLike | None = None,
    progress: bool = True,
    runner: RPCConfig | Any = None,
    num_builders: int | None = None,
    builder_timeout_sec: float = 60.0,
    runner_timeout_sec: float = 30.0,
    evaluator_config: Any = None,
    num_trials_per_iter: int = 64,
    max_worker_uses: int | None = 256,
    op_names: list[str] | None = None,
    cpu_weight_prepack: bool | None = None,
    population_size: int | None = None,
    seed: int | None = None,
    layout: str | None = None,
) -> TuneResult:
    """Tune the TIR workloads of a Relax module with MetaSchedule into a persistent database.

    Two ways to budget, both idempotent (a second identical call does 0 new trials):

    - default (``max_trials_per_task=None``): ``total_trials`` is the *module's* budget.
      MetaSchedule's gradient-based task scheduler gives every task one round of
      ``min(num_trials_per_iter, total_trials / (2 * tasks))`` (at least 4) trials, then
      spends the rest on the tasks whose latency (× how often they run) falls fastest.
      Trials earlier calls spent on the same module (same workloads) count: a call with
      a larger budget tunes only the difference. (MetaSchedule checks the budget before
      each round, so the last round can overshoot it by less than one round.)
    - ``max_trials_per_task=N``: ``total_trials`` is this call's budget of new trials,
      spread evenly; each workload is tuned up to N records over the database's history (a
      task that has them, or that an earlier call tuned to this cap until its search
      space ran out, is skipped).
    - ``runner``: ``None``/"local" (measure here), an :class:`RPCConfig`, or a MetaSchedule
      ``Runner``.
    - ``layout``: data layout for ``conv2d`` (``backends.tvm.CONV_LAYOUTS``; default
      ``DEFAULT_CONV_LAYOUT``, NHWC). Compile with the same layout, or the records do not
      match the workloads.
    - ``population_size``: evolutionary search population (MetaSchedule's default 512;
      smaller is faster per round, useful for tests and small budgets).
    - MetaSchedule's logs go to ``<db_dir>/runs/<run>/logs/``; a summary to this module's
      logger (INFO) and a tqdm bar when ``progress``.
    """
    from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

    t_start = time.perf_counter()
    target = tvm_target(target)
    db_dir = Path(db_dir) if db_dir is not None else default_db_dir(target)
    imp = fast_tvm_imports()
    if imp:
        logger.info("imported MetaSchedule in %.1f s", imp)

    with db_lock(db_dir):
        if cpu_weight_prepack is None:
            cpu_weight_prepack = default_prepack(mod)
        prepared = prepare(mod, target, cpu_weight_prepack, layout)
        extracted = ms.relax_integration.extract_tasks(prepared, target)
        extracted = [t for t in extracted if not t.mod.attrs.get("tirx.is_scheduled", False)]
        if op_names:
            extracted = [t for t in extracted if any(o in t.task_name for o in op_names)]
        budget_mode = max_trials_per_task is None
        db = open_db(db_dir)
        state = load_state(db_dir)
        tasks_state = state.setdefault("tasks", {})
        modules_state = state.setdefault("modules", {})
        stats = db_stats(db, [t.dispatched[0] for t in extracted])
        task_keys = [task_key(t.dispatched[0]) for t in extracted]
        mkey = module_key(task_keys, cpu_weight_prepack)
        spent = int(modules_state.get(mkey, {}).get("trials", 0))
        if budget_mode:
            # The budget is the module's: MetaSchedule's gradient-based scheduler gives each
            # task one round, then spends the rest where the latency is. What earlier calls
            # spent on this module counts, so repeating a call tunes nothing.
            new_budget = max(0, total_trials - spent)
            cap = max(1, new_budget)
            num_trials_per_iter = min(cap, max(4, min(num_trials_per_iter,
                                                      new_budget // max(1, 2 * len(extracted)))))
        else:
            new_budget = total_trials
            cap = int(max_trials_per_task)
            num_trials_per_iter = max(1, min(num_trials_per_iter, cap))

        from tvm.s_tir.analysis import estimate_tir_flops  # noqa: PLC0415

        summaries: list[TaskSummary] = []
        todo: list[tuple[int, Any, int]] = []  # (summary index, task, remaining budget)
        for t, key, (before, _, _) in zip(extracted, task_keys, stats):
            tmod = t.dispatched[0]
            if budget_mode:
                remaining = cap if new_budget > 0 else 0
            else:
                done_to = int(tasks_state.get(key, {}).get("tuned_to", 0))
                remaining = 0 if done_to >= cap else max(0, cap - before)
            try:
                flop = float(estimate_tir_flops(tmod))
            except Exception:  # pylint: disable=broad-except
                flop = 0.0
            summaries.append(
                TaskSummary(t.task_name, float(t.weight), flop, before, 0, 0, 0, None,
                            "skipped" if remaining == 0 else "tuned")  # fmt: skip
            )
            if remaining > 0:
                todo.append((len(summaries) - 1, t, remaining))

        planned = min(new_budget, sum(r for _, _, r in todo))
        if budget_mode:
            logger.info(
                "tuning %d tasks for %s: %d new trials (module budget %d, %d spent before; "
                "%d per task in the first round) into %s",
                len(todo), target, planned, total_trials, spent, num_trials_per_iter, db_dir,
            )  # fmt: skip
        else:
            logger.info(
                "tuning %d/%d tasks for %s (%d trials planned, cap %d per task) into %s",
                len(todo), len(extracted), target, planned, cap, db_dir,
            )  # fmt: skip

        log_dir = None
        new_total = build_err = run_err = 0
        error_samples: list[str] = []
        if todo and planned > 0:
            stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
            work_dir = db_dir / "runs" / stamp
            log_dir = work_dir / "logs"
            builder = ms_classes()["PersistentBuilder"](
                num_builders or os.cpu_count() or 1, builder_timeout_sec, max_worker_uses
            )
            ms_runner = _make_runner(runner, evaluator_config, runner_timeout_sec,
                                     max_worker_uses, int(target.attrs["num-cores"]))
            bar = None
            if progress:
                from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

                bar = tqdm(total=planned, desc="tuning", unit="trial", leave=True)
            try:
                # Tasks with different remaining budgets are tuned in separate rounds
                # (MetaSchedule has one per-task cap per call).
                groups: dict[int, list] = {}
                for item in todo:
                    groups.setdefault(item[2], []).append(item)
                budget = planned
                for remaining, items in sorted(groups.items(), reverse=True):
                    if budget <= 0:
                        break
                    g_budget = min(budget, remaining * len(items))
                    names = [it[1].task_name for it in items]
                    cb = progress_callback_class()(bar, names)
                    with _quiet_metaschedule_console():
                        # creates MetaSchedule's file loggers (console level = current level)
                        contexts, weights = (
                            ms.relax_integration.extracted_tasks_to_tune_contexts(
                                [it[1] for it in items], str(work_dir), seed=seed,
                                space=_space(target), strategy=_strategy(population_size),
                            )
                        )
                        ms.tune.tune_tasks(
                            tasks=contexts,
                            task_weights=weights,
                            work_dir=str(work_dir),
                            max_trials_global=g_budget,
                            max_trials_per_task=remaining,
                            num_trials_per_iter=num_trials_per_iter,
                            builder=builder,
                            runner=ms_runner,
                            database=db,
                            measure_callbacks=[
                                *ms.MeasureCallback.create("default"),
                                cb,
                            ],
                            cost_model=ms.CostModel.create(
                                "xgb", num_tuning_cores=os.cpu_count() or 1
                            ),
                        )
                    for (idx, task, rem), n, be, re_ in zip(
                        items, cb.trials, cb.build_errors, cb.run_errors
                    ):
                        s = summaries[idx]
                        s.new_trials, s.build_errors, s.run_errors = n, be, re_
                        # reached its budget, or the search ran out of new candidates
                        # before the global budget did: it is done at this cap.
                        exhausted = n >= rem or sum(cb.trials) < g_budget
                        if budget_mode:
                            continue
                        if not exhausted:
                            s.status = "partial"
                        key = task_key(task.dispatched[0])
                        prev = tasks_state.get(key, {})
                        tasks_state[key] = {
                            "name": s.name,
                            "tuned_to": max(int(prev.get("tuned_to", 0)),
                                            cap if exhausted else 0),  # fmt: skip
                            "target": str(target),
                        }
                    budget -= sum(cb.trials)
                    new_total += sum(cb.trials)
                    modules_state[mkey] = {"trials": spent + new_total,
                                           "tasks": len(extracted)}
                    build_err += sum(cb.build_errors)
                    run_err += sum(cb.run_errors)
                    error_samples += cb.error_samples
            finally:
                if bar is not None:
                    bar.close()
                builder.shutdown()
                if hasattr(ms_runner, "shutdown"):
                    ms_runner.shutdown()
                save_state(db_dir, state)

        # best latency per task after tuning
        db = open_db(db_dir)
        for s, (_, _, best) in zip(summaries, db_stats(db, [t.dispatched[0] for t in extracted])):
            s.best_ms = best * 1e3 if best is not None else None

    result = TuneResult(
        db_dir=db_dir,
        log_dir=log_dir,
        target=str(target),
        new_trials=new_total,
        build_errors=build_err,
        run_errors=run_err,
        seconds=time.perf_counter() - t_start,
        tasks=summaries,
        error_samples=error_samples,
    )
    logger.info(
        "tuned %d new trials in %.1f s (%d build / %d run failures)\n%s",
        new_total, result.seconds, build_err, run_err, result.table(),
    )  # fmt: skip
    if result.failures:
        logger.warning(
            "%d of %d candidates failed; first errors:\n%s",
            result.failures, new_total, "\n".join(error_samples[:3]),
        )  # fmt: skip
    return result


__all__ = ["TaskSummary", "TuneResult", "tune"]
