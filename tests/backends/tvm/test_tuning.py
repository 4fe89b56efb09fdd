"""backends/tvm/tuning/: workers, MetaSchedule tuning with a persistent database, RPC.

The tuning tests use a tiny Relax module (conv2d+relu, reshape, matmul on 1x16x16x16) and a
handful of trials; one tuning run is shared by several tests (module-scoped fixture).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import numpy as np
import pytest
import tvm
from tvm import relax

from shrinkc.backends import tvm as btvm
from shrinkc.backends.tvm import tuning as tt
from shrinkc.backends.tvm import x86_fp32
from suite import assert_close  # the suite's comparison policy

TRIALS_PER_TASK = 4
POPULATION = 32  # small evolutionary-search population: fast rounds


# ------------------------------------------------------------------------------ helpers


def tiny_module():
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype("float32")
    w2 = (rng.standard_normal((256, 16)) * 0.1).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 16, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=(1, 1)))
            r = bb.emit(relax.op.nn.relu(c))
            s = bb.emit(relax.op.reshape(r, (16, 256)))
            m = bb.emit(relax.op.matmul(s, relax.const(w2)))
            o = bb.emit_output(m)
        bb.emit_func_output(o)
    return bb.get(), w1, w2


def numpy_reference(x, w1, w2):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # 1,C,H,W,3,3
    conv = np.einsum("nchwij,ocij->nohw", win, w1)
    return np.maximum(conv, 0).reshape(16, 256) @ w2


def task_keys(db_dir) -> set[str]:
    db = tt.open_db(db_dir)
    return {tt.task_key(r.workload.mod) for r in db.get_all_tuning_records()}


def assert_no_failures_in_logs(log_dir) -> None:
    text = "".join(p.read_text() for p in log_dir.glob("*.log"))
    assert "Sending" in text, "MetaSchedule logs are empty"
    for bad in ("LocalBuilder: Timeout", "An exception occurred", "RPCRunner: Timeout",
                "LocalRunner: Timeout"):  # fmt: skip
        assert bad not in text, f"{bad!r} in MetaSchedule logs {log_dir}"
    # the task scheduler's table: "Sending N sample(s) to builder" == "Sending N valid ... runner"
    built = sum(map(int, re.findall(r"Sending (\d+) sample\(s\) to builder", text)))
    valid = sum(map(int, re.findall(r"Sending (\d+) valid sample\(s\) to runner", text)))
    assert built > 0 and built == valid


# ------------------------------------------------------------------------------ workers


def test_build_worker_is_torch_free_and_preimported():
    worker_cls, _ = tt.fast_pool_classes()
    w = worker_cls()
    try:
        w.send(eval, ("__import__('sys').modules.get('torch', 'absent')",))
        assert w.recv() is None  # blocked, so tvm_ffi skipped its torch integration
        w.send(eval, ("'tvm.s_tir.tensor_intrin' in __import__('sys').modules",))
        assert w.recv() is True  # imported before serving, i.e. outside any build timeout
    finally:
        w.kill()


# ------------------------------------------------------------------------------ tuning


@pytest.fixture(scope="module", autouse=True)
def generic_matmul():
    """The tuner's tests tune ``tiny_module``'s matmul as MetaSchedule's generic task (a
    search space that outlasts their budgets), not as the fp32 kernel (a few tiles)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(x86_fp32.MATMUL_ENV, "0")
        yield


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    mod, w1, w2 = tiny_module()
    db_dir = tmp_path_factory.mktemp("tuning-db")
    result = tt.tune(
        mod,
        "host",
        total_trials=3 * TRIALS_PER_TASK,
        max_trials_per_task=TRIALS_PER_TASK,
        db_dir=db_dir,
        population_size=POPULATION,
        progress=True,
        layout="NCHW",  # three tasks: conv2d+relu, reshape, matmul
        cpu_weight_prepack=False,
    )
    return mod, w1, w2, db_dir, result


def test_tune_builds_every_candidate(tuned):
    _, _, _, db_dir, res = tuned
    assert res.new_trials > 0
    assert res.build_errors == 0 and res.run_errors == 0, res.error_samples
    names = {t.name for t in res.tasks}
    assert any("conv2d" in n for n in names) and any("matmul" in n for n in names)
    for t in res.tasks:
        assert 0 < t.new_trials <= TRIALS_PER_TASK
        assert t.best_ms is not None and t.best_ms > 0
    assert_no_failures_in_logs(res.log_dir)
    # every record in the database has a real measurement (failures are stored as 1e10 s)
    db = tt.open_db(db_dir)
    records = db.get_all_tuning_records()
    assert len(records) == res.new_trials
    for r in records:
        secs = [float(s) for s in r.run_secs]
        assert secs and all(0 < s < 1.0 for s in secs), secs
    assert tt.database_summary(db_dir) == {
        "workloads": len(res.tasks), "records": res.new_trials,
        "valid": res.new_trials, "failed": 0,
    }  # fmt: skip


