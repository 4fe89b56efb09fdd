"""The ``compile`` API: model in, deployable ``CompiledModel`` out.

``compile(model_or_graph, example_inputs, passes=…, backend=…, target=…, tune_trials=…,
tune_budget=…, tuning_db=…, calibration=…)`` brings the model into the IR (``trace`` for a
``torch.nn.Module``, ``load_onnx`` for an ONNX file, ``load`` for a ``.shrk`` file), runs the
pass pipeline (``optimize``; skipped when ``passes`` is empty), compiles the result for one
backend and measures its error against the original graph on the example inputs.

Backends: ``"tvm"`` (``backends/tvm/``: Relax, ``tvm.compile`` for a target, optionally
MetaSchedule-tuned through ``backends/tvm/tuning/``), ``"onnxruntime"`` (``to_onnx`` +
an ONNX Runtime session) and ``"torch"`` (``to_torch``). Each backend's runtime object
implements the protocol of ``backends/runtime.py`` (run / save / load), which is all
``CompiledModel`` and ``load_compiled`` use. ``backend=None`` picks:

1. TVM when a ``target`` is given;
2. by measurement when tuning was asked (``tune_trials > 0`` or ``tune_budget``) or the
   tuning database (``tuning_db``, else the default one for this host) already has tuned
   schedules for every workload of the model: both tuned TVM and onnxruntime are built
   and timed on the example inputs (``time_backends``: round-robin, medians), and the
   faster is kept;
3. otherwise onnxruntime — untuned TVM is not built or timed (measured, 2026-12: level
   with or ahead of onnxruntime where shrinkc's x86 kernels cover the model, convolutions
   and matmuls, fp32 and int8; a transformer's layer norm and softmax run on generic
   schedules);
4. torch when the onnxruntime backend (``shrinkc.backends.onnx``) is not installed (then
   tuned TVM is not measured against anything in 2).

The report (``cm.report()``) says which backend it picked and why (with both medians when
it measured).

Tuned or not: a TVM module built with a tuning database (tuned now, or covered by an
earlier tuning) is timed on the example inputs against the same module built with the
default schedules, and the faster is kept (``tuning["schedules"]``: ``tuned`` or
``default``, with both medians): a short tuning on a loaded machine can pick schedules
that make the whole model slower. It costs one more build. Cross-compiled modules are not
timed.

Batch: a batch-polymorphic graph (``ir/batch.py``: every traced reference model) is first
specialised to the example inputs' batch, so passes, the cost and the error check are at
that batch. The onnxruntime and torch backends keep it polymorphic: the compiled model
takes any batch on its batch inputs (one ONNX file with a dynamic ``batch`` dim). TVM
compiles static shapes, so a TVM model takes exactly the example's batch (tuning too: the
database holds per-shape workloads).

``CompiledModel.save(dir)`` writes the artifact and ``manifest.json`` (backend, pipeline,
target, input/output names and types, the report); ``load_compiled(dir)`` loads it in any
process without running a pass: TVM loads ``model.so`` (+ ``params.safetensors`` when the
weights were kept as parameters), onnxruntime ``model.onnx``, torch ``model.shrk``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends.runtime import Runtime, host_threads
from .ir import batch as ir_batch
from .ir.cost import graph_cost
from .ir.graph import Graph, IRError
from .ir.types import (
    DTYPES,
    TensorType,
    dtype_from_numpy,
    dtype_from_torch,
    lossless_cast,
    to_numpy_dtype,
)

log = logging.getLogger(__name__)

BACKENDS = ("tvm", "onnxruntime", "torch")
MANIFEST = "manifest.json"
FORMAT = "shrinkc-compiled"
#: 2: ``files`` maps a role to ``{path, size, sha256}`` (1 had bare file names).
FORMAT_VERSION = 2


class CompileError(IRError):
    """A ``compile`` call that cannot be carried out (bad arguments, missing backend)."""


class TuningUnavailableError(CompileError):
    """Tuning was asked for but MetaSchedule cannot tune here (no ``xgboost``)."""


# ============================================================================ report
@dataclass
class CompileReport:
    """What ``compile`` did: the backend and why, the pipeline, cost, error, timings."""

    model: str
    backend: str
    reason: str
    pipeline: str | None = None
    target: dict[str, Any] | None = None
    inputs: list[str] = field(default_factory=list)
    params: int = 0
    macs: int = 0
    param_bytes: int = 0
    original_params: int = 0
    original_macs: int = 0
    original_param_bytes: int = 0
    artifact_bytes: int | None = None  # set by save()
    max_abs_error: float | None = None
    rel_l2_error: float | None = None
    error_note: str | None = None  # why the error was not measured
    threads: int | None = None
    tune_trials: int = 0
    tune_budget: str | None = None  # the time budget asked for ("5m"), if any
    tuning: dict[str, Any] = field(default_factory=dict)
    measured_ms: dict[str, float] = field(default_factory=dict)  # backend=None's measurement
    times: dict[str, float] = field(default_factory=dict)
    batch: str | None = None  # which batch sizes the compiled model takes, and why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        def ratio(a: float, b: float) -> str:
            return f" ({b / a:.2f}x smaller)" if a and b and a != b else ""

        lines = [f"model      {self.model}",
                 f"backend    {self.backend}: {self.reason}"]
        if self.target:
            lines.append(f"target     {json.dumps(self.target)}")
        lines.append(f"pipeline   {self.pipeline or '(none)'}")
        lines.append(f"params     {self.params:,} ({human_bytes(self.param_bytes)})"
                     + (f", was {self.original_params:,} "
                        f"({human_bytes(self.original_param_bytes)})"
                        f"{ratio(self.param_bytes, self.original_param_bytes)}"
                        if self.original_params != self.params else ""))
        lines.append(f"MACs       {human(self.macs)}"
                     + (f", was {human(self.original_macs)}"
                        f"{ratio(self.macs, self.original_macs)}"
                        if self.original_macs != self.macs else ""))
        if self.artifact_bytes is not None:
            lines.append(f"artifact   {human_bytes(self.artifact_bytes)} on disk")
        if self.max_abs_error is not None:
            lines.append(f"error      max |Δ| {self.max_abs_error:.3g}, rel-L2 "
                         f"{self.rel_l2_error:.3g} vs the original graph "
                         f"({', '.join(self.inputs)})")
        else:
            lines.append(f"error      not measured: {self.error_note}")
        if self.batch:
            lines.append(f"batch      {self.batch}")
        if self.threads:
            lines.append(f"threads    {self.threads}")
        if self.tune_trials or self.tune_budget or self.tuning:
            t = self.tuning
            lines.append("tuning     " + ", ".join(f"{k}={v}" for k, v in t.items()))
        times = ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in self.times.items())
        lines.append(f"time       {times}")
        return "\n".join(lines)


def human(n: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for div, suffix in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{int(n)} B"


# ============================================================================ runtimes
def _to_numpy(x: Any, t: TensorType | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        a = x.numpy() if x.dtype != torch.bfloat16 else x.float().numpy()
    else:
        a = np.asarray(x)
    if t is not None:
        a = np.ascontiguousarray(a, dtype=to_numpy_dtype(t.dtype))
    return a


def _input_array(name: str, x: Any, t: TensorType) -> np.ndarray:
    """Input ``x`` as a numpy array of ``t``'s dtype. A typed input (tensor or array) of
    another dtype is converted only when that is lossless (``lossless_cast``: f16 -> f32,
    i32 -> i64, ...); anything else is a ``CompileError`` naming the input. Python numbers
    and lists have no dtype of their own and take the input's (floats not for an integer
    input)."""
    try:
        if isinstance(x, torch.Tensor):
            have = dtype_from_torch(x.dtype)
        elif isinstance(x, (np.ndarray, np.generic)):
            have = dtype_from_numpy(x.dtype)
        else:
            have = None
    except TypeError as e:
        raise CompileError(f"input {name} expects {t}: {e}") from None
    if have is None:
        arr = np.asarray(x)
        if arr.dtype.kind == "f" and not t.is_float:
            raise CompileError(f"input {name} expects {t}, got floating-point values")
        return _to_numpy(arr, t)
    if not lossless_cast(have, t.dtype):
        raise CompileError(f"input {name} expects {t.dtype} ({t}), got {have}: convert it "
                           f"first (only lossless conversions such as f16 -> f32 are done)")
    return _to_numpy(x, t)


def _runtime_class(backend: str) -> type[Runtime]:
    """The runtime class of ``backend`` (``backends/runtime.py``'s protocol), imported lazily."""
    if backend == "tvm":
        from .backends.tvm import TVMModule

        return TVMModule
    if backend == "onnxruntime":
        from .backends.onnx import OnnxRuntimeSession

        return OnnxRuntimeSession
    from .backends.torch import TorchRuntime

    return TorchRuntime


def _onnxruntime_session(graph: Graph, threads: int) -> Runtime:
    """``graph`` exported to ONNX and loaded in onnxruntime."""
    try:
        from . import to_onnx
        from .backends.onnx import OnnxRuntimeSession

        with tempfile.TemporaryDirectory(prefix="shrinkc-onnx-") as d:
            # max pools that keep NaN as the other backends do (onnxruntime's drop it)
            data = to_onnx(graph, Path(d) / "model.onnx", propagate_nan=True).read_bytes()
    except ModuleNotFoundError as e:
        raise CompileError(f"the onnxruntime backend needs shrinkc.backends.onnx "
                           f"(to_onnx), which is not installed: {e}") from None
    return OnnxRuntimeSession(data, threads)


# ============================================================================ CompiledModel
class CompiledModel:
    """A compiled model: call it on torch tensors or numpy arrays (positional, a sequence,
    or a mapping by input name). Returns torch tensors if any input was one, else numpy;
    one output bare, several as a tuple."""

    def __init__(self, runner: Runtime, inputs: list[tuple[str, TensorType]],
                 outputs: list[tuple[str, TensorType]], report: CompileReport,
                 graph: Graph | None = None, batch_inputs: Iterable[str] = ()):
        self._runner = runner
        self.inputs = inputs
        self.outputs = outputs
        self._report = report
        self.graph = graph  # the compiled (optimised) IR, when compiled in this process
        # inputs whose dim 0 is a batch of any size (onnxruntime / torch of a polymorphic graph)
        self.batch_inputs = frozenset(batch_inputs)

    @property
    def backend(self) -> str:
        return self._runner.backend

    def report(self) -> CompileReport:
        """The compile report (``str()`` of it is the human-readable form)."""
        return self._report

    def _bind(self, args: tuple) -> tuple[list[np.ndarray], bool]:
        if len(args) == 1 and isinstance(args[0], Mapping):
            given = args[0]
            missing = [n for n, _ in self.inputs if n not in given]
            if missing:
                raise CompileError(f"missing inputs {missing} (inputs: "
                                   f"{[n for n, _ in self.inputs]})")
            args = tuple(given[n] for n, _ in self.inputs)
        elif len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        if len(args) != len(self.inputs):
            raise CompileError(f"{self._report.model} takes {len(self.inputs)} inputs "
                               f"({', '.join(n for n, _ in self.inputs)}), got {len(args)}")
        as_torch = any(isinstance(a, torch.Tensor) for a in args)
        arrays = []
        batch = None
        for (name, t), a in zip(self.inputs, args):
            arr = _input_array(name, a, t)
            if name in self.batch_inputs and arr.ndim == t.rank and arr.shape[1:] == t.shape[1:] \
                    and arr.shape[0] >= 1:
                if batch is not None and arr.shape[0] != batch:
                    raise CompileError(f"input {name} has batch {arr.shape[0]}, an earlier "
                                       f"input {batch}: the batch inputs must agree")
                batch = arr.shape[0]
            elif arr.shape != t.shape:
                why = ("its dim 0 is the batch: any size" if name in self.batch_inputs else
                       self._report.batch or "compiled with static shapes")
                raise CompileError(f"input {name} expects {t}, got shape {list(arr.shape)} "
                                   f"({why})")
            arrays.append(arr)
        return arrays, as_torch

    def run_numpy(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on numpy arrays already of the right dtypes and shapes."""
        return self._runner.run(list(arrays))

    def __call__(self, *args: Any) -> Any:
        arrays, as_torch = self._bind(args)
        outs = self._runner.run(arrays)
        if as_torch:
            outs = [torch.from_numpy(np.ascontiguousarray(o)) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the artifact and ``manifest.json`` into ``directory``; returns it.

        The manifest records every file's size and SHA-256 (``load_compiled`` checks them).
        The files are written into a temporary folder inside ``directory`` first and moved
        into place with the manifest last: a failed save leaves no file behind (and an
        interrupted one no manifest, so nothing half-written loads)."""
        from .ir.files import check_output_dir, file_digest, make_dirs

        d = Path(directory)
        check_output_dir(d, "save")
        created = not d.exists()
        make_dirs(d, "save")
        t0 = time.perf_counter()
        stage = Path(tempfile.mkdtemp(prefix=".shrinkc-save-", dir=d))
        try:
            entry = self._runner.save(stage)
            files = dict(entry.get("files", {}))
            records = {}
            for role, fname in files.items():
                size, sha = file_digest(stage / fname)
                records[role] = {"path": fname, "size": size, "sha256": sha}
            self._report.artifact_bytes = sum(r["size"] for r in records.values())
            self._report.times["save_s"] = time.perf_counter() - t0
            manifest = {
                "format": FORMAT, "version": FORMAT_VERSION, "backend": self.backend,
                "model": self._report.model, "pipeline": self._report.pipeline,
                "target": self._report.target, "threads": self._runner.threads,
                "inputs": [_type_entry(n, t, n in self.batch_inputs) for n, t in self.inputs],
                "outputs": [_type_entry(n, t) for n, t in self.outputs],
                **entry, "files": records, "report": self._report.as_dict(),
            }
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            (d / MANIFEST).unlink(missing_ok=True)  # no manifest while files are replaced
            for fname in files.values():
                os.replace(stage / fname, d / fname)
            os.replace(stage / MANIFEST, d / MANIFEST)
        except OSError as e:
            if created:
                shutil.rmtree(d, ignore_errors=True)
            raise CompileError(f"save {d}: {e.strerror or e}") from None
        except BaseException:
            if created:
                shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        log.info("saved %s (%s) to %s: %s", self._report.model, self.backend, d,
                 ", ".join(files.values()))
        return d

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {t}" for n, t in self.inputs)
        return f"<CompiledModel {self._report.model} [{self.backend}] ({ins})>"


def _type_entry(name: str, t: TensorType, batch: bool = False) -> dict[str, Any]:
    entry = {"name": name, "dtype": t.dtype, "shape": list(t.shape)}
    return {**entry, "batch": True} if batch else entry


def _types_from(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, TensorType]]:
    return [(e["name"], TensorType(e["dtype"], tuple(e["shape"]))) for e in entries]


#: The files each backend's manifest must list (role -> what it is).
_REQUIRED_FILES = {"tvm": ("library",), "onnxruntime": ("model",), "torch": ("model",)}


def _check_manifest(m: Any, where: Path) -> None:
    """Raise ``CompileError`` naming the first thing wrong with a manifest's schema."""
    def bad(what: str) -> CompileError:
        return CompileError(f"{where}: invalid manifest: {what}")

    if not isinstance(m, dict):
        raise bad(f"expected a JSON object, got a JSON {_json_kind(m)}")
    if m.get("format") != FORMAT:
        raise CompileError(f"{where}: not a shrinkc compiled model (format "
                           f"{m.get('format')!r}, expected {FORMAT!r})")
    version = m.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"'version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CompileError(f"{where}: format version {version} was written by a newer shrinkc "
                           f"(this one reads version {FORMAT_VERSION})")
    if version < FORMAT_VERSION:
        raise CompileError(f"{where}: format version {version} has no file digests (this "
                           f"shrinkc reads version {FORMAT_VERSION}): compile and save the "
                           f"model again")
    backend = m.get("backend")
    if backend not in BACKENDS:
        raise bad(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    for key in ("inputs", "outputs"):
        entries = m.get(key)
        if not isinstance(entries, list) or (key == "outputs" and not entries):
            raise bad(f"'{key}' must be a {'non-empty ' if key == 'outputs' else ''}list, got "
                      f"{_json_kind(entries)}")
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and isinstance(e.get("name"), str)
                    and e.get("dtype") in DTYPES and isinstance(e.get("shape"), list)
                    and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                            for d in e["shape"]) and isinstance(e.get("batch", False), bool)):
                raise bad(f"{key}[{i}] must be {{name: str, dtype: one of "
                          f"{'/'.join(DTYPES)}, shape: [int, ...], batch: bool (optional)}}, "
                          f"got {json.dumps(e)[:80]}")
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise bad(f"'files' must be a non-empty object, got {_json_kind(files)}")
    for role, rec in files.items():
        if not (isinstance(rec, dict) and isinstance(rec.get("path"), str)
                and isinstance(rec.get("size"), int) and not isinstance(rec["size"], bool)
                and rec["size"] >= 0 and isinstance(rec.get("sha256"), str)
                and len(rec["sha256"]) == 64):
            raise bad(f"files.{role} must be {{path: str, size: int, sha256: 64 hex digits}}, "
                      f"got {json.dumps(rec)[:80]}")
    missing = [r for r in _REQUIRED_FILES[backend] if r not in files]
    if missing:
        raise bad(f"a {backend} model lists files {', '.join(missing)}; 'files' has "
                  f"{', '.join(files)}")
    if backend == "tvm" and not isinstance(m.get("target"), dict):
        raise bad(f"a tvm model needs a 'target' object, got {_json_kind(m.get('target'))}")
    if m.get("threads") is not None and not isinstance(m.get("threads"), int):
        raise bad(f"'threads' must be an integer or null, got {m.get('threads')!r}")
    if not isinstance(m.get("report", {}), dict):
        raise bad(f"'report' must be an object, got {_json_kind(m.get('report'))}")


