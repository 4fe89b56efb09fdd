"""Build and measure workers for MetaSchedule: torch-free, pre-imported, kept for a session.

Why the builder is replaced: TVM's stock ``LocalBuilder`` starts a fresh
``PopenPoolExecutor`` for *every* batch of candidates, and its ``default_build`` runs
``import tvm.s_tir.tensor_intrin`` inside the timed task. That import parses ~250 TVMScript
functions; each parse calls ``inspect.stack()``, and ``inspect.getmodule`` linearly scans
``sys.modules`` for every frame whose file does not exist (``<frozen
importlib._bootstrap>``), i.e. O(frames x modules) per call. With torch imported
(``tvm_ffi/__init__.py`` does ``try: import torch``) ``sys.modules`` has ~2000 entries and
the import takes 45-75 s: past the builder's 30 s timeout, so every candidate fails to
build.

Our fix (measured, see tests and the report): build/run workers are started with ``python -c
_WORKER_BOOT``, which (1) blocks torch (``sys.modules["torch"] = None`` makes tvm_ffi's
optional ``import torch`` raise ImportError, so its torch integration is skipped), (2)
memoises ``inspect.getmodule`` for frame lookups while importing
``tvm.s_tir.tensor_intrin``, and (3) does all imports *before* serving, i.e. outside any
timeout. Worker start to "ready to build", CPU seconds (2-core Xeon): stock 103 s (44 s
without torch, 10.6 s with torch but memoised inspect); ours 8.7 s. The pool is kept for the
whole tuning session (workers are recycled after ``max_worker_uses`` builds because of the
leak the stock builder works around). The main process imports ``tvm.s_tir.tensor_intrin``
(which ``TuneContext`` needs) with the same ``inspect`` memoisation.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeoutError

from ..imports import fast_tvm_imports, memoised_getmodule

logger = logging.getLogger(__name__)


# The program each build/run worker runs (`python -c _WORKER_BOOT <read_fd> <write_fd>`).
# It must not import shrinkc: the package may not be importable there, and would import torch.
_WORKER_BOOT = r"""
import sys
sys.modules["torch"] = None  # tvm_ffi: `try: import torch` -> ImportError -> integration skipped
import inspect
_orig, _cache = inspect.getmodule, {}
def _getmodule(obj, _filename=None):
    if _filename is not None and (inspect.isframe(obj) or inspect.iscode(obj)):
        if _filename not in _cache:
            _cache[_filename] = _orig(obj, _filename)
        return _cache[_filename]
    return _orig(obj, _filename)
inspect.getmodule = _getmodule
import tvm
import tvm.s_tir.tensor_intrin
import tvm.s_tir.meta_schedule.builder.local_builder
import tvm.s_tir.meta_schedule.runner.local_runner
import tvm.s_tir.meta_schedule.runner.rpc_runner
inspect.getmodule = _orig
from tvm.exec.popen_worker import main
try:
    main()
except (OSError, KeyboardInterrupt):
    pass
