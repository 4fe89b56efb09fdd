"""``TVMModule``: a compiled graph that runs here, saves, and loads elsewhere.

``TVMModule`` holds the Relax VM executable, its target and (with ``keep_params``) the
weights. It runs on a ``relax.VirtualMachine`` when the target can run on this machine,
and saves to a shared library (``model.so``), or for a cross-compiled target to
``model.tar`` (the object files; ``tvm.runtime.load_module`` links it on the device). It
implements the runtime protocol of ``backends/runtime.py`` (``run`` / ``save`` / ``load``)
that ``compile`` uses for every backend.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import tvm
from tvm import relax

from ...ir.types import TensorType, dtype_from_numpy, lossless_cast, to_numpy_dtype
from .errors import TVMBackendError
from .targets import host_cores, target_runs_here

log = logging.getLogger(__name__)

LIBRARY_SO = "model.so"
LIBRARY_TAR = "model.tar"
PARAMS_FILE = "params.safetensors"


@dataclass
class TVMModule:
    """A compiled graph: the Relax VM executable, its target and (if kept) its weights."""

    backend: ClassVar[str] = "tvm"

    executable: Any  # relax.VMExecutable or a loaded runtime module
    target: dict[str, Any]
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    library_path: Path | None = None  # the linked shared library, once there is one
    _vm: Any = field(default=None, repr=False)
    _param_tensors: list[Any] = field(default_factory=list, repr=False)

    @property
    def runs_here(self) -> bool:
        return target_runs_here(self.target)

    @property
    def threads(self) -> int:
        """Threads TVM's runtime uses (``TVM_NUM_THREADS``; set to the target's cores)."""
        return int(os.environ.get("TVM_NUM_THREADS", self.target.get("num-cores", 1)))

    def _ensure_vm(self) -> Any:
        if self._vm is None:
            if not self.runs_here:
                raise TVMBackendError(
                    f"module compiled for {self.target.get('mtriple')} "
                    f"(mcpu={self.target.get('mcpu', 'generic')}) cannot run on this machine; "
                    f"export it and load it on the target device")
            # TVM's thread pool defaults to half the cores on x86 (it assumes SMT); use the
            # target's core count unless the user set TVM_NUM_THREADS. Read when the pool starts.
            if "TVM_NUM_THREADS" not in os.environ:
                os.environ["TVM_NUM_THREADS"] = str(self.target.get("num-cores", host_cores()))
                log.info("TVM runtime threads: %s", os.environ["TVM_NUM_THREADS"])
            self._vm = relax.VirtualMachine(self.link(), tvm.cpu())
            dev = tvm.cpu()
            self._param_tensors = [tvm.runtime.tensor(p, dev) for p in self.params.values()]
        return self._vm

    def link(self) -> Any:
        """The executable as a loaded shared library. Emitting the object code (LLVM) and
        linking take seconds, so it is done once, into a temporary file ``export`` copies."""
        if self.library_path is None and hasattr(self.executable, "export_library"):
            import tempfile
            import weakref

            tmp = Path(tempfile.mkdtemp(prefix="shrinkc-tvm-"))
            weakref.finalize(self, shutil.rmtree, str(tmp), True)
            t0 = time.perf_counter()
            self.executable.export_library(str(tmp / LIBRARY_SO))
            self.timings["emit_link_s"] = time.perf_counter() - t0
            self.library_path = tmp / LIBRARY_SO
            self.executable = tvm.runtime.load_module(str(self.library_path))
        return self.executable

    def assembly(self) -> str:
        """The compiled kernels' assembly (which instructions they use), available until the
        module is linked (its first run or save)."""
        mod = getattr(self.executable, "mod", None)
        if mod is None:
            raise TVMBackendError("the assembly is available only before the module is linked "
                                  "(its first run or save)")
        return "\n".join(m.inspect_source("asm") for m in mod.imports if m.kind == "llvm")

    def to_device(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """Inputs as TVM tensors (checked against the input types)."""
        if len(arrays) != len(self.inputs):
            raise TVMBackendError(f"module takes {len(self.inputs)} inputs "
                                  f"({', '.join(n for n, _ in self.inputs)}), got {len(arrays)}")
        out = []
        for (name, t), x in zip(self.inputs, arrays):
            if isinstance(x, np.ndarray) and x.dtype != to_numpy_dtype(t.dtype):
                have = _ir_dtype(x.dtype)
                if have is None or not lossless_cast(have, t.dtype):
                    raise TVMBackendError(f"input {name} expects {t.dtype} ({t}), got "
                                          f"{have or x.dtype}: convert it first (only "
                                          f"lossless conversions such as f16 -> f32 are done)")
            x = np.asarray(x, dtype=to_numpy_dtype(t.dtype), order="C")
            if x.shape != t.shape:
                raise TVMBackendError(f"input {name} expects {t}, got shape {list(x.shape)}")
            out.append(tvm.runtime.tensor(x, tvm.cpu()))
        return out

    def run_device(self, tensors: Sequence[Any]) -> Any:
        """Run on TVM tensors (from ``to_device``); returns TVM's result (tensor or array)."""
        vm = self._ensure_vm()
        return vm["main"](*tensors, *self._param_tensors)

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on numpy arrays; returns the outputs as numpy arrays."""
        self._ensure_vm()
        res = self.run_device(self.to_device(arrays))
        outs = [res] if len(self.outputs) == 1 else list(res)
        return [o.numpy() for o in outs]

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write the library (``model.so``, or ``model.tar`` of object files for a target
        that does not run here) and the weights (``params.safetensors``) into
        ``directory``; returns the manifest entries that ``load`` needs."""
        from safetensors.numpy import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if self.runs_here:
            lib = LIBRARY_SO
            self.link()
            if self.library_path is not None and self.library_path != d / lib:
                shutil.copyfile(self.library_path, d / lib)
        else:
            lib = _export_cross(self.executable, self.target, d)
        files = {"library": lib}
        if self.params:
            save_file({k: np.asarray(v, order="C") for k, v in self.params.items()},
                      str(d / PARAMS_FILE))
            files["params"] = PARAMS_FILE
        self.timings["export_s"] = time.perf_counter() - t0
        return {"files": files, "target": self.target, "param_names": list(self.params)}

    export = save

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any],
             inputs: list[tuple[str, TensorType]],
             outputs: list[tuple[str, TensorType]]) -> TVMModule:
        """A module from ``save``'s files; ``entry`` is what ``save`` returned."""
        d = Path(directory)
        lib_path = d / entry["files"]["library"]
        if not lib_path.is_file():
            raise TVMBackendError(f"{lib_path}: no such file")
        if not target_runs_here(entry["target"]):
            raise TVMBackendError(
                f"{lib_path} was compiled for {entry['target'].get('mtriple')} "
                f"(mcpu={entry['target'].get('mcpu', 'generic')}), which this machine cannot "
                f"run: load it on the target device")
        params: dict[str, np.ndarray] = {}
        if "params" in entry["files"]:
            from safetensors.numpy import load_file

            loaded = load_file(str(d / entry["files"]["params"]))
            params = {k: loaded[k] for k in entry.get("param_names", loaded)}
        lib = tvm.runtime.load_module(str(lib_path))
        return cls(lib, dict(entry["target"]), inputs, outputs, params, library_path=lib_path)


