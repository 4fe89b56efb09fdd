"""Step 4 of the ONNX import: pattern rewrites on the graphsurgeon graph (``Fuser``).

Erf- and Tanh-pattern GELU → ``Gelu``, ``x * Sigmoid(x)`` → ``Silu``, ``MatMul(x, W) [+ b]``
with a constant 2-D ``W`` → ``Linear``, ``Reciprocal(Sqrt(x))`` → ``Rsqrt``, ``Not(Equal(a,
b))`` → ``Ne`` (the forms ``backends/onnx.py`` writes for rsqrt and ne); the fused nodes are
in ``FUSED_DOMAIN`` and are converted by the handlers registered with ``@fused``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import onnx_graphsurgeon as gs

from .context import FUSED_DOMAIN, const_of


def _scalar(t: gs.Tensor) -> float | None:
    a = const_of(t)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _near(t: gs.Tensor, value: float, rel: float = 1e-4) -> bool:
    s = _scalar(t)
    return s is not None and math.isclose(s, value, rel_tol=rel)


def _producer(t: gs.Tensor, *ops: str) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op in ops else None


class Fuser:
    """Pattern rewrites on the graphsurgeon graph. Each rule returns True when it fired."""

    def __init__(self, graph: gs.Graph, locs: dict[str, str | None]):
        self.graph, self.locs = graph, locs
        self.outputs = {id(t) for t in graph.outputs}
        self.done: set[int] = set()  # nodes absorbed by a fusion
        self.stats: Counter[str] = Counter()

    def sole(self, t: gs.Tensor, *ops: str) -> gs.Node | None:
        """The single consumer of ``t`` (an op in ``ops``), if ``t`` is an internal tensor."""
        if id(t) in self.outputs or len(t.outputs) != 1 or t.outputs[0].op not in ops:
            return None
        n = t.outputs[0]
        return None if id(n) in self.done else n

    @staticmethod
    def other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
        if len(node.inputs) != 2:
            return None
        a, b = node.inputs
        return b if a is t else a if b is t else None

    def replace(self, nodes: list[gs.Node], op: str, inputs: list[gs.Tensor], out: gs.Tensor,
                attrs: dict[str, Any] | None = None, loc_from: gs.Node | None = None) -> None:
        """Replace ``nodes`` (whose last one produces ``out``) by one node, which takes the
        last one's place in the (topological) node order."""
        last = nodes[-1]
        anchor = loc_from or last
        loc = self.locs.get(anchor.outputs[0].name, anchor.name or None) if anchor.outputs \
            else anchor.name or None
        last.outputs.clear()
        fused = gs.Node(op, name=last.name, attrs=dict(attrs or {}), inputs=inputs, outputs=[out],
                        domain=FUSED_DOMAIN)
        self.graph.nodes.insert(self.graph.nodes.index(last), fused)
        self.locs[out.name] = loc
        self.done.update(id(n) for n in nodes)
        self.stats[op] += 1

    # ------------------------------------------------------------------ GELU
    def gelu_tail(self, x: gs.Tensor, core: gs.Node) -> tuple[list[gs.Node], gs.Tensor] | None:
        """Match ``0.5 * x * (1 + core)`` after ``core`` (Erf or Tanh); the nodes and output."""
        add = self.sole(core.outputs[0], "Add")
        if add is None or not _near(self.other(add, core.outputs[0]), 1.0):
            return None
        m1 = self.sole(add.outputs[0], "Mul")
        if m1 is None:
            return None
        o = self.other(m1, add.outputs[0])
        if o is x:  # x * (1 + e) * 0.5
            m2 = self.sole(m1.outputs[0], "Mul")
            if m2 is not None and _near(self.other(m2, m1.outputs[0]), 0.5):
                return [add, m1, m2], m2.outputs[0]
            return None
        if o is not None and _near(o, 0.5):  # (1 + e) * 0.5 * x
            m2 = self.sole(m1.outputs[0], "Mul")
            if m2 is not None and self.other(m2, m1.outputs[0]) is x:
                return [add, m1, m2], m2.outputs[0]
            return None
        h = _producer(o, "Mul") if o is not None else None  # (x * 0.5) * (1 + e)
        if h is not None and id(h) not in self.done and id(o) not in self.outputs and \
                len(o.outputs) == 1 and ((h.inputs[0] is x and _near(h.inputs[1], 0.5)) or
                                         (h.inputs[1] is x and _near(h.inputs[0], 0.5))):
            return [h, add, m1], m1.outputs[0]
        return None

    def gelu_erf(self, erf: gs.Node) -> bool:
        d = _producer(erf.inputs[0], "Div", "Mul")
        if d is None or self.sole(erf.inputs[0], "Erf") is not erf:
            return False
        if (d.op == "Div" and _near(d.inputs[1], math.sqrt(2.0))) or (
                d.op == "Mul" and _near(d.inputs[1], 1 / math.sqrt(2.0))):
            x = d.inputs[0]
        elif d.op == "Mul" and _near(d.inputs[0], 1 / math.sqrt(2.0)):
            x = d.inputs[1]
        else:
            return False
        tail = self.gelu_tail(x, erf)
        if tail is None:
            return False
        nodes, out = tail
        self.replace([d, erf] + nodes, "Gelu", [x], out, {"approximate": "none"})
        return True

    def gelu_tanh(self, tanh: gs.Node) -> bool:
        """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
        c = _producer(tanh.inputs[0], "Mul")
        if c is None or self.sole(tanh.inputs[0], "Tanh") is not tanh:
            return False
        k = 0 if _near(c.inputs[0], math.sqrt(2 / math.pi)) else 1
        if not _near(c.inputs[k], math.sqrt(2 / math.pi)):
            return False
        b = _producer(c.inputs[1 - k], "Add")
        if b is None or self.sole(c.inputs[1 - k], "Mul") is not c:
            return False
        for j in (0, 1):
            a = _producer(b.inputs[j], "Mul")
            x = b.inputs[1 - j]
            if a is None or self.sole(b.inputs[j], "Add") is not b:
                continue
            ka = 0 if _near(a.inputs[0], 0.044715) else 1
            if not _near(a.inputs[ka], 0.044715):
                continue
            p = _producer(a.inputs[1 - ka], "Pow")
            if p is None or p.inputs[0] is not x or not _near(p.inputs[1], 3.0) or \
                    self.sole(a.inputs[1 - ka], "Mul") is not a:
                continue
            tail = self.gelu_tail(x, tanh)
            if tail is None:
                return False
            nodes, out = tail
            self.replace([p, a, b, c, tanh] + nodes, "Gelu", [x], out, {"approximate": "tanh"})
            return True
        return False

    # ------------------------------------------------------------------ SiLU, linear
    def silu(self, sig: gs.Node) -> bool:
        x = sig.inputs[0]
        m = self.sole(sig.outputs[0], "Mul")
        if m is None or self.other(m, sig.outputs[0]) is not x:
            return False
        self.replace([sig, m], "Silu", [x], m.outputs[0])
        return True

    def linear(self, mm: gs.Node) -> bool:
        x, w = mm.inputs
        wa = const_of(w)
        if wa is None or wa.ndim != 2 or isinstance(x, gs.Constant):
            return False
        add = self.sole(mm.outputs[0], "Add")
        b = self.other(add, mm.outputs[0]) if add is not None else None
        ba = const_of(b) if b is not None else None
        if ba is not None and ba.shape == (wa.shape[1],) and ba.dtype == wa.dtype:
            self.replace([mm, add], "Linear", [x, w, b], add.outputs[0], loc_from=mm)
        else:
            self.replace([mm], "Linear", [x, w], mm.outputs[0])
        return True

    # ------------------------------------------------------------------ rsqrt, ne
    def unary_pair(self, second: gs.Node, first_op: str, op: str) -> bool:
        """``second(first(x))`` with ``first`` used only there → ``op(first's inputs)``."""
        first = _producer(second.inputs[0], first_op)
        if first is None or id(first) in self.done or self.sole(first.outputs[0],
                                                               second.op) is not second:
            return False
        self.replace([first, second], op, list(first.inputs), second.outputs[0])
        return True

    def run(self) -> Counter[str]:
        rules: dict[str, Callable[[gs.Node], bool]] = {
            "Erf": self.gelu_erf, "Tanh": self.gelu_tanh, "Sigmoid": self.silu,
            "MatMul": self.linear,
            "Reciprocal": lambda n: self.unary_pair(n, "Sqrt", "Rsqrt"),
            "Not": lambda n: self.unary_pair(n, "Equal", "Ne")}
        for node in list(self.graph.nodes):
            rule = rules.get(node.op)
            if rule is not None and id(node) not in self.done and node.domain in ("", None):
                rule(node)
        if self.stats:
            self.graph.cleanup()
        return self.stats