def test_tuned_module_applies_and_matches_numpy(tuned):
    mod, w1, w2, db_dir, res = tuned
    applied = tt.apply_database(mod, "host", db_dir, layout="NCHW", cpu_weight_prepack=False)
    prim_funcs = {gv.name_hint: f for gv, f in applied.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc)}  # fmt: skip
    scheduled = [n for n, f in prim_funcs.items() if f.attrs and f.attrs.get("tirx.is_scheduled")]
    assert len(scheduled) == len(res.tasks), (scheduled, list(prim_funcs))

    ex = tt.compile_tuned(mod, "host", db_dir, layout="NCHW", cpu_weight_prepack=False)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 16, 16, 16)).astype("float32")
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert_close(y, numpy_reference(x, w1, w2), depth=2)  # two convs, float32 kernels


def test_default_budget_is_the_modules_nhwc_prepacked(tmp_path):
    """Defaults: conv2d in NHWC with prepacked weights; ``total_trials`` is the module's budget
    (every task gets a first round, then the gradient scheduler spends the rest); repeating
    the call tunes nothing and a larger budget tunes only the difference."""
    mod, w1, w2 = tiny_module()
    prepared = btvm.prepare(mod, "host")
    text = prepared.script()
    assert "layout_free_buffers" in text  # weights prepacked (constants of the module)
    assert "transpose" in text  # NCHW input -> NHWC conv -> back, by ConvertLayout
    tasks = len([f for f in prepared.functions.values() if isinstance(f, tvm.tirx.PrimFunc)])
    budget = 4 * tasks + 4
    first = tt.tune(mod, "host", total_trials=budget, db_dir=tmp_path,
                    population_size=POPULATION, progress=False)  # fmt: skip
    assert first.failures == 0, first.error_samples
    # MetaSchedule checks the budget before each round, so the last round may overshoot it
    # by less than one round (4 trials per task-round here)
    assert 0 < first.new_trials < budget + 4
    assert all(t.new_trials >= 1 for t in first.tasks), first.table()

    ex = tt.compile_tuned(mod, "host", tmp_path)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(2).standard_normal((1, 16, 16, 16)).astype("float32")
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert_close(y, numpy_reference(x, w1, w2), depth=2)  # two convs, float32 kernels

    # the conv's (a packed fp32 kernel) default, as seeded: no postprocessing (the search
    # may measure it again with MetaSchedule's weight layout rewrite)
    seeds = default_schedule_records(tmp_path)
    assert any(not any(i.kind.name == "EnterPostproc" for i in r.trace.insts) for r in seeds)

    before = tt.database_summary(tmp_path)
    again = tt.tune(mod, "host", total_trials=budget, db_dir=tmp_path,
                    population_size=POPULATION, progress=False)  # fmt: skip
    assert again.new_trials == 0 and {t.status for t in again.tasks} == {"skipped"}
    assert tt.database_summary(tmp_path) == before  # not measured again
    more = tt.tune(mod, "host", total_trials=first.new_trials + 3, db_dir=tmp_path,
                   population_size=POPULATION, progress=False)  # fmt: skip
    assert 0 < more.new_trials <= 3 and more.failures == 0


def default_schedule_records(db_dir) -> list:
    """The database's records of a kernel workload without sampling, each checked to be
    the untuned default schedule (up to postprocessing), measured."""
    from tvm import s_tir

    from shrinkc.backends.tvm import x86_int8

    out = []
    for r in tt.open_db(db_dir).get_all_tuning_records():
        default = x86_int8.default_schedule(r.workload.mod["main"])
        if default is None or any(i.kind.name.startswith("Sample") for i in r.trace.insts):
            continue
        replayed = s_tir.Schedule(r.workload.mod)
        r.trace.apply_to_schedule(replayed, remove_postproc=True)
        tvm.ir.assert_structural_equal(replayed.mod, default.mod)
        assert [float(t) for t in r.run_secs] and all(0 < float(t) < 1 for t in r.run_secs)
        out.append(r)
    return out


def test_keep_params_module_is_not_prepacked():
    mod, _, _ = tiny_module()
    assert btvm.default_prepack(mod)
    main = mod["main"].with_attr("num_input", 1)
    mod2 = tvm.IRModule({"main": main})
    assert not btvm.default_prepack(mod2)
    assert "layout_free_buffers" not in btvm.prepare(mod2, "host").script()


