"""Pass instruments: small objects whose hooks run around every pass (TVM's PassInstrument).

Hooks (all optional): ``enter_pipeline(graph, passes, ctx)``, ``before_pass(graph, step,
ctx)``, ``after_pass(graph, step, ctx)`` (``step.result`` is the pass's ``PassResult``),
``pass_failed(graph_before, step, error, ctx)`` and ``exit_pipeline(graph, ctx)``.

* ``PrintIR`` — the IR before and/or after all passes or named ones, or only when changed;
* ``DotDiff`` — the graph after named passes as Graphviz DOT, what the pass changed
  highlighted;
* ``VerifyEach`` — the verifier on the input and after every pass (on by default);
* ``NumericDiff`` — each pass's outputs against the *original* graph's (max abs, rel-L2,
  cosine, top-1 agreement), flagging an exact pass that moved them;
* ``TimePasses`` — seconds per pass, a table at the end;
* ``Stats`` — node / param / MAC / byte deltas per pass plus the pass's own counters;
* ``DumpDir`` — ``000_input.shrk``, ``001_fold-bn.shrk``, … (each loads back with weights);
* ``Reproducer`` — on failure, the IR before the failing pass and the one command that
  reruns that pass alone on it.

Instruments write text through ``write`` (a ``str -> None`` callable): the command line
passes one that prints; the default logs at INFO on ``shrinkc.passes.instruments``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..ir.files import atomic_write_text
from ..ir.graph import Graph, IRError
from ..ir.text import print_graph
from .analyses.cost import CostSummary, summarize
from .base import PassError

if TYPE_CHECKING:
    from .base import Pass, PassContext
    from .manager import Step

log = logging.getLogger(__name__)

Writer = Callable[[str], None]

__all__ = ["DotDiff", "DumpDir", "NumericDiff", "PassInstrument", "PrintIR", "Reproducer", "Stats",
           "TimePasses", "VerifyEach", "Writer", "log_writer", "reproducer_command",
           "stdout_writer"]


def log_writer(text: str) -> None:
    """The library default: instrument output goes to logging (INFO)."""
    log.info("%s", text)


def stdout_writer(text: str) -> None:
    """What the command line uses."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


class PassInstrument:
    """Base class: every hook does nothing."""

    wants_snapshot: ClassVar[bool] = False  # pass_failed receives the IR before the pass

    def enter_pipeline(self, graph: Graph, passes: Sequence[Pass], ctx: PassContext) -> None:
        pass

    def before_pass(self, graph: Graph, step: Step, ctx: PassContext) -> None:
        pass

    def after_pass(self, graph: Graph, step: Step, ctx: PassContext) -> None:
        pass

    def pass_failed(self, before: Graph | None, step: Step, error: PassError,
                    ctx: PassContext) -> None:
        pass

    def exit_pipeline(self, graph: Graph, ctx: PassContext) -> None:
        pass


# ============================================================================ print / verify
@dataclass
class PrintIR(PassInstrument):
    """Print the IR before/after every pass, or only passes named in ``passes``.

    ``only_changed`` (``--print-changed``) prints the input once, then the IR after each
    pass that changed it and a one-line note for each that did not. Every header is a
    ``//`` comment, so each printed graph parses back.
    """

    before: bool = False
    after: bool = True
    passes: Collection[str] | None = None  # pass names; None = all
    only_changed: bool = False
    write: Writer = log_writer

    def _wanted(self, step: Step) -> bool:
        return self.passes is None or step.name in self.passes

    def enter_pipeline(self, graph, passes, ctx) -> None:
        if self.only_changed:
            self.write(f"// IR of the input\n{print_graph(graph)}")

    def before_pass(self, graph, step, ctx) -> None:
        if self.before and self._wanted(step):
            self.write(f"// IR before {step.label} {step.spec}\n{print_graph(graph)}")

    def after_pass(self, graph, step, ctx) -> None:
        if not (self.after or self.only_changed) or not self._wanted(step):
            return
        if self.only_changed and not step.result.changed:
            self.write(f"// {step.label} {step.spec}: no change")
            return
        self.write(f"// IR after {step.label} {step.spec}\n{print_graph(graph)}")


