"""cp-conv: the separable chain, exactness at full rank, ALS bounds, refusals, backends."""

import numpy as np
import pytest
import torch
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.graph import Graph
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.text import graph_diff
from shrinkc.ir.types import TensorType
from shrinkc.passes import PassContext, PassManager
from shrinkc.tools import zoo
from suite import as_f64, assert_close

FULL = "cp-conv(rank=full, break_even=false, min_params=0)"


def conv_graph(c_in=16, c_out=24, k=(3, 3), hw=(9, 9), dtype="f64", bias=True, seed=0,
               weight=None, **attrs) -> Graph:
    rng = np.random.default_rng(seed)
    np_dt = np.float64 if dtype == "f64" else np.float32
    g = Graph("conv")
    x = g.add_input(TensorType(dtype, (1, c_in, *hw)), "x")
    groups = attrs.get("groups", 1)
    w = rng.standard_normal((c_out, c_in // groups, *k)) if weight is None else weight
    ins = [x, g.add_constant(w.astype(np_dt), "conv.weight")]
    if bias:
        ins.append(g.add_constant(rng.standard_normal(c_out).astype(np_dt), "conv.bias"))
    g.outputs = [g.add_node("conv2d", ins, attrs, names=["conv"], loc="conv").outputs[0]]
    return g


CONVS = {
    "stride2": dict(stride=(2, 2), padding=(1, 1)),
    "dilation2": dict(dilation=(2, 2), padding=(2, 2)),
    "non_square_kernel": dict(k=(3, 5), padding=(1, 2), stride=(2, 1)),
    "per_axis_attrs": dict(k=(5, 3), stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    "no_padding_no_bias": dict(bias=False),
    "grouped": dict(groups=2, padding=(1, 1)),
    "k_by_1": dict(k=(3, 1), stride=(2, 2), padding=(1, 1)),
    "1_by_k": dict(k=(1, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2)),
}


def _cp_kernel(c_out, c_in, kh, kw, rank, seed=3):
    rng = np.random.default_rng(seed)
    fs = [rng.standard_normal((n, rank)) for n in (c_out, c_in, kh, kw)]
    return np.einsum("or,ir,hr,wr->oihw", *fs)


# ---------------------------------------------------------------------------- structure
def test_structure_of_the_chain(ir, apply):
    before = ir("""
    graph "g" (%x: f32[1,16,9,9]) {
      %conv.weight: f32[32,16,3,5] = const #1
      %conv.bias: f32[32] = const #2
      %conv: f32[1,32,5,2] = conv2d(%x, %conv.weight, %conv.bias) {stride=[2, 3], padding=[1, 2], dilation=[1, 2]} loc("conv")
      return %conv
    }""")
    after, result = apply(before, "cp-conv(rank=8, min_params=0)")
    expected = ir("""
    graph "g" (%x: f32[1,16,9,9]) {
      %conv.bias: f32[32] = const #2
      %conv.cp_in.weight: f32[8,16,1,1] = const #3
      %conv.cp_h.weight: f32[8,1,3,1] = const #4
      %conv.cp_w.weight: f32[8,1,1,5] = const #5
      %conv.cp_out.weight: f32[32,8,1,1] = const #6
      %conv.cp_in: f32[1,8,9,9] = conv2d(%x, %conv.cp_in.weight) loc("conv")
      %conv.cp_h: f32[1,8,5,9] = conv2d(%conv.cp_in, %conv.cp_h.weight) {stride=[2, 1], padding=[1, 0], groups=8} loc("conv")
      %conv.cp_w: f32[1,8,5,2] = conv2d(%conv.cp_h, %conv.cp_w.weight) {stride=[1, 3], padding=[0, 2], dilation=[1, 2], groups=8} loc("conv")
      %conv: f32[1,32,5,2] = conv2d(%conv.cp_w, %conv.cp_out.weight, %conv.bias) loc("conv")
      return %conv
    }""")
    assert graph_diff(after, expected, data=False) is None
    assert result.stats["decomposed"] == 1


def test_a_one_tap_axis_has_no_step(apply):
    after, _ = apply(conv_graph(k=(3, 1), stride=(2, 2), padding=(1, 1), dtype="f32"),
                     "cp-conv(rank=8, min_params=0)")
    steps = [(n.outputs[0].name, n.inputs[1].shape, n.attrs["stride"], n.attrs["padding"])
             for n in after.nodes]
    assert steps == [("conv.cp_in", (8, 16, 1, 1), (1, 1), (0, 0)),
                     ("conv.cp_h", (8, 1, 3, 1), (2, 2), (1, 1)),
                     ("conv", (24, 8, 1, 1), (1, 1), (0, 0))]


def test_grouped_chain(apply):
    after, _ = apply(conv_graph(c_in=16, c_out=32, groups=4, dtype="f32"),
                     "cp-conv(rank=3, min_params=0, break_even=false)")
    assert [(n.inputs[1].shape, n.attrs["groups"]) for n in after.nodes] == [
        ((12, 4, 1, 1), 4), ((12, 1, 3, 1), 12), ((12, 1, 1, 3), 12), ((32, 3, 1, 1), 4)]


def test_lambda_is_folded_and_balanced(apply):
    w = _cp_kernel(24, 16, 3, 3, 6)
    after, result = apply(conv_graph(weight=w), "cp-conv(rank=6, min_params=0, max_iter=500, "
                                                "tol=1e-12)")
    assert result.stats["max_error"] < 1e-6
    c = after.constants
    norms = [np.linalg.norm(c[f"conv.{s}.weight"].data.reshape(-1 if s == "cp_out" else 6,
                                                                 6 if s == "cp_out" else -1),
                            axis=0 if s == "cp_out" else 1)
             for s in ("cp_in", "cp_h", "cp_w", "cp_out")]
    np.testing.assert_allclose(norms, np.broadcast_to(norms[0], (4, 6)), rtol=1e-8)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("case", list(CONVS))
def test_exact_at_full_rank_on_conv_shapes(case, apply):
    before = conv_graph(**CONVS[case])
    after, result = apply(before, FULL)
    assert result.stats["decomposed"] == 1
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        assert_close(run(after, xs), run(before, xs))


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_exact_at_full_rank_on_every_reference_model(name, reference_graphs, apply):
    _, x, graph = reference_graphs(name)
    before = as_f64(graph)
    after, result = apply(before, FULL)
    kxk = [n for n in graph.nodes if n.op == "conv2d" and n.inputs[1].shape[2:] != (1, 1)
           and not (n.attrs["groups"] > 1 and n.inputs[1].shape[1] == 1)]
    assert result.stats["decomposed"] == len(kxk), result.stats
    with torch.no_grad():
        assert_close(run(after, [x.double()]), run(before, [x.double()]))


@pytest.mark.parametrize("case", ["stride2", "per_axis_attrs", "grouped"])
def test_exact_when_the_kernel_has_that_cp_rank(case, apply):
    shape = dict(CONVS[case])
    k = shape.pop("k", (3, 3))
    groups = shape.get("groups", 1)
    w = _cp_kernel(24, 16 // groups, *k, 5) if groups == 1 else np.concatenate(
        [_cp_kernel(24 // groups, 16 // groups, *k, 5, seed=s) for s in range(groups)])
    before = conv_graph(k=k, weight=w, **shape)
    after, result = apply(before, "cp-conv(rank=5, min_params=0, max_iter=1000, tol=1e-14)")
    assert result.stats["max_error"] < 1e-6
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        assert_close(run(after, xs), run(before, xs), tol=1e-5)  # ALS converges to ~1e-7


# ---------------------------------------------------------------------------- ALS bounds
def test_als_that_misses_the_requested_error_is_skipped_with_the_reason(apply):
    before = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    ctx = PassContext()
    after = before.clone()
    PassManager("cp-conv(rank=8, max_error=0.1, max_iter=5)", ctx).run(after)
    assert graph_diff(before, after) is None
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "skipped_not_converged" and row["error"] > 0.1
    assert "5 sweeps" in row["note"] and "max_iter" in row["note"]


def test_energy_sets_the_rank_and_the_requested_error():
    # a kernel of CP rank 6: its unfoldings have rank 6, so energy=0.999 asks for rank 8
    # (rounded up) and error <= sqrt(0.001), which ALS reaches
    planted = conv_graph(weight=_cp_kernel(24, 16, 3, 3, 6), dtype="f32", padding=(1, 1))
    ctx = PassContext()
    PassManager("cp-conv(energy=0.999, max_iter=300)", ctx).run(planted)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "decomposed" and row["rank"] == "8" and row["error"] < 0.001 ** 0.5
    # random weights: rank 16 keeps half the unfoldings' energy, but CP-ALS at that rank
    # misses error sqrt(0.5); larger ranks reach it below break-even
    noise = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    ctx = PassContext()
    PassManager("cp-conv(energy=0.5)", ctx).run(noise)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "decomposed" and int(row["rank"]) > 16
    assert row["error"] <= 0.5 ** 0.5 and "R=16" in row["note"]
    # error 0.1 is out of reach below break-even: skipped, with what was tried
    noise = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    ctx = PassContext()
    PassManager("cp-conv(energy=0.99, max_iter=20)", ctx).run(noise)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "skipped_not_converged" and row["error"] > 0.1
    assert row["note"].count("R=") >= 2


def test_the_work_budget_bounds_the_sweeps_of_each_layer():
    from shrinkc.passes.analyses.decompose import als_sweep_cost

    before = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    budget = 3.5 * als_sweep_cost((32, 32, 3, 3), 16)
    ctx = PassContext()
    PassManager(f"cp-conv(rank=16, work_budget={budget}, max_iter=100000, tol=1e-15)",
                ctx).run(before)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "decomposed"
    assert "ALS 3 sweeps, work_budget" in row["note"]  # floor(3.5)


def test_the_rank_search_shares_the_work_budget():
    # energy=0.99 on random weights misses at every rank (see above); with a budget of one
    # sweep at the first rank, no larger rank is tried
    noise = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    ctx = PassContext()
    PassManager("cp-conv(energy=0.99, work_budget=1)", ctx).run(noise)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "skipped_not_converged"
    assert "tried" not in row["note"] and "ALS 1 sweeps, work_budget" in row["note"]


def test_time_budget_is_an_opt_in_wall_clock_bound():
    before = conv_graph(c_in=32, c_out=32, dtype="f32", padding=(1, 1))
    ctx = PassContext()
    PassManager("cp-conv(rank=16, time_budget=0.001, max_iter=100000, work_budget=1e15, "
                "tol=1e-15)", ctx).run(before)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "decomposed" and "time_budget" in row["note"]
    assert "1 sweeps" in row["note"]  # stopped after the first sweep past the budget


#: Runs cp-conv on a small net in a fresh process whose clock runs ``argv[1]`` times fast
#: (a machine that much slower), and prints a hash of every constant and the report notes.
_CHILD = """
import hashlib, sys, time
import numpy as np
from shrinkc.ir.graph import Graph
from shrinkc.ir.types import TensorType
from shrinkc.passes import PassContext, PassManager

real, scale = time.perf_counter, float(sys.argv[1])
time.perf_counter = lambda: real() * scale
rng = np.random.default_rng(0)
g = Graph("net")
x = g.add_input(TensorType("f32", (1, 16, 8, 8)), "x")
for i, (c_in, c_out) in enumerate([(16, 32), (32, 32)]):
    w = g.add_constant(rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32), f"c{i}.weight")
    x = g.add_node("conv2d", [x, w], {"padding": (1, 1)}, names=[f"c{i}"], loc=f"c{i}").outputs[0]
g.outputs = [x]
ctx = PassContext(seed=0)
PassManager("cp-conv(rank=16, max_iter=40, tol=1e-15)", ctx).run(g)
h = hashlib.sha256()
for k in sorted(g.constants, key=str):
    h.update(np.ascontiguousarray(g.constants[k].data).tobytes())
print(h.hexdigest(), [r["note"] for r in ctx.artifacts["cp-conv"]])
"""


def test_the_same_seed_gives_the_same_factors_in_every_process():
    """Two processes, one with a clock 10^4 times fast (a slow or loaded machine): with the
    default bounds the factors are bit-identical (a wall-clock default stops the slow one
    after one sweep)."""
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, scale], stdout=subprocess.PIPE,
                              text=True) for scale in ("1", "1e4")]
    runs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert runs[0] == runs[1]
    assert "40 sweeps, max_iter" in runs[0] and "time_budget" not in runs[0]


def test_costs_are_what_the_op_table_counts(apply):
    for case in CONVS:
        before = conv_graph(**CONVS[case], dtype="f32")
        after, result = apply(before, "cp-conv(rank=6, min_params=0, break_even=false, "
                                      "max_iter=2)")
        assert graph_cost(after).total.macs == result.stats["macs_after"], case
        assert after.num_params == result.stats["params_after"], case


# ---------------------------------------------------------------------------- must not fire
MUST_NOT_FIRE = {
    "skipped_depthwise": (dict(c_in=16, c_out=32, groups=16), ""),
    "skipped_pointwise": (dict(k=(1, 1)), ""),
    "skipped_tiny": (dict(c_in=4, c_out=8), ""),
    "skipped_break_even": (dict(), "rank=200, min_params=0"),
    "skipped_excluded": (dict(), "min_params=0, include=\"layer4.*\""),
}


@pytest.mark.parametrize("reason", list(MUST_NOT_FIRE))
def test_must_not_fire(reason, apply):
    shape, opts = MUST_NOT_FIRE[reason]
    before = conv_graph(dtype="f32", **shape)
    after, result = apply(before, f"cp-conv({opts})")
    assert graph_diff(before, after) is None
    assert not result.changed and result.stats[reason] == 1


# ---------------------------------------------------------------------------- backends
def test_the_chain_runs_in_onnxruntime(apply, tmp_path):
    """Depthwise k×1 / 1×k convs with per-axis stride, padding and dilation export to ONNX
    Conv (pads per axis) and run in onnxruntime."""
    from shrinkc.backends.onnx import run_onnxruntime

    before = conv_graph(dtype="f32", k=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    after, _ = apply(before, "cp-conv(rank=8, min_params=0, max_iter=3)")
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        want = run(after, xs)
    assert_close(run_onnxruntime(after, xs), want, depth=after)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_chain_builds_and_runs_in_tvm(apply):
    btvm = pytest.importorskip("shrinkc.backends.tvm")
    before = conv_graph(dtype="f32", c_in=8, c_out=8, hw=(7, 7), k=(3, 5), stride=(2, 1),
                        padding=(1, 2), dilation=(2, 1))
    after, _ = apply(before, "cp-conv(rank=4, min_params=0, max_iter=3)")
    xs = random_inputs(before, seed=1)
    with torch.no_grad():
        want = run(after, xs)
    got = btvm.build(after, "host").run([x.numpy() for x in xs])
    assert_close(got, want, depth=after)


def test_energy_grows_the_rank_until_the_error_is_reached():
    """A kernel of CP rank 20 with 8 channels: the unfoldings have rank 8, a lower bound;
    ALS at 8 misses error 0.01, and the pass grows R (8 -> 16 -> 24) until it fits."""
    w = _cp_kernel(8, 8, 5, 5, 20, seed=9)
    g = conv_graph(c_in=8, c_out=8, k=(5, 5), padding=(2, 2), weight=w, dtype="f32")
    ctx = PassContext()
    PassManager("cp-conv(energy=0.9999, max_iter=1000, tol=1e-12)", ctx).run(g)
    (row,) = ctx.artifacts["cp-conv"]
    assert row["status"] == "decomposed" and int(row["rank"]) >= 20 and row["error"] <= 0.01
    assert row["note"].count("R=") >= 2 and "R=8" in row["note"]
    assert row["macs"][1] == graph_cost(g).total.macs  # the cost of the rank it kept
