"""passes/analyses/calibration.py: streaming observers, the four range calibrators on fixed
data with known answers, quantization parameters, weight quantization, the CPU check and
calibration files."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.passes.analyses import calibration as cal


def observed(*batches: np.ndarray, bins: int = 2048) -> cal.Observer:
    """An observer fed ``batches`` the way ``collect`` feeds it (two sweeps)."""
    ob = cal.Observer("x", bins)
    for b in batches:
        ob.update_range(torch.as_tensor(b))
    ob.start_histogram()
    for b in batches:
        ob.update_histogram(torch.as_tensor(b))
    return ob


def _chain() -> Graph:
    g = Graph("chain")
    x = g.add_input(TensorType("f32", (2, 3)), "x")
    y = g.add_node("relu", [x], names="y").output
    z = g.add_node("mul", [y, g.add_constant(np.float32(2.0), "two")], names="z").output
    g.outputs = [z]
    return g


# ---------------------------------------------------------------------------- observers
def test_collect_streams_min_max_and_histograms_over_batches():
    g = _chain()
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal((2, 3)).astype(np.float32) * (i + 1)] for i in range(5)]
    obs = cal.collect(g, [g.inputs[0], g.value("z")], batches, histograms=True, bins=256)
    allx = np.concatenate([b[0].ravel() for b in batches])
    assert obs["x"].lo == allx.min() and obs["x"].hi == allx.max()  # minmax is exact
    z = 2 * np.maximum(allx, 0)
    assert obs["z"].lo == 0.0 and obs["z"].hi == pytest.approx(z.max())
    # a fixed-size histogram per value, whatever the number of batches
    assert obs["z"].one_sided and obs["z"].hist.shape == (256,)
    assert obs["x"].hist.shape == (512,)  # signed: [-a, a], bins per sign
    assert obs["x"].hist.sum() == allx.size and obs["z"].hist.sum() == z.size
    with pytest.raises(IRError, match="calibration batch 0: input %x expects f32\\[2,3\\]"):
        cal.collect(g, [g.inputs[0]], [[np.zeros((4, 3), np.float32)]])
    with pytest.raises(IRError, match="no batches"):
        cal.collect(g, [g.inputs[0]], [])


def test_nan_in_calibration_data_is_refused():
    ob = cal.Observer("act")
    with pytest.raises(IRError, match="%act has NaN"):
        ob.update_range(torch.tensor([1.0, float("nan")]))


# ---------------------------------------------------------------------------- calibrators
def test_minmax_is_exact():
    a, b = np.array([-0.75, 2.0, 0.5], np.float32), np.array([3.25, -1.5], np.float32)
    assert cal.choose_range(observed(a, b), "minmax") == (-1.5, 3.25)


def test_percentile_is_exact_on_data_spread_evenly_in_bins():
    """Values at the centres of equal sub-bins: the cumulative count is linear in every bin,
    so the p-th percentile is exactly p% of the range."""
    bins, per_bin = 64, 8
    n = bins * per_bin
    x = ((np.arange(n) + 0.5) / n * 10.0).astype(np.float64)  # [0, 10]: one-sided
    ob = observed(x, bins=bins)
    ob.hist_hi = 10.0  # the range the data fills (its max is 10 - 10 / (2n))
    lo, hi = cal.choose_range(ob, "percentile", percentile=99.0)
    assert lo == x.min() and hi == pytest.approx(9.9, rel=1e-12)
    # signed: (100 - p) / 2 percent off each end
    xs = ((np.arange(2 * n) + 0.5) / (2 * n) * 20.0 - 10.0)
    ob = observed(xs, bins=bins)
    ob.hist_lo, ob.hist_hi = -10.0, 10.0
    lo, hi = cal.choose_range(ob, "percentile", percentile=99.0)
    assert (lo, hi) == (pytest.approx(-9.9, rel=1e-12), pytest.approx(9.9, rel=1e-12))
    # and within one bin of numpy's percentile on ordinary data (where samples are dense)
    g = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    ob = observed(g)
    lo, hi = cal.choose_range(ob, "percentile", percentile=99.0)
    width = (ob.hist_hi - ob.hist_lo) / len(ob.hist)
    assert abs(hi - np.percentile(g, 99.5)) < width
    assert abs(lo - np.percentile(g, 0.5)) < width


def test_entropy_clips_a_heavy_tail_where_minmax_does_not():
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(2, 200_000).astype(np.float32)  # Student t, 2 degrees of freedom
    ob = observed(heavy)
    lo, hi = cal.choose_range(ob, "entropy")
    mlo, mhi = cal.choose_range(ob, "minmax")
    assert (mlo, mhi) == (heavy.min(), heavy.max())
    assert hi < 0.5 * mhi and lo > 0.5 * mlo  # clipped at both ends
    assert abs(lo + hi) < 0.1 * hi  # each sign on its own: symmetric data, symmetric range
    assert hi > np.percentile(np.abs(heavy), 99)  # but not into the body
    # one-sided (after a ReLU): the same on the positive half, from 0
    relu = np.maximum(heavy, 0)
    ob = observed(relu)
    assert ob.one_sided
    lo, hi = cal.choose_range(ob, "entropy")
    assert lo == 0.0 and hi < 0.5 * relu.max()
    # lopsided data (MNIST's input: a spike of background at -0.42, strokes up to 2.8): the
    # spike must not set the positive threshold
    lop = np.concatenate([np.full(90_000, -0.42), rng.uniform(0, 2.8, 10_000)]).astype(np.float32)
    lo, hi = cal.choose_range(observed(lop), "entropy")
    assert lo == pytest.approx(-0.42, abs=0.01) and hi > 2.5
    # tall spikes (a conv's output over a constant background, one value per channel) and
    # the signal spread above them: KL alone would keep the spikes and clip the signal;
    # at most 0.1 % of the values are clipped
    spikes = np.repeat(rng.uniform(0, 0.7, 16), 5_000)
    spiky = np.concatenate([spikes, rng.uniform(0, 5.5, 15_000)]).astype(np.float32)
    lo, hi = cal.choose_range(observed(spiky), "entropy")
    assert hi >= np.quantile(spiky, 1 - cal.ENTROPY_MAX_CLIPPED) - 0.01
    assert hi > 0.95 * spiky.max()  # the spikes are atoms: KL itself keeps the signal
    # nothing to clip: a uniform distribution keeps (almost) its whole range
    u = rng.uniform(-1, 1, 100_000).astype(np.float32)
    lo, hi = cal.choose_range(observed(u), "entropy")
    assert hi > 0.97 * u.max() and lo < 0.97 * u.min()


def test_entropy_searches_each_sign_with_the_levels_the_range_gives_it():
    """A lopsided signed range (a bottleneck's output: down to -1, up past 12) gives most
    of the 256 levels to its long side; its KL threshold is the one searched with those
    levels (a fixed point), not with half of them."""
    assert cal.entropy_side_levels(9.0, 1.0, 256) == (230, 26)
    assert cal.entropy_side_levels(1.0, 0.0, 256) == (254, 2)  # each side keeps 2 levels
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.uniform(0, 1, 50_000), rng.exponential(1.0, 150_000)])
    ob = observed(x.astype(np.float32))
    lo, hi = cal.choose_range(ob, "entropy")
    half = len(ob.hist) // 2
    width = ob.hist_hi / half
    p_levels, n_levels = cal.entropy_side_levels(hi, -lo, 256)
    assert p_levels > 200
    assert hi == pytest.approx(cal._kl_side(ob.hist[half:], width, p_levels))
    assert -lo == pytest.approx(min(cal._kl_side(ob.hist[:half][::-1], width, n_levels),
                                    -ob.lo))
    assert hi != pytest.approx(cal._kl_side(ob.hist[half:], width, 128))
    assert lo == pytest.approx(ob.lo, abs=0.01)  # the short uniform side is kept


def test_histogram_atoms_are_the_spikes_and_only_them():
    rng = np.random.default_rng(0)
    at = rng.choice(np.arange(100, 1900), 16, replace=False)
    h = np.histogram(rng.uniform(0, 1, 20_000), bins=2048, range=(0, 1))[0].astype(float)
    h[at] += 5_000
    a = cal.histogram_atoms(h)
    assert set(np.flatnonzero(a)) == set(at)
    np.testing.assert_allclose(a[at], 5_000, atol=10)  # the excess over the local level
    for smooth in (np.abs(rng.standard_normal(200_000)), rng.exponential(1, 200_000),
                   rng.uniform(0, 1, 200_000), np.abs(rng.standard_t(2, 200_000))):
        h = np.histogram(smooth, bins=2048, range=(0, smooth.max()))[0]
        assert not cal.histogram_atoms(h).any()


def test_kl_keeps_point_masses_as_points():
    """Tall spikes under a spread signal (a first layer on MNIST: one background value per
    channel): spreading each bucket evenly would make KL clip most of the signal (279 of
    2,048 bins before atoms were kept apart); with the spikes kept as points in Q, nothing
    needs clipping. Without spikes the search is unchanged (the heavy tail above)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.repeat(rng.uniform(0, 0.7, 16), 5_000), rng.uniform(0, 5.5, 15_000)])
    h = np.histogram(x, bins=2048, range=(0, x.max()))[0]
    assert cal.kl_threshold_bins(h, 256) > 0.95 * 2048
    smooth = np.histogram(rng.uniform(0, 5.5, 15_000), bins=2048, range=(0, 5.5))[0]
    assert cal.kl_threshold_bins(smooth, 256) > 0.95 * 2048