@dataclass
class DotDiff(PassInstrument):
    """After each pass named in ``passes`` (None: all), the graph as Graphviz DOT with what
    the pass changed highlighted (``ir.dot.diff_dot``): to ``write``, or rendered into the
    file ``files[name]`` (``.dot``, ``.svg``, ``.png``, ``.pdf``; a pass that runs again
    gets ``_2``, ``_3``… before the suffix). ``counts`` keeps what each step changed."""

    passes: Collection[str] | None = None
    files: dict[str, str] = field(default_factory=dict)
    write: Writer = log_writer
    counts: dict[str, dict[str, list[str]]] = field(default_factory=dict, init=False)
    _before: Graph | None = field(default=None, init=False, repr=False)
    _seen: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def _wanted(self, step: Step) -> bool:
        return self.passes is None or step.name in self.passes

    def before_pass(self, graph, step, ctx) -> None:
        self._before = graph.clone(share_data=True) if self._wanted(step) else None

    def after_pass(self, graph, step, ctx) -> None:
        if self._before is None:
            return
        from ..ir.dot import diff_dot, render

        dot, counts = diff_dot(self._before, graph, title=f"{graph.name} after {step.label} "
                                                           f"{step.spec}")
        self.counts[step.label] = counts
        self._before = None
        target = self.files.get(step.name)
        if target is None:
            self.write(dot)
            return
        k = self._seen[step.name] = self._seen.get(step.name, 0) + 1
        path = Path(target)
        if k > 1:
            path = path.with_name(f"{path.stem}_{k}{path.suffix}")
        render(dot, path)


class VerifyEach(PassInstrument):
    """Verify the input graph, then the graph after every pass (a failure names the pass)."""

    def enter_pipeline(self, graph, passes, ctx) -> None:
        from ..ir.verify import verify

        try:
            verify(graph)
        except IRError as e:
            raise IRError(f"the input graph does not verify (before any pass ran): {e}") from e

    def after_pass(self, graph, step, ctx) -> None:
        from ..ir.verify import verify

        try:
            verify(graph)
        except IRError as e:
            raise PassError(f"the graph it produced does not verify: {e}") from e


# ============================================================================ numeric diff
@dataclass
class OutputDiff:
    """One graph output against the original's."""

    max_abs: float
    rel_l2: float
    cosine: float
    top1: float | None  # fraction of rows whose argmax (last axis) agrees; None for scalars
    #: elements that are NaN / ±Inf where the original's are not (or the reverse, or the
    #: other infinity). The other numbers are over the elements finite in both.
    nonfinite: int = 0


@dataclass
class DiffRecord:
    label: str
    spec: str
    exact: bool
    outputs: list[OutputDiff] = field(default_factory=list)
    error: str | None = None  # outputs that no longer match in number or shape
    step_rel_l2: float = 0.0  # worst rel-L2 against the outputs before this pass
    step_nonfinite: int = 0  # elements this pass made non-finite (or finite) vs before it

    @property
    def worst_rel_l2(self) -> float:
        return max((o.rel_l2 for o in self.outputs), default=0.0)

    @property
    def nonfinite(self) -> int:
        return sum(o.nonfinite for o in self.outputs)


def _nonfinite_mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where ``a`` and ``b`` (float64) differ in NaN-ness or in which infinity they hold."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    inf_a, inf_b = np.isinf(a), np.isinf(b)
    return (nan_a != nan_b) | (inf_a != inf_b) | (inf_a & inf_b & (a != b))