def _json_kind(x: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(x), type(x).__name__)


def _inside(d: Path, name: str, role: str, where: Path) -> Path:
    """The file ``name`` of the artifact, refused when it is not a plain file inside ``d``."""
    p = Path(name)
    if not name or p.is_absolute() or ".." in p.parts or p.name in ("", ".", MANIFEST):
        raise CompileError(f"{where}: files.{role} {name!r} is not a file name inside "
                           f"{d} (refused)")
    full = d / p
    if not full.resolve().is_relative_to(d.resolve()):
        raise CompileError(f"{where}: files.{role} {name!r} leads outside {d} (a symlink to "
                           f"{full.resolve()}; refused)")
    if not full.is_file():
        raise CompileError(f"{full}: no such file (listed as files.{role} in {where})")
    return full


def _verified_copy(src: Path, rec: Mapping[str, Any], dst: Path, role: str) -> None:
    """Copy ``src`` to ``dst``, checking its size and SHA-256 against the manifest on the
    bytes copied: what is loaded afterwards is exactly what was checked."""
    import hashlib

    size = src.stat().st_size
    if size != rec["size"]:
        raise CompileError(f"{src}: {size} bytes, but the manifest says {rec['size']} "
                           f"(truncated or replaced; files.{role}): not loaded")
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(1 << 20):
            h.update(chunk)
            fo.write(chunk)
    if h.hexdigest() != rec["sha256"] or dst.stat().st_size != rec["size"]:
        raise CompileError(f"{src}: SHA-256 differs from the manifest's (the file was altered "
                           f"after saving; files.{role}): not loaded")