def test_second_tune_does_zero_new_trials(tuned):
    mod, _, _, db_dir, first = tuned
    before = tt.database_summary(db_dir)
    again = tt.tune(
        mod, "host", total_trials=3 * TRIALS_PER_TASK, max_trials_per_task=TRIALS_PER_TASK,
        db_dir=db_dir, population_size=POPULATION, progress=False,
        layout="NCHW", cpu_weight_prepack=False,
    )  # fmt: skip
    assert again.new_trials == 0 and again.log_dir is None
    assert {t.status for t in again.tasks} == {"skipped"}
    assert [t.trials_before for t in again.tasks] == [t.new_trials for t in first.tasks]
    assert tt.database_summary(db_dir) == before


# ------------------------------------------------------------------------------ progress


def test_model_estimate_is_the_weighted_sum_of_the_best_latencies():
    prog = tt.TuningProgress(0.0, ["conv", "add", "dense"], [2.0, 1.0, 3.0],
                             [1e-3, None, 2e-3])  # fmt: skip
    ms_, unknown = prog.model_ms()
    assert ms_ == pytest.approx(2 * 1.0 + 3 * 2.0) and unknown == 1
    assert prog.estimate_text() == "model ≈ 8.000 ms (+1 tasks unmeasured)"
    # a batch of "add" measured: its best is the fastest of the batch; a slower "conv"
    # candidate changes nothing
    prog.measured(1, [0.5e-3, 0.4e-3], n=2, fails=0)
    prog.measured(0, [3e-3], n=1, fails=0)
    assert prog.model_ms() == (pytest.approx(8.4), 0)
    assert prog.estimate_text() == "model ≈ 8.400 ms"
    # a measurement from the local runner counts for the task whose batch is running
    assert prog.index_of("dense") == 2 and prog.index_of("nosuch") is None
    prog.current = prog.index_of("dense")
    prog.candidate_measured(True, 1e-3)
    prog.candidate_measured(False, None)
    assert prog.model_ms() == (pytest.approx(2 * 1.0 + 0.4 + 3 * 1.0), 0)
    assert tt.estimate_ms([1.0, 4.0], [None, None]) == (0.0, 2)


def test_time_is_up_once_the_deadline_has_passed(tmp_path):
    t0 = time.perf_counter()
    prog = tt.TuningProgress(t0, deadline=None)
    assert not prog.time_is_up()
    prog = tt.TuningProgress(t0, deadline=t0 - 1.0)  # already passed: no clock race
    prog.set_log_file(tmp_path / tt.TIMELINE_FILE)
    assert prog.time_is_up() and prog.time_is_up() and prog.timed_out
    lines = (tmp_path / tt.TIMELINE_FILE).read_text().splitlines()
    assert len(lines) == 1 and "time budget reached" in lines[0]  # said once
    prog.close()
    prog.event("after the end")
    assert len((tmp_path / tt.TIMELINE_FILE).read_text().splitlines()) == 1


def test_the_timeline_has_the_first_measured_trial(tuned):
    res = tuned[4]
    assert res.ended_by in ("trials", "search space")  # the reshape task has few candidates
    assert res.timeline == res.log_dir / tt.TIMELINE_FILE and res.timeline.is_file()
    text = res.timeline.read_text()
    for event in ("tasks extracted: 3 tasks, 3 to tune", "build worker(s)",
                  "first candidate built", "first measured trial", "done: "):
        assert event in text, text
    times = {line.split(" s  ", 1)[1]: float(line.split(" s  ", 1)[0])
             for line in text.splitlines()}
    assert times["first measured trial"] == pytest.approx(res.first_trial_s, abs=0.01)
    assert res.first_build_s <= res.first_trial_s <= res.seconds
    assert res.model_ms == pytest.approx(sum(t.weight * t.best_ms for t in res.tasks))
    assert "first trial after" in res.summary() and "model ≈" in res.summary()


@pytest.fixture(scope="module")
def budget_run(tuned, tmp_path_factory):
    """A second tuning call in this process with a time budget that runs out after the first
    measured trial (``time_is_up`` made to say so then: the deadline path without a clock
    race), and the process's worker pools before and after it."""
    target = btvm.tvm_target("host")
    pools = {"build": tt.builder_pool(os.cpu_count() or 1, 60.0, 256),
             "measure": tt.runner_pool(30.0, 256, int(target.attrs["num-cores"]))}
    before = {k: tt.worker_pids(p) for k, p in pools.items()}
    real = tt.TuningProgress.time_is_up

    def after_first_trial(self):
        if self.first_trial_s is not None and self.deadline is not None:
            self.deadline = min(self.deadline, time.perf_counter())
        return real(self)

    mod, _, _ = tiny_module()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tt.TuningProgress, "time_is_up", after_first_trial)
        res = tt.tune(mod, "host", total_trials=48, budget="1h",
                      db_dir=tmp_path_factory.mktemp("budget-db"), population_size=POPULATION,
                      progress=True, layout="NCHW", cpu_weight_prepack=False)  # fmt: skip
    return res, pools, before


