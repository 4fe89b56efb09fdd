"""The IR's text form: a printer and a parser that round-trip exactly.

::

    graph "lenet" (%x: f32[1,1,28,28]) {
      %fc1.weight: f32[300,784] = const #5f0c2a9be013
      %scale: f32[] = const 0.5
      %linear: f32[1,300] = linear(%flatten, %fc1.weight, %fc1.bias) loc("fc1")
      %a: f32[1,2,4,4], %b: f32[1,2,4,4] = split(%y) {axis=1, sizes=[2,2]}
      return %linear
    }

An input or output written with ``batch`` after it (``%x: f32[1,1,28,28] batch``,
``return %linear batch``) carries the batch at axis 0: the graph is batch-polymorphic
(``ir/batch.py``), its types are at the nominal batch.

One statement per line; names are kept from the source so two dumps diff cleanly. Small
constants are written inline (exactly: floats in their shortest round-trip form);
large ones as ``#digest`` of their bytes, the data coming from a weights mapping (the
``.safetensors`` beside a ``.shrk`` file). Attributes are printed in the op table's order,
all of them (defaults included). Lines starting with ``//`` are comments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import ops
from .batch import marks, set_marks
from .graph import Graph, IRError, Value, array_digest
from .types import TensorType, to_numpy_dtype

INLINE_LIMIT = 8  # constants with at most this many elements are printed inline

_IDENT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


# ============================================================================ printing
def _name(v: Value | str) -> str:
    n = v if isinstance(v, str) else v.name
    return f"%{n}" if _IDENT_RE.match(n) else f"%{json.dumps(n)}"


def _scalar(x: Any, dtype: str) -> str:
    if dtype == "bool":
        return "true" if x else "false"
    if dtype in ("f32", "f16", "f64", "bf16"):
        f = float(x)
        if np.isnan(f):
            return "nan"
        if np.isinf(f):
            return "inf" if f > 0 else "-inf"
        if dtype == "f64":
            s = repr(f)
        elif dtype == "f16":
            s = str(np.float16(x))
        else:  # f32; bf16 values are exact f32 values
            s = str(np.float32(f))
        return s if any(c in s for c in ".en") else s + ".0"
    return str(int(x))


def format_constant(v: Value, inline_limit: int = INLINE_LIMIT) -> str:
    if v.type.numel > inline_limit:
        return f"#{v.digest()}"
    flat = [_scalar(x, v.dtype) for x in np.asarray(v.data).reshape(-1).tolist()]
    return flat[0] if v.type.rank == 0 else "[" + ", ".join(flat) + "]"


def format_encoding(v: Value) -> str:
    """``sparse(index_bits=5, nnz=120) then codebook(bits=4)``; a sparse mask that is not
    ``data != 0`` is named by its digest (``mask=#…``), its bits saved with the weights."""
    from .encoding import Sparse

    enc = v.encoding
    if isinstance(enc, Sparse) and not enc.mask_is_implied(v.data):
        args = ", ".join(f"{k}={x}" for k, x in enc.params().items())
        text = f"sparse({args}, mask=#{array_digest(enc.mask)})"
        return text + (f" then {enc.codebook}" if enc.codebook is not None else "")
    return str(enc)


def format_attr(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _scalar(value, "f64")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_attr(x) for x in value) + "]"
    raise IRError(f"attribute value {value!r} has no text form")


def print_graph(graph: Graph, inline_limit: int = INLINE_LIMIT) -> str:
    """The text form of ``graph``."""
    m = marks(graph)
    bin_, bout = (set(m.inputs), set(m.outputs)) if m else (set(), set())
    params = ", ".join(f"{_name(v)}: {v.type}" + (" batch" if i in bin_ else "")
                       for i, v in enumerate(graph.inputs))
    lines = [f"graph {json.dumps(graph.name)} ({params}) {{"]
    for v in graph.constants.values():
        enc = f" as {format_encoding(v)}" if v.encoding is not None else ""
        lines.append(f"  {_name(v)}: {v.type} = const {format_constant(v, inline_limit)}{enc}")
    for n in graph.nodes:
        outs = ", ".join(f"{_name(o)}: {o.type}" for o in n.outputs)
        line = f"  {outs} = {n.op}({', '.join(_name(v) for v in n.inputs)})"
        if n.attrs:
            line += " {" + ", ".join(f"{k}={format_attr(a)}" for k, a in n.attrs.items()) + "}"
        if n.loc:
            line += f" loc({json.dumps(n.loc)})"
        lines.append(line)
    lines.append("  return " + ", ".join(_name(v) + (" batch" if i in bout else "")
                                         for i, v in enumerate(graph.outputs)))
    lines.append("}")
    return "\n".join(lines) + "\n"


# ============================================================================ parsing
_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<name>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-]+))
  | (?P<digest>\#[0-9a-f]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:inf|nan|(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_\-]*)
  | (?P<punct>[()\[\]{},:=])
""", re.VERBOSE)


class _Line:
    def __init__(self, text: str, lineno: int):
        self.lineno, self.text = lineno, text
        self.toks: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m:
                self.fail(f"unexpected character {text[pos]!r}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group()))
            pos = m.end()
        self.i = 0

    def fail(self, msg: str):
        raise IRError(f"line {self.lineno}: {msg}\n    {self.text.strip()}")

    def peek(self, value: str | None = None, kind: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        k, v = self.toks[self.i]
        return (value is None or v == value) and (kind is None or k == kind)

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        if not self.peek(value, kind):
            got = self.toks[self.i][1] if self.i < len(self.toks) else "end of line"
            self.fail(f"expected {value or kind}, got {got!r}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def name(self) -> str:
        tok = self.take(kind="name")[1:]
        return json.loads(tok) if tok.startswith('"') else tok

    def type(self) -> TensorType:
        dtype = self.take(kind="ident")
        self.take("[")
        dims = []
        while not self.peek("]"):
            dims.append(int(self.take(kind="number")))
            if not self.peek("]"):
                self.take(",")
        self.take("]")
        try:
            return TensorType(dtype, tuple(dims))
        except (TypeError, ValueError) as e:
            self.fail(str(e))

    def keywords(self, open_: str, close: str, digests: bool = False) -> dict[str, Any]:
        """``{k=v, …}`` or ``(k=v, …)``: attributes and encoding parameters (whose values
        may be ``#digest``s of arrays, with ``digests``)."""
        self.take(open_)
        out: dict[str, Any] = {}
        while not self.peek(close):
            k = self.take(kind="ident")
            self.take("=")
            out[k] = _Digest(self.take()[1:]) if digests and self.peek(kind="digest") \
                else self.literal()
            if not self.peek(close):
                self.take(",")
        self.take(close)
        return out

    def literal(self) -> Any:
        if self.peek("["):
            self.take("[")
            items = []
            while not self.peek("]"):
                items.append(self.literal())
                if not self.peek("]"):
                    self.take(",")
            self.take("]")
            return items
        if self.peek(kind="string"):
            return json.loads(self.take())
        if self.peek(kind="number"):
            s = self.take()
            return float(s) if any(c in s for c in ".eEn") else int(s)
        word = self.take(kind="ident")
        if word in ("true", "false"):
            return word == "true"
        if word == "none":
            return None
        self.fail(f"expected a value, got {word!r}")


def _parse_constant(ln: _Line, name: str, t: TensorType, weights: Mapping[str, np.ndarray] | None,
                    missing: str, rng: np.random.Generator) -> np.ndarray:
    npdt = to_numpy_dtype(t.dtype)
    if ln.peek(kind="digest"):
        digest = ln.take()[1:]
        if weights is not None and name in weights:
            arr = np.asarray(weights[name])
            if arr.shape != t.shape or arr.dtype != npdt:
                ln.fail(f"weights for %{name} are {arr.dtype}{list(arr.shape)}, expected {t}")
            if array_digest(arr) != digest:
                ln.fail(f"weights for %{name} do not match digest #{digest} (corrupt or "
                        f"mismatched weights file)")
            return arr
        if missing == "random":
            return (rng.standard_normal(t.shape) * 0.1).astype(npdt)
        ln.fail(f"constant %{name} is #{digest} but no weights were given for it")
    lit = ln.literal()
    arr = np.asarray(lit if t.rank else lit, dtype=np.float64 if t.is_float else None)
    if arr.size != t.numel or (t.rank == 0 and arr.ndim != 0):
        ln.fail(f"constant %{name}: {arr.size} values for type {t}")
    return arr.reshape(t.shape).astype(npdt)


class _Digest(str):
    """A ``#digest`` in an encoding's parameters: an array saved beside the weights."""


def _fit_random(data: np.ndarray, specs: list[tuple[str, dict]]) -> np.ndarray:
    """Random test data made to satisfy the encodings: a sparse one keeps its ``nnz``
    largest magnitudes, a codebook snaps the (kept) values to ``2**bits`` levels."""
    flat = data.reshape(-1).copy()
    keep = np.ones(flat.size, bool)
    for name, params in specs:
        if name == "sparse" and "nnz" in params and "mask" not in params:
            order = np.argsort(-np.abs(flat.astype(np.float64)), kind="stable")
            keep = np.zeros(flat.size, bool)
            keep[order[:int(params["nnz"])]] = True
            flat[~keep] = 0
        elif name == "codebook" and keep.any():
            vals = flat[keep].astype(np.float64)
            levels = np.linspace(vals.min(), vals.max(), 2 ** int(params.get("bits", 8)))
            flat[keep] = levels[np.abs(vals[:, None] - levels).argmin(1)].astype(flat.dtype)
    return flat.reshape(data.shape)


def _parse_encoding(ln: _Line, cname: str, data: np.ndarray,
                    weights: Mapping[str, np.ndarray] | None, missing: str,
                    random_data: bool = False) -> tuple[object, np.ndarray]:
    """``as ENC(…) [then ENC(…)]`` after a constant: (the encoding, the data — random test
    data is fitted to the encoding)."""
    from .encoding import array_key, make_encoding

    ln.take("as")
    specs = []
    while True:
        name = ln.take(kind="ident")
        params = ln.keywords("(", ")", digests=True)
        for k, p in list(params.items()):
            if not isinstance(p, _Digest):
                continue
            key = array_key(cname, k)
            if weights is not None and key in weights:
                arr = np.asarray(weights[key])
                if array_digest(arr) != p:
                    ln.fail(f"{name} {k} of %{cname} does not match digest #{p} (corrupt or "
                            f"mismatched weights file)")
                params[k] = arr
            elif missing == "random":
                del params[k]  # random data: the pattern follows the data
                params.pop("nnz", None)
            else:
                ln.fail(f"{name} {k} of %{cname} is #{p} but no weights were given for it")
        specs.append((name, params))
        if not ln.peek("then"):
            break
        ln.take("then")
    if random_data:
        data = _fit_random(data, specs)
    try:
        enc = None
        for name, params in reversed(specs):
            enc = make_encoding(name, params, data, inner=enc)
        reason = enc.check(data)
    except IRError as e:
        ln.fail(str(e))
    if reason:
        ln.fail(f"constant %{cname} stored as {enc} {reason}")
    return enc, data


def parse_graph(text: str, weights: Mapping[str, np.ndarray] | None = None, *,
                missing_weights: str = "error", seed: int = 0) -> Graph:
    """Parse the text form. ``#digest`` constants take their data from ``weights`` (checked
    against the digest); with ``missing_weights="random"`` absent ones are filled with
    seeded random data (for tests that care about structure)."""
    if missing_weights not in ("error", "random"):
        raise ValueError("missing_weights must be 'error' or 'random'")
    rng = np.random.default_rng(seed)
    lines = [(i + 1, s) for i, s in enumerate(text.splitlines())
             if s.strip() and not s.strip().startswith("//")]
    if not lines:
        raise IRError("empty IR text")
    ln = _Line(lines[0][1], lines[0][0])
    ln.take("graph")
    g = Graph(json.loads(ln.take(kind="string")))
    env: dict[str, Value] = {}

    def lookup(l: _Line, n: str) -> Value:
        if n not in env:
            l.fail(f"%{n} is used before it is defined")
        return env[n]

    batch_in: list[int] = []
    batch_out: list[int] = []
    ln.take("(")
    while not ln.peek(")"):
        n = ln.name()
        ln.take(":")
        if n in env:
            ln.fail(f"%{n} is defined twice")
        env[n] = g.add_input(ln.type(), n)
        if ln.peek("batch"):
            ln.take("batch")
            batch_in.append(len(g.inputs) - 1)
        if not ln.peek(")"):
            ln.take(",")
    ln.take(")")
    ln.take("{")
    returned = False
    for lineno, s in lines[1:]:
        ln = _Line(s, lineno)
        if ln.peek("}"):
            ln.take("}")
            if not returned:
                ln.fail("graph has no return")
            if batch_in or batch_out:
                set_marks(g, batch_in, batch_out)
            return g
        if returned:
            ln.fail("statement after return")
        if ln.peek("return"):
            ln.take("return")
            outs = []
            while not ln.done():
                outs.append(lookup(ln, ln.name()))
                if ln.peek("batch"):
                    ln.take("batch")
                    batch_out.append(len(outs) - 1)
                if not ln.done():
                    ln.take(",")
            g.outputs = outs
            returned = True
            continue
        results = []
        while True:
            n = ln.name()
            ln.take(":")
            if n in env:
                ln.fail(f"%{n} is defined twice")
            results.append((n, ln.type()))
            if not ln.peek(","):
                break
            ln.take(",")
        ln.take("=")
        if ln.peek("const"):
            ln.take("const")
            if len(results) != 1:
                ln.fail("a constant defines one value")
            n, t = results[0]
            random_data = (missing_weights == "random" and ln.peek(kind="digest")
                           and (weights is None or n not in weights))
            env[n] = g.add_constant(_parse_constant(ln, n, t, weights, missing_weights, rng), n)
            if ln.peek("as"):
                env[n].encoding, env[n].data = _parse_encoding(
                    ln, n, env[n].data, weights, missing_weights, random_data)
        else:
            op = ln.take(kind="ident")
            if op not in ops.OPS:
                ln.fail(f"unknown op {op!r}")
            ln.take("(")
            args = []
            while not ln.peek(")"):
                args.append(lookup(ln, ln.name()))
                if not ln.peek(")"):
                    ln.take(",")
            ln.take(")")
            attrs = ln.keywords("{", "}") if ln.peek("{") else {}
            loc = None
            if ln.peek("loc"):
                ln.take("loc")
                ln.take("(")
                loc = json.loads(ln.take(kind="string"))
                ln.take(")")
            try:
                node = g.add_node(op, args, attrs, names=[r[0] for r in results], loc=loc)
            except IRError as e:
                ln.fail(str(e))
            declared = [r[1] for r in results]
            if [o.type for o in node.outputs] != declared:
                ln.fail(f"declared {', '.join(map(str, declared))} but {op} gives "
                        f"{', '.join(str(o.type) for o in node.outputs)}")
            for o in node.outputs:
                env[o.name] = o
        if not ln.done():
            ln.fail(f"unexpected {ln.toks[ln.i][1]!r}")
    raise IRError("unterminated graph: missing '}'")


_DIGEST_RE = re.compile(r"(= const |mask=)#[0-9a-f]+")


def graph_diff(a: Graph, b: Graph, data: bool = True) -> str | None:
    """The first difference between two graphs, or None if they are equal (structure,
    names, types, attrs, locs and — with ``data`` — constant bytes)."""
    ta, tb = print_graph(a, inline_limit=0), print_graph(b, inline_limit=0)
    if not data:  # structure only: mask the constants' digests
        ta, tb = (_DIGEST_RE.sub(r"\1#?", t) for t in (ta, tb))
    if ta != tb:
        for i, (la, lb) in enumerate(zip(ta.splitlines(), tb.splitlines())):
            if la != lb:
                return f"line {i + 1}:\n  - {la.strip()}\n  + {lb.strip()}"
        return "one graph has more lines than the other"
    if data:
        for v in a.constants.values():
            w = b.constants[v.name]
            if not np.array_equal(v.data, w.data, equal_nan=v.type.is_float):
                return f"constant %{v.name} differs"
    return None


def graphs_equal(a: Graph, b: Graph, data: bool = True) -> bool:
    return graph_diff(a, b, data) is None