def load_compiled(path: str | os.PathLike) -> CompiledModel:
    """A ``CompiledModel`` from a directory written by ``CompiledModel.save``. Runs no pass.

    Before anything is loaded the manifest's schema and format version are checked, and
    every file it lists must lie inside the directory and match its recorded size and
    SHA-256; the files are loaded from a private copy made while checking, so a file
    changed afterwards cannot affect (or crash) the loaded model. Any failure is one
    ``CompileError`` naming the file."""
    d = Path(path)
    mpath = d / MANIFEST
    if not d.is_dir():
        raise CompileError(f"{d}: no such directory" if not d.exists() else
                           f"{d}: not a directory (load_compiled takes the directory that "
                           f"CompiledModel.save wrote)")
    if not mpath.is_file():
        raise CompileError(f"{d}: no {MANIFEST} (not a directory written by "
                           f"CompiledModel.save)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, OSError) as e:
        raise CompileError(f"{mpath}: corrupt manifest: {e}") from None
    _check_manifest(manifest, mpath)
    backend = manifest["backend"]
    sources = {role: _inside(d, rec["path"], role, mpath)
               for role, rec in manifest["files"].items()}
    private = Path(tempfile.mkdtemp(prefix="shrinkc-load-"))
    try:
        for role, rec in manifest["files"].items():
            _verified_copy(sources[role], rec, private / Path(rec["path"]).name, role)
        entry = {**manifest, "files": {role: Path(rec["path"]).name
                                       for role, rec in manifest["files"].items()}}
        inputs, outputs = _types_from(manifest["inputs"]), _types_from(manifest["outputs"])
        runner = _runtime_class(backend).load(private, entry, inputs, outputs)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    if backend == "tvm":  # the loaded library is mapped from the copy: keep it while in use
        weakref.finalize(runner, shutil.rmtree, str(private), True)
    else:  # everything is in memory now
        shutil.rmtree(private, ignore_errors=True)
    fields = CompileReport.__dataclass_fields__
    report = CompileReport(**{k: v for k, v in manifest.get("report", {}).items() if k in fields})
    batch_inputs = [e["name"] for e in manifest["inputs"] if e.get("batch")]
    return CompiledModel(runner, inputs, outputs, report, batch_inputs=batch_inputs)


# ============================================================================ compile
def _example_list(example_inputs: Any) -> list[Any] | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        return [example_inputs]
    if isinstance(example_inputs, Mapping):
        return list(example_inputs.values())
    return list(example_inputs)


def _onnx_static_check(model: Any, name: str) -> None:
    """Name the first symbolic input dim of an ONNX model other than a batch (dim 0), before
    the frontend runs."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model),
                                                                        load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if i == 0:  # a symbolic dim 0 is the batch (the frontend's nominal batch 1)
                continue
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                from .backends.tvm import StaticShapeError

                raise StaticShapeError(
                    f"{name}: input {vi.name!r} dim {i} ({dim.dim_param or '?'}) is not static; "
                    f"compile needs static input shapes: pass example_inputs (their shapes fix "
                    f"the symbolic dims)")


def _to_graph(model_or_graph: Any, examples: list[Any] | None,
              named: Mapping[str, Any] | None = None) -> tuple[Graph, float]:
    """The IR graph of a Graph, nn.Module, .onnx / .shrk path or ModelProto; trace time."""
    t0 = time.perf_counter()
    if isinstance(model_or_graph, Graph):
        return model_or_graph, 0.0
    if isinstance(model_or_graph, torch.nn.Module):
        if examples is None:
            from .backends.tvm import StaticShapeError

            raise StaticShapeError(
                f"compile: {type(model_or_graph).__name__} is a torch module: pass "
                f"example_inputs (tensors whose static shapes the compiled model will take)")
        from .ir.frontends.torch import trace

        tensors = tuple(torch.as_tensor(x) for x in examples)
        return trace(model_or_graph, tensors), time.perf_counter() - t0
    is_onnx = isinstance(model_or_graph, (str, os.PathLike)) and str(model_or_graph).endswith(
        ".onnx")
    if not is_onnx and type(model_or_graph).__name__ == "ModelProto":
        is_onnx = True
    if is_onnx:
        name = str(model_or_graph) if not hasattr(model_or_graph, "graph") else "ModelProto"
        if isinstance(model_or_graph, (str, os.PathLike)) and not Path(model_or_graph).is_file():
            raise CompileError(f"{model_or_graph}: no such file")
        shapes = None
        if examples is None:
            _onnx_static_check(model_or_graph, name)
        else:
            import onnx

            proto = (model_or_graph if isinstance(model_or_graph, onnx.ModelProto)
                     else onnx.load(str(model_or_graph), load_external_data=False))
            inits = {i.name for i in proto.graph.initializer}
            names = [vi.name for vi in proto.graph.input if vi.name not in inits]
            if len(names) != len(examples):
                raise CompileError(f"{name} has {len(names)} inputs ({', '.join(names)}), "
                                   f"example_inputs gives {len(examples)}")
            if named is not None:
                unknown = sorted(set(named) - set(names))
                if unknown:
                    raise CompileError(f"{name}: example_inputs names {unknown}, which are not "
                                       f"inputs (inputs: {', '.join(names)})")
                shapes = {n: tuple(np.shape(x)) for n, x in named.items()}
            else:
                shapes = {n: tuple(np.shape(x)) for n, x in zip(names, examples)}
        from . import load_onnx

        return load_onnx(model_or_graph, input_shapes=shapes), time.perf_counter() - t0
    if isinstance(model_or_graph, (str, os.PathLike)) and str(model_or_graph).endswith(".shrk"):
        from .ir.serialize import load

        return load(model_or_graph), time.perf_counter() - t0
    raise CompileError(f"compile takes an ir.Graph, a torch.nn.Module, an ONNX model (path or "
                       f"ModelProto) or a .shrk path, got {type(model_or_graph).__name__}")


def _canonical_pipeline(passes: str | Sequence[Any]) -> str:
    try:
        from .passes.registry import canonical
    except ImportError:  # pragma: no cover - the registry ships with the passes
        return passes if isinstance(passes, str) else ",".join(map(str, passes))
    return canonical(passes)


def _error(ref: list[torch.Tensor], got: list[np.ndarray]) -> tuple[float, float]:
    max_abs, num, den = 0.0, 0.0, 0.0
    for r, g in zip(ref, got):
        r64 = r.detach().double().numpy()
        g64 = np.asarray(g, dtype=np.float64)
        if r64.size:
            max_abs = max(max_abs, float(np.max(np.abs(r64 - g64))))
        num += float(np.sum((r64 - g64) ** 2))
        den += float(np.sum(r64 ** 2))
    return max_abs, (num / den) ** 0.5 if den > 0 else num ** 0.5


def _choose_backend(graph: Graph, target: Any, tune_trials: int, tuning_db: Any,
                    times: dict[str, float],
                    tune_budget: str | float | None = None) -> tuple[str, str, Any]:
    """(backend, reason, lowered Relax module or None) for ``backend=None``: "tvm" for a
    target, tuning, or a covering database (``compile`` then measures tuned TVM against
    onnxruntime when there is no target), else onnxruntime (torch without it)."""
    if target is not None:
        shown = target if isinstance(target, str) else json.dumps(dict(target))
        return "tvm", f"a target was given ({shown})", None
    if tune_trials > 0 or tune_budget is not None:
        asked = [f"tune_trials={tune_trials}"] if tune_trials > 0 else []
        asked += [f"tune_budget={tune_budget}"] if tune_budget is not None else []
        return "tvm", f"a tuning budget was given ({', '.join(asked)})", None
    from .backends import tvm as btvm

    tt = btvm.tuning_module()
    note = ""
    if tt is None:
        note = "tuning is unavailable here (MetaSchedule's xgboost cost model is missing)"
    else:
        t0 = time.perf_counter()
        tgt = btvm.resolve_target(None)
        db = Path(tuning_db) if tuning_db is not None else Path(tt.default_db_dir(tgt))
        if (db / tt.DB_WORKLOAD_FILE).is_file():
            lowered = btvm.lower(graph)
            covered, total = btvm.database_coverage(lowered, tgt, db)
            times["coverage_check_s"] = time.perf_counter() - t0
            if total > 0 and covered == total:
                return "tvm", (f"the tuning database {db} covers all {total} workloads of the "
                               f"model"), lowered
            note = f"the tuning database {db} covers {covered}/{total} workloads"
        else:
            note = f"no tuning database at {db}"
    if not _onnxruntime_installed():
        return "torch", (f"no target, tuning budget or covering tuning database ({note}); "
                         f"onnxruntime would be picked but shrinkc.backends.onnx is not "
                         f"installed"), None
    return "onnxruntime", (f"no target, tuning budget or covering tuning database ({note}); "
                           f"untuned TVM is only built and timed when tuning is asked"), None


def compile(model_or_graph: Any, example_inputs: Any = None, *,  # noqa: A001
            passes: str | Sequence[Any] | None = None, backend: str | None = None,
            target: str | Mapping[str, Any] | None = None, tune_trials: int = 0,
            tune_budget: str | float | None = None,
            tuning_db: str | os.PathLike | None = None,
            calibration: Iterable[Any] | str | os.PathLike | None = None,
            keep_params: bool = False, check: bool = True, seed: int = 0,
            name: str | None = None,
            progress: Callable[[str], None] | None = None) -> CompiledModel:
    """Trace (if needed), optimise and compile a model; returns a ``CompiledModel``.

    - ``example_inputs``: a tensor / array, a sequence of them, or a mapping by input name.
      Required for a torch module (they fix the static shapes) and for an ONNX model with
      symbolic dims; otherwise used to measure the error (random inputs when ``None``).
    - ``passes``: pipeline text (``"fold-bn,prune-channels(ratio=0.3)"``); none = compile as is.
    - ``backend``: ``"tvm"``, ``"onnxruntime"``, ``"torch"`` or ``None`` (picked; see the
      module docstring). ``target``: a preset name (``host``, ``x86-avx2``, ``x86-avx512``,
      ``aarch64``) or a TVM target dict; TVM only.
    - ``tune_trials``: the model's MetaSchedule budget (TVM; ``backends/tvm/tuning/``):
      trials already spent on the same workloads in the database count, so compiling again
      with the same budget does no new trials. ``tune_budget``: a time budget for tuning
      (``"90s"``, ``"5m"``, ``"1h30m"`` or seconds), alone or with ``tune_trials`` (whichever
      comes first). ``tuning_db``: its database directory
      (default: per target, in the user cache dir). Convolutions are tuned and built in NHWC
      with prepacked weights (``backends.tvm.prepare``).
    - ``keep_params``: TVM only — weights as function parameters saved beside the library
      (``params.safetensors``) instead of constants inside it (then without weight
      prepacking: a database tuned without ``keep_params`` does not cover it).
    - ``calibration``: input batches for passes that calibrate (``quantize``,
      ``bias-correct``), each like ``example_inputs``; or an ``.npz`` file with one array
      per input, samples along dim 0 (``passes.analyses.calibration.load_calibration``).
    - ``check``: measure the error against the original graph on the example inputs.
    - ``progress``: called with the name of each stage as it starts (``frontend``,
      ``passes``, ``lower``, ``tune``, ``relax passes``, ``codegen``, ``link``, ``check``, …);
      given one, tuning also shows MetaSchedule's progress bar (without, it is silent).
      ``shrinkc compile`` draws them on a terminal.
    """
    def stage(name: str) -> None:
        if progress is not None:
            progress(name)

    times: dict[str, float] = {}
    t_start = time.perf_counter()
    if backend is not None and backend not in BACKENDS:
        raise CompileError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)} "
                           f"(or None to pick)")
    if tune_trials < 0:
        raise CompileError(f"tune_trials must be >= 0, got {tune_trials}")
    from .backends.tvm.budget import format_budget, parse_budget

    try:
        budget_s = parse_budget(tune_budget, "tune_budget")
    except ValueError as e:
        raise CompileError(str(e)) from None
    budget_text = format_budget(budget_s) if budget_s is not None else None
    if backend in ("onnxruntime", "torch") and (target is not None or tune_trials):
        raise CompileError(f"target and tune_trials apply to the tvm backend, not {backend}")
    if backend in ("onnxruntime", "torch") and budget_s is not None:
        raise CompileError(f"tune_budget applies to the tvm backend, not {backend}")
    if keep_params and backend not in (None, "tvm"):
        raise CompileError(f"keep_params applies to the tvm backend, not {backend}")

    examples = _example_list(example_inputs)
    named = example_inputs if isinstance(example_inputs, Mapping) else None
    stage("frontend")
    original, times["frontend_s"] = _to_graph(model_or_graph, examples, named)
    model_name = name or original.name
    from .ir.interpreter import bind_inputs, random_inputs

    if examples is None:
        inputs_t = random_inputs(original, seed=seed)
        input_note = "random inputs"
    else:
        inputs_t = bind_inputs(original, example_inputs if isinstance(example_inputs, Mapping)
                               else examples)
        input_note = "the example inputs"
        original = _at_example_batch(original, inputs_t)

    graph = original
    pipeline = None
    if passes:
        from . import optimize

        pipeline = _canonical_pipeline(passes)
        if isinstance(calibration, (str, os.PathLike)):
            from .passes.analyses.calibration import load_calibration

            calibration = load_calibration(calibration, original)
        stage("passes")
        t0 = time.perf_counter()
        graph = optimize(original, passes, example_inputs=inputs_t, calibration=calibration,
                         seed=seed)
        times["passes_s"] = time.perf_counter() - t0
        log.info("%s: passes %s in %.2fs", model_name, pipeline, times["passes_s"])

    lowered = None
    measure = False  # backend=None, tuned TVM against onnxruntime
    if backend is None:
        stage("choosing a backend")
        backend, reason, lowered = _choose_backend(graph, target, tune_trials, tuning_db, times,
                                                   budget_text)
        # keep_params asks for TVM's artifact (weights beside the library): no contest
        measure = (backend == "tvm" and target is None and not keep_params
                   and _onnxruntime_installed())
    else:
        reason = "requested"
    log.info("%s: backend %s (%s)", model_name, backend, reason)

    tuning: dict[str, Any] = {}
    resolved_target = None
    t0 = time.perf_counter()
    measured: dict[str, float] = {}
    if backend == "tvm":
        arrays = [_to_numpy(x, v.type) for x, v in zip(inputs_t, graph.inputs)]
        runner, resolved_target = _compile_tvm(
            graph, target, tune_trials, budget_s, tuning_db, keep_params, lowered, times,
            tuning, stage, show_tuning=progress is not None, arrays=arrays)
        if measure and runner.runs_here:
            backend, runner, reason, measured = _measured_choice(
                graph, runner, reason, arrays, input_note, times, stage)
            if backend != "tvm":
                resolved_target = None
    elif backend == "onnxruntime":
        stage("onnx export and session")
        runner = _onnxruntime_session(graph, host_threads())
        times["build_s"] = time.perf_counter() - t0
    else:
        from .backends.torch import TorchRuntime

        stage("to_torch")
        runner = TorchRuntime(graph)
        times["build_s"] = time.perf_counter() - t0

    orig_cost, cost = graph_cost(original), graph_cost(graph)
    polymorphic = ir_batch.is_polymorphic(graph) and backend != "tvm"
    n = ir_batch.nominal_batch(graph)
    if polymorphic:
        batch_note = (f"any (dim 0 of {', '.join(v.name for v in ir_batch.batch_inputs(graph))};"
                      f" cost and error at batch {n})")
    elif ir_batch.is_polymorphic(graph):
        batch_note = f"{n} only (TVM compiles static shapes, at the example inputs' batch)"
    else:
        why = graph.meta.get(ir_batch.STATIC_KEY)
        batch_note = "static (the graph is static-batch" + (f": {why})" if why else ")")
    report = CompileReport(
        model=model_name, backend=backend, reason=reason, pipeline=pipeline,
        target=resolved_target, inputs=[f"{v.name}: {v.type}" for v in graph.inputs],
        params=cost.params, macs=cost.total.macs, param_bytes=cost.param_bytes,
        original_params=orig_cost.params, original_macs=orig_cost.total.macs,
        original_param_bytes=orig_cost.param_bytes, threads=runner.threads,
        tune_trials=tune_trials, tune_budget=budget_text, tuning=tuning,
        measured_ms=measured, times=times, batch=batch_note)
    inputs = [(v.name, v.type) for v in graph.inputs]
    outputs = [(v.name, v.type) for v in graph.outputs]
    cm = CompiledModel(runner, inputs, outputs, report, graph,
                       [v.name for v in ir_batch.batch_inputs(graph)] if polymorphic else ())

    if not check:
        report.error_note = "check=False"
    elif not runner.runs_here:
        report.error_note = f"code for {resolved_target.get('mtriple')} does not run here"
    else:
        from .ir.interpreter import run

        stage("check")
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = run(original, inputs_t)
        got = cm.run_numpy([_to_numpy(x, t) for x, (_, t) in zip(inputs_t, inputs)])
        report.max_abs_error, report.rel_l2_error = _error(ref, got)
        times["check_s"] = time.perf_counter() - t0
        log.info("%s: error vs original on %s: max %.3g, rel-L2 %.3g", model_name, input_note,
                 report.max_abs_error, report.rel_l2_error)
    times["total_s"] = time.perf_counter() - t_start
    return cm


def _at_example_batch(graph: Graph, inputs: list[torch.Tensor]) -> Graph:
    """``graph`` specialised to the batch of ``inputs`` (bound to it) when that differs."""
    ins = ir_batch.batch_inputs(graph)
    if not ins:
        return graph
    n = int(inputs[graph.inputs.index(ins[0])].shape[0])
    if n == ir_batch.nominal_batch(graph):
        return graph
    log.info("%s: specialised from batch %d to the example inputs' batch %d", graph.name,
             ir_batch.nominal_batch(graph), n)
    return ir_batch.specialize(graph, n, share_data=True)


def _onnxruntime_installed() -> bool:
    try:
        from .backends import onnx as _onnx  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def time_backends(runs: Mapping[str, Callable[[], Any]], *, rounds: int = 15, warmup: int = 2,
                  max_seconds: float = 5.0) -> tuple[dict[str, float], int]:
    """(median ms per candidate, rounds): every candidate warmed up, then timed round-robin
    (one run of each per round, so load on the machine hits all alike), ``rounds`` rounds or
    as many as fit in ``max_seconds`` (at least 3). ``compile``'s measured choice."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    runs_ms: dict[str, list[float]] = {name: [] for name in runs}
    t_end = time.perf_counter() + max_seconds
    done = 0
    for done in range(1, rounds + 1):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            runs_ms[name].append((time.perf_counter() - t0) * 1e3)
        if done >= 3 and time.perf_counter() > t_end:
            break
    return {name: statistics.median(v) for name, v in runs_ms.items()}, done


def _measured_choice(graph: Graph, tvm_runner: Runtime, reason: str, arrays: list[np.ndarray],
                     input_note: str, times: dict[str, float],
                     stage: Callable[[str], None]) -> tuple[str, Runtime, str, dict[str, float]]:
    """Tuned TVM against onnxruntime on the example inputs: (backend, runtime, reason,
    medians) of the faster."""
    stage("onnx export and session")
    t0 = time.perf_counter()
    ort = _onnxruntime_session(graph, host_threads())
    times["onnxruntime_build_s"] = time.perf_counter() - t0
    stage("timing tvm against onnxruntime")
    t0 = time.perf_counter()
    medians, rounds = time_backends({"tvm": lambda: tvm_runner.run(arrays),
                                     "onnxruntime": lambda: ort.run(arrays)})
    times["measure_s"] = time.perf_counter() - t0
    pick = "tvm" if medians["tvm"] <= medians["onnxruntime"] else "onnxruntime"
    other = "onnxruntime" if pick == "tvm" else "tvm"
    why = (f"measured on {input_note}, {pick} is faster: {pick} {medians[pick]:.3f} ms, "
           f"{other} {medians[other]:.3f} ms (medians of {rounds} round-robin runs; "
           f"tvm was a candidate because {reason})")
    log.info("backend choice: %s", why)
    return pick, (tvm_runner if pick == "tvm" else ort), why, medians


def _tuned_or_default(tuned: Runtime, lowered: Any, tgt: dict[str, Any], name: str,
                      arrays: list[np.ndarray], times: dict[str, float],
                      tuning: dict[str, Any], stage: Callable[[str], None]) -> Runtime:
    """The tuned module, or the same lowered module built with the default schedules if that
    runs faster on the example inputs (timed round-robin, ``time_backends``: 60 rounds, at
    most ~5 s; the two modules differ by a few percent, not by the backend choice's
    factors, so it takes more rounds than that). MetaSchedule
    times each kernel on its own, a few hundred noisy measurements on a loaded machine, and
    can keep schedules that make the whole model slower than the defaults (measured on a
    CP-decomposed ResNet-18 after a minute of tuning: 1.14 ms tuned, 1.06 ms untuned)."""
    from .backends import tvm as btvm

    stage("build with the default schedules")
    t0 = time.perf_counter()
    default = btvm.build_lowered(lowered, tgt, name=name)
    default.link()
    times["default_build_s"] = time.perf_counter() - t0
    stage("timing tuned against the default schedules")
    t0 = time.perf_counter()
    medians, rounds = time_backends({"tuned": lambda: tuned.run(arrays),
                                     "default": lambda: default.run(arrays)}, rounds=60)
    times["measure_tuned_s"] = time.perf_counter() - t0
    keep = "tuned" if medians["tuned"] <= medians["default"] else "default"
    tuning.update(schedules=keep, tuned_ms=round(medians["tuned"], 4),
                  default_ms=round(medians["default"], 4))
    log.info("TVM schedules: %s (tuned %.3f ms, default %.3f ms, medians of %d round-robin "
             "runs)", keep, medians["tuned"], medians["default"], rounds)
    return tuned if keep == "tuned" else default


def _compile_tvm(graph: Graph, target: Any, tune_trials: int, budget_s: float | None,
                 tuning_db: Any, keep_params: bool, lowered: Any, times: dict[str, float],
                 tuning: dict[str, Any], stage: Callable[[str], None],
                 show_tuning: bool = False, arrays: list[np.ndarray] | None = None
                 ) -> tuple[Runtime, dict[str, Any]]:
    """The TVM module (tuned, or built with a database that covers it) and the target.
    With ``arrays`` (the example inputs) a module built with a database is timed against
    the default schedules and the faster is kept (``_tuned_or_default``)."""
    from .backends import tvm as btvm

    stage("importing tvm")
    t0 = time.perf_counter()
    imported = btvm.import_tvm()
    tgt = btvm.resolve_target(target)
    tt = btvm.tuning_module()
    if imported:
        times["tvm_import_s"] = time.perf_counter() - t0
    tuning_asked = tune_trials > 0 or budget_s is not None
    if tuning_asked and tt is None:
        asked = f"tune_trials={tune_trials}" if tune_trials > 0 else "tune_budget"
        raise TuningUnavailableError(
            f"{asked}: tuning is not available (MetaSchedule's xgboost cost "
            f"model does not import); compile without tuning for untuned TVM")
    stage("lower")
    t0 = time.perf_counter()
    if lowered is None or keep_params:
        lowered = btvm.lower(graph, keep_params=keep_params)
    times["lower_s"] = time.perf_counter() - t0
    pipeline = None
    if tt is not None:
        db = Path(tuning_db) if tuning_db is not None else Path(tt.default_db_dir(tgt))
        if tuning_asked:
            what = ", ".join(([f"{tune_trials} trials"] if tune_trials > 0 else [])
                             + ([f"{tt.format_budget(budget_s)}"] if budget_s else []))
            stage(f"tune ({what})")
            t0 = time.perf_counter()
            result = tt.tune(lowered.mod, tgt, total_trials=tune_trials or None,
                             budget=budget_s, db_dir=db, progress=show_tuning)
            times["tune_s"] = time.perf_counter() - t0
            tuning.update(db=str(db), new_trials=result.new_trials,
                          failures=result.failures, tasks=len(result.tasks),
                          ended_by=result.ended_by)
            if result.first_trial_s is not None:
                tuning["first_trial_s"] = round(result.first_trial_s, 2)
            if result.model_ms is not None:
                tuning["model_estimate_ms"] = round(result.model_ms, 4)
        if (db / tt.DB_WORKLOAD_FILE).is_file():
            tuning.setdefault("db", str(db))

            def pipeline(mod: Any, target_dict: dict[str, Any]) -> Any:
                return tt.apply_database(mod, target_dict, db)
        elif tuning_db is not None:
            raise CompileError(f"tuning_db {db}: no MetaSchedule database there "
                               f"(database_workload.json)")
    module = btvm.build_lowered(lowered, tgt, pipeline=pipeline, name=graph.name,
                                progress=stage)
    if module.runs_here:
        stage("link")
        module.link()  # once, here, so the report shows it (save copies the library)
    times.update(module.timings)
    if pipeline is not None and module.runs_here and arrays is not None:
        return _tuned_or_default(module, lowered, tgt, graph.name, arrays, times, tuning,
                                 stage), tgt
    return module, tgt


__all__ = ["BACKENDS", "CompileError", "CompileReport", "CompiledModel", "TuningUnavailableError",
           "compile", "load_compiled", "time_backends"]
