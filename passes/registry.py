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

``Pass``, ``PassResult``, ``PassError``, ``PipelineError`` and ``option`` are defined in
``passes/base.py`` and re-exported here (``from .registry import Pass`` keeps working).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import keyword
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .base import (
    Pass,
    PassError,
    PassResult,
    PipelineError,
    _BareWord,
    _option_types,
    describe_option,
    format_value,
    option,
    type_text,
)

__all__ = [
    "PASSES", "Pass", "PassError", "PassResult", "PipelineError", "canonical", "get_pass",
    "describe_option", "format_value", "option", "parse_pipeline", "register_pass",
    "type_text", "unregister_pass",
]

_KEBAB_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


def _options_text(cls: type) -> str:
    fs = dataclasses.fields(cls)
    if not fs:
        return "it takes no options"
    return "its options: " + "; ".join(describe_option(cls, f) for f in fs)


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


# ``name=word`` where word is not Python (a keyword such as ``global``, or ``bn-scale``)
_BARE_OPTION_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*$")


def _parse_options(name: str, inner: str) -> dict[str, Any]:
    if not inner.strip():
        return {}
    bare: dict[str, Any] = {}
    rest = []
    for _, item in _split_items(inner):
        m = _BARE_OPTION_RE.match(item)
        if m and (keyword.iskeyword(m.group(2)) or "-" in m.group(2)) and \
                m.group(2) not in ("True", "False", "None"):
            if m.group(1) in bare:
                raise PipelineError(f"pass '{name}': option {m.group(1)} is given twice")
            bare[m.group(1)] = _BareWord(m.group(2))
        else:
            rest.append(item)
    if bare:
        out = _parse_options(name, ",".join(rest)) if rest else {}
        for k, v in bare.items():
            if k in out:
                raise PipelineError(f"pass '{name}': option {k} is given twice")
            out[k] = v
        return out
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