def test_a_time_budget_ends_the_run_before_its_trials(budget_run):
    res, _, _ = budget_run
    assert res.ended_by == "time budget" and res.budget_s == 3600
    assert 0 < res.new_trials < 48 and res.failures == 0, res.table()
    # the first task's first round was measured and kept; the tasks the search had not
    # reached when the time ran out got none
    assert res.tasks[0].new_trials > 0 and res.tasks[0].best_ms is not None
    assert {t.status for t in res.tasks if t.new_trials == 0} <= {"partial"}
    assert tt.database_summary(res.db_dir)["records"] == res.new_trials
    assert "time budget reached" in res.timeline.read_text()
    assert "ended by time budget" in res.summary()


def test_worker_pools_stay_warm_across_calls(budget_run):
    res, pools, before = budget_run
    target = btvm.tvm_target("host")
    # the same pool objects (kept for the process) ...
    assert tt.builder_pool(os.cpu_count() or 1, 60.0, 256) is pools["build"]
    assert tt.runner_pool(30.0, 256, int(target.attrs["num-cores"])) is pools["measure"]
    # ... whose workers the first call booted served the second: none was restarted
    for kind, pool in pools.items():
        assert before[kind], f"no {kind} worker after the first call"
        assert before[kind] <= tt.worker_pids(pool), kind
    assert "warm from an earlier call" in res.timeline.read_text()


# ------------------------------------------------------------------------------ RPC


def test_rpc_loopback_tuning_matches_local_workloads(tuned, tmp_path):
    mod, _, _, local_db, _ = tuned
    with tt.local_rpc_cluster(num_servers=2, key="shrinkc-test") as cluster:
        assert cluster.host == "127.0.0.1"
        cfg = cluster.config(session_timeout_sec=60)
        assert cfg.count_servers() == 2
        res = tt.tune(
            mod, "host", total_trials=3, max_trials_per_task=1, db_dir=tmp_path / "rpc-db",
            runner=cfg, population_size=POPULATION, progress=False,
            layout="NCHW", cpu_weight_prepack=False,
        )  # fmt: skip
        procs = [cluster.tracker, *cluster.servers]
    assert all(p.poll() is not None for p in procs), "cluster processes left running"
    assert res.new_trials > 0 and res.failures == 0, res.error_samples
    assert_no_failures_in_logs(res.log_dir)
    assert tt.database_summary(tmp_path / "rpc-db")["failed"] == 0
    assert task_keys(tmp_path / "rpc-db") == task_keys(local_db)


def test_local_rpc_cluster_stops_on_error():
    procs = []
    with pytest.raises(RuntimeError, match="boom"):
        with tt.local_rpc_cluster(num_servers=1, key="shrinkc-err") as cluster:
            procs = [cluster.tracker, *cluster.servers]
            raise RuntimeError("boom")
    assert procs and all(p.poll() is not None for p in procs)


@pytest.mark.slow
def test_rpc_server_killed_mid_tuning_fails_only_its_candidates(tmp_path):
    mod, _, _ = tiny_module()
    with tt.local_rpc_cluster(num_servers=2, key="shrinkc-kill") as cluster:
        log0 = cluster.log_dir / "server0.log"
        killed = threading.Event()

        def killer():  # kill server 0 while it serves its 2nd session
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed.is_set():
                if log0.read_text().count("start serving") >= 2:
                    time.sleep(0.3)
                    cluster.kill_server(0)
                    killed.set()
                    return
                time.sleep(0.05)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        res = tt.tune(
            mod, "host", total_trials=16, max_trials_per_task=8, db_dir=tmp_path / "db",
            runner=cluster.config(session_timeout_sec=20), population_size=POPULATION,
            evaluator_config={"number": 1, "repeat": 1, "min_repeat_ms": 1500,
                              "enable_cpu_cache_flush": False},
            op_names=["conv2d", "matmul"], progress=False,
        )  # fmt: skip
        th.join(timeout=5)
    assert killed.is_set()
    assert res.run_errors >= 1 and res.build_errors == 0
    assert any("RPC" in e for e in res.error_samples), res.error_samples
    summary = tt.database_summary(tmp_path / "db")
    assert summary["valid"] >= 1 and summary["records"] == res.new_trials


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
