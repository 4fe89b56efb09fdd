"""The tuning database: where it lives, what it holds, and applying it.

One MetaSchedule ``JSONDatabase`` per target under the user cache dir
(``<cache>/tuning/<target key>``; ``SHRINKC_CACHE_DIR`` overrides), keyed by every target
attribute and the TVM version (``target_key``). Beside MetaSchedule's two record files,
``shrinkc_tuning_state.json`` remembers the trials spent per module (``tune``'s budget) and
per task. One tuning process per database at a time (``db_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from ..driver import EXEC_MODE
from ..pipeline import default_prepack, prepare
from ..targets import tvm_target
from ..x86_int8 import ScheduleInt8Kernels
from .workers import fast_tvm_imports

logger = logging.getLogger(__name__)

# Record files MetaSchedule's JSONDatabase (and relax.transform.MetaScheduleApplyDatabase) use.
DB_WORKLOAD_FILE = "database_workload.json"
DB_RECORD_FILE = "database_tuning_record.json"
STATE_FILE = "shrinkc_tuning_state.json"
_FAILED_RUN_SECS = 1e9  # MetaSchedule stores failed candidates with run_secs = [1e10]


def target_key(target: Any) -> str:
    """A stable, filesystem-safe key for a target, e.g. ``llvm-x86_64-cascadelake-2c-1a2b3c4d5e``.

    The hash covers every target attribute and the TVM version (records from another TVM
    version are not trusted).
    """
    d = json.loads(str(tvm_target(target)))
    canon = json.dumps({"target": d, "tvm": tvm.__version__}, sort_keys=True, default=str)
    digest = hashlib.sha256(canon.encode()).hexdigest()[:10]
    parts = [
        str(d.get("kind", "target")),
        str(d.get("mtriple", "")).split("-")[0],
        str(d.get("mcpu", "")),
        f"{d['num-cores']}c" if "num-cores" in d else "",
    ]
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p) for p in parts if p)
    return f"{slug}-{digest}"


def cache_root() -> Path:
    """``$SHRINKC_CACHE_DIR`` or ``platformdirs.user_cache_dir("shrinkc")``."""
    env = os.environ.get("SHRINKC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # pylint: disable=import-outside-toplevel

    return Path(platformdirs.user_cache_dir("shrinkc"))


def default_db_dir(target: Any = None) -> Path:
    """The persistent tuning database for ``target``: ``<cache>/tuning/<target-key>``."""
    return cache_root() / "tuning" / target_key(target)



def _run_secs(record) -> list[float]:
    if record.run_secs is None:
        return []
    return [float(x) for x in record.run_secs]


def _is_valid(record) -> bool:
    secs = _run_secs(record)
    return bool(secs) and all(0.0 < s < _FAILED_RUN_SECS for s in secs)


def open_db(db_dir: Path):
    from tvm.s_tir.meta_schedule.database import JSONDatabase  # noqa: PLC0415

    return JSONDatabase(work_dir=str(db_dir), module_equality="structural")


def database_summary(db_dir: str | os.PathLike) -> dict:
    """Counts of workloads and records (valid / failed) in a tuning database."""
    db_dir = Path(db_dir)
    if not (db_dir / DB_WORKLOAD_FILE).exists():
        return {"workloads": 0, "records": 0, "valid": 0, "failed": 0}
    fast_tvm_imports()
    records = open_db(db_dir).get_all_tuning_records()
    valid = sum(1 for r in records if _is_valid(r))
    wl = {task_key(r.workload.mod) for r in records}
    return {"workloads": len(wl), "records": len(records), "valid": valid,
            "failed": len(records) - valid}  # fmt: skip


def db_stats(db, task_mods: list) -> list[tuple[int, int, float | None]]:
    """For each task module: (records, valid records, best mean seconds) in ``db``."""
    wls = [db.commit_workload(m) if db.has_workload(m) else None for m in task_mods]
    stats: list[list] = [[0, 0, None] for _ in task_mods]
    known = [(i, wl) for i, wl in enumerate(wls) if wl is not None]
    if not known:
        return [tuple(s) for s in stats]
    for rec in db.get_all_tuning_records():
        for i, wl in known:
            if rec.workload.same_as(wl):
                st = stats[i]
                st[0] += 1
                if _is_valid(rec):
                    st[1] += 1
                    secs = _run_secs(rec)
                    mean = sum(secs) / len(secs)
                    st[2] = mean if st[2] is None else min(st[2], mean)
                break
    return [tuple(s) for s in stats]


def load_state(db_dir: Path) -> dict:
    try:
        return json.loads((db_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save_state(db_dir: Path, state: dict) -> None:
    tmp = db_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(db_dir / STATE_FILE)


def module_key(task_keys: list[str], prepack: bool) -> str:
    """A module, for the tuning state: its set of workloads (and the prepack flag)."""
    h = hashlib.sha256(("\n".join(sorted(task_keys)) + f"\nprepack={prepack}").encode())
    return h.hexdigest()[:16]


def task_key(task_mod) -> str:
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    return f"{tvm_ffi.structural_hash(task_mod) & 0xFFFFFFFFFFFFFFFF:016x}"


@contextlib.contextmanager
def db_lock(db_dir: Path) -> Iterator[None]:
    """One tuning process per database at a time (JSON records are appended)."""
    db_dir.mkdir(parents=True, exist_ok=True)
    with open(db_dir / ".lock", "w", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process tuning into %s", db_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def apply_database(
    mod: tvm.IRModule,
    target: Any = None,
    db_dir: str | os.PathLike | None = None,
    *,
    cpu_weight_prepack: bool | None = None,
    layout: str | None = None,
) -> tvm.IRModule:
    """The Relax module with the database's schedules applied (what ``relax.build`` takes).

    Equivalent to ``relax.get_pipeline("static_shape_tuning", total_trials=0, ...)``.
    """
    target = tvm_target(target)
    db_dir = Path(db_dir) if db_dir is not None else default_db_dir(target)
    fast_tvm_imports()
    if cpu_weight_prepack is None:
        cpu_weight_prepack = default_prepack(mod)
    mod = prepare(mod, target, cpu_weight_prepack, layout)
    with target:  # MetaScheduleApplyDatabase reads Target.current() when constructed
        passes = []
        if (db_dir / DB_WORKLOAD_FILE).exists():
            passes.append(relax.transform.MetaScheduleApplyDatabase(str(db_dir)))
        else:
            logger.warning("no tuning database in %s: compiling untuned", db_dir)
        passes.append(ScheduleInt8Kernels())  # int8 kernels the database does not cover
        if cpu_weight_prepack:
            passes += [
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.LiftTransformParams(),
                relax.transform.FoldConstant(),
            ]
        return tvm.transform.Sequential(passes)(mod)


def compile_tuned(
    mod: tvm.IRModule,
    target: Any = None,
    db_dir: str | os.PathLike | None = None,
    *,
    cpu_weight_prepack: bool | None = None,
    layout: str | None = None,
):
    """Apply the tuning database (0 new trials) and ``relax.build`` the module (the VM in
    ``driver.EXEC_MODE``, as ``build``).

    Returns the Relax executable (``relax.VirtualMachine(ex, tvm.cpu())`` runs it;
    ``ex.export_library("m.so")`` saves it). With ``cpu_weight_prepack=True`` weights given
    as parameters must first go through ``vm["main_transform_params"]``.
    """
    target = tvm_target(target)
    applied = apply_database(mod, target, db_dir, cpu_weight_prepack=cpu_weight_prepack,
                             layout=layout)
    t0 = time.perf_counter()
    ex = relax.build(applied, target=target, exec_mode=EXEC_MODE)
    logger.debug("relax.build took %.1f s", time.perf_counter() - t0)
    return ex


def coverage(mod: Any, target: Any, db_dir: str | os.PathLike) -> tuple[int, int]:
    """(tuning tasks of the Relax module ``mod`` with a record in the database at
    ``db_dir``, tuning tasks of ``mod``); (0, -1) when there is no database. The tasks are
    those ``tune`` extracts (from ``prepare``, default layout and weight prepacking)."""
    db_dir = Path(db_dir)
    if not (db_dir / DB_WORKLOAD_FILE).is_file():
        return 0, -1
    fast_tvm_imports()
    from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

    tgt = tvm_target(target)
    tasks = [t for t in ms.relax_integration.extract_tasks(prepare(mod, tgt), tgt)
             if not t.mod.attrs.get("tirx.is_scheduled", False)]
    db = open_db(db_dir)
    covered = sum(1 for t in tasks
                  if db.query_tuning_record(t.dispatched[0], tgt, t.task_name) is not None)
    return covered, len(tasks)


__all__ = ["DB_RECORD_FILE", "DB_WORKLOAD_FILE", "STATE_FILE", "apply_database", "cache_root",
           "compile_tuned", "coverage", "database_summary", "db_lock", "db_stats",
           "default_db_dir", "load_state", "module_key", "open_db", "save_state", "target_key",
           "task_key"]