def _kl_reference(hist: np.ndarray, levels: int) -> int:
    """TensorRT's search written out candidate by candidate (the loops of the 2017 talk),
    with the zero bin and the point masses treated as ``kl_threshold_bins`` documents."""
    h = np.array(hist, np.float64)
    h[0] = h[1]
    a = cal.histogram_atoms(h)
    c = h - a
    total, best, best_kl = h.sum(), None, np.inf
    for i in range(levels, len(h) + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        q = a[:i].copy()
        for k in range(levels):
            lo, hi = k * i // levels, (k + 1) * i // levels
            nz = c[lo:hi] > 0
            if nz.any():
                q[lo:hi][nz] += c[lo:hi].sum() / nz.sum()
        pn, qn = p / total, q / h[:i].sum()
        qn[(pn > 0) & (qn <= 0)] = 1e-12
        kl = sum(x * np.log(x / y) for x, y in zip(pn, qn) if x > 0)
        if kl < best_kl:
            best, best_kl = i, kl
    return best


@pytest.mark.parametrize("seed", range(3))
def test_kl_search_is_the_loop_written_out(seed):
    """The vectorised search (blocks of candidates, each over only the bins it may keep)
    picks the candidate the plain loop picks, spikes and all."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.exponential(1.0, 20_000), np.repeat(rng.uniform(0, 2, 3), 2_000)])
    h = np.histogram(x, bins=384, range=(0, x.max()))[0]
    assert cal.kl_threshold_bins(h, 32, block=50) == _kl_reference(h, 32)


def test_kl_search_on_known_histograms():
    assert cal.kl_threshold_bins(np.ones(128), 128) == 128  # every bin is a level
    assert cal.kl_threshold_bins(np.ones(2048), 128) == 2048  # flat: nothing to gain
    # an exponential tail is cut where its mass stops paying for the resolution it costs
    h = np.exp(-np.arange(2048) / 100.0) * 1e6
    t = cal.kl_threshold_bins(h, 128)
    assert 300 < t < 1500


def test_mse_clips_a_heavy_tail_and_keeps_a_uniform_range():
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(2, 200_000).astype(np.float32)
    lo, hi = cal.choose_range(observed(heavy), "mse")
    assert hi < 0.9 * heavy.max() and lo > 0.9 * heavy.min()
    u = rng.uniform(0, 4, 100_000).astype(np.float32)
    lo, hi = cal.choose_range(observed(u), "mse")
    assert lo == pytest.approx(u.min()) and hi > 0.99 * u.max()


def test_every_range_is_inside_the_observed_one():
    x = np.random.default_rng(2).laplace(size=10_000).astype(np.float32)
    ob = observed(x)
    for method in cal.CALIBRATORS:
        lo, hi = cal.choose_range(ob, method)
        assert x.min() <= lo < hi <= x.max(), method


def test_histogram_methods_need_histograms():
    ob = cal.Observer("v")
    ob.update_range(torch.tensor([-1.0, 1.0]))
    with pytest.raises(IRError, match="needs histograms"):
        cal.choose_range(ob, "entropy")


# ---------------------------------------------------------------------------- qparams
def test_qparams_widen_to_zero_and_make_it_exact():
    s, z = cal.qparams(0.5, 2.55, "u8")  # widened to [0, 2.55]
    assert s == np.float32(0.01) and z == 0
    s, z = cal.qparams(-1.0, 3.0, "u8")
    assert s == np.float32(4.0 / 255) and z == round(1.0 / float(s)) == 64
    s, z = cal.qparams(-1.0, 3.0, "i8")
    assert z == 64 - 128
    assert cal.qparams(0.0, 0.0, "u8") == (np.float32(1.0), 0)  # as onnxruntime


# ---------------------------------------------------------------------------- weights
def test_symmetric_per_channel_weights():
    w = np.array([[0.5, -1.27, 0.0], [0.02, 0.01, -0.03]], np.float32)
    q = cal.quantize_weight(w, axis=0)
    np.testing.assert_array_equal(q.scale, np.float32([1.27 / 127, 0.03 / 127]))
    np.testing.assert_array_equal(q.zero_point, [0, 0])
    assert q.q.dtype == np.int8 and q.q[0, 1] == -127 and q.q[1, 2] == -127
    np.testing.assert_allclose(q.dequantized(), w, atol=float(q.scale.max()) / 2 + 1e-9)
    r = cal.quantize_weight(w, axis=0, reduce_range=True)  # 7 bits
    assert np.abs(r.q).max() == 64 and (r.qmin, r.qmax) == (-64, 64)
    t = cal.quantize_weight(w, axis=None)  # per tensor
    assert t.scale.shape == () and t.scale == np.float32(1.27 / 127)


def test_weights_on_the_grid_quantize_exactly():
    k = np.random.default_rng(0).integers(-127, 128, (4, 9)).astype(np.float32)
    k[:, 0] = 127  # the max of every channel is a full step count
    s = np.float32([0.5, 0.25, 0.125, 2.0])
    q = cal.quantize_weight(k * s[:, None], axis=0)
    np.testing.assert_array_equal(q.q, k.astype(np.int8))
    np.testing.assert_array_equal(q.dequantized(), k * s[:, None])


def test_asymmetric_and_low_bit_weights():
    w = np.random.default_rng(3).standard_normal((8, 50)).astype(np.float32) + 0.5
    a = cal.quantize_weight(w, axis=0, symmetric=False)
    assert np.any(a.zero_point != 0) and a.q.min() >= -128 and a.q.max() <= 127
    assert np.abs(a.dequantized() - w).max() <= float(a.scale.max()) * 0.51
    b1 = cal.quantize_weight(w, axis=0, bits=1)  # BWN: sign times the mean magnitude
    assert set(np.unique(b1.q)) <= {-1, 1}
    np.testing.assert_allclose(b1.scale, np.abs(w).mean(axis=1), rtol=1e-6)
    b4 = cal.quantize_weight(w, axis=0, bits=4)
    assert b4.q.min() >= -7 and b4.q.max() <= 7
    # the searched clipping scale beats max scaling at 4 bits
    naive = np.abs(w).max(axis=1, keepdims=True) / 7
    err_naive = ((np.clip(np.round(w / naive), -7, 7) * naive - w) ** 2).sum()
    assert ((b4.dequantized() - w) ** 2).sum() < err_naive
    b2 = cal.quantize_weight(w, axis=0, bits=2)
    assert set(np.unique(b2.q)) <= {-1, 0, 1}


# ---------------------------------------------------------------------------- the CPU
def test_reduce_range_only_on_x86_without_vnni(tmp_path):
    assert cal.needs_reduce_range({"avx2", "fma"}, "x86_64")
    assert not cal.needs_reduce_range({"avx2", "avx512f", "avx512_vnni"}, "x86_64")
    assert not cal.needs_reduce_range({"avx2", "avx_vnni"}, "x86_64")
    assert not cal.needs_reduce_range(set(), "aarch64")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\n")
    assert cal.cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert cal.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="CPUID is read on x86-64 Linux")
def test_cpuid_finds_the_vnni_flags_the_kernel_lists():
    """Natively, CPUID and /proc/cpuinfo agree on the flags that decide reduce_range (under
    an emulator only CPUID is the emulated CPU's: tests/tools/test_int8_agreement.py)."""
    flags = cal.cpuid_flags()
    assert flags is not None and "avx2" in flags  # every machine of this project has AVX2
    listed = cal.cpu_flags() & (cal._VNNI_FLAGS | {"avx2"})
    assert flags == listed, (flags, listed)
    assert cal.needs_reduce_range() == (not flags & cal._VNNI_FLAGS)


# ---------------------------------------------------------------------------- files
def test_calibration_files_round_trip(tmp_path):
    g = _chain()
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal((2, 3)).astype(np.float32)] for _ in range(3)]
    path = cal.save_calibration(batches, g, tmp_path / "cal.npz")
    back = cal.load_calibration(path, g)
    assert len(back) == 3
    for a, b in zip(back, batches):
        np.testing.assert_array_equal(a[0], b[0])
    # a file with one array of samples, any name, cut at the traced batch (short tail dropped)
    np.savez(tmp_path / "x.npz", images=rng.standard_normal((7, 3)).astype(np.float32))
    assert [b[0].shape for b in cal.load_calibration(tmp_path / "x.npz", g)] == [(2, 3)] * 3
    with pytest.raises(IRError, match="array images is \\(7, 2\\); input %x is f32\\[2,3\\]"):
        np.savez(tmp_path / "bad.npz", images=np.zeros((7, 2), np.float32))
        cal.load_calibration(tmp_path / "bad.npz", g)
    with pytest.raises(IRError, match="no such file"):
        cal.load_calibration(tmp_path / "nope.npz", g)
