"""TVM backend: IR → Relax (one lowering per op) → ``relax.build`` for a target → a VM,
optionally MetaSchedule-tuned.

The package, one concept per module::

    budget.py     time budgets for tuning (parse_budget: 90s, 5m, 1h30m)
    errors.py     TVMBackendError, TargetError, LoweringError, StaticShapeError
    imports.py    importing TVM lazily, and MetaSchedule / TVMScript quickly
    targets.py    the one target system: presets, host detection, resolve_target, the
                  thread-count rule (host_cores), CPU features (int8 path)
    lowering.py   the lowering core: Lowerer, LOWERINGS / @lowers, pattern hooks
                  (PATTERN_LOWERINGS / @lowers_pattern), lower_node, lower
    ops.py        the lowering table: one Relax lowering per IR op
    int8.py       the int8 pattern lowering (QDQ conv2d / linear / matmul → integer compute)
    x86_int8.py   the integer convs / matmuls on VNNI / AVX2 dot-product kernels (packed
                  weights, hand-written schedule, MetaSchedule custom rule)
    pipeline.py   the Relax pipeline (layout, legalize, fuse; prepare for tuning)
    driver.py     build / build_lowered: lower → pipeline → relax.build → TVMModule
    module.py     TVMModule: run here, save (model.so / model.tar), load
    tuning/       workers, database, search (tune), rpc

``from shrinkc.backends import tvm as btvm`` gives every public name of these modules
(``btvm.build``, ``btvm.lower``, ``btvm.LOWERINGS``, ``btvm.lowers``, ``btvm.resolve_target``,
``btvm.TVMModule``, ...). Importing the package does not import TVM (seconds); the first
name that needs it does.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from .budget import format_budget, parse_budget
from .errors import LoweringError, StaticShapeError, TargetError, TVMBackendError
from .imports import import_tvm
from .targets import (
    F32_ISAS,
    INT8_ISAS,
    TARGET_PRESETS,
    cpu_features,
    host_cores,
    host_cpu,
    host_target,
    f32_isa,
    int8_isa,
    resolve_target,
    target_presets,
    target_runs_here,
    tvm_target,
)

# TVM's thread pool pins each worker thread to one core (TVM_BIND_THREADS, default on) but
# leaves the calling thread, which runs the first share of every parallel loop, free to
# move. When Linux puts the caller on the worker's core, every parallel kernel runs on one
# core and stays so: measured here (2 cores, Zen 5, untuned int8 MobileNetV2 64 px, 9 fresh
# processes) medians of 0.31, 0.40 or 0.47 ms per process, one switching from 0.31 to 0.48
# mid-run; unpinned, 8 processes all at 0.30-0.32 ms. Read when the pool starts (its first
# parallel launch), so it holds for the tuning workers too, which inherit it; a user's own
# setting wins.
os.environ.setdefault("TVM_BIND_THREADS", "0")

#: Public names of the modules that import TVM, loaded on first use (PEP 562). No module
#: is named like one of these names (importing ``driver`` would otherwise replace ``build``).
_LAZY: dict[str, str] = {
    **{n: "lowering" for n in ("DTYPE_TO_TVM", "TVM_TO_DTYPE", "Lowered", "Lowerer", "Lowering",
                               "PATTERN_LOWERINGS", "PatternPlan", "check_static", "lower_node",
                               "lowers_pattern")},
    **{n: "ops" for n in ("LOWERINGS", "lower", "lowers", "missing_lowerings")},
    **{n: "pipeline" for n in ("CONV_LAYOUTS", "DEFAULT_CONV_LAYOUT", "FoldTransposedPads",
                               "default_prepack",
                               "inference_passes", "layout_passes", "optimize_relax",
                               "prepare")},
    **{n: "driver" for n in ("build", "build_lowered")},
    **{n: "module" for n in ("LIBRARY_SO", "LIBRARY_TAR", "PARAMS_FILE", "TVMModule",
                              "object_files")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def tuning_module() -> Any | None:
    """``backends.tvm.tuning`` — None when MetaSchedule's cost model cannot be used here
    (its ``xgboost`` does not import), so that ``compile`` can say tuning is unavailable."""
    if importlib.util.find_spec("xgboost") is None:
        return None
    from . import tuning

    return tuning


def database_coverage(lowered: Any, target: Any, db_dir: Any) -> tuple[int, int]:
    """(tuning tasks with a record in the database at ``db_dir``, tuning tasks) of a
    ``Lowered`` module; (0, -1) without a database (``tuning.coverage``)."""
    from .tuning import coverage

    return coverage(lowered.mod, target, db_dir)


__all__ = [
    "F32_ISAS", "INT8_ISAS", "f32_isa", "int8_isa",
    "format_budget", "parse_budget",
    "CONV_LAYOUTS",
    "DEFAULT_CONV_LAYOUT",
    "DTYPE_TO_TVM",
    "LIBRARY_SO",
    "LIBRARY_TAR",
    "LOWERINGS",
    "PARAMS_FILE",
    "PATTERN_LOWERINGS",
    "TARGET_PRESETS",
    "TVM_TO_DTYPE",
    "Lowered",
    "Lowerer",
    "Lowering",
    "LoweringError",
    "PatternPlan",
    "StaticShapeError",
    "TVMBackendError",
    "TVMModule",
    "TargetError",
    "build",
    "build_lowered",
    "check_static",
    "cpu_features",
    "database_coverage",
    "default_prepack",
    "host_cores",
    "host_cpu",
    "host_target",
    "import_tvm",
    "inference_passes",
    "layout_passes",
    "lower",
    "lower_node",
    "lowers",
    "lowers_pattern",
    "missing_lowerings",
    "object_files",
    "optimize_relax",
    "prepare",
    "resolve_target",
    "target_presets",
    "target_runs_here",
    "tuning_module",
    "tvm_target",
]
