"""Latency benchmark: PyTorch eager, onnxruntime and TVM (untuned) on the same model, same run.

For each model: trace it once, then time the backends on the same input at batch 1:

- ``torch``: the ``nn.Module`` itself, eager, under ``torch.inference_mode``;
- ``onnxruntime``: ``shrinkc.to_onnx`` of the traced graph, one ``InferenceSession``;
- ``tvm``: ``backends.tvm.build`` of the traced graph for the target (untuned), on the VM.

Each backend is warmed up, then the backends are timed in interleaved blocks
(:func:`time_in_blocks`: a short pause, ``settle`` untimed runs (default
:data:`STEADY_SETTLE`), then a block of timed runs per backend, the order rotating every
round), so a burst of load on a shared machine hits every
backend alike and no backend's spinning thread pool steals the next one's CPU. Reported:
median, p10 and p90 of the per-run wall times, and the speed-up vs PyTorch (PyTorch median
/ backend median: > 1 is faster). Every backend uses the same number of threads (torch
``set_num_threads``, onnxruntime ``intra_op_num_threads``, ``TVM_NUM_THREADS``). Outputs are
checked against PyTorch (max abs difference).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tvm")


@dataclass
class Timing:
    """Per-run wall times of one backend, in milliseconds."""

    runs_ms: list[float] = field(default_factory=list)
    #: the first (untimed) run of each block of :func:`time_in_blocks`: the latency after
    #: ``pause`` seconds idle, with the caches and the CPU as the other backends left them
    first_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.runs_ms, q))

    def fmt(self) -> str:
        return f"{self.median:.2f} ({self.percentile(10):.2f}–{self.percentile(90):.2f})"


def speedup(base: Timing, t: Timing) -> str:
    """``base``'s median over ``t``'s as ``"1.23×"`` (> 1: ``t`` is faster), ``"-"`` when
    either has no runs: the speed-up cell of the benchmark tables."""
    return f"{base.median / t.median:.2f}×" if base.runs_ms and t.runs_ms else "-"


def rounds_of(repeat: int, block: int = 10) -> list[int]:
    """Timed runs per round of :func:`time_in_blocks`: ``block`` each (fewer in the last)
    until ``repeat`` runs."""
    block = max(1, min(block, repeat))
    return [min(block, repeat - done) for done in range(0, repeat, block)]


def balanced_rounds(repeat: int, runners: int, block: int = 10) -> list[int]:
    """Timed runs per round of :func:`time_in_blocks` such that every one of ``runners`` is
    first in equally many rounds: a multiple of ``runners`` rounds of the same number of
    runs (at most ``block``), at least ``repeat`` runs in all (rounded up to whole rounds)."""
    n = max(1, runners)
    rounds = n * max(1, math.ceil(repeat / (max(1, block) * n)))
    return [max(1, math.ceil(repeat / rounds))] * rounds


#: Untimed runs after each block's pause for timing the steady state (``time_in_blocks``'s
#: ``settle``): the default of ``shrinkc bench`` and ``bench_tuned``.
STEADY_SETTLE = 10


def time_in_blocks(runners: Sequence[Callable[[], Any]], rounds: Sequence[int], *,
                   pause: float = 0.3, settle: int = 1) -> list[Timing]:
    """Time ``runners`` in interleaved blocks, one :class:`Timing` per runner.

    Round ``r`` gives every runner in turn one block: a ``pause`` (seconds), ``settle``
    untimed runs (the first one's time goes to ``Timing.first_ms``), then ``rounds[r]``
    timed runs. The order rotates by one runner per round (round ``r`` starts with runner
    ``r mod n``), so no runner always follows the same one; with :func:`balanced_rounds`
    each is first equally often. Not single runs round-robin: on 2 cores the thread pools of
    onnxruntime (spinning) and TVM keep spinning after a run and steal the CPU from the next
    runner (PyTorch measured 30x slower that way); the pause lets them go to sleep. Run
    ``k`` of every runner comes from the same round.

    ``settle``: after an idle pause a model whose weights do not fit in L2 runs slower for
    several runs, not one (measured on a KVM Xeon, 2 threads, pruned ResNet-18 at 64 px, 10.7
    MiB of weights: TVM 0.72, 0.59, 0.54 … 0.48 ms in the 10 runs after 0.3 s idle, against
    0.42 back to back; onnxruntime 0.72, 0.54, then its steady 0.47; the same after 30 runs of
    another module with the same kernels, so it is the model's own data, not the code or the
    thread pool). ``settle=1`` times that transition; a larger ``settle`` times the steady
    state (back-to-back inference) and ``first_ms`` the first run after idle."""
    timings = [Timing() for _ in runners]
    order = list(range(len(runners)))
    for n in rounds:
        for i in order:
            run = runners[i]
            time.sleep(pause)
            t0 = time.perf_counter()
            run()
            timings[i].first_ms.append((time.perf_counter() - t0) * 1e3)
            for _ in range(settle - 1):
                run()
            for _ in range(n):
                t0 = time.perf_counter()
                run()
                timings[i].runs_ms.append((time.perf_counter() - t0) * 1e3)
        order = order[1:] + order[:1]
    return timings


@dataclass
class BenchRow:
    """One model's results."""

    model: str
    input_shape: tuple[int, ...]
    params: int
    macs: int
    param_bytes: int
    timings: dict[str, Timing] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # backend -> why it has no timing
    max_diff: dict[str, float] = field(default_factory=dict)  # vs torch
    build_s: dict[str, float] = field(default_factory=dict)

    def speedup(self, backend: str) -> float | None:
        if "torch" not in self.timings or backend not in self.timings:
            return None
        return self.timings["torch"].median / self.timings[backend].median


def _torch_runner(model: torch.nn.Module, x: torch.Tensor) -> tuple[Callable[[], Any], Any]:
    model = model.eval()

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run, lambda out: out.detach().numpy()


def _ort_runner(graph: Any, x: np.ndarray, threads: int, spinning: bool = False
                ) -> tuple[Callable[[], Any], Any]:
    import tempfile
    from pathlib import Path

    from .. import to_onnx
    from ..backends.onnx import OnnxRuntimeSession

    # ``spinning``: onnxruntime as its users run it, its threads busy-waiting for work (its
    # default; shrinkc's sessions turn it off). Only for timing in blocks with pauses
    # between backends (bench_tuned): run for run round-robin, the spinning threads steal
    # the cores from the next backend.
    with tempfile.TemporaryDirectory(prefix="shrinkc-bench-") as d:
        sess = OnnxRuntimeSession(to_onnx(graph, Path(d) / "model.onnx").read_bytes(), threads,
                                  spinning=spinning)
    feeds = sess.feeds([x])

    def run() -> Any:
        return sess.session.run(None, feeds)

    return run, lambda out: out[0]


def _tvm_runner(graph: Any, x: np.ndarray, target: Any) -> tuple[Callable[[], Any], Any]:
    from ..backends import tvm as btvm

    module = btvm.build(graph, target)
    module.link()
    tensors = module.to_device([x])
    module.run_device(tensors)  # starts the VM and the thread pool

    def run() -> Any:
        return module.run_device(tensors)

    return run, lambda out: (out.numpy() if hasattr(out, "numpy") else out[0].numpy())


def bench_model(name: str, *, input_shape: Sequence[int] | None = None,
                model_kwargs: dict[str, Any] | None = None,
                backends: Sequence[str] = BACKENDS, warmup: int = 5, repeat: int = 30,
                threads: int | None = None, target: Any = None, seed: int = 0,
                pause: float = 0.3, settle: int = STEADY_SETTLE,
                progress: Callable[[str], None] | None = None) -> BenchRow:
    """Time ``backends`` on zoo model ``name`` at batch 1 (see the module docstring).
    ``progress(stage)`` is told what starts (each backend's build, the timing)."""
    def stage(text: str) -> None:
        if progress is not None:
            progress(f"{name}: {text}")

    from ..ir.cost import graph_cost
    from ..ir.frontends.torch import trace
    from . import zoo

    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    threads = threads or default_threads()
    set_threads(threads)
    torch.manual_seed(seed)
    model = zoo.get_model(name, **(model_kwargs or {})).eval()
    shape = tuple(input_shape or zoo.default_input_shape(name))
    x = torch.randn(*shape)
    graph = trace(model, (x,), name=name)
    cost = graph_cost(graph)
    row = BenchRow(name, shape, cost.params, cost.total.macs, cost.param_bytes)
    xn = x.numpy()
    runners: dict[str, tuple[Callable[[], Any], Any]] = {}
    for b in backends:
        stage(f"building {b}")
        t0 = time.perf_counter()
        try:
            if b == "torch":
                runners[b] = _torch_runner(model, x)
            elif b == "onnxruntime":
                runners[b] = _ort_runner(graph, xn, threads)
            else:
                runners[b] = _tvm_runner(graph, xn, target)
        except (ImportError, ModuleNotFoundError) as e:
            row.errors[b] = f"not available: {e}"
            continue
        row.build_s[b] = time.perf_counter() - t0
        log.info("%s: %s ready in %.1fs", name, b, row.build_s[b])
    outputs: dict[str, np.ndarray] = {}
    stage(f"timing ({warmup} warm-up + {repeat} runs per backend)")
    for b, (run, to_np) in runners.items():
        out = None
        for _ in range(max(warmup, 1)):
            out = run()
        outputs[b] = np.asarray(to_np(out), dtype=np.float64)
    if "torch" in outputs:
        row.max_diff = {b: float(np.max(np.abs(o - outputs["torch"]))) for b, o in
                        outputs.items()}
    names = list(runners)
    timed = time_in_blocks([runners[b][0] for b in names],
                           balanced_rounds(repeat, len(names)), pause=pause, settle=settle)
    row.timings.update(zip(names, timed))
    log.info("%s: %s", name, ", ".join(f"{b} {t.median:.2f} ms" for b, t in row.timings.items()))
    return row


def default_threads() -> int:
    from ..backends.tvm import host_cores

    return host_cores()


def set_threads(threads: int) -> None:
    """Use ``threads`` in torch and (if its pool has not started) TVM."""
    torch.set_num_threads(threads)
    have = os.environ.get("TVM_NUM_THREADS")
    if have is not None and int(have) != threads:
        log.warning("TVM_NUM_THREADS=%s is set; TVM will not use %d threads", have, threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))


