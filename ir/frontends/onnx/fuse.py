"""Step 4 of the ONNX import: pattern rewrites on the graphsurgeon graph (``Fuser``).

Erf- and Tanh-pattern GELU → ``Gelu``, ``x * Sigmoid(x)`` → ``Silu``, ``MatMul(x, W) [+ b]``
with a constant 2-D ``W`` → ``Linear``, ``Reciprocal(Sqrt(x))`` → ``Rsqrt``, ``Not(Equal(a,
b))`` → ``Ne`` (the forms ``backends/onnx.py`` writes for rsqrt and ne), and
``Softmax(q kᵀ · scale + mask) v`` → ``Attention`` (scaled dot-product attention, kept whole
for head pruning); the fused nodes are in ``FUSED_DOMAIN`` and are converted by the handlers
registered with ``@fused``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .context import FUSED_DOMAIN, const_of, f32


def _scalar(t: gs.Tensor) -> float | None:
    a = const_of(t)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _near(t: gs.Tensor, value: float, rel: float = 1e-4) -> bool:
    s = _scalar(t)
    return s is not None and math.isclose(s, value, rel_tol=rel)


def _producer(t: gs.Tensor, *ops: str) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op in ops else None


def _static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    shape = t.shape
    if isinstance(shape, (list, tuple)) and all(isinstance(d, int) and d >= 0 for d in shape):
        return tuple(shape)
    return None


def _is_causal(mask: np.ndarray, L: int, S: int) -> bool:
    """A constant additive mask that is 0 on and below the diagonal and -inf above it."""
    if mask.ndim < 2 or mask.shape[-2:] != (L, S) or not np.all((mask == 0) | np.isneginf(mask)):
        return False
    return bool(np.all((mask == 0) == np.tril(np.ones((L, S), bool))))


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

    # ------------------------------------------------------------------ attention
    def attention(self, sm: gs.Node) -> bool:
        """``Softmax(MatMul(q, Transpose(k)) [* or / scale] [+ mask]...) @ v`` →
        ``Attention`` (``scaled_dot_product_attention``): what ``backends/onnx.py`` writes and
        what torch.onnx writes for BERT-style attention. A constant 0 / -inf lower-triangular
        mask is the ``causal`` flag; ``Where(mask, 0, -inf)`` feeding only this attention is
        its bool mask; any other mask is additive. Shapes must be static; anything else
        (several masks, repeated k/v heads) stays unfused."""
        s = sm.inputs[0]
        shape = _static_shape(s)
        if shape is None or len(shape) < 3 or int(sm.attrs.get("axis", -1)) not in (
                -1, len(shape) - 1) or self.sole(s, "Softmax") is not sm:
            return False
        mm2 = self.sole(sm.outputs[0], "MatMul")
        if mm2 is None or mm2.inputs[0] is not sm.outputs[0]:
            return False
        nodes: list[gs.Node] = [sm, mm2]
        masks: list[gs.Tensor] = []
        t, consumer = s, sm
        while (add := _producer(t, "Add")) is not None and id(add) not in self.done:
            if self.sole(t, consumer.op) is not consumer:
                return False
            chain = [x for x in add.inputs if _producer(x, "Add", "Mul", "Div", "MatMul")
                     and _static_shape(x) == shape]
            if len(chain) != 1:
                return False
            masks.append(self.other(add, chain[0]))
            nodes.insert(0, add)
            t, consumer = chain[0], add
        scale = 1.0
        sc = _producer(t, "Mul", "Div")
        if sc is not None and id(sc) not in self.done and self.sole(t, consumer.op) is consumer:
            c = _scalar(sc.inputs[1])
            if c is None or not c:
                return False
            scale = c if sc.op == "Mul" else 1.0 / c
            nodes.insert(0, sc)
            t, consumer = sc.inputs[0], sc
        mm1 = _producer(t, "MatMul")
        if mm1 is None or id(mm1) in self.done or self.sole(t, consumer.op) is not consumer:
            return False
        q, kt = mm1.inputs
        tr = _producer(kt, "Transpose")
        r = len(shape)
        if tr is None or id(tr) in self.done or self.sole(kt, "MatMul") is not mm1:
            return False
        src, v = tr.inputs[0], mm2.inputs[1]
        swap = list(range(r - 2)) + [r - 1, r - 2]
        perm = [int(p) for p in tr.attrs.get("perm", reversed(range(r)))]
        perm_k = [perm[i] for i in swap]  # k = kt with its last two dims swapped
        kts = _static_shape(kt)
        ks = None if kts is None else tuple(kts[i] for i in swap)
        qs, vs = _static_shape(q), _static_shape(v)
        if None in (qs, ks, vs) or not len(qs) == len(ks) == len(vs) == r or qs[:-2] != ks[
                :-2] or ks[:-2] != vs[:-2] or ks[-2] != vs[-2]:
            return False
        causal, operand = False, None
        L, S = shape[-2], shape[-1]
        for m in masks:
            arr = const_of(m)
            if arr is not None and _is_causal(arr, L, S):
                causal = True
                continue
            if operand is not None:
                return False
            ms = _static_shape(m)
            if ms is None or len(ms) > r:
                return False
            try:
                if tuple(np.broadcast_shapes(ms, shape)) != shape:
                    return False
            except ValueError:
                return False
            w = _producer(m, "Where")
            if (w is not None and id(w) not in self.done and len(m.outputs) == 1
                    and id(m) not in self.outputs and _scalar(w.inputs[1]) == 0.0
                    and _scalar(w.inputs[2]) == -math.inf):
                nodes.insert(0, w)
                m = w.inputs[0]
            elif arr is None and m.dtype != s.dtype:
                return False
            operand = m
        if f32(scale) == f32(1.0 / math.sqrt(qs[-1])):
            scale = None
        else:
            scale = f32(scale)
        if perm_k == list(range(r)):
            k = src
        else:  # torch.onnx merges k.transpose(1, 2).transpose(-1, -2) into one perm
            k = gs.Variable(f"{kt.name}_k", dtype=kt.dtype, shape=list(ks))
            self.graph.nodes.insert(self.graph.nodes.index(tr), gs.Node(
                "Transpose", name=f"{tr.name}_k", attrs={"perm": perm_k}, inputs=[src],
                outputs=[k]))
            self.locs[k.name] = self.locs.get(kt.name, tr.name or None)
        self.replace([tr, mm1] + nodes, "Attention", [q, k, v] + ([operand] if operand is not None
                                                                 else []),
                     mm2.outputs[0], {"causal": causal, "scale": scale}, loc_from=mm1)
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
            "MatMul": self.linear, "Softmax": self.attention,
            "Reciprocal": lambda n: self.unary_pair(n, "Sqrt", "Rsqrt"),
            "Not": lambda n: self.unary_pair(n, "Equal", "Ne")}
        for node in list(self.graph.nodes):
            rule = rules.get(node.op)
            if rule is not None and id(node) not in self.done and node.domain in ("", None):
                rule(node)
        if self.stats:
            self.graph.cleanup()
        return self.stats


