"""``structured-fc``: fully connected layers → structured matrices (lossy).

Matches ``linear(x, W [out, in][, b])`` and ``matmul(x, B [in, out])`` with a constant 2-D
weight (any leading dims of ``x``: 2-D features and 3-D tokens), fits the nearest matrix of
the chosen ``kind`` (``passes/analyses/structured.py``: an orthogonal projection or
Eckart–Young, so a weight that already has the structure is reproduced exactly) and emits
it as ops every backend runs:

* ``lowrank`` — ``linear(linear(x, V [r, in]), U [out, r], b)``;
* ``kronecker`` — ``x`` as ``[.., n1, n2]``: ``Σ_r A_r X B_rᵀ`` as ``reshape`` →
  ``matmul`` (by ``Bᵀ [r, n2, m2]``) → ``matmul`` (``A [r, m1, n1]`` by it) → ``sum`` over
  ``r`` → ``reshape`` (+ ``b``);
* ``blockdiag`` — ``x`` as ``[M, b, in/b]`` (M: the leading dims) → ``permute`` → batched
  ``matmul`` by ``[b, in/b, out/b]`` → ``permute`` → ``reshape`` (+ ``b``); ``permute=true``
  first reorders the inputs and afterwards the outputs (the permutations that keep most
  energy) — needs a gather op and is refused until the IR has one;
* ``monarch`` — ``[M, b, p]`` → ``permute`` → batched ``matmul`` by ``Rᵀ [b, p, q]`` →
  ``permute`` (the Monarch transpose: ``[q, M, b]``) → batched ``matmul`` by
  ``Lᵀ [q, b, s]`` → ``permute`` → ``reshape`` (+ ``b``). Blocks are the batch of each
  matmul: ``[M, b, 1, p]`` against ``[b, p, q]`` would broadcast them over the rows, which
  PyTorch runs as M·b matrix-vector products;
* ``circulant`` / ``block_circulant`` — one ``circulant_matmul`` (+ ``b``): an FFT in torch,
  an exact convolution over the circularly extended input in ONNX and TVM, which keeps the
  parameters and not the speed (``ir/ops/structured.py``);
* ``toeplitz`` — ``pad`` (``out - 1`` zeros after ``x``) → ``circulant_matmul`` of size
  ``n = out + in - 1`` (the Toeplitz matrix is the corner of that circulant) → ``slice``
  (the first ``out``): an FFT in torch; in ONNX and TVM the circulant's convolution, with
  more multiply-accumulates than the dense layer (``n²``).

Every reshape keeps dim 0 batch-relative (``-1``), so a batch-polymorphic graph stays one.
The chain's last node keeps the layer's output name; all its nodes keep the layer's loc;
new constants are ``<stem>.<kind>.<factor>``.

Options:

* ``kind`` — one of ``lowrank``, ``kronecker``, ``blockdiag``, ``monarch``, ``circulant``,
  ``block_circulant``, ``toeplitz`` (default ``monarch``);
* ``rank`` — terms of ``lowrank`` / ``kronecker``; 0 (default) = 1 Kronecker term, or the
  ``lowrank`` rank that keeps a quarter of the parameters;
* ``blocks`` — blocks of ``blockdiag`` (0 = 4) and ``monarch`` (0 = about √in);
* ``block_size`` — circulant block size of ``block_circulant`` (0 = the largest common
  divisor of in and out up to 256);
* ``permute`` — ``blockdiag`` after the best permutations (needs a gather op; refused);
* ``min_features`` — layers with fewer than this many inputs or outputs are left alone
  (default 64);
* ``include`` / ``exclude`` — glob patterns on the node's loc (or name).

Not replaced (each counted): ``skipped_small`` (``min_features``), ``skipped_excluded``,
``skipped_nonconstant``, ``skipped_activations`` (a matmul of two activations),
``skipped_shared_weight``,
``skipped_dtype``, ``skipped_encoded``, ``skipped_shape`` (the sizes admit no such
structure, e.g. a prime dimension for Kronecker: the reason is logged), ``skipped_layout``
(a matmul whose constant is its first operand), ``skipped_not_smaller`` (the structure would not have
fewer parameters).

Stats: ``replaced``, the reasons, ``params_before/after`` and ``macs_before/after`` of the
replaced layers, ``max_error`` (relative Frobenius error of the worst layer). Per-layer rows
(``PassResult.layers``: status, kind, error, params and MACs before → after, shown by
``shrinkc opt --stats``) for every layer replaced or refused for a reason other than its
size or the patterns; the replaced layers' report (loc, shape, kind, params, MACs, error,
the structure's sizes) is ``ctx.artifacts["structured-fc"]``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.types import to_numpy_dtype
from .analyses import structured as S
from .analyses.layers import dense_layer
from .base import Pass, PassContext, PassResult, option
from .registry import register_pass
from .rewrite import remove_unused_constants

Kind = Literal["lowrank", "kronecker", "blockdiag", "monarch", "circulant", "block_circulant",
               "toeplitz"]
REASONS = ("skipped_small", "skipped_excluded", "skipped_nonconstant", "skipped_activations",
           "skipped_shared_weight",
           "skipped_dtype", "skipped_encoded", "skipped_shape", "skipped_layout",
           "skipped_not_smaller")


def _patterns(p: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if p is None else (p,) if isinstance(p, str) else tuple(p)


@dataclass
class _Layer:
    node: Node
    x: Value
    weight: Value  # the constant operand
    w: np.ndarray  # [out, in], float64
    bias: Value | None


class _Emitter:
    """Builds the chain before the layer's node, keeping its loc."""

    def __init__(self, graph: Graph, layer: _Layer, kind: str):
        self.g, self.layer, self.kind = graph, layer, kind
        self.node = layer.node
        w = layer.weight.name
        self.stem = w[: -len(".weight")] if w.endswith(".weight") else layer.node.name
        self.dtype = to_numpy_dtype(layer.weight.dtype)
        self.lead = list(layer.x.shape[:-1])

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.g.add_constant(np.ascontiguousarray(array.astype(self.dtype)),
                                   self.g.fresh_name(f"{self.stem}.{self.kind}.{name}"))

    def op(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None) -> Value:
        base = f"{self.node.name}.{self.kind}"
        return self.g.add_node(op, inputs, attrs, names=[self.g.fresh_name(base)],
                               loc=self.node.loc, before=self.node).output

    def reshape(self, v: Value, tail: tuple[int, ...]) -> Value:
        """``v`` as ``lead + tail``, dim 0 batch-relative (-1) when there are leading dims."""
        shape = self.lead + list(tail)
        if self.lead:
            shape[0] = -1
        return self.op("reshape", [v], {"shape": tuple(shape)})

    def flat(self, v: Value, tail: tuple[int, ...]) -> Value:
        """``v`` as ``[-1] + tail`` (every leading dim merged into dim 0)."""
        return self.op("reshape", [v], {"shape": (-1, *tail)})