def _ir_dtype(dt: np.dtype) -> str | None:
    try:
        return dtype_from_numpy(dt)
    except TypeError:
        return None


_CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"),
                    "arm": ("arm-linux-gnueabihf-gcc",),
                    "riscv64": ("riscv64-linux-gnu-gcc",)}


def _export_cross(executable: Any, target: Mapping[str, Any], d: Path) -> str:
    """Export for another machine: a ``.so`` if a cross compiler for the target's arch is
    on PATH, else ``model.tar`` holding the object files (no linker needed here)."""
    arch = str(target.get("mtriple", "")).split("-")[0]
    for cc in _CROSS_COMPILERS.get(arch, ()):
        path = shutil.which(cc)
        if path:
            from tvm.support import cc as tvm_cc  # type: ignore[import-not-found]

            executable.export_library(str(d / LIBRARY_SO),
                                      fcompile=tvm_cc.cross_compiler(path))
            log.info("cross-compiled %s with %s", LIBRARY_SO, path)
            return LIBRARY_SO
    executable.export_library(str(d / LIBRARY_TAR))
    log.info("no cross compiler for %s on PATH: wrote object files in %s", arch, LIBRARY_TAR)
    return LIBRARY_TAR


def object_files(tar_path: str | os.PathLike) -> dict[str, bytes]:
    """The ELF object files in an exported ``model.tar`` (name -> bytes)."""
    with tarfile.open(tar_path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()
                if m.isfile() and m.name.endswith(".o")}


__all__ = ["LIBRARY_SO", "LIBRARY_TAR", "PARAMS_FILE", "TVMModule", "object_files"]
