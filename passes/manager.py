"""The PassManager: runs a pipeline of passes on a graph, in place, with instruments.

``PassContext`` (defined in ``passes/base.py``, re-exported here) carries everything a
pass may read besides the graph — explicitly, never as a global: the instruments, the seed
and a numpy ``rng``, example inputs, calibration batches, an ``artifacts`` dict (e.g. a
pruning plan) and a logger.

For each pass the manager calls the instruments' ``before_pass`` hooks, runs the pass,
checks what it returned, and calls the ``after_pass`` hooks (``VerifyEach`` first, on by
default). It enforces two contracts:

* a pass that returns ``PassResult(changed=False)`` must not have changed the graph (the
  graph's text with a digest of every constant is compared before and after);
* every failure — in the pass or in an after-pass check — is re-raised as one
  ``PassError`` naming the pass with its options, its position, the passes already run
  and (when the pass said) the node; instruments see it first (``Reproducer`` writes the
  IR before the failing pass and the one command that reruns it).

Each pass gets ``ctx.rng`` seeded from the context's seed and the pass's canonical text,
so a pass rerun alone on its input (a reproducer) draws the same numbers. The canonical
pipeline is logged at every run. ``optimize`` is the one-call form: it works on a copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..ir.graph import Graph, IRError
from ..ir.text import print_graph
from .base import Pass, PassContext, PassError, PassResult, PipelineError
from .instruments import PassInstrument, VerifyEach
from .registry import parse_pipeline

log = logging.getLogger(__name__)

__all__ = ["PassContext", "PassManager", "Step", "fingerprint", "optimize"]


@dataclass
class Step:
    """One pass of a running pipeline, as instruments see it."""

    index: int  # 1-based
    total: int
    pass_: Pass
    spec: str  # canonical text of the pass
    done: list[str]  # canonical text of the passes already run
    result: PassResult | None = None
    seconds: float = 0.0  # time in the pass's run() only

    @property
    def name(self) -> str:
        return self.pass_.name

    @property
    def label(self) -> str:
        """``003_fold-bn``: the step as dump files are named."""
        return f"{self.index:03d}_{self.name}"


def fingerprint(graph: Graph) -> str:
    """The graph's text with every constant as a digest: equal iff nothing changed."""
    return print_graph(graph, inline_limit=0)


def _first_difference(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}: '{x.strip()}' became '{y.strip()}'"
    return f"the graph went from {len(la)} to {len(lb)} lines"


