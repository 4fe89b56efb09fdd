"""MetaSchedule autotuning for the TVM backend (TVM 0.27).

- ``workers.py``: build and measure workers that start in seconds (torch-free,
  pre-imported) and live for a tuning session;
- ``database.py``: the persistent database per target (``default_db_dir``), its
  inspection (``database_summary``, ``coverage``) and application (``apply_database``,
  ``compile_tuned``);
- ``search.py``: ``tune`` (the module's budget, MetaSchedule's gradient task scheduler,
  resumable: 0 new trials when the database already holds the budget);
- ``rpc.py``: measurement on other machines (``RPCConfig``, ``local_rpc_cluster``).

Targets are the backend's (``backends/tvm/targets.py``): every function here takes a preset
name, a target dict or a ``tvm.target.Target``.
"""

from __future__ import annotations

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
from .search import TaskSummary, TuneResult, tune
from .workers import fast_pool_classes, fast_tvm_imports, measure_worker_start

__all__ = [
    "DB_RECORD_FILE", "DB_WORKLOAD_FILE", "LocalRPCCluster", "RPCConfig", "TaskSummary",
    "TuneResult", "apply_database", "cache_root", "compile_tuned", "coverage",
    "database_summary", "default_db_dir", "fast_pool_classes", "fast_tvm_imports",
    "local_rpc_cluster", "measure_worker_start", "open_db", "target_key", "task_key", "tune",
]