def _emit(graph: Graph, layer: _Layer, fit: S.Fit) -> None:
    e = _Emitter(graph, layer, fit.kind)
    x, f = layer.x, fit.factors
    out, inp = fit.shape
    lead = len(e.lead)
    bias_done = False
    if fit.kind == "lowrank":
        h = e.op("linear", [x, e.const("in.weight", f["V"])])
        ins = [h, e.const("out.weight", f["U"])]
        if layer.bias is not None:
            ins.append(layer.bias)
            bias_done = True
        y = e.op("linear", ins)
    elif fit.kind == "kronecker":
        a, b = f["A"], f["B"]
        r = a.shape[0]
        (m1, m2), (n1, n2) = fit.info["out_factors"], fit.info["in_factors"]
        if r == 1:
            xr = e.reshape(x, (n1, n2))
            t = e.op("matmul", [xr, e.const("B_t", b[0].T)])  # [.., n1, m2]
            s = e.op("matmul", [e.const("A", a[0]), t])  # [.., m1, m2]
        else:
            xr = e.reshape(x, (1, n1, n2))
            t = e.op("matmul", [xr, e.const("B_t", b.transpose(0, 2, 1))])  # [.., r, n1, m2]
            u = e.op("matmul", [e.const("A", a), t])  # [.., r, m1, m2]
            s = e.op("sum", [u], {"axes": (-3,), "keepdim": False})
        y = e.reshape(s, (m1 * m2,))
    elif fit.kind == "blockdiag":
        # the blocks as the batch of one batched matmul: [b, M, in/b] @ [b, in/b, out/b]
        # (x as [M, b, 1, in/b] against [b, in/b, out/b] would broadcast the blocks over
        # every row — M·b matrix-vector products in PyTorch, 20x slower than dense at M=64)
        blk = f["blocks"]
        nb, ob, ib = blk.shape
        xr = e.op("permute", [e.flat(x, (nb, ib))], {"perm": (1, 0, 2)})  # [b, M, ib]
        z = e.op("matmul", [xr, e.const("blocks", blk.transpose(0, 2, 1))])  # [b, M, ob]
        z = e.op("permute", [z], {"perm": (1, 0, 2)})  # [M, b, ob]
        y = e.reshape(z, (out,)) if lead else e.op("reshape", [z], {"shape": (out,)})
    elif fit.kind == "monarch":
        # R's blocks, the Monarch transpose and L's blocks as two batched matmuls:
        # [b, M, p] @ R_t [b, p, q] -> [b, M, q] -> (transpose b and q) [q, M, b]
        # @ L_t [q, b, s] -> [q, M, s] -> [M, q, s]
        b, p, q, s_ = fit.info["shape"]
        rmat, lmat = f["R"], f["L"]
        xr = e.op("permute", [e.flat(x, (b, p))], {"perm": (1, 0, 2)})  # [b, M, p]
        z = e.op("matmul", [xr, e.const("R_t", rmat.transpose(0, 2, 1))])  # [b, M, q]
        zt = e.op("permute", [z], {"perm": (2, 1, 0)})  # [q, M, b]
        yq = e.op("matmul", [zt, e.const("L_t", lmat.transpose(0, 2, 1))])  # [q, M, s]
        yq = e.op("permute", [yq], {"perm": (1, 0, 2)})  # [M, q, s]
        y = e.reshape(yq, (q * s_,)) if lead else e.op("reshape", [yq], {"shape": (q * s_,)})
    elif fit.kind in ("circulant", "block_circulant"):
        y = e.op("circulant_matmul", [x, e.const("c", f["c"])])
    elif fit.kind == "toeplitz":
        # T [out, in] is the top-left corner of one n x n circulant, n = out + in - 1 (its
        # wrapped diagonals never meet inside the corner): y = (C · [x, 0 … 0])[:out], with
        # c = t rotated so that c[(i - j) mod n] = t[i - j + in - 1] — an FFT of size n in
        # PyTorch (a 1-D convolution with a kernel of n taps, the obvious lowering, was
        # 30-300x slower than dense there and in onnxruntime)
        t = f["t"]
        n = out + inp - 1
        r = len(e.lead) + 1
        xp = e.op("pad", [x], {"pads": (0,) * (2 * r - 1) + (out - 1,), "mode": "constant",
                               "value": 0.0})
        yc = e.op("circulant_matmul", [xp, e.const("c", np.roll(t, -(inp - 1)).reshape(1, 1, n))])
        y = e.op("slice", [yc], {"axis": r - 1, "start": 0, "end": out, "step": 1})
    else:  # pragma: no cover - the option's type admits only KINDS
        raise AssertionError(fit.kind)
    if layer.bias is not None and not bias_done:
        y = e.op("add", [y, layer.bias])
    node, old = layer.node, layer.node.output
    name = old.name
    graph.replace_all_uses(old, y)
    graph.erase(node)
    graph.rename(y, name)
    remove_unused_constants(graph, [layer.weight])


