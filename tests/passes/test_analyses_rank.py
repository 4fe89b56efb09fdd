"""Rank selection and truncated SVD (passes/analyses/rank.py)."""

import itertools
import math

import numpy as np
import pytest
from shrinkc.passes.analyses import rank as R


def _planted(shape, rank, scale, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    L, M = shape
    signal = rng.standard_normal((L, rank)) @ rng.standard_normal((rank, M)) * scale / np.sqrt(rank)
    return signal + noise * rng.standard_normal(shape)


def test_unfold_is_the_mode_n_matricisation():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    u1 = R.unfold(w, 1)
    assert u1.shape == (3, 40) and u1.dtype == np.float64
    # row i of the mode-1 unfolding is w[:, i] flattened in order
    np.testing.assert_array_equal(u1[2], w[:, 2].reshape(-1))
    np.testing.assert_array_equal(R.unfold(w, 0), w.reshape(2, -1))


@pytest.mark.parametrize("split", ["balanced", "left", "right"])
def test_factor_pair_is_the_best_rank_r_approximation(split):
    a = np.random.default_rng(0).standard_normal((12, 7))
    s = np.linalg.svd(a, compute_uv=False)
    for r in (1, 3, 7):
        left, right = R.factor_pair(a, r, split=split)
        assert left.shape == (12, r) and right.shape == (r, 7)
        # Eckart-Young: the error is the discarded singular values
        err2 = np.sum((a - left @ right) ** 2)
        assert err2 == pytest.approx(np.sum(s[r:] ** 2), abs=1e-10)
        assert R.relative_error(a, left @ right) ** 2 == pytest.approx(R.tail_energy(s)[r],
                                                                       abs=1e-12)
    left, right = R.factor_pair(a, 7, split=split)
    np.testing.assert_allclose(left @ right, a, atol=1e-12)


def test_factor_pair_balanced_puts_sqrt_s_on_each_side():
    a = np.random.default_rng(1).standard_normal((6, 9))
    s = np.linalg.svd(a, compute_uv=False)
    left, right = R.factor_pair(a, 4)
    np.testing.assert_allclose(np.linalg.norm(left, axis=0), np.sqrt(s[:4]), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(right, axis=1), np.sqrt(s[:4]), rtol=1e-12)


def test_factor_pair_beyond_the_matrix_rank_pads_with_zero_terms():
    a = np.random.default_rng(2).standard_normal((3, 5))
    left, right = R.factor_pair(a, 4)
    assert left.shape == (3, 4) and right.shape == (4, 5)
    np.testing.assert_allclose(left @ right, a, atol=1e-12)


def test_tail_and_energy_rank():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1, 0 of 14
    np.testing.assert_allclose(R.tail_energy(s), [1.0, 5 / 14, 1 / 14, 0.0, 0.0])
    assert R.energy_rank(s, 9 / 14) == 1
    assert R.energy_rank(s, 0.65) == 2
    assert R.energy_rank(s, 0.99) == 3
    assert R.energy_rank(s, 1.0) == 3  # the zero singular value adds nothing
    assert R.energy_rank(np.zeros(4), 0.9) == 1


def test_tau_bar_is_the_root_of_the_evb_equation():
    for alpha in (0.05, 0.3, 1.0):
        t = R._tau_bar(alpha)
        assert math.log1p(t) + alpha * math.log1p(t / alpha) == pytest.approx(t, abs=1e-10)
        assert t > math.sqrt(alpha)
    assert R._tau_bar(1.0) == pytest.approx(2.5129, abs=1e-4)  # the paper's constant


@pytest.mark.parametrize("shape,rank", [((100, 200), 5), ((64, 576), 10), ((200, 100), 7),
                                        ((50, 50), 3)])
def test_evbmf_finds_a_planted_rank_and_the_noise(shape, rank):
    a = _planted(shape, rank, scale=10.0)
    res = R.evbmf(a)
    assert res.rank == rank
    assert res.sigma2 == pytest.approx(1.0, rel=0.1)  # unit noise
    s = np.linalg.svd(a, compute_uv=False)
    assert s[rank - 1] > res.threshold > s[rank]


def test_evbmf_on_pure_noise_keeps_nothing_and_scales():
    a = np.random.default_rng(3).standard_normal((64, 576))
    assert R.evbmf(a).rank == 0
    assert R.evbmf_rank(a) == 1  # a layer keeps at least one component
    # the rank does not depend on the matrix's scale, the variance scales with it
    b = _planted((40, 90), 4, scale=8.0, seed=4)
    r1, r2 = R.evbmf(b), R.evbmf(b * 1e-3)
    assert r1.rank == r2.rank == 4 and r2.sigma2 == pytest.approx(r1.sigma2 * 1e-6, rel=1e-4)


def test_evbmf_of_rank_deficient_and_zero_matrices():
    assert R.evbmf(np.zeros((5, 7))).rank == 0
    a = np.outer(np.arange(1.0, 6.0), np.arange(1.0, 8.0))  # exactly rank 1, no noise
    assert R.evbmf(a).rank == 1
    assert R.evbmf_values(np.linalg.svd(a, compute_uv=False), a.shape).rank == 1


@pytest.mark.parametrize("r,full,m,up,want", [
    (5, 64, 8, True, 8), (9, 64, 8, True, 16), (16, 64, 8, True, 16), (61, 64, 8, True, 64),
    (5, 64, 8, False, 8), (15, 64, 8, False, 8), (17, 64, 8, False, 16),
    (3, 6, 8, True, 3),  # the channels do not allow rounding
    (100, 12, 8, True, 12), (0, 12, 8, True, 8), (7, 12, 1, True, 7),
])
def test_round_rank(r, full, m, up, want):
    assert R.round_rank(r, full, m, up=up) == want


def test_largest_rank_within():
    assert R.largest_rank_within(lambda r: 10 * r, 55, 100) == 5
    assert R.largest_rank_within(lambda r: 10 * r, 5, 100) == 1
    assert R.largest_rank_within(lambda r: 10 * r, 10_000, 100) == 100


@pytest.mark.parametrize("kwargs,kind,value", [
    ({}, "vbmf", None), ({"rank": 8}, "rank", (8,)), ({"rank": (4, 8)}, "rank", (4, 8)),
    ({"rank": "full"}, "full", None), ({"ratio": 0.5}, "ratio", 0.5),
    ({"energy": 0.9}, "energy", 0.9), ({"vbmf": True}, "vbmf", None),
    ({"target_macs": 0.5}, "target_macs", 0.5), ({"target_macs": 1000}, "target_macs", 1000),
])
def test_rank_rule_from_options(kwargs, kind, value):
    rule = R.RankRule.from_options(**kwargs)
    assert (rule.kind, rule.value) == (kind, value)


@pytest.mark.parametrize("kwargs,words", [
    ({"rank": 4, "energy": 0.9}, "give one of"), ({"ratio": 1.5}, "(0, 1]"),
    ({"energy": 0.0}, "(0, 1]"), ({"target_macs": 2.5}, "as an int"),
    ({"rank": (4, 0)}, "positive"), ({"rank": "half"}, "positive"),
])
def test_rank_rule_refuses_bad_options(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
        R.RankRule.from_options(**kwargs)


def test_target_of_a_rule():
    assert R.RankRule("target_macs", 0.25).target(1000) == 250
    assert R.RankRule("target_macs", 300).target(1000) == 300


def test_pareto_front():
    pts = [R.Point(100, 0.0), R.Point(80, 0.09, "a"), R.Point(70, 0.5, "b"),
           R.Point(60, 0.2, "c"), R.Point(40, 0.9, "d"), R.Point(90, 0.3, "e")]
    assert [p.rank for p in R._pareto(pts, pts[0])] == [None, "a", "c", "d"]


def test_allocate_reaches_the_saving_with_the_least_error():
    # two layers with convex (MACs, error) curves: the greedy agrees with brute force
    a = [R.Point(100, 0.0), R.Point(80, 0.01, 1), R.Point(50, 0.1, 2), R.Point(20, 0.6, 3)]
    b = [R.Point(60, 0.0), R.Point(40, 0.05, 1), R.Point(30, 0.08, 2), R.Point(10, 0.5, 3)]
    for saving in (10, 20, 30, 40, 50, 60, 80, 100, 130):
        chosen, saved = R.allocate([a, b], saving)
        assert saved >= saving
        assert saved == (100 - chosen[0].macs) + (60 - chosen[1].macs)
        best = min((p.error + q.error for p, q in itertools.product(a, b)
                    if (100 - p.macs) + (60 - q.macs) >= saving))
        assert sum(p.error for p in chosen) == pytest.approx(best), saving


@pytest.mark.parametrize("seed", range(5))
def test_allocate_agrees_with_brute_force_on_random_layers(seed):
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(3):
        macs = np.sort(rng.integers(1, 1000, size=4))[::-1]
        errs = np.sort(rng.random(4))
        layers.append([R.Point(1000, 0.0)] + [R.Point(int(m), float(e), i)
                                              for i, (m, e) in enumerate(zip(macs, errs))])
    for saving in (100, 700, 1500, 2500):
        combos = [c for c in itertools.product(*layers)
                  if sum(1000 - p.macs for p in c) >= saving]
        chosen, saved = R.allocate(layers, saving)
        if not combos:
            assert saved < saving
            continue
        assert saved >= saving
        assert sum(p.error for p in chosen) == pytest.approx(
            min(sum(p.error for p in c) for c in combos))


def test_allocate_when_the_saving_is_out_of_reach():
    a = [R.Point(100, 0.0), R.Point(50, 0.1, 1)]
    chosen, saved = R.allocate([a], 80)
    assert saved == 50 and chosen[0].rank == 1
    chosen, saved = R.allocate([a], 0)
    assert saved == 0 and chosen[0].rank is None


@pytest.mark.parametrize("shape", [(8, 100), (30, 40), (50, 9)])
def test_left_svd_agrees_with_the_svd(shape):
    a = np.random.default_rng(7).standard_normal(shape)
    u, s = R.left_svd(a)
    u0, s0, _ = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(s, s0, rtol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-12)
    # same subspaces: |U^T U0| is the identity up to signs
    np.testing.assert_allclose(np.abs(u.T @ u0), np.eye(len(s)), atol=1e-8)
