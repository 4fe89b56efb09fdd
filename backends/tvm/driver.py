"""``build``: IR graph → ``lower`` → the Relax pipeline → ``relax.build`` (the VM in
``EXEC_MODE``) → ``TVMModule``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import tvm
from tvm import relax

from ...ir.graph import Graph
from .errors import TVMBackendError
from .lowering import Lowered
from .module import TVMModule
from .ops import lower
from .pipeline import optimize_relax
from .targets import resolve_target

log = logging.getLogger(__name__)

#: How the Relax VM runs ``main``: "compiled" turns its instruction sequence (the kernel
#: calls, the storage and tensor allocations between them) into one machine-code function,
#: where "bytecode" has the VM interpret it call by call. Measured side by side (Intel
#: Xeon with AVX-512, 2 threads, untuned, the same outputs bit for bit): ResNet-18 64 px
#: 1.415 → 1.404 ms, MobileNetV2 64 px 0.423 → 0.411, ResNet-18 after ``cp-conv`` (76
#: kernels) 1.159 → 1.144. The VM's per-call instrumentation (``set_instrument``) exists
#: only in "bytecode".
EXEC_MODE = "compiled"


def build(graph: Graph, target: str | Mapping[str, Any] | None = None, *,
          keep_params: bool = False,
          pipeline: Callable[[Any, dict[str, Any]], Any] | None = None) -> TVMModule:
    """Lower ``graph``, optimise with Relax's passes and ``relax.build`` for ``target``.

    ``pipeline(mod, target_dict) -> mod`` replaces ``optimize_relax`` (e.g. one that applies
    a tuning database). Times for each phase go in ``.timings``.
    """
    tgt = resolve_target(target)
    t0 = time.perf_counter()
    lowered = lower(graph, keep_params=keep_params)
    lower_s = time.perf_counter() - t0
    module = build_lowered(lowered, tgt, pipeline=pipeline, name=graph.name)
    module.timings = {"lower_s": lower_s, **module.timings}
    return module


def build_lowered(lowered: Lowered, target: str | Mapping[str, Any] | None = None, *,
                  pipeline: Callable[[Any, dict[str, Any]], Any] | None = None,
                  name: str = "main",
                  progress: Callable[[str], None] | None = None) -> TVMModule:
    """``build`` for a module made by ``lower`` (so tuning can see the same module).
    ``progress(stage)`` is told when the Relax passes and the code generation start."""
    tgt = resolve_target(target)
    timings: dict[str, float] = {}
    if progress is not None:
        progress("relax passes")
    t0 = time.perf_counter()
    mod = (pipeline or optimize_relax)(lowered.mod, tgt)
    timings["relax_passes_s"] = time.perf_counter() - t0
    if progress is not None:
        progress("codegen")
    t0 = time.perf_counter()
    try:
        ex = relax.build(mod, target=tvm.target.Target(tgt), exec_mode=EXEC_MODE)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise TVMBackendError(f"graph {name}: relax.build for {json.dumps(tgt)} failed: "
                              f"{msg[-1] if msg else type(e).__name__}") from e
    timings["codegen_s"] = time.perf_counter() - t0
    log.info("TVM build of %s for %s: relax passes %.2fs, codegen %.2fs", name,
             tgt.get("mcpu", tgt.get("mtriple")), timings["relax_passes_s"],
             timings["codegen_s"])
    return TVMModule(ex, tgt, lowered.inputs, lowered.outputs, lowered.params, timings)


__all__ = ["EXEC_MODE", "build", "build_lowered"]