class PassManager:
    """Runs ``pipeline`` (text or pass objects) on graphs, in place."""

    def __init__(self, pipeline: str | Sequence[Pass], ctx: PassContext | None = None, *,
                 verify_each: bool = True, stop_after: str | None = None):
        self.passes = parse_pipeline(pipeline)
        if stop_after is not None:
            names = [p.name for p in self.passes]
            if stop_after not in names:
                raise PipelineError(f"stop-after: no pass '{stop_after}' in the pipeline "
                                    f"(its passes: {', '.join(names) or 'none'})")
            self.passes = self.passes[:names.index(stop_after) + 1]
        self.ctx = ctx if ctx is not None else PassContext()
        self.verify_each = verify_each
        self.steps: list[Step] = []

    @property
    def pipeline(self) -> str:
        """The canonical pipeline (every option spelled out)."""
        return ",".join(p.spec() for p in self.passes)

    def instruments(self) -> list[PassInstrument]:
        insts = list(self.ctx.instruments)
        if self.verify_each and not any(isinstance(i, VerifyEach) for i in insts):
            insts.insert(0, VerifyEach())
        return insts

    def run(self, graph: Graph) -> Graph:
        """Run every pass on ``graph`` in place; returns ``graph``."""
        ctx, insts = self.ctx, self.instruments()
        ctx.logger.info("pipeline: %s", self.pipeline or "(empty)")
        ctx.original = (graph.clone() if any(p.needs_original for p in self.passes)
                        else None)
        for inst in insts:
            inst.enter_pipeline(graph, self.passes, ctx)
        snapshot = any(inst.wants_snapshot for inst in insts)
        self.steps = []
        text: str | None = None  # the fingerprint of the graph as it is now, when known
        done: list[str] = []
        for i, p in enumerate(self.passes, 1):
            step = Step(i, len(self.passes), p, p.spec(), list(done))
            before = graph.clone(share_data=True) if snapshot else None
            ctx.reseed(step.spec)
            stage = "pass"
            try:
                for inst in insts:
                    stage = f"{type(inst).__name__} before the pass"
                    inst.before_pass(graph, step, ctx)
                stage = "pass"
                if text is None:
                    text = fingerprint(graph)
                t0 = time.perf_counter()
                result = p.run(graph, ctx)
                step.seconds = time.perf_counter() - t0
                if not isinstance(result, PassResult):
                    raise PassError(f"run() returned {type(result).__name__}, not a PassResult")
                step.result = result
                if result.changed:
                    text = None
                else:
                    after = fingerprint(graph)
                    if after != text:
                        raise PassError("reported changed=False but changed the graph: "
                                        + _first_difference(text, after))
                for inst in insts:
                    stage = f"{type(inst).__name__} after the pass"
                    inst.after_pass(graph, step, ctx)
            except Exception as e:
                err = _wrap(e, step, stage)
                for inst in insts:
                    try:
                        inst.pass_failed(before, step, err, ctx)
                    except Exception:
                        log.exception("instrument %s failed while reporting %s",
                                      type(inst).__name__, step.spec)
                raise err from e
            ctx.logger.debug("%s: %s %s", step.label, "changed" if result.changed else
                             "unchanged", result.stats)
            done.append(step.spec)
            self.steps.append(step)
        for inst in insts:
            inst.exit_pipeline(graph, ctx)
        return graph


def _wrap(e: Exception, step: Step, stage: str) -> PassError:
    if isinstance(e, PassError) and e.pass_spec is None:
        reason, node = e.reason, e.node
    elif isinstance(e, IRError):
        reason, node = str(e), None
    else:
        reason, node = f"{type(e).__name__}: {e}", None
    if stage != "pass" and not isinstance(e, PassError):
        reason = f"in instrument {stage}: {reason}"
    err = PassError(reason, node=node)
    err.pass_spec, err.index, err.total, err.done = step.spec, step.index, step.total, step.done
    return err


def optimize(graph: Graph, pipeline: str | Sequence[Pass], *, example_inputs: Any = None,
             calibration: Iterable[Any] | None = None, training: Any = None,
             teacher: Any = None, seed: int = 0,
             instruments: Sequence[PassInstrument] | None = None, verify_each: bool = True,
             stop_after: str | None = None, artifacts: dict[str, Any] | None = None,
             logger: logging.Logger | None = None) -> Graph:
    """Run ``pipeline`` on a copy of ``graph`` and return the copy (``graph`` is unchanged).

    ``artifacts``, if given, is the dict passes write their artifacts into (e.g. a plan).
    ``training`` and ``teacher`` are for passes that train (``recover``: its data, and what
    it distils from when not the input graph).
    Raises ``PipelineError`` for bad pipeline text (before any work) and ``PassError`` for a
    pass that fails.
    """
    ctx = PassContext(seed=seed, example_inputs=example_inputs, calibration=calibration,
                      training=training, teacher=teacher,
                      instruments=list(instruments or []),
                      artifacts=artifacts if artifacts is not None else {},
                      logger=logger or logging.getLogger("shrinkc.passes"))
    pm = PassManager(pipeline, ctx, verify_each=verify_each, stop_after=stop_after)
    try:
        out = graph.clone()
    except KeyError:  # an operand defined nowhere earlier: let the verifier say where
        from ..ir.verify import verify

        try:
            verify(graph)
        except IRError as e:
            raise IRError(f"the input graph does not verify (before any pass ran): {e}") from e
        raise
    pm.run(out)
    return out
