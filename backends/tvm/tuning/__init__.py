"""MetaSchedule autotuning for the TVM backend (TVM 0.27).

- ``workers.py``: build and measure workers that start in seconds (torch-free,
  pre-imported), booted while tasks are extracted and kept warm for the process;
- ``database.py``: the persistent database per target (``default_db_dir``), its
  inspection (``database_summary``, ``coverage``) and application (``apply_database``,
  ``compile_tuned``);
- ``search.py``: ``tune`` (the module's budget of trials and / or a time budget,
  MetaSchedule's gradient task scheduler, resumable: 0 new trials when the database
  already holds the budget), its progress (model estimate, first-trial time, timeline);
- ``rpc.py``: measurement on other machines (``RPCConfig``, ``local_rpc_cluster``).

Targets are the backend's (``backends/tvm/targets.py``): every function here takes a preset
name, a target dict or a ``tvm.target.Target``.
"""

from __future__ import annotations

from ..budget import format_budget, parse_budget
from .database import (
                       DB_RECORD_FILE,
                       DB_WORKLOAD_FILE,
                       apply_database,
                       cache_root,
                       compile_tuned,
                       coverage,
                       database_summary,
                       default_db_dir,
                       open_db,
                       target_key,
                       task_key,
)
from .rpc import LocalRPCCluster, RPCConfig, local_rpc_cluster
from .search import TIMELINE_FILE, TaskSummary, TuneResult, TuningProgress, estimate_ms, tune
from .workers import (
                      builder_pool,
                      fast_pool_classes,
                      fast_tvm_imports,
                      measure_worker_start,
                      prestart,
                      runner_pool,
                      shutdown_pools,
                      worker_pids,
)

__all__ = [
    "DB_RECORD_FILE", "DB_WORKLOAD_FILE", "TIMELINE_FILE", "LocalRPCCluster", "RPCConfig",
    "TaskSummary", "TuneResult", "TuningProgress", "apply_database", "builder_pool",
    "cache_root", "compile_tuned", "coverage", "database_summary", "default_db_dir",
    "estimate_ms", "fast_pool_classes", "fast_tvm_imports", "format_budget",
    "local_rpc_cluster", "measure_worker_start", "open_db", "parse_budget", "prestart",
    "runner_pool", "shutdown_pools", "target_key", "task_key", "tune", "worker_pids",
]