def compare_outputs(got: np.ndarray, ref: np.ndarray) -> OutputDiff:
    """Max abs difference, relative L2, cosine and top-1 agreement of two arrays.

    A NaN or ±Inf where the reference has a number (or the reverse) is a change: it is
    counted in ``nonfinite`` (and such a row's top-1 disagrees); the other measures are
    over the elements finite in both, so they stay numbers."""
    a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    mismatch = _nonfinite_mismatch(a, b)
    both = np.isfinite(a) & np.isfinite(b)
    a_f, b_f = a[both], b[both]
    diff = a_f - b_f
    nb, na = float(np.linalg.norm(b_f)), float(np.linalg.norm(a_f))
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    rel = float(np.linalg.norm(diff)) / nb if nb > 0 else float(np.linalg.norm(diff))
    if na > 0 and nb > 0:
        cos = float(np.dot(a_f, b_f) / (na * nb))
    else:
        cos = 1.0 if na == nb else 0.0
    top1 = None
    if got.ndim >= 1 and got.shape[-1] > 1:
        rows_a = got.astype(np.float64).reshape(-1, got.shape[-1])
        rows_b = ref.astype(np.float64).reshape(-1, ref.shape[-1])
        agree = rows_a.argmax(-1) == rows_b.argmax(-1)
        agree &= ~mismatch.reshape(rows_a.shape).any(-1)
        top1 = float(np.mean(agree))
    return OutputDiff(max_abs, rel, cos, top1, int(mismatch.sum()))


@dataclass
class NumericDiff(PassInstrument):
    """After each pass, run the graph and compare its outputs with the ORIGINAL graph's.

    Inputs: ``ctx.example_inputs`` (one batch) if given, else ``samples`` random batches
    drawn from the seed. An exact pass that moved the outputs (rel-L2 against the outputs
    before it) by more than ``tolerance`` is flagged, and so is any pass after which an
    output is NaN / ±Inf where it was a number before (``nonfinite``). ``records`` keeps
    one ``DiffRecord`` per pass.
    """

    samples: int = 4
    tolerance: float = 1e-4
    write: Writer = log_writer
    records: list[DiffRecord] = field(default_factory=list, init=False)
    _inputs: list = field(default_factory=list, init=False, repr=False)
    _ref: list[np.ndarray] = field(default_factory=list, init=False, repr=False)
    _prev: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def _run(self, graph: Graph) -> list[np.ndarray]:
        from ..ir.interpreter import run_numpy

        outs: list[list[np.ndarray]] = [run_numpy(graph, x) for x in self._inputs]
        return [np.concatenate([o[j][None] for o in outs]) for j in range(len(outs[0]))]

    def enter_pipeline(self, graph, passes, ctx) -> None:
        from ..ir.interpreter import bind_inputs, random_inputs

        self.records = []
        if ctx.example_inputs is not None:
            self._inputs = [bind_inputs(graph, ctx.example_inputs)]
        else:
            self._inputs = [random_inputs(graph, ctx.seed + k) for k in range(self.samples)]
        self._ref = self._prev = self._run(graph)

    def after_pass(self, graph, step, ctx) -> None:
        rec = DiffRecord(step.label, step.spec, step.pass_.exact)
        if not step.result.changed and self.records:
            prev = self.records[-1]
            rec.outputs, rec.error = prev.outputs, prev.error  # nothing new this step
        else:
            try:
                got = self._run(graph)
            except IRError as e:
                got, rec.error = None, f"the graph no longer runs on the same inputs: {e}"
            if got is not None:
                shapes = [g.shape for g in got]
                ref_shapes = [r.shape for r in self._ref]
                if shapes != ref_shapes:
                    rec.error = f"outputs changed from {ref_shapes} to {shapes}"
                else:
                    rec.outputs = [compare_outputs(g, r) for g, r in zip(got, self._ref)]
                    steps = [compare_outputs(g, p) for g, p in zip(got, self._prev)]
                    rec.step_rel_l2 = max(d.rel_l2 for d in steps)
                    rec.step_nonfinite = sum(d.nonfinite for d in steps)
                    self._prev = got
        self.records.append(rec)
        self.write(self.format(rec))

    def format(self, rec: DiffRecord) -> str:
        head = f"numeric-diff {rec.label:<24}"
        if rec.error:
            return f"{head} {rec.error}"
        parts = []
        for j, o in enumerate(rec.outputs):
            top1 = "-" if o.top1 is None else f"{100 * o.top1:.1f}%"
            tag = f"out{j}: " if len(rec.outputs) > 1 else ""
            parts.append(f"{tag}max_abs={o.max_abs:.3g} rel_l2={o.rel_l2:.3g} "
                         f"cosine={o.cosine:.6f} top1={top1}"
                         + (f" nonfinite={o.nonfinite}" if o.nonfinite else ""))
        line = f"{head} " + " | ".join(parts)
        if rec.step_nonfinite:
            line += (f"  << {'exact pass' if rec.exact else 'pass'} turned "
                     f"{rec.step_nonfinite} output values to or from NaN/Inf")
        elif rec.exact and rec.step_rel_l2 > self.tolerance:
            line += f"  << exact pass moved the output (rel_l2 > {self.tolerance:g})"
        return line


