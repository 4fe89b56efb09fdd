"""The pass layer's base: what a pass is, what it returns, what it may read, how it fails.

Every pass module imports from here (not from the manager that runs passes)::

    from .base import Pass, PassContext, PassError, PassResult, option
    from .registry import register_pass

* ``Pass`` — the base dataclass of every pass; its dataclass fields are its options
  (declared with ``option(default, help=..., ge=..., ...)``, checked and coerced when the
  pass is made, so ``tucker-conv(energy=2)`` fails before any work); ``spec()`` is the
  canonical text with every option spelled out; subclasses set ``exact`` and ``run``;
* ``PassResult(changed, stats, layers)`` — what ``run(graph, ctx)`` returns; ``stats`` are
  the pass's own counters and ``layers`` its optional per-layer rows (both shown by
  ``shrinkc opt --stats``);
* ``PassError(reason, node=...)`` — a pass that refuses or fails names the node; the
  manager adds the pipeline context (which pass, which position, what already ran);
* ``PipelineError`` — pipeline text or options that do not name passes and valid values;
* ``PassContext`` — everything a pass may read besides the graph, explicitly (never a
  global): seed and ``rng``, example inputs, calibration batches, training data and a
  teacher (``recover``), the pipeline's input graph (``original``, kept for a pass that
  sets ``needs_original``), instruments, an ``artifacts`` dict (e.g. a pruning plan), a
  logger.

The registry (``registry.py``: names, pipeline text) and the manager (``manager.py``:
running a pipeline with instruments) build on this module; both re-export these names.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from ..ir.errors import IRError
from ..ir.graph import Node

if TYPE_CHECKING:
    from ..ir.graph import Graph
    from .instruments import PassInstrument

__all__ = [
    "Pass", "PassContext", "PassError", "PassResult", "PipelineError", "describe_option",
    "format_value", "option", "type_text",
]


class PipelineError(IRError):
    """Pipeline text or pass options that do not name registered passes and valid values."""


class PassError(IRError):
    """A pass that failed. Passes raise it with the node they failed on; the PassManager
    re-raises it with the pipeline context (the pass and its options, the passes already
    run, where a reproducer was written)."""

    def __init__(self, reason: str, *, node: Node | str | None = None):
        self.reason = reason
        self.node = node.describe() if isinstance(node, Node) else node
        self.pass_spec: str | None = None  # canonical text of the failing pass
        self.index: int | None = None  # 1-based position in the pipeline
        self.total: int | None = None
        self.done: list[str] = []  # canonical text of the passes already run
        self.reproducer: str | None = None  # the command that reproduces the failure
        super().__init__(reason)

    def __str__(self) -> str:
        where = f" on node {self.node}" if self.node else ""
        if self.pass_spec is None:
            return f"node {self.node}: {self.reason}" if self.node else self.reason
        text = (f"pass '{self.pass_spec}' failed{where}: {self.reason} "
                f"[pass {self.index} of {self.total}; already run: "
                f"{', '.join(self.done) if self.done else 'none'}]")
        if self.reproducer:
            text += f"\n  reproduce with: {self.reproducer}"
        return text


@dataclass
class PassResult:
    """What a pass reports: whether it changed the graph, its own counters, and optionally
    one row per layer it looked at (``layers``: dicts with the same keys, e.g. node, status,
    rank, error; ``--stats`` prints them as a table under the counters)."""

    changed: bool
    stats: dict[str, int | float] = dataclasses.field(default_factory=dict)
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class _BareWord(str):
    """A bare word in pipeline text (``criterion=l1``): a string, or true/false/none."""


def option(default: Any, *, help: str = "", ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A pass option with a default, a help line and an optional numeric range."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": lambda x, b: x >= b, "gt": lambda x, b: x > b,
             "le": lambda x, b: x <= b, "lt": lambda x, b: x < b}


def _is_none_type(tp: Any) -> bool:
    return tp is type(None)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def type_text(tp: Any) -> str:
    """A type as users read it: ``float``, ``'l1' | 'l2'``, ``tuple[int, ...] | None``."""
    if tp in (bool, int, float, str):
        return tp.__name__
    if _is_none_type(tp):
        return "None"
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    args = _union_args(tp)
    if args is not None:
        return " | ".join(type_text(a) for a in args)
    if typing.get_origin(tp) in (tuple, list):
        inner = typing.get_args(tp)
        return f"tuple[{type_text(inner[0]) if inner else 'Any'}, ...]"
    if typing.get_origin(tp) is dict:
        k, v = typing.get_args(tp)
        return f"dict[{type_text(k)}, {type_text(v)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp``, or raise TypeError."""
    if _is_none_type(tp):
        if value is None or (isinstance(value, _BareWord) and value.lower() == "none"):
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, _BareWord) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise TypeError
    if typing.get_origin(tp) is Literal:
        v = str(value) if isinstance(value, str) else value  # a bare word is a str
        for choice in typing.get_args(tp):
            if type(choice) is type(v) and choice == v:
                return choice
        raise TypeError
    args = _union_args(tp)
    if args is not None:
        # None first so that a bare ``none`` means None, not the string "none"
        for a in sorted(args, key=lambda a: not _is_none_type(a)):
            try:
                return _coerce(value, a)
            except TypeError:
                continue
        raise TypeError
    if typing.get_origin(tp) in (tuple, list):
        inner = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            raise TypeError
        return tuple(_coerce(v, inner[0]) if inner else v for v in value)
    if typing.get_origin(tp) is dict:  # per-layer settings: {"fc1": 0.9, "conv*": 0.6}
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise TypeError
        return {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
    raise TypeError(f"unsupported option type {tp!r}")


def _option_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe_option(cls: type, f: dataclasses.Field) -> str:
    """``ratio: float = 0.3 (> 0, < 1) -- fraction of channels to remove``."""
    tp = _option_types(cls)[f.name]
    text = f"{f.name}: {type_text(tp)} = {format_value(f.default)}"
    bounds = f.metadata.get("bounds") or {}
    if bounds:
        text += " (" + ", ".join(f"{_BOUND_TEXT[k]} {v}" for k, v in bounds.items()) + ")"
    if f.metadata.get("help"):
        text += f"  -- {f.metadata['help']}"
    return text


def _check_value(cls: type, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    where = f"pass '{cls.name}' option {f.name}"
    try:
        out = _coerce(value, tp)
    except TypeError:
        kind = "bare word" if isinstance(value, _BareWord) else type(value).__name__
        raise PipelineError(f"{where}: expected {type_text(tp)}, got {value!r} ({kind})"
                            ) from None
    for k, b in (f.metadata.get("bounds") or {}).items():
        if out is not None and not _BOUND_OK[k](out, b):
            raise PipelineError(f"{where}: must be {_BOUND_TEXT[k]} {b}, got {out!r}")
    return out


def format_value(value: Any) -> str:
    """An option value as a Python literal that parses back to the same value."""
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value and value.isprintable() \
            else repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{format_value(k)}: {format_value(v)}"
                               for k, v in value.items()) + "}"
    return repr(value)


@dataclass
class Pass:
    """Base of all passes. Subclasses are dataclasses; their fields are options."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool]
    #: the PassManager keeps a copy of the pipeline's input graph in ``ctx.original``
    needs_original: ClassVar[bool] = False

    def __post_init__(self) -> None:
        types_ = _option_types(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_value(type(self), f, types_[f.name],
                                               getattr(self, f.name)))
        reason = self.check()
        if reason:
            raise PipelineError(f"pass '{self.name}': {reason}")

    def check(self) -> str | None:
        """A reason the options do not go together, or None (override for such checks)."""
        return None

    @property
    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring (what ``--print-passes`` shows)."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def spec(self) -> str:
        """Canonical text of this pass: ``name(opt=value, ...)`` with every option."""
        opts = self.options
        if not opts:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={format_value(v)}" for k, v in opts.items()) + ")"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {self.name} has no run()")

    def __str__(self) -> str:
        return self.spec()


@dataclass
class PassContext:
    """What passes and instruments share during one pipeline run."""

    seed: int = 0
    example_inputs: Any = None  # a tensor, a sequence of tensors, or a name -> tensor mapping
    calibration: Iterable[Any] | None = None  # input batches (each like example_inputs)
    # training samples for passes that train (``recover``): ``(X, y)``, ``X`` alone, or
    # batches (``passes.distill.TrainingData.of``)
    training: Any = None
    teacher: Any = None  # what ``recover`` distils from (default: the pipeline's input graph)
    instruments: list[PassInstrument] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("shrinkc.passes"))
    rng: np.random.Generator = field(init=False, repr=False)
    # the pipeline's input graph, kept (a copy) by the PassManager when a pass of the
    # pipeline sets ``needs_original`` (``recover`` distils from it)
    original: Graph | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        if self.calibration is not None and iter(self.calibration) is self.calibration:
            # a one-shot iterator: read it once so that every pass sees every batch
            self.calibration = list(self.calibration)

    def reseed(self, key: str) -> None:
        """Give ``rng`` a fresh stream determined by the seed and ``key`` (a pass's text)."""
        self.rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])

    def inputs_for(self, graph: Graph) -> list:
        """The example inputs, or random inputs for ``graph`` drawn from the seed."""
        from ..ir.interpreter import bind_inputs, random_inputs

        if self.example_inputs is not None:
            return bind_inputs(graph, self.example_inputs)
        return random_inputs(graph, self.seed)
