"""Build and measure workers for MetaSchedule: torch-free, pre-imported, kept for the process.

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
without torch, 10.6 s with torch but memoised inspect); ours 8.7 s. The pools are kept for
the process (``session_pool``; workers are recycled after ``max_worker_uses`` builds because
of the leak the stock builder works around): a second ``tune`` in the same process measures
at once. ``tune`` boots them (``prestart``) in the background while it extracts the tasks.
The main process imports ``tvm.s_tir.tensor_intrin`` (which ``TuneContext`` needs) with the
same ``inspect`` memoisation.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

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


# Worker pools kept for the process: a second tuning call (or compile) starts measuring at
# once instead of booting workers again. Keyed by what a pool's workers are started with.
_POOLS: dict[tuple, Any] = {}
_POOLS_LOCK = threading.Lock()


def session_pool(max_workers: int, timeout_sec: float, max_worker_uses: int | None,
                 env: dict[str, str] | None = None, quiet: bool = False) -> Any:
    """The process's pool of fast workers for this configuration (created on first use,
    kept warm across tuning calls, shut down at exit or by ``shutdown_pools``)."""
    key = (max_workers, float(timeout_sec), max_worker_uses, tuple(sorted((env or {}).items())),
           quiet)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            _, fast_pool = fast_pool_classes()
            pool = fast_pool(max_workers=max_workers, timeout=timeout_sec,
                             maximum_process_uses=max_worker_uses, env=env,
                             stderr=subprocess.DEVNULL if quiet else None)
            pool.shrinkc_warm = threading.Event()
            pool.shrinkc_workers = max_workers
            _POOLS[key] = pool
        return pool


def builder_pool(max_workers: int, timeout_sec: float, max_worker_uses: int | None) -> Any:
    """The process's pool of build workers for this configuration (``PersistentBuilder``'s)."""
    return session_pool(max_workers, timeout_sec, max_worker_uses)


def runner_pool(timeout_sec: float, max_worker_uses: int | None,
                threads: int | None = None) -> Any:
    """The process's measuring worker (``FastLocalRunner``'s): one, silent, measuring with
    ``threads`` threads (the compiled model's; TVM's pool otherwise takes half the cores on
    x86, assuming SMT; ``TVM_NUM_THREADS`` in the environment wins)."""
    return session_pool(1, timeout_sec, max_worker_uses, quiet=True,
                        env={"TVM_NUM_THREADS": str(threads)} if threads else None)


def prestart(pool: Any, on_ready: Callable[[bool], None] | None = None) -> None:
    """Boot all of ``pool``'s workers now, in the background (each pre-imports TVM for a few
    CPU-seconds), so that they are ready by the time the first candidates are; sets
    ``pool.shrinkc_warm`` when they are. ``on_ready(already)`` is called then (at once,
    with ``already=True``, when the pool is warm from an earlier call)."""
    def boot() -> None:
        # one task per worker: each blocks until its worker has booted, so the pool's
        # threads (one worker each) all start; os.getpid says which worker answered
        futures = [pool.submit(os.getpid) for _ in range(pool.shrinkc_workers)]
        for f in futures:
            try:
                f.result()
            except Exception as exc:  # pylint: disable=broad-except
                logger.debug("worker prestart: %s", exc)
        pool.shrinkc_warm.set()
        if on_ready is not None:
            on_ready(False)

    with _POOLS_LOCK:
        if pool.shrinkc_warm.is_set() or getattr(pool, "shrinkc_booting", False):
            warm = pool.shrinkc_warm.is_set()
            booting = not warm
        else:
            warm = booting = False
            pool.shrinkc_booting = True
    if warm:
        if on_ready is not None:
            on_ready(True)
        return
    if booting:  # an earlier call is booting it: its thread sets the event
        return
    threading.Thread(target=boot, name="shrinkc-worker-prestart", daemon=True).start()


def worker_pids(pool: Any) -> set[int]:
    """Process ids of ``pool``'s running workers (to see that a kept pool was reused)."""
    pids = set()
    for w in list(getattr(pool, "_worker_map", {}).values()):
        proc = getattr(w, "_proc", None)
        if proc is not None and proc.poll() is None:
            pids.add(proc.pid)
    return pids


def shutdown_pools() -> None:
    """Stop every kept worker pool (at exit; or to free their memory)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        try:
            pool.shutdown()
        except Exception:  # pylint: disable=broad-except  # noqa: S110
            pass


atexit.register(shutdown_pools)


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

    @derived_object
    class PersistentBuilder(PyBuilder):
        """LocalBuilder semantics (TVM's default_build / default_export) on a pool of
        pre-imported, torch-free workers (``session_pool``: kept for the process)."""

        def __init__(self, max_workers: int, timeout_sec: float, max_worker_uses: int | None,
                     on_built: Callable[[int, int], None] | None = None):
            super().__init__()
            self.max_workers = max_workers
            self.timeout_sec = timeout_sec
            self.pool = builder_pool(max_workers, timeout_sec, max_worker_uses)
            self.on_built = on_built  # (built, failed) after each batch

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
            if self.on_built is not None:
                failed = sum(r.error_msg is not None for r in results)
                self.on_built(len(results) - failed, failed)
            return results

        def shutdown(self):
            """Nothing: the pool is the process's (``shutdown_pools``)."""

    @derived_object
    class FastLocalRunner(PyRunner):
        """LocalRunner semantics (one measuring worker), torch-free pre-imported worker."""

        def __init__(self, timeout_sec: float, evaluator_config, max_worker_uses: int | None,
                     threads: int | None = None,
                     on_measured: Callable[[bool, float | None], None] | None = None):
            super().__init__()
            self.timeout_sec = timeout_sec
            self.evaluator_config = evaluator_config
            # (ok, mean seconds or None) after each candidate's measurement
            self.on_measured = on_measured
            # measures with the thread count the compiled model will run with
            self.pool = runner_pool(timeout_sec, max_worker_uses, threads)

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
                if self.on_measured is not None:
                    secs = [float(c) for c in res] if err is None and res else []
                    self.on_measured(err is None, sum(secs) / len(secs) if secs else None)
            return results

        def shutdown(self):
            """Nothing: the pool is the process's (``shutdown_pools``)."""

    return {"PersistentBuilder": PersistentBuilder, "FastLocalRunner": FastLocalRunner}


__all__ = ["builder_pool", "fast_pool_classes", "fast_tvm_imports", "measure_worker_start",
           "memoised_getmodule", "ms_classes", "prestart", "runner_pool", "session_pool",
           "shutdown_pools", "worker_pids"]
