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
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import tvm

from ..budget import format_budget, parse_budget
from ..pipeline import default_prepack, prepare
from ..targets import tvm_target
from ..x86_int8 import default_schedule, schedule_rules
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
from .workers import builder_pool, fast_tvm_imports, ms_classes, prestart, runner_pool

logger = logging.getLogger(__name__)


def _error_tail(err: str, limit: int = 1500) -> str:
    """A builder / runner error made readable: its first line and the end of the traceback
    (where the error is), at most ``limit`` characters."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and set(ln.strip()) != {"^"}]
    if len(lines) <= 2:
        return "\n".join(lines)[-limit:]
    tail = "\n".join(lines[-6:])
    return (lines[0] + "\n...\n" + tail)[-limit:]


#: The timeline of a tuning run, in its MetaSchedule log folder (``TuneResult.timeline``).
TIMELINE_FILE = "shrinkc_tuning.log"
#: "No trial limit" (a time budget alone): MetaSchedule takes C ints.
UNBOUNDED_TRIALS = 1 << 30
#: With a time budget alone, rounds of at most this many trials per task, so that every
#: task is measured early in the budget (with a trial count: the count decides the round).
#: Not smaller: generating a round costs about the same whatever its size (evolutionary
#: search over its population; measured 6-30 s per round for ResNet-18's convolutions with
#: the default population on 2 loaded cores, against 5-6 s to build and measure 16
#: candidates), so small rounds waste the budget.
TIME_ONLY_ROUND = 16


def estimate_ms(weights: list[float], best_s: list[float | None]) -> tuple[float, int]:
    """(the model's latency estimate in ms: sum of weight × best seconds over the tasks with
    a measurement, the number of tasks without one)."""
    known = [(w, b) for w, b in zip(weights, best_s) if b is not None]
    return sum(w * b for w, b in known) * 1e3, len(best_s) - len(known)


class TuningProgress:
    """What a tuning run reports while it runs: trials, the best latency per task (from the
    database, then from this run's measurements), the model's latency estimate
    (sum over tasks of weight × best), the times to the first built candidate and the
    first measured trial, and a timeline (``<log_dir>/shrinkc_tuning.log``, one line per
    event, seconds since the call; events before the log folder exists are written when it
    is set). With ``deadline`` (a ``time.perf_counter()`` value) ``time_is_up`` turns true
    once it has passed: the run's search strategies then stop generating candidates
    (``run_strategy_class``), so MetaSchedule ends every task and keeps the batches
    already measured.

    The bar (a tqdm) counts candidates: from the local builder's and runner's hooks as they
    happen (``live_counts``; the strategy says which task the batch is of, ``current``, so
    each measurement updates that task's best at once), else per measured batch (the
    measure callback, which MetaSchedule calls only when it joins a task: after the whole
    first round); its postfix shows the estimate."""

    def __init__(self, t_start: float, names: list[str] = (), weights: list[float] = (),
                 best_s: list[float | None] = (), bar: Any = None,
                 deadline: float | None = None):
        self.t_start = t_start
        self.set_tasks(names, weights, best_s)
        self.bar = bar
        self.deadline = deadline
        self.live_counts = False  # True: the builder / runner hooks count the bar
        self.current: int | None = None  # the task whose batch is being built and measured
        self.first_build_s: float | None = None
        self.first_trial_s: float | None = None
        self.timed_out = False
        self.fails = 0
        self.events: list[tuple[float, str]] = []
        self.log_file: Path | None = None
        self.closed = False
        self._lock = threading.RLock()

    def set_tasks(self, names: list[str], weights: list[float],
                  best_s: list[float | None]) -> None:
        """The run's tasks (known once they are extracted): names, weights, best seconds."""
        self.names, self.weights, self.best_s = list(names), list(weights), list(best_s)

    def index_of(self, name: str) -> int | None:
        """The index of the task named ``name`` (None unless exactly one has the name)."""
        found = [i for i, n in enumerate(self.names) if n == name]
        return found[0] if len(found) == 1 else None

    def now(self) -> float:
        return time.perf_counter() - self.t_start

    def event(self, text: str) -> None:
        with self._lock:
            if self.closed:
                return
            t = self.now()
            self.events.append((t, text))
            logger.debug("tuning +%.1f s: %s", t, text)
            if self.log_file is not None:
                with open(self.log_file, "a", encoding="utf-8") as fh:
                    fh.write(_timeline_line(t, text))

    def set_log_file(self, path: Path) -> None:
        """Write the timeline to ``path`` from now on (the events so far first)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            path.write_text("".join(_timeline_line(t, e) for t, e in self.events),
                            encoding="utf-8")
            self.log_file = path

    def close(self) -> None:
        """No more events (a prestart thread that finishes later writes nothing)."""
        with self._lock:
            self.closed = True

    def model_ms(self) -> tuple[float, int]:
        """(estimated model latency in ms over the tasks with a measurement, tasks without)."""
        return estimate_ms(self.weights, self.best_s)

    def estimate_text(self) -> str:
        ms_, unknown = self.model_ms()
        if unknown == len(self.best_s):
            return "model ≈ ? ms (no task measured yet)"
        return f"model ≈ {ms_:.3f} ms" + (f" (+{unknown} tasks unmeasured)" if unknown else "")

    def seconds_left(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.perf_counter())

    def _refresh(self) -> None:
        if self.bar is None:
            return
        left = self.seconds_left()
        left_text = f", {int(left) // 60}:{int(left) % 60:02d} left" if left is not None else ""
        self.bar.set_postfix_str(f"{self.estimate_text()}{left_text}, fail={self.fails}")

    # hooks of the local builder / runner (workers.py), called as candidates come back
    def built(self, ok: int, failed: int) -> None:
        with self._lock:
            if ok and self.first_build_s is None:
                self.first_build_s = self.now()
                self.event("first candidate built")
            if self.live_counts and failed:
                self.fails += failed
                if self.bar is not None:
                    self.bar.update(failed)
                    self._refresh()

    def candidate_measured(self, ok: bool, sec: float | None = None) -> None:
        with self._lock:
            if ok and self.first_trial_s is None:
                self.first_trial_s = self.now()
                self.event("first measured trial")
            i = self.current
            if sec is not None and i is not None and (self.best_s[i] is None
                                                      or sec < self.best_s[i]):
                self.best_s[i] = sec
            if self.live_counts:
                self.fails += 0 if ok else 1
                if self.bar is not None:
                    self.bar.update(1)
                    self._refresh()

    # the measure callback, once per measured batch of one task: its candidates' mean
    # seconds (the ones that ran), how many it had, how many failed
    def measured(self, index: int, secs: list[float], n: int, fails: int) -> None:
        with self._lock:
            if secs and self.first_trial_s is None:
                self.first_trial_s = self.now()
                self.event(f"first measured trial ({self.names[index]})")
            for sec in secs:
                if self.best_s[index] is None or sec < self.best_s[index]:
                    self.best_s[index] = sec
            if not self.live_counts:
                self.fails += fails
                if self.bar is not None:
                    self.bar.update(n)
            self._refresh()

    def time_is_up(self) -> bool:
        """True once the deadline has passed (the first time: an event says so)."""
        if self.timed_out:
            return True
        if self.deadline is None or time.perf_counter() < self.deadline:
            return False
        with self._lock:
            if not self.timed_out:
                self.timed_out = True
                self.event("time budget reached: no new candidates, the batches in flight "
                           "finish")
        return True


def _timeline_line(t: float, text: str) -> str:
    return f"{t:9.2f} s  {text}\n"


@functools.cache
def run_strategy_class() -> type:
    """``RunSearch`` (a MetaSchedule search strategy, defined lazily): another strategy
    (``inner``) that tells the run's progress which task each batch is of, and generates no
    more candidates once the run's time is up.

    Why the deadline is here and not in the measure callback: MetaSchedule's task scheduler
    may not see a task terminated under it (it checks ``!is_terminated`` on the task it has
    just joined and picked, and terminates what it joins at the end); a strategy that
    returns no candidates is how a task normally ends, so the scheduler ends each task as
    it comes to it, and keeps every batch already measured."""
    fast_tvm_imports()
    from tvm.ir.utils import derived_object  # pylint: disable=import-outside-toplevel
    from tvm.s_tir.meta_schedule.search_strategy import (  # pylint: disable=import-outside-toplevel
        PySearchStrategy,
    )

    @derived_object
    class RunSearch(PySearchStrategy):
        """``inner``, until ``progress.time_is_up()``."""

        def __init__(self, inner: Any, progress: TuningProgress):
            super().__init__()
            self.inner = inner
            self.progress = progress
            self.index: int | None = None  # the task (set when MetaSchedule initialises it)

        def _initialize_with_tune_context(self, context) -> None:
            self.index = self.progress.index_of(str(context.task_name))
            self.inner._initialize_with_tune_context(context)  # pylint: disable=protected-access

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None,
                       cost_model=None) -> None:  # fmt: skip
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database,
                                  cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            if self.progress.time_is_up():
                return None
            candidates = self.inner.generate_measure_candidates()
            # MetaSchedule builds and measures this batch before it asks any other task
            self.progress.current = self.index if candidates is not None else None
            return candidates

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return RunSearch(self.inner.clone(), self.progress)

    return RunSearch


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
        """Counts measured / failed candidates per task of one ``tune_tasks`` call and
        reports them to the run's ``TuningProgress`` (``index``: this call's task ids →
        the run's)."""

        def __init__(self, progress: TuningProgress, index: list[int]):
            super().__init__()
            self.progress = progress
            self.index = index
            self.names = [progress.names[i] for i in index]
            self.trials = [0] * len(index)
            self.build_errors = [0] * len(index)
            self.run_errors = [0] * len(index)
            self.error_samples: list[str] = []

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):  # fmt: skip
            n = len(measure_candidates)
            self.trials[task_id] += n
            secs = []
            for b, r in zip(builder_results, runner_results):
                err = None
                if b.error_msg is not None:
                    self.build_errors[task_id] += 1
                    err = str(b.error_msg)
                elif r.error_msg is not None or r.run_secs is None:
                    self.run_errors[task_id] += 1
                    err = str(r.error_msg)
                else:
                    run = [float(x) for x in r.run_secs]
                    secs.append(sum(run) / len(run))
                if err is not None and len(self.error_samples) < 5:
                    self.error_samples.append(f"[{self.names[task_id]}] {_error_tail(err)}")
            self.progress.measured(self.index[task_id], secs, n, n - len(secs))
            logger.debug("task %s: %d measured (%d build / %d run errors so far)",
                         self.names[task_id], n, self.build_errors[task_id],
                         self.run_errors[task_id])

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
    status: str  # "tuned", "skipped" (already at its cap), "partial" (the trials or time ran out)

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
    #: why the run stopped: "trials" (the budget of trials is spent), "time budget",
    #: "search space" (MetaSchedule ran out of new candidates), "nothing to tune"
    ended_by: str = "trials"
    budget_s: float | None = None  # the time budget asked for
    first_build_s: float | None = None  # seconds from the call to the first built candidate
    first_trial_s: float | None = None  # ... to the first measured trial (None: none)
    timeline: Path | None = None  # <log_dir>/shrinkc_tuning.log (None: nothing was tuned)

    @property
    def failures(self) -> int:
        return self.build_errors + self.run_errors

    @property
    def model_ms(self) -> float | None:
        """The model's latency estimate after tuning: sum over its tasks of weight × best
        measured latency in the database (None when a task has no measurement)."""
        total, unknown = estimate_ms([t.weight for t in self.tasks],
                                     [t.best_ms / 1e3 if t.best_ms is not None else None
                                      for t in self.tasks])  # fmt: skip
        return None if unknown or not self.tasks else total

    def summary(self) -> str:
        """One line: trials, time, why it ended, first-trial time, model estimate."""
        parts = [f"{self.new_trials} new trials in {self.seconds:.1f} s (ended by "
                 f"{self.ended_by})"]
        if self.first_trial_s is not None:
            parts.append(f"first trial after {self.first_trial_s:.1f} s")
        est = self.model_ms
        if est is not None:
            parts.append(f"model ≈ {est:.3f} ms (sum of weight × best over "
                         f"{len(self.tasks)} tasks)")
        elif self.tasks:
            part, missing = estimate_ms([t.weight for t in self.tasks],
                                        [t.best_ms / 1e3 if t.best_ms is not None else None
                                         for t in self.tasks])  # fmt: skip
            parts.append(f"model estimate unknown: {missing} of {len(self.tasks)} tasks "
                         f"unmeasured" + (f" (≈ {part:.3f} ms over the other "
                                          f"{len(self.tasks) - missing})"
                                          if missing < len(self.tasks) else ""))
        return "; ".join(parts)

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
                 threads: int | None = None, on_measured: Any = None):
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig  # noqa: PLC0415

    if evaluator_config is None:
        evaluator_config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100,
                                           enable_cpu_cache_flush=False)  # fmt: skip
    elif isinstance(evaluator_config, Mapping):
        evaluator_config = EvaluatorConfig(**evaluator_config)
    if runner is None or runner == "local":
        return ms_classes()["FastLocalRunner"](runner_timeout_sec, evaluator_config,
                                               max_worker_uses, threads, on_measured)
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


