"""structured-fc: exact on weights that already have the structure, nearest fits
(projection optimality), the emitted chains, layers it must leave alone, and the chains in
onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkc.backends.onnx import run_onnxruntime, to_onnx
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run, run_numpy
from shrinkc.passes import PassContext, PassManager
from shrinkc.passes.analyses import structured as S
from shrinkc.tools import zoo

RNG = np.random.default_rng(0)


def layer_graph(w: np.ndarray, bias: bool = True, lead=(3,), dtype=np.float32,
                op: str = "linear") -> Graph:
    """``linear(x [*lead, in], W [out, in], b)`` (or ``matmul(x, Wᵀ)``) then a relu."""
    g = Graph("fc")
    out, inp = w.shape
    x = g.add_input(TensorType("f64" if dtype == np.float64 else "f32", (*lead, inp)), "x")
    if op == "linear":
        ins = [x, g.add_constant(w.astype(dtype), "fc.weight")]
        if bias:
            ins.append(g.add_constant(RNG.standard_normal(out).astype(dtype), "fc.bias"))
        y = g.add_node("linear", ins, names="y", loc="fc").output
    else:
        y = g.add_node("matmul", [x, g.add_constant(w.T.astype(dtype).copy(), "fc.weight")],
                       names="y", loc="fc").output
    g.outputs = [g.add_node("relu", [y], names="out", loc="act").output]
    return g


def structured(kind: str, out: int, inp: int, **kw) -> np.ndarray:
    """A random weight that has the structure exactly."""
    if kind == "lowrank":
        return RNG.standard_normal((out, kw["rank"])) @ RNG.standard_normal((kw["rank"], inp))
    if kind == "kronecker":
        (m1, m2), (n1, n2) = S.factor_pair(out), S.factor_pair(inp)
        return sum(np.kron(RNG.standard_normal((m1, n1)), RNG.standard_normal((m2, n2)))
                   for _ in range(kw["rank"]))
    if kind == "blockdiag":
        b = kw["blocks"]
        w = np.zeros((out, inp))
        for k in range(b):
            w[k * out // b:(k + 1) * out // b, k * inp // b:(k + 1) * inp // b] = \
                RNG.standard_normal((out // b, inp // b))
        return w
    if kind == "monarch":
        b, p, q, s = S._monarch_shape(out, inp, kw.get("blocks"))
        left, right = RNG.standard_normal((q, s, b)), RNG.standard_normal((b, q, p))
        return np.einsum("jtk,kji->jtki", left, right).reshape(out, inp)
    if kind in ("circulant", "block_circulant"):
        k = kw.get("block_size") or out
        return S._circ_dense(RNG.standard_normal((out // k, inp // k, k)))
    if kind == "toeplitz":
        return S.toeplitz_dense(RNG.standard_normal(out + inp - 1), out, inp)
    raise AssertionError(kind)


def apply(graph: Graph, pipeline: str) -> tuple[Graph, dict, PassContext]:
    g = graph.clone()
    ctx = PassContext()
    pm = PassManager(pipeline, ctx)
    pm.run(g)
    return g, pm.steps[-1].result.stats, ctx


CASES = [  # kind, out, in, options
    ("lowrank", 96, 80, {"rank": 8}),
    ("kronecker", 96, 80, {"rank": 1}),
    ("kronecker", 96, 80, {"rank": 3}),
    ("blockdiag", 96, 64, {"blocks": 4}),
    ("monarch", 96, 64, {"blocks": 8}),
    ("monarch", 100, 81, {}),
    ("circulant", 96, 96, {}),
    ("block_circulant", 96, 64, {"block_size": 32}),
    ("toeplitz", 96, 72, {}),
]


def _pipeline(kind: str, opts: dict) -> str:
    args = ",".join([f"kind={kind}"] + [f"{k}={v}" for k, v in opts.items()])
    return f"structured-fc({args})"


@pytest.mark.parametrize(("kind", "out", "inp", "opts"), CASES)
@pytest.mark.parametrize("lead", [(5,), (2, 7)], ids=["2d", "3d_tokens"])
def test_exact_when_the_weight_has_the_structure(kind, out, inp, opts, lead, assert_exact):
    w = structured(kind, out, inp, **opts)
    g64 = layer_graph(w, lead=lead, dtype=np.float64)
    after, stats, ctx = apply(g64, _pipeline(kind, opts))
    assert stats["replaced"] == 1 and stats["max_error"] < 1e-12, stats
    assert not any(n.op == "linear" and n.inputs[1].shape == (out, inp) for n in after.nodes)
    x = torch.randn(*lead, inp, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_exact(g64, after, [x])  # computed in float64: to 1e-9 of the output
    (entry,) = ctx.artifacts["structured-fc"]
    assert entry["params_after"] < entry["params_before"] == out * inp
    assert after.outputs[0].name == "out" and "y" in {o.name for n in after.nodes
                                                      for o in n.outputs}
    # and in float32, to 1e-5 of the output's scale
    g32 = layer_graph(w, lead=lead)
    a32, _, _ = apply(g32, _pipeline(kind, opts))
    with torch.no_grad():
        want, got = run(g32, [x.float()])[0], run(a32, [x.float()])[0]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("kind", ["lowrank", "kronecker", "blockdiag", "monarch",
                                  "block_circulant", "toeplitz"])
def test_matmul_with_a_constant_weight(kind, assert_exact):
    opts = {"rank": 4} if kind in ("lowrank", "kronecker") else {}
    w = structured(kind, 64, 96, **({"blocks": 4} if kind == "blockdiag" else opts),
                   **({"block_size": 32} if kind == "block_circulant" else {}))
    g = layer_graph(w, op="matmul", dtype=np.float64, lead=(2, 3))
    after, stats, _ = apply(g, _pipeline(kind, opts))
    assert stats["replaced"] == 1
    x = torch.randn(2, 3, 96, dtype=torch.float64)
    assert_exact(g, after, [x])


def test_chain_structure():
    ops = lambda g: [n.op for n in g.nodes]
    w = RNG.standard_normal((96, 64))
    pipe = lambda k, **o: apply(layer_graph(w), _pipeline(k, o))[0]
    assert ops(pipe("lowrank", rank=8)) == ["linear", "linear", "relu"]
    assert ops(pipe("kronecker", rank=1)) == ["reshape", "matmul", "matmul", "reshape", "add",
                                              "relu"]
    assert ops(pipe("kronecker", rank=2)) == ["reshape", "matmul", "matmul", "sum", "reshape",
                                              "add", "relu"]
    assert ops(pipe("blockdiag", blocks=4)) == ["reshape", "permute", "matmul", "permute",
                                                "reshape", "add", "relu"]
    assert ops(pipe("monarch")) == ["reshape", "permute", "matmul", "permute", "matmul",
                                    "permute", "reshape", "add", "relu"]
    assert ops(pipe("block_circulant", block_size=32)) == ["circulant_matmul", "add", "relu"]
    assert ops(pipe("toeplitz")) == ["pad", "circulant_matmul", "slice", "add", "relu"]
    g = pipe("monarch", blocks=8)
    # reshapes keep dim 0 batch-relative; every new node keeps the layer's loc
    assert all(n.attrs["shape"][0] == -1 for n in g.nodes if n.op == "reshape")
    assert all(n.loc == "fc" for n in g.nodes if n.op != "relu")
    c = {v.name: v.shape for v in g.constants.values()}
    assert c == {"fc.monarch.R_t": (8, 8, 8), "fc.monarch.L_t": (8, 8, 12), "fc.bias": (96,)}


# ------------------------------------------------------------------------------ the fits
def _random_in(kind: str, out: int, inp: int, **kw) -> np.ndarray:
    return structured(kind, out, inp, **kw)


@pytest.mark.parametrize(("kind", "kw"), [("blockdiag", {"blocks": 4}),
                                          ("block_circulant", {"block_size": 16}),
                                          ("circulant", {}), ("toeplitz", {})])
def test_linear_families_are_orthogonal_projections(kind, kw):
    out, inp = (48, 48) if kind == "circulant" else (48, 32)
    w = RNG.standard_normal((out, inp))
    f = S.fit(w, kind, blocks=kw.get("blocks"), block_size=kw.get("block_size"))
    resid = w - f.dense
    for _ in range(3):  # the residual is orthogonal to the subspace
        s = _random_in(kind, out, inp, **kw)
        assert abs(np.sum(resid * s)) <= 1e-10 * np.linalg.norm(resid) * np.linalg.norm(s)
    again = S.fit(f.dense, kind, blocks=kw.get("blocks"), block_size=kw.get("block_size"))
    np.testing.assert_allclose(again.dense, f.dense, atol=1e-12)  # idempotent


def test_kronecker_is_eckart_young_on_the_rearrangement():
    w = RNG.standard_normal((24, 30))
    for r in (1, 2, 4):
        f = S.fit_kronecker(w, r)
        s = f.info["singular_values"]
        assert np.isclose(np.linalg.norm(w - f.dense) ** 2, np.sum(s[r:] ** 2))
        assert f.info["out_factors"] == (4, 6) and f.info["in_factors"] == (5, 6)


def test_monarch_is_the_per_slice_rank_one_projection():
    w = RNG.standard_normal((36, 48))
    f = S.fit_monarch(w, 4)
    b, p, q, s = f.info["shape"]
    resid = (w - f.dense).reshape(q, s, b, p).transpose(0, 2, 1, 3)
    fitted = f.dense.reshape(q, s, b, p).transpose(0, 2, 1, 3)
    for j in range(q):
        for k in range(b):
            assert abs(np.sum(resid[j, k] * fitted[j, k])) < 1e-9  # orthogonal to its slice
            assert np.linalg.matrix_rank(fitted[j, k], tol=1e-9) <= 1
    assert f.params == b * q * p + q * s * b < w.size


def test_blockdiag_permutation_recovers_a_permuted_block_matrix():
    w = structured("blockdiag", 24, 40, blocks=4)
    wp = w[np.ix_(RNG.permutation(24), RNG.permutation(40))]
    assert S.fit_blockdiag(wp, 4).error(wp) > 0.5
    f = S.fit_blockdiag(wp, 4, permute=True)
    assert f.error(wp) < 1e-12 and f.info["permuted"]


def test_shape_errors_are_readable():
    with pytest.raises(S.StructureError, match="square"):
        S.fit_circulant(np.zeros((4, 6)))
    with pytest.raises(S.StructureError, match="prime"):
        S.fit_kronecker(np.zeros((7, 13)))
    with pytest.raises(S.StructureError, match="divide"):
        S.fit_blockdiag(np.zeros((9, 8)), 4)


# ------------------------------------------------------------------------------ when not
def test_layers_it_leaves_alone():
    w = RNG.standard_normal((96, 64))
    _, stats, _ = apply(layer_graph(RNG.standard_normal((32, 64))), "structured-fc")
    assert stats["replaced"] == 0 and stats["skipped_small"] == 1
    _, stats, _ = apply(layer_graph(w), "structured-fc(exclude=fc)")
    assert stats["replaced"] == 0 and stats["skipped_excluded"] == 1
    _, stats, _ = apply(layer_graph(w), "structured-fc(include='head*')")
    assert stats["skipped_excluded"] == 1
    _, stats, _ = apply(layer_graph(RNG.standard_normal((97, 67))),
                        "structured-fc(kind=kronecker)")
    assert stats["skipped_shape"] == 1  # 97 and 67 are prime: no Kronecker factors
    _, stats, _ = apply(layer_graph(w), "structured-fc(kind=lowrank,rank=60)")
    assert stats["skipped_not_smaller"] == 1  # 60 * (96 + 64) > 96 * 64
    g = layer_graph(w)
    g.constants["fc.weight"].encoding = None
    shared = Graph("shared")
    x = shared.add_input(TensorType("f32", (2, 64)), "x")
    wc = shared.add_constant(w.astype(np.float32), "w")
    a = shared.add_node("linear", [x, wc]).output
    b = shared.add_node("linear", [x, wc]).output
    shared.outputs = [shared.add_node("add", [a, b]).output]
    _, stats, _ = apply(shared, "structured-fc")
    assert stats["skipped_shared_weight"] == 2
    act = Graph("act")
    x = act.add_input(TensorType("f32", (2, 64)), "x")
    wi = act.add_input(TensorType("f32", (64, 96)), "w")
    act.outputs = [act.add_node("matmul", [x, wi]).output]
    _, stats, _ = apply(act, "structured-fc")
    assert stats["skipped_activations"] == 1


def test_permute_is_refused_with_a_reason():
    from shrinkc.passes import PipelineError

    with pytest.raises(PipelineError, match="gather"):
        PassManager("structured-fc(kind=blockdiag,permute=true)", PassContext())


# ------------------------------------------------------------------------------ backends
@pytest.mark.parametrize(("kind", "out", "inp", "opts"),
                         [c for c in CASES if c[3] != {"rank": 3}])
def test_chains_run_in_onnxruntime(kind, out, inp, opts, tmp_path, assert_close):
    g = layer_graph(RNG.standard_normal((out, inp)), lead=(2, 3))
    after, _, _ = apply(g, _pipeline(kind, opts))
    x = np.random.default_rng(1).standard_normal((2, 3, inp)).astype(np.float32)
    path = to_onnx(after, tmp_path / f"{kind}.onnx")
    assert_close(run_onnxruntime(path, [x]), run_numpy(after, [x]), depth=after)


def test_vit_mlp_layers(reference_graphs, assert_close):
    """The small transformer's MLP layers replaced: runs, fewer parameters, error reported."""
    model, x, g = reference_graphs("vit")
    after, stats, ctx = apply(g, "structured-fc(kind=monarch,min_features=32)")
    assert stats["replaced"] >= 2 and stats["params_after"] < stats["params_before"]
    assert {e["layer"] for e in ctx.artifacts["structured-fc"]} <= {n.loc for n in g.nodes}
    with torch.no_grad():
        y = run(after, [x])[0]
    assert y.shape == model(x).shape and torch.isfinite(y).all()
    assert zoo  # the reference models come from tools/zoo.py


@pytest.mark.parametrize("kind", ["lowrank", "kronecker", "blockdiag", "monarch",
                                  "block_circulant", "toeplitz"])
def test_traced_models_stay_batch_polymorphic(kind, assert_close):
    """A model traced at batch 1 runs at batch 7 after the pass (every reshape it writes is
    batch-relative; ir/batch.check proves it), equal to running each sample alone."""
    from shrinkc import trace
    from shrinkc.ir import batch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 64)).eval()
    g = trace(model, (torch.randn(1, 96),))
    assert batch.is_polymorphic(g)
    opts = "blocks=4" if kind == "blockdiag" else "block_size=32" if kind == "block_circulant" \
        else "rank=4" if kind in ("lowrank", "kronecker") else ""
    after, stats, _ = apply(g, f"structured-fc(kind={kind}{',' + opts if opts else ''})")
    assert stats["replaced"] == 2
    assert batch.is_polymorphic(after) and batch.check(after) is None
    x = torch.randn(7, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = run(after, [x])[0]
        alone = torch.cat([run(after, [x[i:i + 1]])[0] for i in range(7)])
    assert_close(together, alone, depth=after)
