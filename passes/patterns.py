"""Rewrite rules as data: patterns, a matcher that returns bindings, rules run to a fixpoint.

A pattern (``Pat``) describes a value and, recursively, the operands of the node that
produces it; ``match`` returns the bindings or the reason it did not match. A ``Rule`` is
``(pattern, check, rewrite)``: ``check(graph, m)`` returns None or a refusal reason, which
is a stats key (``"skipped_shared"``); ``rewrite(graph, m)`` changes the graph with the
Graph verbs. ``apply_rules`` runs rules over the nodes in graph order until none fires::

    LAYER = Pat({"conv2d", "linear"}, [Pat(name="x"), Pat(name="w"), Pat(name="b",
                optional=True)], name="layer")
    BN = Pat("batch_norm", [LAYER, Pat(name="gamma"), ...], name="bn")
    rule = Rule("fold-bn", BN, rewrite=fold, check=refuse, counter="folded",
                unmatched="unmatched")
    result = apply_rules(graph, [rule])
    result.stats  # {"folded": 3, "skipped_shared": 1, "unmatched": 2}

``Pat`` fields (all optional; ``Pat()`` matches any value):

* ``op`` — an op name or a set of names: the value is an output of such a node (None: any
  value — a graph input, a constant, a node result);
* ``inputs`` — one sub-pattern per operand, matched in order; a trailing ``...`` lets further
  operands through, a sub-pattern with ``optional=True`` may be missing (trailing);
  None: any operands;
* ``name`` — binds the match: the ``Node`` for a pattern with ``op``, else the ``Value``; a
  name bound twice must bind the same object (``Pat("mul", [X, X])`` is a square);
* ``const`` (True: a constant; False: not one), ``single_use`` (exactly one use and not a
  graph output), ``dtype`` (name or set), ``rank`` (int or set);
* ``where`` — predicates of the bound object (Node or Value), checked last; a failing one
  is named by its ``__name__`` in the reason, so give them names.

``match(pattern, node_or_value)`` returns a ``Match`` (``m["layer"]``, ``m.get("b")``,
``m.root``) or a falsy ``NoMatch`` whose ``reason`` says where and why, e.g. ``operand 0
%cat: concat_1 is concat, not conv2d | linear``.

``apply_rules(graph, rules)``: each node is tried against the rules anchored at its op, in
rule order; the first rule whose pattern matches and whose check passes rewrites, and the
sweep moves on to the next node. Sweeps repeat until one changes nothing (deterministic:
graph order, rule order), or raise IRError after ``max_sweeps``. ``RewriteResult.stats``:
per rule its ``counter`` (default: its name) = rewrites done; each refusal reason and, for
rules that set ``unmatched``, that key = the nodes still in the graph that the rule's root
op anchored but did not rewrite (counted once, as of the last sweep). ``rewritten`` lists
the anchor nodes that were rewritten.

Why a rule did not fire: the last sweep's reason for every anchored node is logged at
DEBUG on ``shrinkc.passes.patterns`` (``rule fold-bn: batch_norm_3 (layer1.0.bn2) not
matched: operand 0 %cat: ...`` / ``refused: skipped_shared``). ``shrinkc opt --explain``
prints those lines (``explaining(write)`` is the context manager it uses);
``RewriteResult.reasons`` has them as data.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

from ..ir.errors import IRError
from ..ir.graph import Graph, Node, Value

log = logging.getLogger(__name__)

__all__ = ["Match", "NoMatch", "Pat", "RewriteResult", "Rule", "apply_rules", "explaining",
           "match"]


def _set(x: Any) -> frozenset | None:
    if x is None:
        return None
    return frozenset([x] if isinstance(x, (str, int)) else x)


@dataclass(frozen=True)
class Pat:
    """A pattern for a value (see the module docstring for the fields)."""

    op: str | Iterable[str] | None = None
    inputs: Sequence[Pat | EllipsisType] | None = None
    name: str | None = None
    const: bool | None = None
    single_use: bool = False
    dtype: str | Iterable[str] | None = None
    rank: int | Iterable[int] | None = None
    where: Callable[[Any], bool] | Sequence[Callable[[Any], bool]] = ()
    optional: bool = False

    def __post_init__(self) -> None:
        for f in ("op", "dtype", "rank"):
            object.__setattr__(self, f, _set(getattr(self, f)))
        if self.inputs is not None:
            ins = tuple(self.inputs)
            if any(p is Ellipsis for p in ins[:-1]):
                raise ValueError("Pat: '...' may only end the operand list")
            seen_optional = False
            for p in ins:
                if p is not Ellipsis:
                    if seen_optional and not p.optional:
                        raise ValueError("Pat: optional operands must be trailing")
                    seen_optional |= p.optional
            object.__setattr__(self, "inputs", ins)
        if callable(self.where):
            object.__setattr__(self, "where", (self.where,))
        object.__setattr__(self, "where", tuple(self.where))
        if self.op is None and self.inputs is not None:
            raise ValueError("Pat: operand patterns need an op")

    def __str__(self) -> str:
        head = " | ".join(sorted(self.op)) if self.op else ("const" if self.const else "_")
        args = "" if self.inputs is None else "(" + ", ".join(
            "..." if p is Ellipsis else str(p) + ("?" if p.optional else "")
            for p in self.inputs) + ")"
        return f"{head}{args}" + (f" as {self.name}" if self.name else "")


@dataclass
class Match:
    """The bindings of a successful match; ``root`` is the node (or value) matched."""

    root: Node | Value
    bindings: dict[str, Node | Value] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.bindings[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.bindings.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self.bindings

    def __bool__(self) -> bool:
        return True


@dataclass
class NoMatch:
    """Why a pattern did not match (falsy)."""

    reason: str

    def __bool__(self) -> bool:
        return False


def _ops_text(ops: frozenset) -> str:
    return " | ".join(sorted(ops))


def _preds(pat: Pat, obj: Any, at: str) -> str | None:
    for p in pat.where:
        if not p(obj):
            return f"{at}{getattr(p, '__name__', 'a constraint')} does not hold"
    return None


def _bind(pat: Pat, obj: Any, b: dict, at: str) -> str | None:
    if pat.name is None:
        return None
    if pat.name in b and b[pat.name] is not obj:
        return f"{at}{pat.name} is already bound to another value"
    b[pat.name] = obj
    return None


def _value_checks(pat: Pat, v: Value, graph_outputs: set[int], at: str) -> str | None:
    if pat.const is True and not v.is_constant:
        return f"{at}%{v.name} is not a constant"
    if pat.const is False and v.is_constant:
        return f"{at}%{v.name} is a constant"
    if pat.single_use and (len(v.uses) != 1 or id(v) in graph_outputs):
        out = " and a graph output" if id(v) in graph_outputs else ""
        return f"{at}%{v.name} has {len(v.uses)} uses{out} (a single use wanted)"
    if pat.dtype is not None and v.dtype not in pat.dtype:
        return f"{at}%{v.name} is {v.dtype}, not {_ops_text(pat.dtype)}"
    if pat.rank is not None and v.type.rank not in pat.rank:
        return f"{at}%{v.name} has rank {v.type.rank}, not {' | '.join(map(str, sorted(pat.rank)))}"
    return None


def _match_node(pat: Pat, node: Node, value: Value | None, b: dict, outs: set[int],
                at: str) -> str | None:
    if node.op not in pat.op:
        return f"{at}{node.describe()} is {node.op}, not {_ops_text(pat.op)}"
    if value is None and len(node.outputs) == 1:
        value = node.outputs[0]
    if value is not None:
        r = _value_checks(pat, value, outs, at)
        if r:
            return r
    if pat.inputs is not None:
        subs = list(pat.inputs)
        rest = bool(subs) and subs[-1] is Ellipsis
        subs = subs[:-1] if rest else subs
        need = sum(1 for p in subs if not p.optional)
        n = len(node.inputs)
        if n < need or (not rest and n > len(subs)):
            want = f"{need}" + ("+" if rest else f"..{len(subs)}" if len(subs) > need else "")
            return f"{at}{node.describe()} has {n} operands, the pattern takes {want}"
        for i, sp in enumerate(subs[:n]):
            v = node.inputs[i]
            r = _match_value(sp, v, b, outs, f"{at}operand {i} %{v.name}: ")
            if r:
                return r
    return _bind(pat, node, b, at) or _preds(pat, node, at)


def _match_value(pat: Pat, v: Value, b: dict, outs: set[int], at: str) -> str | None:
    if pat.op is not None:
        if v.producer is None:
            kind = "a constant" if v.is_constant else "a graph input"
            return f"{at}%{v.name} is {kind}, not {_ops_text(pat.op)}"
        return _match_node(pat, v.producer, v, b, outs, at)
    return _value_checks(pat, v, outs, at) or _bind(pat, v, b, at) or _preds(pat, v, at)


def match(pattern: Pat, target: Node | Value, graph: Graph | None = None) -> Match | NoMatch:
    """Match ``pattern`` at a node (its op and operands) or a value. ``graph`` is needed for
    ``single_use`` (a graph output is a use too)."""
    outs = {id(v) for v in graph.outputs} if graph is not None else set()
    b: dict[str, Any] = {}
    if isinstance(target, Node):
        if pattern.op is None:
            return NoMatch("a pattern without an op matches values, not nodes")
        r = _match_node(pattern, target, None, b, outs, "")
    else:
        r = _match_value(pattern, target, b, outs, "")
    return NoMatch(r) if r else Match(target, b)


@dataclass(frozen=True)
class Rule:
    """``pattern`` anchored at nodes of its root op; ``check(graph, m)`` -> None or a refusal
    reason (a stats key); ``rewrite(graph, m)`` does the change. ``counter`` is the stats key
    counting rewrites (default ``name``); ``unmatched``, if set, the key counting anchored
    nodes the pattern did not match (otherwise those are only explained)."""

    name: str
    pattern: Pat
    rewrite: Callable[[Graph, Match], Any]
    check: Callable[[Graph, Match], str | None] | None = None
    counter: str | None = None
    unmatched: str | None = None

    def __post_init__(self) -> None:
        if self.pattern.op is None:
            raise ValueError(f"rule {self.name}: the root pattern needs an op to anchor at")


@dataclass
class RewriteResult:
    """What ``apply_rules`` did: ``stats`` (counters), ``rewritten`` (anchor nodes, in order),
    ``reasons`` ((rule name, node, reason) for every anchored node left as it is)."""

    stats: dict[str, int] = field(default_factory=dict)
    rewritten: list[Node] = field(default_factory=list)
    reasons: list[tuple[str, Node, str]] = field(default_factory=list)
    sweeps: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.rewritten)


def apply_rules(graph: Graph, rules: Sequence[Rule], *, max_sweeps: int = 50) -> RewriteResult:
    """Run ``rules`` over ``graph`` (in place) until none fires; see the module docstring."""
    anchored: dict[str, list[tuple[int, Rule]]] = {}
    for i, r in enumerate(rules):
        for op in sorted(r.pattern.op):
            anchored.setdefault(op, []).append((i, r))
    counts: Counter[str] = Counter({r.counter or r.name: 0 for r in rules})
    res = RewriteResult()
    last: dict[tuple[int, int], tuple[Node, Rule, str, str | None]] = {}  # why not, per node
    changed = True
    while changed:
        if res.sweeps == max_sweeps:
            raise IRError(f"rules {', '.join(r.name for r in rules)} did not reach a fixpoint "
                          f"after {max_sweeps} sweeps over graph {graph.name} (last rewrite: "
                          f"{res.rewritten[-1].describe()})")
        res.sweeps += 1
        changed = False
        live = {id(n) for n in graph.nodes}
        for node in list(graph.nodes):
            if id(node) not in live:
                continue
            for i, rule in anchored.get(node.op, ()):
                m = match(rule.pattern, node, graph)
                if not m:
                    last[id(node), i] = (node, rule, f"not matched: {m.reason}", rule.unmatched)
                    continue
                reason = rule.check(graph, m) if rule.check is not None else None
                if reason:
                    last[id(node), i] = (node, rule, f"refused: {reason}", reason)
                    continue
                rule.rewrite(graph, m)
                log.debug("rule %s: rewrote %s", rule.name, node.describe())
                counts[rule.counter or rule.name] += 1
                res.rewritten.append(node)
                for j, _ in anchored.get(node.op, ()):
                    last.pop((id(node), j), None)
                changed = True
                live = {id(n) for n in graph.nodes}
                break
    live = {id(n) for n in graph.nodes}
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    for (nid, i), (node, rule, text, key) in sorted(last.items(),
                                                    key=lambda kv: (order.get(kv[0][0], -1),
                                                                    kv[0][1])):
        if nid not in live:
            continue
        log.debug("rule %s: %s %s", rule.name, node.describe(), text)
        res.reasons.append((rule.name, node, text))
        if key:
            counts[key] += 1
    res.stats = dict(counts)
    return res


class _WriteHandler(logging.Handler):
    def __init__(self, write: Callable[[str], None]):
        super().__init__(logging.DEBUG)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        self.write(f"explain {record.getMessage()}")


@contextlib.contextmanager
def explaining(write: Callable[[str], None]) -> Iterator[None]:
    """While active, every rule's rewrites and non-match / refusal reasons go to ``write``
    as ``explain rule NAME: NODE REASON`` lines (what ``shrinkc opt --explain`` shows)."""
    handler, level, propagate = _WriteHandler(write), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
