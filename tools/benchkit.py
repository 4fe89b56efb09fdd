"""One framework for the compression benchmarks: measure models side by side, report them.

The per-pass scripts (``bench_prune``, ``bench_lowrank``, ``bench_quant``, ``bench_deep``,
``bench_structured``) and ``shrinkc bench --recipes`` need the same few things, so they are
here once:

* **Entries.** An :class:`Entry` is one thing measured — the original model in PyTorch
  eager, the original in onnxruntime (fp32, or onnxruntime's own ``quantize_static`` int8),
  or a compressed graph: its accuracy, parameters, MACs, bytes on disk (the ONNX file, and
  shrinkc's ``.shrkz`` storage), latency per backend, and free-form ``extra`` facts.
* **Latency** (:class:`LatencyPool`): every runner is warmed up when added, then all are
  timed round-robin in one process (one run of each per round, the order rotated by one
  runner per round, so that no runner always runs right after the same one: a spinning
  thread pool steals from whatever runs next), so load on a shared machine hits all
  alike; medians and p10–p90 (``bench.Timing``). Runners:
  :func:`torch_eager`, :func:`torch_graph` (``to_torch``), :func:`ort_graph` (``to_onnx``
  in an onnxruntime session), :func:`ort_model` (an ONNX file as it is), :func:`tvm_graph`
  (untuned TVM).
* **Accuracy** (:func:`accuracy`) of anything callable on a batch, in batches when the
  callable takes them and one sample at a time when it has a static batch;
  :func:`ort_quantize_static` makes onnxruntime's int8 model of a graph (what a user would
  pick instead of shrinkc).
* **Ratios** (:func:`ratios`): an entry against a reference entry (compression = bytes,
  params, MACs ratios; speed-up = the reference's median / the entry's fastest backend).
* **Reports**: :func:`render_terminal`, :func:`markdown`, :func:`to_json` (every number, the
  per-run times and the machine), :func:`plot` (PNG scatter plots, one point per entry).

Numbers come from the run; nothing here holds a measured constant.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench import Timing, machine_info, set_threads

log = logging.getLogger(__name__)

__all__ = ["Entry", "LatencyPool", "Runner", "accuracy", "cost_of", "markdown", "ort_graph",
           "ort_model", "ort_quantize_static", "plot", "ratios", "render_terminal",
           "set_threads", "storage_bytes", "to_json", "torch_eager", "torch_graph", "tvm_graph"]

#: A runner: ``fn()`` runs the model once on its fixed input; ``predict(x)`` runs it on a
#: batch (for accuracy); ``batch`` is the batch it takes (None: any).
Runner = tuple[Callable[[], Any], Callable[[torch.Tensor], np.ndarray], int | None]


# ============================================================================ entries
@dataclass
class Entry:
    """One model measured: what it is, its size and cost, accuracy, latency per backend."""

    name: str
    kind: str = "recipe"  # "reference" or "recipe" (or a script's own kinds)
    pipeline: str | None = None
    status: str = "ok"  # "ok", or why there are no numbers ("not available: ...")
    accuracy: float | None = None
    params: int | None = None
    macs: int | None = None
    onnx_bytes: int | None = None
    shrkz_bytes: int | None = None
    latency: dict[str, Timing] = field(default_factory=dict)
    seconds: float | None = None  # time to produce it (passes, recovery)
    extra: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # a short name for plots (default: name)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def best(self) -> tuple[str, float] | None:
        """(backend, median ms) of its fastest backend."""
        if not self.latency:
            return None
        b = min(self.latency, key=lambda k: self.latency[k].median)
        return b, self.latency[b].median

    @property
    def size(self) -> int | None:
        """Bytes on disk: the smaller of its ONNX file and its ``.shrkz`` storage."""
        sizes = [s for s in (self.onnx_bytes, self.shrkz_bytes) if s]
        return min(sizes) if sizes else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = {b: {"median_ms": t.median, "p10_ms": t.percentile(10),
                            "p90_ms": t.percentile(90), "runs_ms": list(t.runs_ms)}
                        for b, t in self.latency.items() if t.runs_ms}
        d["size"] = self.size
        best = self.best() if all(t.runs_ms for t in self.latency.values()) else None
        d["best_backend"] = best[0] if best else None
        return d


def ratios(entry: Entry, ref: Entry) -> dict[str, float | None]:
    """``entry`` against ``ref``: ``params`` / ``macs`` / ``size`` = ref ÷ entry (> 1 =
    smaller), ``speedup`` = ref's fastest median ÷ entry's fastest median (> 1 = faster),
    ``accuracy_delta`` in points."""
    def div(a, b):
        return a / b if a and b else None

    out: dict[str, float | None] = {
        "params": div(ref.params, entry.params), "macs": div(ref.macs, entry.macs),
        "size": div(ref.size, entry.size), "speedup": None, "accuracy_delta": None}
    eb, rb = entry.best(), ref.best()
    if eb and rb:
        out["speedup"] = rb[1] / eb[1]
    if entry.accuracy is not None and ref.accuracy is not None:
        # rounded to 1e-9 pt: accuracies are counts over a test set, and 96.6 - 97.6 must be
        # -1.0 (not -1.0000000000000142, which a "<= 1 pt drop" check would refuse)
        out["accuracy_delta"] = round(100.0 * (entry.accuracy - ref.accuracy), 9)
    return out


def cost_of(graph) -> tuple[int, int]:
    """(params, MACs) of a graph (the op table's cost model, at its nominal batch)."""
    from ..passes.analyses.cost import summarize

    s = summarize(graph)
    return s.params, s.macs


def storage_bytes(graph) -> tuple[int, int]:
    """(ONNX file bytes, ``.shrkz`` bytes) of a graph."""
    from ..backends.onnx import export_model
    from ..ir.compress import compressed_bytes

    return len(export_model(graph).SerializeToString()), len(compressed_bytes(graph))


# ============================================================================ runners
def _fixed_batch(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def torch_eager(model: torch.nn.Module, x: torch.Tensor) -> Runner:
    """An ``nn.Module`` (eval, ``inference_mode``) on ``x``; takes any batch."""
    model = model.eval()

    def predict(xb: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(xb).numpy()

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run, predict, None


def torch_graph(graph, x: torch.Tensor) -> Runner:
    """``to_torch(graph)`` (the fx module) on ``x``; the graph's batch rule for accuracy."""
    from .. import to_torch
    from ..passes.distill import runs_any_batch

    module = to_torch(graph, trainable=False).eval()
    r, p, _ = torch_eager(module, x)
    return r, p, None if runs_any_batch(graph) else graph.inputs[0].shape[0]


def ort_model(model: Any, x: torch.Tensor, threads: int) -> Runner:
    """An onnxruntime session (``model``: a path, bytes, ModelProto or IR graph) on ``x``."""
    from ..backends.onnx import OnnxRuntimeSession

    sess = OnnxRuntimeSession(model, threads)
    feeds = sess.feeds([x.numpy()])
    name = sess.inputs[0]

    def run() -> Any:
        return sess.session.run(None, feeds)

    def predict(xb: torch.Tensor) -> np.ndarray:
        return sess.session.run(None, {name: xb.numpy()})[0]

    return run, predict, _fixed_batch(sess.session.get_inputs()[0].shape[0])


def ort_graph(graph, x: torch.Tensor, threads: int) -> Runner:
    """``to_onnx(graph)`` in onnxruntime (QDQ graphs run its integer kernels)."""
    return ort_model(graph, x, threads)


def tvm_graph(graph, x: torch.Tensor, target: Any = None) -> Runner:
    """Untuned TVM (``backends.tvm.build`` for ``target``, default this host) on ``x``;
    static shapes: the graph is specialised to ``x``'s batch first when it can be."""
    from ..backends import tvm as btvm

    module = btvm.build(graph, btvm.resolve_target(target))
    module.link()
    tensors = module.to_device([x.numpy()])
    module.run_device(tensors)  # starts the VM and its thread pool

    def run() -> Any:
        return module.run_device(tensors)

    def predict(xb: torch.Tensor) -> np.ndarray:
        out = module.run_device(module.to_device([xb.numpy()]))
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()

    return run, predict, int(x.shape[0])


def ort_quantize_static(graph, calibration: Iterable[torch.Tensor], *, per_channel: bool = True
                        ) -> bytes:
    """onnxruntime's own int8 model of ``graph``: ``quant_pre_process`` (shape inference and
    optimisation, as its docs recommend), then ``quantize_static`` (QDQ format, int8 weights
    and activations, MinMax calibration on ``calibration``: input tensors, one batch
    each), with per-channel weights unless ``per_channel=False``. Returns the model bytes."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    from ..backends.onnx import to_onnx

    batches = [np.ascontiguousarray(b.numpy() if hasattr(b, "numpy") else b)
               for b in calibration]
    name = graph.inputs[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {name: b}

    with tempfile.TemporaryDirectory(prefix="shrinkc-qstatic-") as d:
        fp32, pre, int8 = (Path(d) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        to_onnx(graph, fp32)
        src = fp32
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32), str(pre))
            src = pre
        except Exception as e:  # an optional step: quantize the plain export without it
            log.warning("quant_pre_process failed (%s); quantizing the plain export", e)
        quantize_static(str(src), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=per_channel)
        return int8.read_bytes()


def accuracy(predict: Callable[[torch.Tensor], np.ndarray], X: torch.Tensor, y: torch.Tensor,
             batch: int | None = None, chunk: int = 250) -> float:
    """Top-1 accuracy of ``predict`` (a batch of inputs -> logits) on ``(X, y)``: in chunks
    of ``chunk`` when it takes any batch (``batch=None``), else ``batch`` at a time (the
    samples left over at the end in one more call padded with copies)."""
    step = chunk if batch is None else batch
    correct = 0
    for i in range(0, len(X), step):
        xb, yb = X[i:i + step], y[i:i + step]
        n = len(xb)
        if batch is not None and n < batch:
            xb = torch.cat([xb, xb[-1:].expand(batch - n, *xb.shape[1:])])
        out = np.asarray(predict(xb))[:n]
        correct += int((torch.from_numpy(out).argmax(-1) == yb).sum())
    return correct / max(len(X), 1)


class LatencyPool:
    """Runners warmed up when added, then timed round-robin in one process, the order
    rotated by one runner per round (see above)."""

    def __init__(self, warmup: int = 5):
        self.warmup = warmup
        self._runs: list[tuple[Timing, Callable[[], Any]]] = []

    def add(self, fn: Callable[[], Any]) -> Timing:
        for _ in range(max(self.warmup, 1)):
            fn()
        t = Timing()
        self._runs.append((t, fn))
        return t

    def run(self, repeat: int, progress: Callable[[str], None] | None = None) -> None:
        t_start = time.perf_counter()
        n = len(self._runs)
        for k in range(repeat):
            for timing, fn in self._runs[k % n:] + self._runs[:k % n] if n else ():
                t0 = time.perf_counter()
                fn()
                timing.runs_ms.append((time.perf_counter() - t0) * 1e3)
            if progress and (k + 1) % max(1, repeat // 5) == 0:
                progress(f"timed round {k + 1}/{repeat} ({time.perf_counter() - t_start:.0f} s)")


# ============================================================================ reports
def _ms(t: Timing | None) -> str:
    return f"{t.median:.3f}" if t is not None and t.runs_ms else "-"


def _x(v: float | None) -> str:
    return f"{v:.2f}×" if v is not None else "-"


def _table(entries: Sequence[Entry], refs: dict[str, Entry], backends: Sequence[str],
           baseline: Entry | None) -> tuple[list[str], list[list[str]]]:
    from .table import human, human_bytes

    heads = (["model", "accuracy", "Δ pt", "params", "MACs", "size", "×params", "×MACs",
              "×size"] + [f"{b} ms" for b in backends] + ["best"]
             + [f"speed-up vs {k}" for k in refs] + ["note"])
    rows = []
    for e in entries:
        if not e.ok:
            rows.append([e.name] + ["-"] * (len(heads) - 2) + [e.status])
            continue
        r = ratios(e, baseline) if baseline is not None else {}
        best = e.best()
        delta = r.get("accuracy_delta")
        rows.append([
            e.name, f"{100 * e.accuracy:.2f}%" if e.accuracy is not None else "-",
            f"{delta:+.2f}" if delta is not None else "-",
            human(e.params) if e.params is not None else "-",
            human(e.macs) if e.macs is not None else "-",
            human_bytes(e.size) if e.size else "-",
            _x(r.get("params")), _x(r.get("macs")), _x(r.get("size")),
            *[_ms(e.latency.get(b)) for b in backends],
            best[0] if best else "-",
            *[_x(ratios(e, ref)["speedup"]) for ref in refs.values()],
            "; ".join(f"{k.removesuffix('_error')}: {v}" for k, v in e.extra.items()
                      if k.endswith("_error"))])
    return heads, rows


def render_terminal(entries: Sequence[Entry], refs: dict[str, Entry], backends: Sequence[str],
                    baseline: Entry | None = None) -> str:
    """A fixed-width table: one row per entry; ratios against ``baseline`` (sizes, accuracy)
    and speed-ups of each entry's fastest backend against each of ``refs``."""
    from .table import render

    heads, rows = _table(entries, refs, backends, baseline)
    return render(heads, rows, align="l" + "r" * (len(heads) - 2) + "l")


def markdown(entries: Sequence[Entry], refs: dict[str, Entry], backends: Sequence[str],
             baseline: Entry | None = None, notes: Sequence[str] = ()) -> str:
    """The same table as Markdown, with ``notes`` under it."""
    heads, rows = _table(entries, refs, backends, baseline)
    lines = ["| " + " | ".join(heads) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(heads) - 2) + ["---"]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def to_json(entries: Sequence[Entry], *, threads: int, repeat: int, warmup: int,
            **meta: Any) -> str:
    """Every entry (all numbers, every timed run) and the machine, as JSON text."""
    return json.dumps({"machine": machine_info(threads), "threads": threads, "repeat": repeat,
                       "warmup": warmup, "cpu_count": os.cpu_count(), **meta,
                       "entries": [e.as_dict() for e in entries]}, indent=1, default=str)


def plot(entries: Sequence[Entry], baseline: Entry, speed_ref: Entry, path_speed: Path,
         path_size: Path, title: str = "") -> None:
    """Two PNG scatter plots, one labelled point per entry with numbers: accuracy vs speed-up
    over ``speed_ref``, and accuracy vs bytes on disk (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [e for e in entries if e.ok and e.accuracy is not None]
    for path, xs, xlabel, logx in (
            (path_speed, [ratios(e, speed_ref)["speedup"] for e in pts],
             f"speed-up vs {speed_ref.name} (fastest backend, median)", True),
            (path_size, [e.size for e in pts], "bytes on disk (smaller of ONNX and .shrkz)",
             True)):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for e, xv in zip(pts, xs):
            if xv is None:
                continue
            marker = "s" if e.kind == "reference" else "o"
            ax.scatter([xv], [100 * e.accuracy], marker=marker)
            ax.annotate(e.label or e.name, (xv, 100 * e.accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        if baseline.accuracy is not None:
            ax.axhline(100 * baseline.accuracy - 1.0, ls=":", lw=0.8, color="grey")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        from ..ir.files import atomic_write

        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120),
                     "plot")
        plt.close(fig)
