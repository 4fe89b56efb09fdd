"""The pass registry and pipeline text.

A pass is a dataclass deriving from ``Pass``, registered under a kebab-case name; its
fields are its options::

    @register_pass("fold-constants")
    @dataclass
    class FoldConstants(Pass):
        '''Replace nodes whose inputs are all constants by the constant they compute.'''
        exact = True
        max_growth: float = option(1.0, ge=1.0, help="...")

        def run(self, graph, ctx) -> PassResult: ...

Pipeline text is a comma-separated list of passes, each with optional ``name=value``
options whose values are Python literals (a bare word such as ``l1`` is a string)::

    fold-bn,tucker-conv(energy=0.9),prune-channels(ratio=0.3, criterion=l1)

``parse_pipeline`` turns the text into pass objects (an unknown pass or option, or a bad
value, raises ``PipelineError`` listing what exists); ``canonical`` prints every option of
every pass so the result can be pasted back.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..ir.graph import IRError, Node

if TYPE_CHECKING:
    from ..ir.graph import Graph
    from .manager import PassContext

__all__ = [
    "PASSES", "Pass", "PassError", "PassResult", "PipelineError", "canonical", "get_pass",
    "option", "parse_pipeline", "register_pass", "unregister_pass",
]

_KEBAB_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


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
    """What a pass reports: whether it changed the graph, and its own counters."""

    changed: bool
    stats: dict[str, int | float] = dataclasses.field(default_factory=dict)


class _BareWord(str):
    """A bare word in pipeline text (``criterion=l1``): a string, or true/false/none."""


# ============================================================================ options
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


def _options_text(cls: type) -> str:
    fs = dataclasses.fields(cls)
    if not fs:
        return "it takes no options"
    return "its options: " + "; ".join(describe_option(cls, f) for f in fs)


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


# ============================================================================ passes
@dataclass
class Pass:
    """Base of all passes. Subclasses are dataclasses; their fields are options."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool]

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


PASSES: dict[str, type[Pass]] = {}


def register_pass(name: str):
    """Class decorator: register a ``Pass`` dataclass under the kebab-case ``name``."""

    def deco(cls: type) -> type:
        where = f"register_pass({name!r}) on {cls.__qualname__}"
        if not _KEBAB_RE.match(name):
            raise TypeError(f"{where}: pass names are kebab-case (fold-bn)")
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"{where}: a pass derives from shrinkc.passes.Pass")
        if "__dataclass_fields__" not in cls.__dict__:
            raise TypeError(f"{where}: decorate the class with @dataclass (below register_pass)")
        if cls.__name__.lower() != name.replace("-", ""):
            raise TypeError(f"{where}: the class name must be the CamelCase of the pass name "
                            f"({''.join(p.capitalize() for p in name.split('-'))})")
        doc = (cls.__doc__ or "").strip()
        if not doc or doc.startswith(cls.__name__ + "("):  # dataclass's generated __doc__
            raise TypeError(f"{where}: a pass needs a docstring (its first line is its summary)")
        if not isinstance(cls.__dict__.get("exact", getattr(cls, "exact", None)), bool):
            raise TypeError(f"{where}: set the class attribute exact = True/False")
        if cls.run is Pass.run:
            raise TypeError(f"{where}: a pass defines run(graph, ctx) -> PassResult")
        if name in PASSES and PASSES[name] is not cls:
            other = PASSES[name]
            raise TypeError(f"{where}: pass {name!r} is already registered by "
                            f"{other.__module__}.{other.__qualname__}")
        _option_types(cls)  # resolves the annotations now: a typo fails at import
        cls.name = name
        PASSES[name] = cls
        return cls

    return deco


def unregister_pass(name: str) -> None:
    """Remove a pass from the registry (for tests that register passes of their own)."""
    PASSES.pop(name, None)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def get_pass(name: str) -> type[Pass]:
    """The registered class for ``name``, or a PipelineError listing every pass."""
    try:
        return PASSES[name]
    except KeyError:
        raise PipelineError(f"unknown pass '{name}'{_suggest(name, PASSES)}; known passes: "
                            f"{', '.join(sorted(PASSES)) or 'none'}") from None