# ============================================================================ time / stats
@dataclass
class TimePasses(PassInstrument):
    """Seconds spent in each pass's run(); a table at the end of the pipeline."""

    write: Writer = log_writer
    times: list[tuple[str, str, float]] = field(default_factory=list, init=False)

    def enter_pipeline(self, graph, passes, ctx) -> None:
        self.times = []

    def after_pass(self, graph, step, ctx) -> None:
        self.times.append((step.label, step.spec, step.seconds))

    def exit_pipeline(self, graph, ctx) -> None:
        total = sum(t for _, _, t in self.times)
        width = max([len(label) for label, _, _ in self.times] + [5])
        lines = [f"{'pass':<{width}}  {'ms':>10}  {'%':>6}"]
        for label, _, t in self.times:
            pct = 100 * t / total if total > 0 else 0.0
            lines.append(f"{label:<{width}}  {1e3 * t:10.3f}  {pct:5.1f}%")
        lines.append(f"{'total':<{width}}  {1e3 * total:10.3f}  {100.0 if total else 0.0:5.1f}%")
        self.write("time-passes:\n" + "\n".join(lines))


def _delta_text(name: str, a: int, b: int) -> str:
    return f"{name} {a:,} -> {b:,} ({b - a:+,})" if a != b else f"{name} {a:,}"


@dataclass
class StatsRecord:
    label: str
    spec: str
    before: CostSummary
    after: CostSummary
    counters: dict[str, int | float]
    layers: list[dict] = field(default_factory=list)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (tuple, list)) and len(v) == 2:  # before -> after
        return f"{_cell(v[0])} -> {_cell(v[1])}"
    return str(v)