@register_pass("structured-fc")
@dataclass
class StructuredFc(Pass):
    """Replace fully connected layers by structured matrices (Kronecker, Monarch, …)."""

    exact = False
    kind: Kind = option("monarch", help="the structure")
    rank: int = option(0, ge=0, help="terms (lowrank / kronecker); 0 = default")
    blocks: int = option(0, ge=0, help="blocks (blockdiag / monarch); 0 = default")
    block_size: int = option(0, ge=0, help="circulant block size; 0 = default")
    permute: bool = option(False, help="blockdiag after the best permutations")
    min_features: int = option(64, ge=1, help="skip layers with fewer inputs or outputs")
    include: str | tuple[str, ...] | None = option(
        None, help="only layers whose loc (or name) matches one of these glob patterns")
    exclude: str | tuple[str, ...] | None = option(
        None, help="never layers whose loc (or name) matches one of these glob patterns")

    def check(self) -> str | None:
        if self.permute:
            return ("permute=true needs a gather op to reorder features, which the IR does not "
                    "have yet; use blockdiag without it")
        return None

    # ------------------------------------------------------------------ matching
    def _layer(self, graph: Graph, node: Node) -> _Layer | str:
        layer = dense_layer(graph, node)  # shared with the low-rank passes
        if isinstance(layer, str):
            return layer
        if layer.info["kind"] == "matmul_left":
            return "skipped_layout"  # A @ x: the features are not the last axis of x
        if layer.x.dtype != layer.weight.dtype:
            return "skipped_dtype"
        if min(layer.w.shape) < self.min_features:
            return "skipped_small"
        return _Layer(node, layer.x, layer.weight, layer.w, layer.bias)

    def _selected(self, node: Node) -> bool:
        keys = [k for k in (node.loc, node.name) if k]
        inc, exc = _patterns(self.include), _patterns(self.exclude)
        if inc and not any(fnmatch.fnmatchcase(k, p) for k in keys for p in inc):
            return False
        return not any(fnmatch.fnmatchcase(k, p) for k in keys for p in exc)

    def _fit(self, w: np.ndarray) -> S.Fit:
        out, inp = w.shape
        rank = self.rank
        if self.kind == "lowrank" and rank == 0:
            rank = max(1, (out * inp) // (4 * (out + inp)))
        return S.fit(w, self.kind, rank=rank or 1, blocks=self.blocks or None,
                     block_size=self.block_size or None)

    # ------------------------------------------------------------------ run
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int | float] = dict.fromkeys(("replaced", *REASONS), 0)
        stats.update(params_before=0, params_after=0, macs_before=0, macs_after=0,
                     max_error=0.0)
        report: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []

        def skip(node: Node, reason: str, note: str = "") -> None:
            stats[reason] += 1
            ctx.logger.debug("structured-fc: %s: %s %s", node.describe(), reason, note)
            if reason not in ("skipped_excluded", "skipped_small"):
                rows.append({"node": node.name, "loc": node.loc, "status": reason,
                             "kind": self.kind, "error": None, "params": None, "macs": None,
                             "note": note})

        for node in [n for n in graph.nodes if n.op in ("linear", "matmul")]:
            if not self._selected(node):
                skip(node, "skipped_excluded")
                continue
            layer = self._layer(graph, node)
            if isinstance(layer, str):
                skip(node, layer)
                continue
            try:
                fit = self._fit(layer.w)
            except S.StructureError as e:
                skip(node, "skipped_shape", f"{list(layer.w.shape)}: {e}")
                continue
            out, inp = layer.w.shape
            dense_params = out * inp
            if fit.params >= dense_params:
                skip(node, "skipped_not_smaller",
                     f"{fit.params} parameters, the dense layer {dense_params}")
                continue
            n_rows = layer.x.type.numel // inp
            err = fit.error(layer.w)
            entry = {"layer": node.loc or node.name, "shape": [out, inp], "kind": fit.kind,
                     "params_before": dense_params, "params_after": fit.params,
                     "macs_before": n_rows * dense_params, "macs_after": n_rows * fit.macs,
                     "error": err, **{k: v for k, v in fit.info.items()
                                      if k in ("rank", "blocks", "block", "out_factors",
                                               "in_factors", "shape")}}
            _emit(graph, layer, fit)
            report.append(entry)
            rows.append({"node": node.name, "loc": node.loc, "status": "replaced",
                         "kind": fit.kind, "error": err,
                         "params": (entry["params_before"], entry["params_after"]),
                         "macs": (entry["macs_before"], entry["macs_after"]), "note": ""})
            stats["replaced"] += 1
            for k in ("params_before", "params_after", "macs_before", "macs_after"):
                stats[k] += entry[k]
            stats["max_error"] = max(stats["max_error"], err)
            ctx.logger.info("structured-fc: %s %dx%d -> %s: params %d -> %d, error %.3g",
                            entry["layer"], out, inp, fit.kind, dense_params, fit.params, err)
        ctx.artifacts["structured-fc"] = report
        return PassResult(stats["replaced"] > 0, stats, rows)
