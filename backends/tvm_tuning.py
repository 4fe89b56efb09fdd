"""MetaSchedule autotuning for shrinkc's TVM backend (TVM 0.27).

Works on a Relax ``tvm.IRModule``; knows nothing about shrinkc's IR, passes or CLI.

- Targets: :func:`host_target`, :data:`TARGET_PRESETS`, :func:`resolve_target` (TVM 0.27
  rejects target strings with options and ignores ``mcpu=native``: we detect the CPU).
- A persistent tuning database per target: :func:`default_db_dir`.
- :func:`tune` (MetaSchedule, resumable, 0 new trials when the database already covers the
  workloads) and :func:`compile_tuned` (apply the database, ``tvm.compile``).
- Local or RPC measurement: :class:`RPCConfig`, and :func:`local_rpc_cluster` which starts a
  tracker and servers on 127.0.0.1 (for tests).

Why the builder is replaced
---------------------------
TVM's stock ``LocalBuilder`` starts a fresh ``PopenPoolExecutor`` for *every* batch of
candidates, and its ``default_build`` runs ``import tvm.s_tir.tensor_intrin`` inside the timed
task. That import parses ~250 TVMScript functions; each parse calls ``inspect.stack()``, and
``inspect.getmodule`` linearly scans ``sys.modules`` for every frame whose file does not exist
(``<frozen importlib._bootstrap>``), i.e. O(frames x modules) per call. With torch imported
(``tvm_ffi/__init__.py`` does ``try: import torch``) ``sys.modules`` has ~2000 entries and the
import takes 45-75 s: past the builder's 30 s timeout, so every candidate fails to build.

Our fix (measured, see tests and the report): build/run workers are started with
``python -c _WORKER_BOOT``, which (1) blocks torch (``sys.modules["torch"] = None`` makes
tvm_ffi's optional ``import torch`` raise ImportError, so its torch integration is skipped),
(2) memoises ``inspect.getmodule`` for frame lookups while importing
``tvm.s_tir.tensor_intrin``, and (3) does all imports *before* serving, i.e. outside any
timeout. Worker start to "ready to build", CPU seconds (2-core Xeon): stock 103 s (44 s
without torch, 10.6 s with torch but memoised inspect); ours 8.7 s. The pool is kept for the whole tuning session (workers are recycled
after ``max_worker_uses`` builds because of the leak the stock builder works around). The
main process imports ``tvm.s_tir.tensor_intrin`` (which ``TuneContext`` needs) with the same
``inspect`` memoisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import inspect
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

logger = logging.getLogger(__name__)

__all__ = [
    "TARGET_PRESETS",
    "RPCConfig",
    "LocalRPCCluster",
    "TaskSummary",
    "TuneResult",
    "host_cpu",
    "host_target",
    "resolve_target",
    "target_key",
    "default_db_dir",
    "tune",
    "compile_tuned",
    "apply_database",
    "database_summary",
    "fast_tvm_imports",
    "local_rpc_cluster",
    "measure_worker_start",
]

# Record files MetaSchedule's JSONDatabase (and relax.transform.MetaScheduleApplyDatabase) use.
DB_WORKLOAD_FILE = "database_workload.json"
DB_RECORD_FILE = "database_tuning_record.json"
_STATE_FILE = "shrinkc_tuning_state.json"
_FAILED_RUN_SECS = 1e9  # MetaSchedule stores failed candidates with run_secs = [1e10]

# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


def host_cpu() -> str:
    """The host CPU as LLVM names it (``tvm.target.codegen.llvm_get_system_cpu``)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def _host_triple() -> str:
    arch = platform.machine() or "x86_64"
    arch = {"AMD64": "x86_64", "amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    if sys.platform.startswith("linux"):
        # LLVM's own triple may carry a vendor such as "conda"; a plain one is portable.
        return f"{arch}-linux-gnu"
    return str(tvm.target.codegen.llvm_get_system_triple())


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """An LLVM target for this machine: detected ``mcpu``, ``mtriple``, ``num-cores``.

    ``num_cores`` defaults to ``os.cpu_count()``.
    """
    return tvm.target.Target(
        {
            "kind": "llvm",
            "mtriple": _host_triple(),
            "mcpu": host_cpu(),
            "num-cores": int(num_cores or os.cpu_count() or 1),
        }
    )


def _preset(mtriple: str, mcpu: str, default_cores: int | None = None):
    def make(num_cores: int | None = None) -> tvm.target.Target:
        cores = num_cores or default_cores or os.cpu_count() or 1
        return tvm.target.Target(
            {"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu, "num-cores": int(cores)}
        )

    make.__doc__ = f"llvm target mtriple={mtriple} mcpu={mcpu}"
    return make


#: Named targets. Each value is a function ``(num_cores=None) -> Target``.
#: ``aarch64`` is for cross-compilation (measure it on a device through :class:`RPCConfig`).
TARGET_PRESETS: dict[str, Callable[..., tvm.target.Target]] = {
    "host": host_target,
    "x86-avx2": _preset("x86_64-linux-gnu", "haswell"),
    "x86-avx512": _preset("x86_64-linux-gnu", "skylake-avx512"),
    "x86-znver4": _preset("x86_64-linux-gnu", "znver4"),
    "aarch64": _preset("aarch64-linux-gnu", "neoverse-n1", default_cores=4),
}


def resolve_target(spec: Any = None, num_cores: int | None = None) -> tvm.target.Target:
    """A ``tvm.target.Target`` from a preset name, a dict, a JSON string or a Target.

    ``None`` means ``"host"``. Unknown names raise ``ValueError`` listing the presets.
    """
    if spec is None:
        spec = "host"
    if isinstance(spec, tvm.target.Target):
        return spec
    if isinstance(spec, Mapping):
        return tvm.target.Target(dict(spec))
    if isinstance(spec, str):
        name = spec.strip()
        if name in TARGET_PRESETS:
            return TARGET_PRESETS[name](num_cores)
        if name.startswith("{"):
            return tvm.target.Target(json.loads(name))
        if name in ("llvm", "c"):
            return tvm.target.Target({"kind": name})
        presets = ", ".join(sorted(TARGET_PRESETS))
        raise ValueError(
            f"unknown target {spec!r}: use one of the presets ({presets}), a dict such as "
            '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", '
            '"num-cores": 4}, or a tvm.target.Target (TVM 0.27 rejects target strings with '
            "options)"
        )
    raise TypeError(f"cannot make a target from {type(spec).__name__}: {spec!r}")


def _target_dict(target: tvm.target.Target) -> dict:
    try:
        d = json.loads(str(target))
    except ValueError:
        d = {"repr": str(target)}
    return d if isinstance(d, dict) else {"repr": str(target)}


def target_key(target: Any) -> str:
    """A stable, filesystem-safe key for a target, e.g. ``llvm-x86_64-cascadelake-2c-1a2b3c4d5e``.

    The hash covers every target attribute and the TVM version (records from another TVM
    version are not trusted).
    """
    target = resolve_target(target)
    d = _target_dict(target)
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


# --------------------------------------------------------------------------------------
# Fast imports (the root cause of the build failures; see the module docstring)
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _memoised_getmodule() -> Iterator[None]:
    """Memoise ``inspect.getmodule`` for frame/code objects by file name.

    ``inspect.stack()`` (called by every TVMScript ``@T.prim_func``) looks up the module of
    every frame; for frames of files that do not exist, like ``<frozen importlib._bootstrap>``,
    each lookup scans all of ``sys.modules``. Results depend only on the file name, so caching
    them for the duration of an import is safe.
    """
    orig = inspect.getmodule
    cache: dict[str, Any] = {}

    def getmodule(obj, _filename=None):
        if _filename is not None and (inspect.isframe(obj) or inspect.iscode(obj)):
            try:
                return cache[_filename]
            except KeyError:
                res = cache[_filename] = orig(obj, _filename)
                return res
        return orig(obj, _filename)

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = orig


_imports_done = False
_imports_lock = threading.Lock()


def fast_tvm_imports() -> float:
    """Import what MetaSchedule needs (incl. ``tvm.s_tir.tensor_intrin``) quickly, once.

    Returns the seconds spent (0 when already imported).
    """
    global _imports_done  # pylint: disable=global-statement
    with _imports_lock:
        if _imports_done:
            return 0.0
        t0 = time.perf_counter()
        with _memoised_getmodule():
            import tvm.s_tir.meta_schedule  # noqa: F401  pylint: disable=import-outside-toplevel
            import tvm.s_tir.tensor_intrin  # noqa: F401  pylint: disable=import-outside-toplevel
        _imports_done = True
        dt = time.perf_counter() - t0
        logger.debug("imported tvm.s_tir.tensor_intrin in %.1f s", dt)
        return dt


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


def _fast_pool_classes():
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
        worker_cls, _ = _fast_pool_classes()
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


# --------------------------------------------------------------------------------------
# Builder / runners with a persistent fast pool
# --------------------------------------------------------------------------------------

_CLASSES: dict[str, Any] = {}


def _ms_classes() -> dict[str, Any]:
    """Define the derived MetaSchedule objects lazily (needs tvm.s_tir.meta_schedule)."""
    if _CLASSES:
        return _CLASSES
    fast_tvm_imports()
    # pylint: disable=import-outside-toplevel
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder import local_builder as _lb
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner import local_runner as _lr
    from tvm.s_tir.meta_schedule.runner import rpc_runner as _rr
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
    from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture

    # pylint: enable=import-outside-toplevel
    _, fast_pool = _fast_pool_classes()

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

    @derived_object
    class FastRPCRunner(PyRunner):
        """RPCRunner semantics (TVM's default session/upload/alloc/evaluate functions) with
        torch-free workers and a client-side timeout, so a dead server fails its candidates
        instead of hanging the run."""

        def __init__(self, ms_rpc_config, evaluator_config, max_workers: int, timeout_sec):
            super().__init__()
            self.rpc_config = ms_rpc_config
            self.evaluator_config = evaluator_config
            self.timeout_sec = timeout_sec
            self.pool = fast_pool(max_workers=max_workers, timeout=timeout_sec)

        def run(self, runner_inputs) -> list:
            results = []
            for inp in runner_inputs:
                fut = self.pool.submit(
                    _rr._worker_func,  # pylint: disable=protected-access
                    None,
                    None,
                    None,
                    None,
                    None,
                    self.rpc_config,
                    self.evaluator_config,
                    1,
                    str(inp.artifact_path),
                    str(inp.device_type),
                    tuple(a.as_json() for a in inp.args_info),
                )
                results.append(RPCRunnerFuture(future=fut, timeout_sec=self.timeout_sec))
            return results

        def shutdown(self):
            self.pool.shutdown()

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
                    self.error_samples.append(f"[{self.names[task_id]}] {err[:2000]}")
            if self.bar is not None:
                self.bar.update(n)
                self.bar.set_postfix_str(
                    f"{self.names[task_id][:24]} fail={sum(self.build_errors) + sum(self.run_errors)}"
                )
            logger.debug(
                "task %s: %d measured (%d build / %d run errors so far)",
                self.names[task_id],
                n,
                self.build_errors[task_id],
                self.run_errors[task_id],
            )

    _CLASSES.update(
        PersistentBuilder=PersistentBuilder,
        FastLocalRunner=FastLocalRunner,
        FastRPCRunner=FastRPCRunner,
        ProgressCallback=ProgressCallback,
    )
    return _CLASSES


@dataclasses.dataclass(frozen=True)
class RPCConfig:
    """Measure candidates on servers registered to an RPC tracker.

    Start a tracker with ``python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190`` (it
    needs the ``tornado`` package) and servers with
    ``python -m tvm.exec.rpc_server --tracker=127.0.0.1:9190 --key=KEY``.
    """

    tracker_host: str
    tracker_port: int
    device_key: str
    session_timeout_sec: float = 60.0
    session_priority: int = 1
    #: parallel measurement sessions; None = number of servers registered under the key
    max_workers: int | None = None

    def to_ms(self):
        from tvm.s_tir.meta_schedule.runner import RPCConfig as MSRPCConfig  # noqa: PLC0415

        return MSRPCConfig(
            tracker_host=self.tracker_host,
            tracker_port=int(self.tracker_port),
            tracker_key=self.device_key,
            session_priority=self.session_priority,
            session_timeout_sec=int(self.session_timeout_sec),
        )

    def count_servers(self) -> int:
        return int(self.to_ms().count_num_servers(allow_missing=True))


# --------------------------------------------------------------------------------------
# Relax preparation shared by tune() and compile_tuned() (same workloads on both sides)
# --------------------------------------------------------------------------------------


def default_prepack(mod: tvm.IRModule) -> bool:
    """``cpu_weight_prepack`` unless told otherwise: on when the weights are constants of the
    module (MetaSchedule then picks a weight layout per conv/matmul and it is folded into
    the constants at compile time; measured here: a 256-channel 4×4 NHWC conv went from 54
    to 91 GFLOP/s). Off when ``main`` takes the weights as parameters (``num_input`` set,
    ``lower(keep_params=True)``), which would need ``main_transform_params`` at load."""
    try:
        return "num_input" not in (mod["main"].attrs or {})
    except (KeyError, AttributeError, tvm.TVMError):
        return False


def prepare(mod: tvm.IRModule, target: Any = None, cpu_weight_prepack: bool | None = None,
            layout: str | None = None) -> tvm.IRModule:
    """The module MetaSchedule extracts its tasks from (what ``tune`` tunes and
    ``apply_database`` applies to): convolutions to ``layout`` (``backends.tvm.layout_passes``,
    default NHWC), then what ``relax.get_pipeline("static_shape_tuning")`` does before
    tuning (decompose, canonicalise, the ``zero`` pipeline, and with
    ``cpu_weight_prepack`` — default ``default_prepack(mod)`` — the layout-free buffers)."""
    from .tvm import inference_passes  # pylint: disable=import-outside-toplevel

    target = resolve_target(target)
    if cpu_weight_prepack is None:
        cpu_weight_prepack = default_prepack(mod)
    passes = inference_passes(layout)
    if cpu_weight_prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target:
        return tvm.transform.Sequential(passes)(mod)


def apply_database(
    mod: tvm.IRModule,
    target: Any = None,
    db_dir: str | os.PathLike | None = None,
    *,
    cpu_weight_prepack: bool | None = None,
    layout: str | None = None,
) -> tvm.IRModule:
    """The Relax module with the database's schedules applied (what ``tvm.compile`` takes).

    Equivalent to ``relax.get_pipeline("static_shape_tuning", total_trials=0, ...)``.
    """
    target = resolve_target(target)
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
    """Apply the tuning database (0 new trials) and ``tvm.compile`` the module.

    Returns the Relax executable (``relax.VirtualMachine(ex, tvm.cpu())`` runs it;
    ``ex.export_library("m.so")`` saves it). With ``cpu_weight_prepack=True`` weights given
    as parameters must first go through ``vm["main_transform_params"]``.
    """
    target = resolve_target(target)
    applied = apply_database(mod, target, db_dir, cpu_weight_prepack=cpu_weight_prepack,
                             layout=layout)
    t0 = time.perf_counter()
    ex = tvm.compile(applied, target=target)
    logger.debug("tvm.compile took %.1f s", time.perf_counter() - t0)
    return ex


# --------------------------------------------------------------------------------------
# Database inspection
# --------------------------------------------------------------------------------------


def _run_secs(record) -> list[float]:
    if record.run_secs is None:
        return []
    return [float(x) for x in record.run_secs]


def _is_valid(record) -> bool:
    secs = _run_secs(record)
    return bool(secs) and all(0.0 < s < _FAILED_RUN_SECS for s in secs)


def _open_db(db_dir: Path):
    from tvm.s_tir.meta_schedule.database import JSONDatabase  # noqa: PLC0415

    return JSONDatabase(work_dir=str(db_dir), module_equality="structural")


def database_summary(db_dir: str | os.PathLike) -> dict:
    """Counts of workloads and records (valid / failed) in a tuning database."""
    db_dir = Path(db_dir)
    if not (db_dir / DB_WORKLOAD_FILE).exists():
        return {"workloads": 0, "records": 0, "valid": 0, "failed": 0}
    fast_tvm_imports()
    records = _open_db(db_dir).get_all_tuning_records()
    valid = sum(1 for r in records if _is_valid(r))
    wl = {_task_key(r.workload.mod) for r in records}
    return {"workloads": len(wl), "records": len(records), "valid": valid,
            "failed": len(records) - valid}  # fmt: skip


def _db_stats(db, task_mods: list) -> list[tuple[int, int, float | None]]:
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


# --------------------------------------------------------------------------------------
# Tuning
# --------------------------------------------------------------------------------------


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


def _load_state(db_dir: Path) -> dict:
    try:
        return json.loads((db_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(db_dir: Path, state: dict) -> None:
    tmp = db_dir / (_STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(db_dir / _STATE_FILE)


def _module_key(task_keys: list[str], prepack: bool) -> str:
    """A module, for the tuning state: its set of workloads (and the prepack flag)."""
    h = hashlib.sha256(("\n".join(sorted(task_keys)) + f"\nprepack={prepack}").encode())
    return h.hexdigest()[:16]


def _task_key(task_mod) -> str:
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    return f"{tvm_ffi.structural_hash(task_mod) & 0xFFFFFFFFFFFFFFFF:016x}"


@contextlib.contextmanager
def _db_lock(db_dir: Path) -> Iterator[None]:
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
    cls = _ms_classes()
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig  # noqa: PLC0415

    if evaluator_config is None:
        evaluator_config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100,
                                           enable_cpu_cache_flush=False)  # fmt: skip
    elif isinstance(evaluator_config, Mapping):
        evaluator_config = EvaluatorConfig(**evaluator_config)
    if runner is None or runner == "local":
        return cls["FastLocalRunner"](runner_timeout_sec, evaluator_config, max_worker_uses,
                                      threads)
    if isinstance(runner, RPCConfig):
        servers = runner.count_servers()
        if servers == 0:
            raise RuntimeError(
                f"no RPC server registered under key {runner.device_key!r} at "
                f"{runner.tracker_host}:{runner.tracker_port} "
                f"(python -m tvm.exec.query_rpc_tracker --host {runner.tracker_host} "
                f"--port {runner.tracker_port})"
            )
        workers = runner.max_workers or servers
        return cls["FastRPCRunner"](
            runner.to_ms(), evaluator_config, workers, runner.session_timeout_sec + 30.0
        )
    return runner  # a MetaSchedule Runner given by the caller


def _space(target: tvm.target.Target):
    """The design-space generator. For CPU targets: MetaSchedule's generic LLVM rules, not the
    ones it picks from an AVX-512 / VNNI ``mcpu`` — those add the ``dot_16x4_vnni`` /
    ``dot_16x4_avx512`` tensorization for u8×i8→i32 blocks, and in TVM 0.27 every candidate
    using it fails to build ("VectorizeLoop before LiftStorageAlloc"; measured: 7 of 11
    int8 ResNet-18 candidates). The generic rules are the same for float workloads, and for
    integer ones leave the vectorization to LLVM (measured: mostly ``vpmaddwd``, rarely
    ``vpdpbusd``, so tuned int8 is about as fast as tuned fp32; see the README)."""
    if target.kind.name != "llvm":
        return "post-order-apply"
    from tvm.s_tir.meta_schedule.space_generator import PostOrderApply  # noqa: PLC0415

    return PostOrderApply(sch_rules="llvm", postprocs="llvm", mutator_probs="llvm")


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
    target = resolve_target(target)
    db_dir = Path(db_dir) if db_dir is not None else default_db_dir(target)
    imp = fast_tvm_imports()
    if imp:
        logger.info("imported MetaSchedule in %.1f s", imp)

    with _db_lock(db_dir):
        if cpu_weight_prepack is None:
            cpu_weight_prepack = default_prepack(mod)
        prepared = prepare(mod, target, cpu_weight_prepack, layout)
        extracted = ms.relax_integration.extract_tasks(prepared, target)
        extracted = [t for t in extracted if not t.mod.attrs.get("tirx.is_scheduled", False)]
        if op_names:
            extracted = [t for t in extracted if any(o in t.task_name for o in op_names)]
        budget_mode = max_trials_per_task is None
        db = _open_db(db_dir)
        state = _load_state(db_dir)
        tasks_state = state.setdefault("tasks", {})
        modules_state = state.setdefault("modules", {})
        stats = _db_stats(db, [t.dispatched[0] for t in extracted])
        task_keys = [_task_key(t.dispatched[0]) for t in extracted]
        mkey = _module_key(task_keys, cpu_weight_prepack)
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
            cls = _ms_classes()
            builder = cls["PersistentBuilder"](
                num_builders or os.cpu_count() or 1, builder_timeout_sec, max_worker_uses
            )
            ms_runner = _make_runner(runner, evaluator_config, runner_timeout_sec,
                                     max_worker_uses, _target_dict(target).get("num-cores"))
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
                    cb = cls["ProgressCallback"](bar, names)
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
                        key = _task_key(task.dispatched[0])
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
                _save_state(db_dir, state)

        # best latency per task after tuning
        db = _open_db(db_dir)
        for s, (_, _, best) in zip(summaries, _db_stats(db, [t.dispatched[0] for t in extracted])):
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


# --------------------------------------------------------------------------------------
# A local RPC tracker + servers (tests, demos). Only 127.0.0.1.
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Servers and tracker run TVM's own entry points, without torch (5 s faster to start).
_RPC_BOOT = r"""
import runpy, sys
sys.modules["torch"] = None
mod = sys.argv[1]
sys.argv = [mod] + sys.argv[2:]
runpy.run_module(mod, run_name="__main__", alter_sys=True)
"""


@dataclasses.dataclass
class LocalRPCCluster:
    host: str
    port: int
    key: str
    tracker: subprocess.Popen
    servers: list[subprocess.Popen]
    log_dir: Path

    def config(self, session_timeout_sec: float = 60.0, **kw) -> RPCConfig:
        return RPCConfig(self.host, self.port, self.key, session_timeout_sec, **kw)

    def kill_server(self, i: int = 0) -> None:
        """Kill server ``i`` and its session processes (simulates a lost device)."""
        _kill_tree(self.servers[i])


def _kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is not None:
        return
    try:
        import psutil  # pylint: disable=import-outside-toplevel

        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
    except Exception:  # pylint: disable=broad-except
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def local_rpc_cluster(
    num_servers: int = 2,
    key: str = "shrinkc-local",
    timeout_sec: float = 60.0,
    log_dir: str | os.PathLike | None = None,
) -> Iterator[LocalRPCCluster]:
    """Start an RPC tracker and ``num_servers`` servers on 127.0.0.1 (free ports), wait until
    all servers are registered under ``key``, yield, and always stop them afterwards."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    if importlib.util.find_spec("tornado") is None:
        raise RuntimeError("TVM's RPC tracker needs the tornado package: pip install tornado")
    host = "127.0.0.1"
    own_dir = log_dir is None
    ldir = Path(tempfile.mkdtemp(prefix="shrinkc-rpc-")) if own_dir else Path(log_dir)
    ldir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TVM_FFI_DISABLE_TORCH_C_DLPACK="1")
    procs: list[subprocess.Popen] = []
    files = []

    def spawn(name: str, module: str, *args: str) -> subprocess.Popen:
        fh = open(ldir / f"{name}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
        files.append(fh)
        p = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-c", _RPC_BOOT, module, *args],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        procs.append(p)
        return p

    try:
        port = _free_port()
        tracker = spawn("tracker", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                        "--port-end", str(port + 1), "--silent")  # fmt: skip
        servers = []
        for i in range(num_servers):
            sport = _free_port()
            servers.append(
                spawn(f"server{i}", "tvm.exec.rpc_server", "--host", host, "--port", str(sport),
                      "--port-end", str(sport + 1), f"--tracker={host}:{port}", f"--key={key}")
            )  # fmt: skip
        cluster = LocalRPCCluster(host, port, key, tracker, servers, ldir)
        deadline = time.monotonic() + timeout_sec
        n = 0
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    logs = "\n".join(f.name + ":\n" + Path(f.name).read_text()[-2000:]
                                     for f in files)  # fmt: skip
                    raise RuntimeError(f"RPC process exited with {p.returncode}:\n{logs}")
            try:
                n = _count_servers_quiet(host, port, key)
            except Exception as exc:  # pylint: disable=broad-except
                logger.debug("tracker not ready: %s", exc)
            if n >= num_servers:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"{n}/{num_servers} RPC servers registered after {timeout_sec} s")
        logger.info("RPC tracker %s:%d with %d servers (key %s)", host, port, n, key)
        yield cluster
    finally:
        for p in reversed(procs):
            _kill_tree(p, signal.SIGTERM)
            _kill_tree(p, signal.SIGKILL)
        for fh in files:
            fh.close()
        if own_dir:
            shutil.rmtree(ldir, ignore_errors=True)


def _count_servers_quiet(host: str, port: int, key: str) -> int:
    """Servers registered under ``key``; 0 (at once) when the tracker is not listening yet.

    (``rpc.connect_tracker`` itself retries for 60 s.)
    """
    from tvm import rpc  # pylint: disable=import-outside-toplevel

    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return 0
    tracker = rpc.connect_tracker(host, port)
    try:
        summary = tracker.summary()
    finally:
        tracker.close()
    return sum(1 for item in summary.get("server_info", []) if item["key"].split(":")[-1] == key)
