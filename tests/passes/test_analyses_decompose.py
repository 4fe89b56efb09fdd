"""Tucker-2 through tensorly and CP-ALS (passes/analyses/decompose.py)."""

import numpy as np
import pytest
from shrinkc.passes.analyses import decompose as D


def _kernel(shape=(12, 8, 3, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_tucker2_at_full_rank_is_exact():
    w = _kernel()
    t = D.tucker2(w, 12, 8)
    assert t.core.shape == (12, 8, 3, 3) and t.out_factor.shape == (12, 12)
    assert t.in_factor.shape == (8, 8)
    assert t.error < 1e-12
    np.testing.assert_allclose(D.tucker_to_tensor(t.core, t.out_factor, t.in_factor), w,
                               atol=1e-12)


def test_tucker2_recovers_a_kernel_of_that_multilinear_rank():
    rng = np.random.default_rng(1)
    core = rng.standard_normal((4, 3, 3, 3))
    w = D.tucker_to_tensor(core, rng.standard_normal((12, 4)), rng.standard_normal((8, 3)))
    t = D.tucker2(w, 4, 3)
    assert t.error < 1e-10
    # the factors are orthonormal (HOOI)
    np.testing.assert_allclose(t.out_factor.T @ t.out_factor, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(t.in_factor.T @ t.in_factor, np.eye(3), atol=1e-12)


def test_tucker2_error_is_the_reconstruction_error_and_hooi_improves_on_hosvd():
    w = _kernel(seed=2)
    hosvd, hooi = D.tucker2(w, 4, 4, max_iter=0), D.tucker2(w, 4, 4, max_iter=20)
    for t in (hosvd, hooi):
        approx = D.tucker_to_tensor(t.core, t.out_factor, t.in_factor)
        assert t.error == pytest.approx(np.linalg.norm(w - approx) / np.linalg.norm(w))
    assert hooi.error <= hosvd.error + 1e-12
    assert hosvd.iterations == 0


def test_tucker2_is_tensorlys_partial_tucker():
    """The same algorithm as ``partial_tucker(modes=[0, 1], init="svd")``: the same error
    after the HOSVD and after 1 and 5 sweeps, to rounding."""
    from tensorly.decomposition import partial_tucker

    w = _kernel((16, 12, 3, 3), seed=12)
    for sweeps in (0, 1, 5):
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=[6, 5], modes=[0, 1],
                                                  n_iter_max=sweeps, tol=1e-15)
        if sweeps == 0:  # tensorly 0.10 leaves the init's core; project once here
            core = np.einsum("oihw,oa,ib->abhw", w, u_out, u_in)
        ref = np.linalg.norm(w - D.tucker_to_tensor(core, u_out, u_in)) / np.linalg.norm(w)
        assert D.tucker2(w, 6, 5, max_iter=sweeps, tol=1e-15).error == pytest.approx(
            ref, rel=1e-9)


def test_tucker2_past_the_unfoldings_rank_completes_an_orthonormal_factor():
    # a 1×1 kernel 16→2: the mode-0 unfolding of w ×₁ U_in has 2 columns, rank_out is 5
    w = _kernel((16, 2, 1, 1), seed=13)
    t = D.tucker2(w, 5, 2)
    np.testing.assert_allclose(t.out_factor.T @ t.out_factor, np.eye(5), atol=1e-12)
    assert t.error < 1e-12


def test_mttkrp_is_the_unfolding_times_the_khatri_rao_product():
    from tensorly.tenalg import khatri_rao

    rng = np.random.default_rng(10)
    w = rng.standard_normal((6, 5, 3, 2))
    fs = [rng.standard_normal((n, 4)) for n in w.shape]
    for mode in range(4):
        kr = khatri_rao([f for k, f in enumerate(fs) if k != mode])
        np.testing.assert_allclose(D.mttkrp(w, fs, mode), D.unfold(w, mode) @ kr, rtol=1e-12,
                                   atol=1e-12)


def test_cp_is_tensorlys_parafac():
    """The same algorithm as ``tensorly.decomposition.parafac`` (SVD init, no
    normalisation, no line search): the same error sweep by sweep, to rounding."""
    from tensorly.decomposition import parafac

    w = _kernel((12, 8, 3, 3), seed=11)
    for sweeps in (1, 5, 20):
        ref = parafac(w, 6, n_iter_max=sweeps, init="svd", tol=1e-15, random_state=0)
        ref_err = np.linalg.norm(w - D.cp_to_tensor(*ref.factors)) / np.linalg.norm(w)
        assert D.cp(w, 6, max_iter=sweeps, tol=1e-15).error == pytest.approx(ref_err, rel=1e-6)


def test_cp_never_forms_the_khatri_rao_product():
    """tensorly's parafac multiplied each unfolding by the Khatri-Rao product of the other
    factors: for a 3×3 kernel's h mode ``C_out·C_in·3·R`` values (7 GB at 512×512, rank
    1144). The staged MTTKRP keeps every intermediate at ``numel / C_out · R`` at most."""
    import tracemalloc

    w, rank = _kernel((64, 64, 3, 3), seed=9), 256
    D.cp(w, rank, max_iter=1)
    tracemalloc.start()
    try:
        D.cp(w, rank, max_iter=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    khatri_rao = 64 * 64 * 3 * rank * 8
    assert peak < khatri_rao / 4, (peak, khatri_rao)


def test_cp_exact_is_exact_with_one_hot_spatial_factors():
    w = _kernel((6, 5, 3, 2))
    c = D.cp_exact(w)
    assert c.rank == 3 * 2 * 5 and c.stopped == "exact" and c.error < 1e-12
    np.testing.assert_allclose(D.cp_to_tensor(c.out, c.in_, c.h, c.w), w, atol=1e-12)
    assert set(np.unique(c.h)) == {0.0, 1.0} and set(np.unique(c.w)) == {0.0, 1.0}


def test_cp_recovers_a_low_rank_kernel_and_balances_lambda():
    rng = np.random.default_rng(3)
    fs = [rng.standard_normal((n, 4)) for n in (10, 8, 3, 3)]
    w = np.einsum("or,ir,hr,wr->oihw", *fs)
    c = D.cp(w, 4, max_iter=500, tol=1e-12)
    assert c.error < 1e-6
    assert c.error == pytest.approx(np.linalg.norm(w - D.cp_to_tensor(c.out, c.in_, c.h, c.w))
                                    / np.linalg.norm(w))
    norms = np.stack([np.linalg.norm(f, axis=0) for f in (c.out, c.in_, c.h, c.w)])
    np.testing.assert_allclose(norms, np.broadcast_to(norms[0], norms.shape), rtol=1e-10)


def test_cp_stops_at_the_iteration_cap_the_work_budget_and_the_time_budget():
    w = _kernel((16, 16, 3, 3), seed=4)
    capped = D.cp(w, 8, max_iter=3, tol=1e-12)
    assert capped.iterations == 3 and capped.stopped == "max_iter"
    cost = D.als_sweep_cost(w.shape, 8)
    worked = D.cp(w, 8, max_iter=10_000, tol=1e-15, work_budget=4.9 * cost)
    assert worked.iterations == 4 and worked.stopped == "work_budget"
    # the budget pays for at least one sweep, and max_iter still caps it
    assert D.cp(w, 8, max_iter=10_000, tol=1e-15, work_budget=1.0).iterations == 1
    assert D.cp(w, 8, max_iter=3, tol=1e-15, work_budget=1e12).stopped == "max_iter"
    timed = D.cp(w, 8, max_iter=10_000, tol=1e-15, time_budget=1e-9)
    assert timed.stopped == "time_budget" and timed.iterations == 1
    assert np.isfinite(timed.error)


def test_als_sweep_cost_counts_mttkrp_gram_and_solve():
    # 4 modes × (numel·R + R³) + R²·Σ dims
    assert D.als_sweep_cost((2, 3, 4, 5), 6) == 4 * (120 * 6 + 6 ** 3) + 36 * 14
    assert D.als_sweeps((2, 3, 4, 5), 6, 50, 10 * D.als_sweep_cost((2, 3, 4, 5), 6)) == 10
    assert D.als_sweeps((2, 3, 4, 5), 6, 50, None) == 50


#: CP-ALS in a fresh process whose clock runs ``argv[1]`` times fast; prints a hash of the
#: factors and the sweeps run.
_CHILD = """
import hashlib, sys, time
import numpy as np
from shrinkc.passes.analyses import decompose as D

real, scale = time.perf_counter, float(sys.argv[1])
time.perf_counter = lambda: real() * scale
w = np.random.default_rng(6).standard_normal((24, 16, 3, 3))
c = D.cp(w, 20, max_iter=60, tol=1e-15, seed=3)
h = hashlib.sha256()
for f in (c.out, c.in_, c.h, c.w):
    h.update(np.ascontiguousarray(f).tobytes())
print(h.hexdigest(), c.iterations, c.stopped)
"""


def test_cp_gives_bit_identical_factors_in_two_processes():
    """One process with a clock 10^5 times fast (a slow or loaded machine): by default no
    wall clock bounds ALS, so both run the same sweeps and give the same bits."""
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, scale], stdout=subprocess.PIPE,
                              text=True) for scale in ("1", "1e5")]
    runs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert runs[0] == runs[1] and runs[0].split()[1:] == ["60", "max_iter"]


def test_cp_is_deterministic_for_a_seed():
    w = _kernel((8, 8, 3, 3), seed=5)
    a, b = D.cp(w, 30, max_iter=5, seed=7), D.cp(w, 30, max_iter=5, seed=7)
    np.testing.assert_array_equal(a.out, b.out)


def test_cp_refuses_tol_zero():
    with pytest.raises(ValueError, match="tol"):
        D.cp(_kernel(), 4, tol=0)


def test_tucker2_from_a_given_hosvd_is_the_same_fit():
    from shrinkc.passes.analyses.rank import left_svd, unfold

    w = _kernel((16, 12, 3, 3), seed=8)
    hosvd = (left_svd(unfold(w, 0))[0], left_svd(unfold(w, 1))[0])
    a, b = D.tucker2(w, 6, 5), D.tucker2(w, 6, 5, hosvd=hosvd)
    assert b.error == pytest.approx(a.error, rel=1e-9)
    full = D.tucker2(w, 16, 12, max_iter=0, hosvd=hosvd)
    assert full.error < 1e-12