def make_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    """An instance of pass ``name`` with ``options`` (checked; unknown ones listed)."""
    cls = get_pass(name)
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(cls)]
    for k in options:
        if k not in known:
            raise PipelineError(f"pass '{name}' has no option '{k}'{_suggest(k, known)}; "
                                f"{_options_text(cls)}")
    return cls(**options)


# ============================================================================ text
def format_value(value: Any) -> str:
    """An option value as a Python literal that parses back to the same value."""
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value and value.isprintable() \
            else repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


def _split_items(text: str) -> list[tuple[int, str]]:
    """Split at top-level commas (not inside brackets or quotes). Returns (offset, item)."""
    items, depth, quote, start, i = [], 0, None, 0, 0
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            stack.append(c)
            depth += 1
        elif c in ")]}":
            if not stack or stack[-1] != closing[c]:
                raise PipelineError(f"unbalanced {c!r} at column {i + 1} of pipeline {text!r}")
            stack.pop()
            depth -= 1
        elif c == "," and depth == 0:
            items.append((start, text[start:i]))
            start = i + 1
        i += 1
    if quote:
        raise PipelineError(f"unterminated string in pipeline {text!r}")
    if stack:
        raise PipelineError(f"unclosed {stack[-1]!r} in pipeline {text!r}")
    items.append((start, text[start:]))
    return items


_ITEM_RE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def _parse_options(name: str, inner: str) -> dict[str, Any]:
    if not inner.strip():
        return {}
    try:
        call = ast.parse(f"_({inner})", mode="eval").body
    except SyntaxError as e:
        raise PipelineError(f"pass '{name}': cannot parse options ({inner}): {e.msg}; options "
                            f"are name=value with Python literal values") from None
    assert isinstance(call, ast.Call)
    if call.args:
        raise PipelineError(f"pass '{name}': options are given by name (name=value), got "
                            f"({inner})")
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise PipelineError(f"pass '{name}': options are name=value, got ({inner})")
        if kw.arg in out:
            raise PipelineError(f"pass '{name}': option {kw.arg} is given twice")
        if isinstance(kw.value, ast.Name):
            out[kw.arg] = _BareWord(kw.value.id)
            continue
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            raise PipelineError(f"pass '{name}' option {kw.arg}: "
                                f"{ast.unparse(kw.value)} is not a Python literal") from None
    return out


def parse_pipeline(text: str | Sequence[Pass]) -> list[Pass]:
    """Pass objects for pipeline text (or a list of passes, returned as a list)."""
    if not isinstance(text, str):
        passes = list(text)
        for p in passes:
            if not isinstance(p, Pass):
                raise PipelineError(f"a pipeline is text or a list of passes, got {p!r}")
        return passes
    if not text.strip():
        return []
    passes = []
    for offset, item in _split_items(text):
        m = _ITEM_RE.match(item)
        if not item.strip():
            raise PipelineError(f"empty pass name at column {offset + 1} of pipeline {text!r}")
        if not m:
            raise PipelineError(f"cannot parse {item.strip()!r} in pipeline {text!r}: expected "
                                f"name or name(option=value, ...)")
        name, inner = m.group(1), m.group(2)
        if name not in PASSES:
            raise PipelineError(f"unknown pass '{name}' in pipeline {text!r}"
                                f"{_suggest(name, PASSES)}; known passes: "
                                f"{', '.join(sorted(PASSES)) or 'none'}")
        passes.append(make_pass(name, _parse_options(name, inner or "")))
    return passes


def canonical(pipeline: str | Sequence[Pass]) -> str:
    """The pipeline with every option of every pass spelled out (parses back to itself)."""
    return ",".join(p.spec() for p in parse_pipeline(pipeline))