"""


@functools.cache
def fast_pool_classes() -> tuple[type, type]:
    """PopenWorker / PopenPoolExecutor whose workers run ``_WORKER_BOOT``."""
    from tvm.support import popen_pool  # pylint: disable=import-outside-toplevel

    class FastPopenWorker(popen_pool.PopenWorker):
        extra_env: dict[str, str] = {}

        def _start(self):
            if self._proc is not None:
                return
            main_read, worker_write = os.pipe()
            worker_read, main_write = os.pipe()
            cmd = [sys.executable, "-c", _WORKER_BOOT, str(worker_read), str(worker_write)]
            env = dict(os.environ)
            env.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
            for k, v in self.extra_env.items():
                env.setdefault(k, v)
            self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
                cmd,
                pass_fds=(worker_read, worker_write),
                stdout=self._stdout,
                stderr=self._stderr,
                env=env,
            )
            os.close(worker_read)
            os.close(worker_write)
            self._reader = os.fdopen(main_read, "rb")
            self._writer = os.fdopen(main_write, "wb")

    class FastPopenPool(popen_pool.PopenPoolExecutor):
        def __init__(self, *args, env: dict[str, str] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._extra_env = dict(env or {})

        def _worker_run(self, fn, args, kwargs):
            self._lock.acquire()
            tid = threading.get_ident()
            proc = self._worker_map.get(tid)
            if proc is None:
                proc = FastPopenWorker(
                    self._initializer,
                    self._initargs,
                    self._maximum_process_uses,
                    self._stdout,
                    self._stderr,
                )
                proc.extra_env = self._extra_env
                self._worker_map[tid] = proc
            self._lock.release()
            proc.send(fn, args, kwargs, self._timeout)
            return proc.recv()

    return FastPopenWorker, FastPopenPool


def measure_worker_start(fast: bool = True) -> float:
    """Seconds from spawning one build worker to it having built-ready imports.

    ``fast=False`` measures TVM's stock worker doing what the stock builder's first task
    does (``import tvm.s_tir.tensor_intrin``), i.e. the time the stock builder needs before
    it can build its first candidate.
    """
    from tvm.support.popen_pool import PopenWorker  # pylint: disable=import-outside-toplevel

    if fast:
        worker_cls, _ = fast_pool_classes()
        w = worker_cls()
        t0 = time.perf_counter()
        w.send(os.getpid)
        w.recv()
    else:
        import importlib  # pylint: disable=import-outside-toplevel

        w = PopenWorker()
        t0 = time.perf_counter()
        w.send(importlib.import_module, ("tvm.s_tir.tensor_intrin",))
        w.recv()
    dt = time.perf_counter() - t0
    w.kill()
    return dt


@functools.cache
def ms_classes() -> dict[str, type]:
    """``PersistentBuilder`` and ``FastLocalRunner`` (MetaSchedule objects, defined lazily:
    they need ``tvm.s_tir.meta_schedule``)."""
    fast_tvm_imports()
    # pylint: disable=import-outside-toplevel
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder import local_builder as _lb
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner import local_runner as _lr
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    # pylint: enable=import-outside-toplevel
    _, fast_pool = fast_pool_classes()

    @derived_object
    class PersistentBuilder(PyBuilder):
        """LocalBuilder semantics (TVM's default_build / default_export), but one pool of
        pre-imported, torch-free workers for the whole session."""

        def __init__(self, max_workers: int, timeout_sec: float, max_worker_uses: int | None):
            super().__init__()
            self.max_workers = max_workers
            self.timeout_sec = timeout_sec
            self.pool = fast_pool(
                max_workers=max_workers,
                timeout=timeout_sec,
                maximum_process_uses=max_worker_uses,
            )

        def build(self, build_inputs):
            futures = [
                self.pool.submit(
                    _lb._worker_func,  # pylint: disable=protected-access
                    None,
                    None,
                    inp.mod,
                    inp.target,
                    _lb._serialize_params(inp.params),  # pylint: disable=protected-access
                )
                for inp in build_inputs
            ]
            results = []
            for fut in futures:
                try:
                    results.append(BuilderResult(fut.result(), None))
                except (TimeoutError, FutureTimeoutError):
                    results.append(
                        BuilderResult(
                            None, f"LocalBuilder: Timeout, killed after {self.timeout_sec} seconds"
                        )
                    )
                except Exception as exc:  # pylint: disable=broad-except
                    results.append(
                        BuilderResult(None, "LocalBuilder: An exception occurred\n" + str(exc))
                    )
            return results

        def shutdown(self):
            self.pool.shutdown()

    @derived_object
    class FastLocalRunner(PyRunner):
        """LocalRunner semantics (one measuring worker), torch-free pre-imported worker."""

        def __init__(self, timeout_sec: float, evaluator_config, max_worker_uses: int | None,
                     threads: int | None = None):
            super().__init__()
            self.timeout_sec = timeout_sec
            self.evaluator_config = evaluator_config
            # Measure with the thread count the compiled model will run with (TVM's pool
            # otherwise takes half the cores on x86, assuming SMT); TVM_NUM_THREADS wins.
            self.pool = fast_pool(
                max_workers=1,
                timeout=timeout_sec,
                maximum_process_uses=max_worker_uses,
                stderr=subprocess.DEVNULL,
                env={"TVM_NUM_THREADS": str(threads)} if threads else None,
            )

        def run(self, runner_inputs) -> list:
            results = []
            for inp in runner_inputs:
                fut = self.pool.submit(
                    _lr._worker_func,  # pylint: disable=protected-access
                    None,
                    None,
                    None,
                    self.evaluator_config,
                    1,
                    str(inp.artifact_path),
                    str(inp.device_type),
                    tuple(a.as_json() for a in inp.args_info),
                )
                try:
                    res, err = fut.result(), None
                except (TimeoutError, FutureTimeoutError):
                    res = None
                    err = f"LocalRunner: Timeout, killed after {self.timeout_sec} seconds\n"
                except Exception as exc:  # pylint: disable=broad-except
                    res, err = None, "LocalRunner: An exception occurred\n" + str(exc)
                results.append(LocalRunnerFuture(res=res, error_message=err))
            return results

        def shutdown(self):
            self.pool.shutdown()

    return {"PersistentBuilder": PersistentBuilder, "FastLocalRunner": FastLocalRunner}


__all__ = ["fast_pool_classes", "fast_tvm_imports", "measure_worker_start", "memoised_getmodule",
           "ms_classes"]