def machine_info(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return f"{cpu}, {os.cpu_count()} logical CPUs, {threads} threads per backend{load}"


def markdown(rows: Sequence[BenchRow], *, threads: int, warmup: int, repeat: int,
             target: dict[str, Any] | None = None, notes: Sequence[str] = (),
             settle: int = STEADY_SETTLE) -> str:
    """The results as a Markdown table (milliseconds: median (p10–p90))."""
    from .table import human, human_bytes

    lines = [
        "| model | input | params | MACs | size | PyTorch ms | onnxruntime ms | ORT vs PyTorch "
        "| TVM untuned ms | TVM vs PyTorch | TVM build s | max Δ vs PyTorch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        def cell(b: str) -> str:
            return r.timings[b].fmt() if b in r.timings else r.errors.get(b, "–")

        def ratio(b: str) -> str:
            s = r.speedup(b)
            return f"{s:.2f}×" if s is not None else "–"

        diff = max((v for k, v in r.max_diff.items() if k != "torch"), default=None)
        lines.append(
            f"| {r.model} | {'×'.join(map(str, r.input_shape))} | {human(r.params)} | "
            f"{human(r.macs)} | {human_bytes(r.param_bytes)} | {cell('torch')} | "
            f"{cell('onnxruntime')} | {ratio('onnxruntime')} | {cell('tvm')} | {ratio('tvm')} | "
            f"{r.build_s.get('tvm', float('nan')):.1f} | "
            f"{'–' if diff is None else f'{diff:.1e}'} |")
    foot = [f"\nBatch 1, fp32, {machine_info(threads)}. Medians of {repeat} runs after "
            f"{warmup} warm-up runs (p10–p90 in parentheses), backends timed in interleaved "
            f"blocks in one process (each: a pause, {settle} untimed runs, then the timed "
            f"ones). Ratios are PyTorch median / backend median (> 1 = faster than "
            f"PyTorch eager)."]
    if target:
        foot.append(f"TVM target: `{json.dumps(target)}`, untuned (no MetaSchedule).")
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
        foot.append(f"Warning: the machine was busy (load average {os.getloadavg()[0]:.1f} on "
                    f"{os.cpu_count()} CPUs): timings are noisy, and multi-threaded runs suffer "
                    f"most (a thread pool waits for its descheduled threads); compare medians, "
                    f"or use --threads 1.")
    foot += list(notes)
    return "\n".join(lines) + "\n" + "\n".join(foot) + "\n"


def run_bench(names: Sequence[str], *, backends: Sequence[str] = BACKENDS, warmup: int = 5,
              repeat: int = 30, threads: int | None = None, target: Any = None,
              input_shape: Sequence[int] | None = None,
              model_kwargs: dict[str, Any] | None = None, settle: int = STEADY_SETTLE,
              progress: Callable[[str], None] | None = None) -> tuple[list[BenchRow], str]:
    """Benchmark each model; returns the rows and the Markdown table."""
    threads = threads or default_threads()
    resolved = None
    if "tvm" in backends:
        from ..backends.tvm import resolve_target

        resolved = resolve_target(target)
    rows = []
    for i, name in enumerate(names):
        report = None
        if progress is not None:
            def report(text: str, _i: int = i) -> None:
                progress(f"[{_i + 1}/{len(names)}] {text}")
        rows.append(bench_model(name, input_shape=input_shape, model_kwargs=model_kwargs,
                                backends=backends, warmup=warmup, repeat=repeat,
                                threads=threads, target=resolved, settle=settle,
                                progress=report))
    return rows, markdown(rows, threads=threads, warmup=warmup, repeat=repeat, target=resolved,
                          settle=settle)


__all__ = ["BACKENDS", "STEADY_SETTLE", "BenchRow", "Timing", "bench_model", "markdown", "run_bench", "speedup"]