def _seed_defaults(tasks: list, db: Any, builder: Any, runner: Any, target: Any,
                   done: dict, prog: TuningProgress) -> int:
    """Measure the untuned default schedule (``x86_int8.default_schedule``) of every kernel
    task in ``tasks`` that has none in the database yet (``done``: the state's record of
    what was seeded) and commit it as a tuning record: the search starts from it (the
    evolutionary search's first population takes the database's best), and compiling
    picks the faster of it and every sampled candidate, measured alike, so a tuned build is
    never slower per task than an untuned one by the measurement. Returns how many."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    seeds = []
    for task in tasks:
        tmod = task.dispatched[0]
        key = task_key(tmod)
        if key in done:
            continue
        sch = default_schedule(tmod["main"])
        if sch is not None:
            seeds.append((key, tmod, sch))
    if not seeds:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch in seeds])
    todo = []  # (seed, artifact, args) of what built; a failure is not retried next call
    for (key, tmod, sch), b in zip(seeds, built):
        done[key] = True
        if b.error_msg is not None:
            logger.debug("default schedule failed to build: %s", _error_tail(b.error_msg))
        else:
            todo.append(((key, tmod, sch), b.artifact_path,
                         ms.arg_info.ArgInfo.from_prim_func(tmod["main"])))
    device = "cpu" if target.kind.name == "llvm" else target.kind.name
    futures = runner.run([ms.runner.RunnerInput(path, device, a) for _, path, a in todo])
    n = 0
    for ((_, tmod, sch), _, a), fut in zip(todo, futures):
        res = fut.result()
        if res.error_msg is not None or not res.run_secs:
            logger.debug("default schedule failed to run: %s", _error_tail(res.error_msg or ""))
            continue
        db.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, db.commit_workload(tmod), [float(x) for x in res.run_secs], target, a))
        n += 1
    prog.event(f"default schedules measured: {n} of {len(seeds)} kernel tasks")
    return n


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
    total_trials: int | None = None,
    budget: str | float | None = None,
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

    Two ways to count trials, both idempotent (a second identical call does 0 new trials):

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

    And a time budget: ``budget`` (``"90s"``, ``"5m"``, ``"1h30m"`` or seconds;
    ``parse_budget``), counted from the call (task extraction included). When it is up no
    new candidates are generated; the batches in flight are measured and kept, so a run
    ends within about one batch after it. With ``total_trials`` too, whichever comes first
    ends the run; alone, trials are unbounded and rounds have at most ``TIME_ONLY_ROUND``
    trials per task (every task measured early). ``TuneResult.ended_by`` says which.

    - ``runner``: ``None``/"local" (measure here), an :class:`RPCConfig`, or a MetaSchedule
      ``Runner``.
    - ``layout``: data layout for ``conv2d`` (``backends.tvm.CONV_LAYOUTS``; default
      ``DEFAULT_CONV_LAYOUT``, NHWC). Compile with the same layout, or the records do not
      match the workloads.
    - ``population_size``: evolutionary search population (MetaSchedule's default 512;
      smaller is faster per round, useful for tests and small budgets).
    - Workers: the build and measure workers are the process's (``workers.session_pool``),
      booted in the background while the tasks are extracted (``prestart``) and kept warm
      for the next call.
    - Reporting: MetaSchedule's logs go to ``<db_dir>/runs/<run>/logs/``, beside them the
      run's timeline (``shrinkc_tuning.log``: workers ready, tasks extracted, first built
      candidate, first measured trial, budget reached, done; seconds since the call); a
      summary to this module's logger (INFO), and with ``progress`` a tqdm bar whose
      postfix is the model's latency estimate (sum of weight × best per task).
    """
    from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

    t_start = time.perf_counter()
    budget_s = parse_budget(budget, "budget")
    if total_trials is None and budget_s is None:
        raise ValueError("tune needs total_trials (a number of trials), budget (a time such "
                         "as '5m'), or both")
    if total_trials is not None and total_trials < 0:
        raise ValueError(f"total_trials {total_trials}: must be >= 0")
    deadline = t_start + budget_s if budget_s is not None else None
    target = tvm_target(target)
    db_dir = Path(db_dir) if db_dir is not None else default_db_dir(target)
    imp = fast_tvm_imports()
    if imp:
        logger.info("imported MetaSchedule in %.1f s", imp)
    prog = TuningProgress(t_start, deadline=deadline)
    prog.event("MetaSchedule ready" + (f" (imported in {imp:.1f} s)" if imp else "")
               + (f"; time budget {format_budget(budget_s)}" if budget_s is not None else ""))

    # The workers boot (a few CPU-seconds each) while the tasks are extracted; a pool kept
    # from an earlier call in this process is ready at once.
    local = runner is None or runner == "local"
    threads = int(target.attrs["num-cores"])
    pools = {"build": builder_pool(num_builders or os.cpu_count() or 1, builder_timeout_sec,
                                   max_worker_uses)}
    if local:
        pools["measure"] = runner_pool(runner_timeout_sec, max_worker_uses, threads)
    for kind, pool in pools.items():
        n = pool.shrinkc_workers
        prestart(pool, lambda already, kind=kind, n=n: prog.event(
            f"{n} {kind} worker(s) " + ("warm from an earlier call" if already else "booted")))

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
        trials = UNBOUNDED_TRIALS + spent if total_trials is None else total_trials
        if budget_mode:
            # The budget is the module's: MetaSchedule's gradient-based scheduler gives each
            # task one round, then spends the rest where the latency is. What earlier calls
            # spent on this module counts, so repeating a call tunes nothing.
            new_budget = max(0, trials - spent)
            cap = max(1, new_budget)
            num_trials_per_iter = min(cap, max(4, min(num_trials_per_iter,
                                                      new_budget // max(1, 2 * len(extracted)))))
        else:
            new_budget = trials if total_trials is not None else UNBOUNDED_TRIALS
            cap = int(max_trials_per_task)
            num_trials_per_iter = max(1, min(num_trials_per_iter, cap))
        if total_trials is None:
            num_trials_per_iter = min(num_trials_per_iter, TIME_ONLY_ROUND)

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
        shown_total = "unbounded" if total_trials is None else str(total_trials)
        if budget_mode:
            logger.info(
                "tuning %d tasks for %s: %s new trials (module budget %s, %d spent before; "
                "%d per task in the first round%s) into %s",
                len(todo), target, planned if total_trials is not None else "unbounded",
                shown_total, spent, num_trials_per_iter,
                f"; time budget {format_budget(budget_s)}" if budget_s is not None else "",
                db_dir,
            )  # fmt: skip
        else:
            logger.info(
                "tuning %d/%d tasks for %s (%s trials planned, cap %d per task) into %s",
                len(todo), len(extracted), target,
                planned if total_trials is not None else "unbounded", cap, db_dir,
            )  # fmt: skip

        prog.set_tasks([s.name for s in summaries], [s.weight for s in summaries],
                       [st[2] for st in stats])
        prog.event(f"tasks extracted: {len(extracted)} tasks, {len(todo)} to tune "
                   f"({prog.estimate_text()} from the database)")

        log_dir = None
        new_total = build_err = run_err = 0
        error_samples: list[str] = []
        search_ran_out = False
        if todo and planned > 0 and prog.time_is_up():
            logger.warning("the time budget (%s) ran out before the search started",
                           format_budget(budget_s))
        elif todo and planned > 0:
            stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
            work_dir = db_dir / "runs" / stamp
            log_dir = work_dir / "logs"
            prog.set_log_file(log_dir / TIMELINE_FILE)
            bar = None
            if progress:
                from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

                bar = tqdm(total=planned if total_trials is not None else None, desc="tuning",
                           unit="trial", leave=True)
                prog.bar = bar
            builder = ms_classes()["PersistentBuilder"](
                num_builders or os.cpu_count() or 1, builder_timeout_sec, max_worker_uses,
                prog.built,
            )
            ms_runner = _make_runner(runner, evaluator_config, runner_timeout_sec,
                                     max_worker_uses, threads, prog.candidate_measured)
            prog.live_counts = local
            try:
                _seed_defaults([it[1] for it in todo], db, builder, ms_runner, target,
                               state.setdefault("defaults", {}), prog)
                # Tasks with different remaining budgets are tuned in separate rounds
                # (MetaSchedule has one per-task cap per call).
                groups: dict[int, list] = {}
                for item in todo:
                    groups.setdefault(item[2], []).append(item)
                left = planned
                for remaining, items in sorted(groups.items(), reverse=True):
                    if left <= 0 or prog.time_is_up():
                        break
                    g_budget = min(left, remaining * len(items))
                    cb = progress_callback_class()(prog, [it[0] for it in items])
                    strategy = _strategy(population_size)
                    if isinstance(strategy, str):
                        strategy = ms.SearchStrategy.create(strategy)
                    strategy = run_strategy_class()(strategy, prog)
                    prog.event(f"search starts: {len(items)} tasks, {num_trials_per_iter} "
                               f"trials per task and round")
                    with _quiet_metaschedule_console():
                        # creates MetaSchedule's file loggers (console level = current level)
                        contexts, weights = (
                            ms.relax_integration.extracted_tasks_to_tune_contexts(
                                [it[1] for it in items], str(work_dir), seed=seed,
                                space=_space(target), strategy=strategy,
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
                    # the search ran out of new candidates before the trials (or the time) did
                    ran_out = sum(cb.trials) < g_budget and not prog.timed_out
                    search_ran_out = search_ran_out or ran_out
                    for (idx, task, rem), n, be, re_ in zip(
                        items, cb.trials, cb.build_errors, cb.run_errors
                    ):
                        s = summaries[idx]
                        s.new_trials, s.build_errors, s.run_errors = n, be, re_
                        # reached its budget, or the search ran out of new candidates: it
                        # is done at this cap (not when the time budget stopped it).
                        exhausted = n >= rem or ran_out
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
                    left -= sum(cb.trials)
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
        # the tasks the time budget never reached
        if prog.timed_out:
            for s in summaries:
                if s.status == "tuned" and s.new_trials == 0:
                    s.status = "partial"

        # best latency per task after tuning
        db = open_db(db_dir)
        for s, (_, _, best) in zip(summaries, db_stats(db, [t.dispatched[0] for t in extracted])):
            s.best_ms = best * 1e3 if best is not None else None

    if not todo or planned <= 0:
        ended_by = "nothing to tune"
    elif prog.timed_out:
        ended_by = "time budget"
    elif search_ran_out:
        ended_by = "search space"
    else:
        ended_by = "trials"
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
        ended_by=ended_by,
        budget_s=budget_s,
        first_build_s=prog.first_build_s,
        first_trial_s=prog.first_trial_s,
        timeline=prog.log_file,
    )
    prog.event(f"done: {result.summary()}")
    prog.close()
    logger.info("tuned: %s\n%s", result.summary(), result.table())
    if result.failures:
        logger.warning(
            "%d of %d candidates failed; first errors:\n%s",
            result.failures, new_total, "\n".join(error_samples[:3]),
        )  # fmt: skip
    return result


__all__ = ["TIMELINE_FILE", "TaskSummary", "TuneResult", "TuningProgress", "estimate_ms", "tune"]