def layer_table(rows: Sequence[dict]) -> str:
    """A pass's per-layer rows as an aligned text table (columns in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join("  " + ln for ln in lines)


@dataclass
class Stats(PassInstrument):
    """After each pass: node / param / MAC / FLOP / byte changes, the pass's own non-zero
    counters and its per-layer rows as a table (``PassResult.layers``); the totals at the
    end. ``records`` keeps every counter and row."""

    write: Writer = log_writer
    records: list[StatsRecord] = field(default_factory=list, init=False)
    _current: CostSummary | None = field(default=None, init=False, repr=False)
    _first: CostSummary | None = field(default=None, init=False, repr=False)

    def enter_pipeline(self, graph, passes, ctx) -> None:
        self.records = []
        self._first = self._current = summarize(graph)

    def after_pass(self, graph, step, ctx) -> None:
        after = summarize(graph) if step.result.changed else self._current
        rec = StatsRecord(step.label, step.spec, self._current, after, dict(step.result.stats),
                          [dict(r) for r in step.result.layers])
        self.records.append(rec)
        self._current = after
        counters = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in rec.counters.items() if v)  # zeros are noise
        self.write(f"stats {step.label}: {self._cost_text(rec.before, after)}"
                   + (f"; {counters}" if counters else "")
                   + (f"\n{layer_table(rec.layers)}" if rec.layers else ""))

    @staticmethod
    def _cost_text(a: CostSummary, b: CostSummary) -> str:
        return ", ".join(_delta_text(k, getattr(a, k), getattr(b, k))
                         for k in ("nodes", "params", "macs", "flops", "param_bytes"))

    def exit_pipeline(self, graph, ctx) -> None:
        if self._first is not None and self._current is not None:
            self.write(f"stats total: {self._cost_text(self._first, self._current)}")


# ============================================================================ files
_DUMP_RE = re.compile(r"^\d{3}_[a-z0-9-]+\.(shrk|safetensors)$")


@dataclass
class DumpDir(PassInstrument):
    """Save the input as ``000_input.shrk`` and the graph after pass N as
    ``NNN_<name>.shrk`` (each with its ``.safetensors``), plus ``pipeline.txt``. Dumps
    from an earlier run (files named like these) are removed first."""

    directory: str | os.PathLike
    paths: list[Path] = field(default_factory=list, init=False)

    def enter_pipeline(self, graph, passes, ctx) -> None:
        from ..ir.serialize import save

        d = Path(self.directory)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            if _DUMP_RE.match(old.name) and old.is_file():
                old.unlink()
        atomic_write_text(d / "pipeline.txt", ",".join(p.spec() for p in passes) + "\n",
                          "--dump-dir")
        self.paths = [save(graph, d / "000_input.shrk")]

    def after_pass(self, graph, step, ctx) -> None:
        from ..ir.serialize import save

        self.paths.append(save(graph, Path(self.directory) / f"{step.label}.shrk"))


@dataclass
class Reproducer(PassInstrument):
    """On failure: write ``reproducer.shrk`` (the IR before the failing pass) and
    ``reproducer.sh`` (the one command that reruns that pass alone on it) into
    ``directory`` (None: a new temporary directory, made only on failure); the command is
    also put on the error (``error.reproducer``). The context's calibration batches go into
    ``calibration.npz`` beside it (``--calibration``), so a calibrating pass reruns on the
    same data."""

    directory: str | os.PathLike | None = None
    command: str = field(default_factory=lambda: reproducer_command())
    wants_snapshot: ClassVar[bool] = True
    path: Path | None = field(default=None, init=False)

    def pass_failed(self, before, step, error, ctx) -> None:
        from ..ir.serialize import save

        if before is None:
            return
        d = Path(self.directory if self.directory is not None
                 else tempfile.mkdtemp(prefix="shrinkc-repro-"))
        shrk = save(before, d / "reproducer.shrk").resolve()
        cmd = f"{self.command} {shlex.quote(str(shrk))} --passes={shlex.quote(step.spec)}"
        if ctx.seed:
            cmd += f" --seed {ctx.seed}"
        plugin = plugin_of(type(step.pass_))
        if plugin:
            cmd += f" --load-plugin {shlex.quote(plugin)}"
        if ctx.calibration is not None and list(ctx.calibration):
            from .analyses.calibration import save_calibration

            try:
                npz = save_calibration(ctx.calibration, before, d / "calibration.npz")
                cmd += f" --calibration {shlex.quote(str(npz.resolve()))}"
            except Exception as e:  # batches that do not fit the graph: say so, keep going
                log.warning("reproducer: calibration data not saved: %s", e)
        reason = str(error).splitlines()[0]
        script = d / "reproducer.sh"
        atomic_write_text(script, f"#!/bin/sh\n# {reason}\n# The IR before pass {step.label}; "
                                  f"this reruns that pass alone on it:\n{cmd}\n")
        script.chmod(0o755)
        self.path = script
        error.reproducer = cmd
        log.info("reproducer written to %s", script)


def reproducer_command() -> str:
    """The start of a reproducer's command: ``opt`` run by the interpreter running now
    (``/path/to/python -m shrinkc.tools.cli opt``), so the script works without the venv
    on PATH."""
    return f"{shlex.quote(sys.executable)} -m shrinkc.tools.cli opt"


def plugin_of(cls: type) -> str | None:
    """How ``--load-plugin`` finds a pass defined outside shrinkc (None for built-ins)."""
    mod = cls.__module__
    if mod == "shrinkc" or mod.startswith("shrinkc."):
        return None
    module = sys.modules.get(mod)
    if hasattr(module, "__shrinkc_plugin__"):  # loaded from a file by load_plugin
        return module.__shrinkc_plugin__
    if mod == "__main__":
        return getattr(module, "__file__", None)
    return mod
