"""backends/tvm/x86_int8.py: the int8 dot-product kernels (VNNI ``vpdpbusd``, AVX2
``vpmaddubsw``) build, are the ones the assembly uses, and are bit-exact against the IR
interpreter on a small conv and matmul — on whichever paths this CPU has (detected).

Exactness against the interpreter (which dequantizes and computes in float) is exact
arithmetic here, not luck: every scale is a power of two and the accumulators stay below
2**24, so the interpreter's float32 sums, products and requantization are exact too and
any correct integer kernel must give the same u8 outputs, ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
from shrinkc.backends import tvm as btvm
from shrinkc.backends.tvm import x86_int8
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: (path, target, what its assembly must contain), for the paths this CPU can run.
PATHS = {
    "vnni": ("host", "vpdpbusd"),
    "avx2": ("x86-avx2", "vpmaddubsw"),
}


def _available(path: str) -> bool:
    target, _ = PATHS[path]
    t = btvm.resolve_target(target)
    return btvm.target_runs_here(t) and btvm.int8_isa(t) == path


def _qdq_graph(wmax: int, seed: int = 0, odd: bool = False, pads: bool = False,
               residual: bool = False) -> Graph:
    """A padded 3×3 conv (32 → 32 channels, input zero point 3: the borders are the zero
    point) and a linear (32 → 32), each QDQ with power-of-two scales, u8 outputs.

    ``odd``: channel counts that are not multiples of the lanes / 4 instead (zero-padded
    weights, the extra outputs sliced off): a 7×7 stride-2 stem conv 3 → 20 channels, a
    1×1 conv 6 → 10, a linear 12 → 10 (a classifier) and a stride-2 depthwise 3×3 conv on
    20 channels (the depthwise kernel).

    ``pads``: a padded stride-2 depthwise 3×3 and a padded 3×3 conv on 96 channels (not a
    power of two: where the zero padding's schedule matters).

    ``residual``: a 1×1 conv 32 → 32 whose output is added to a second quantized input
    (zero point 3) before the quantize: a MobileNetV2 block's projection and skip."""
    rng = np.random.default_rng(seed)
    g = Graph("qdq_pow2_odd" if odd else "qdq_pow2")

    def c(a, dtype):
        return g.add_constant(np.asarray(a, dtype=dtype))

    def layer(op, x_shape, w, bias_q, sw, attrs, name):
        x = g.add_input(TensorType("f32", x_shape), f"{name}.x")
        sx = 2.0 ** -4
        xq = g.add_node("quantize", [x, c(sx, np.float32), c(3, np.uint8)],
                        {"dtype": "u8"}).output
        xd = g.add_node("dequantize", [xq, c(sx, np.float32), c(3, np.uint8)]).output
        wd = g.add_node("dequantize", [c(w, np.int8), c(sw, np.float32),
                                       c(np.zeros(len(sw)), np.int8)], {"axis": 0}).output
        bd = g.add_node("dequantize", [c(bias_q, np.int32), c(sx * sw, np.float32),
                                       c(np.zeros(len(sw)), np.int32)], {"axis": 0}).output
        y = g.add_node(op, [xd, wd, bd], attrs, loc=name).output
        return g.add_node("quantize", [y, c(2.0 ** -2, np.float32), c(128, np.uint8)],
                          {"dtype": "u8"}).output

    if residual:
        g.name = "qdq_pow2_residual"
        sx = 2.0 ** -4

        def dq(q, zero_point):
            return g.add_node("dequantize", [q, c(sx, np.float32),
                                             c(zero_point, np.uint8)]).output

        def conv1x1(xd, name, zero_point, skip=None):
            sw = 2.0 ** -rng.integers(5, 8, 32)
            wd = g.add_node("dequantize", [c(rng.integers(-wmax, wmax + 1, (32, 32, 1, 1)),
                                             np.int8),
                                           c(sw, np.float32), c(np.zeros(32), np.int8)],
                            {"axis": 0}).output
            bd = g.add_node("dequantize", [c(rng.integers(-500, 500, 32), np.int32),
                                           c(sx * sw, np.float32), c(np.zeros(32), np.int32)],
                            {"axis": 0}).output
            y = g.add_node("conv2d", [xd, wd, bd], {}, loc=name).output
            if skip is not None:
                y = g.add_node("add", [y, skip], loc=f"{name}.skip").output
            return g.add_node("quantize", [y, c(sx, np.float32), c(zero_point, np.uint8)],
                              {"dtype": "u8"}).output

        x = g.add_input(TensorType("f32", (1, 32, 6, 10)), "x")
        xq = g.add_node("quantize", [x, c(sx, np.float32), c(0, np.uint8)],
                        {"dtype": "u8"}).output
        block_in = dq(conv1x1(dq(xq, 0), "a", 3), 3)
        g.outputs = [conv1x1(block_in, "project", 128, skip=block_in)]
        return g
    if pads:  # a 1×1 conv 16 → 96 channels, a stride-2 depthwise 3×3 and a 3×3 conv
        # 96 → 32, each on the previous one's u8 output with zero point 0 (after a ReLU),
        # so the zero padding is in the kernel's function (a nonzero zero point pads before)
        g.name = "qdq_pow2_pads"

        def conv(xq, w, attrs, name):
            sx, sw, n = 2.0 ** -2, 2.0 ** -rng.integers(5, 8, len(w)), len(w)
            xd = g.add_node("dequantize", [xq, c(sx, np.float32), c(0, np.uint8)]).output
            wd = g.add_node("dequantize", [c(w, np.int8), c(sw, np.float32),
                                           c(np.zeros(n), np.int8)], {"axis": 0}).output
            bd = g.add_node("dequantize", [c(rng.integers(-500, 500, n), np.int32),
                                           c(sx * sw, np.float32), c(np.zeros(n), np.int32)],
                            {"axis": 0}).output
            y = g.add_node("conv2d", [xd, wd, bd], attrs, loc=name).output
            return g.add_node("quantize", [y, c(2.0 ** -2, np.float32), c(0, np.uint8)],
                              {"dtype": "u8"}).output

        x = g.add_input(TensorType("f32", (1, 16, 9, 9)), "x")
        h = g.add_node("quantize", [x, c(2.0 ** -2, np.float32), c(0, np.uint8)],
                       {"dtype": "u8"}).output
        h = conv(h, rng.integers(-wmax, wmax + 1, (96, 16, 1, 1)), {}, "expand96")
        h = conv(h, rng.integers(-wmax, wmax + 1, (96, 1, 3, 3)),
                 {"padding": (1, 1), "stride": (2, 2), "groups": 96}, "depthwise96")
        g.outputs = [conv(h, rng.integers(-wmax, wmax + 1, (32, 96, 3, 3)), {"padding": (1, 1)},
                          "conv96")]
        return g
    if odd:
        def ints(*shape):
            return rng.integers(-wmax, wmax + 1, shape)

        def scales(n):
            return 2.0 ** -rng.integers(5, 8, n)

        g.outputs = [
            layer("conv2d", (1, 3, 16, 16), ints(20, 3, 7, 7), rng.integers(-500, 500, 20),
                  scales(20), {"padding": (3, 3), "stride": (2, 2)}, "stem"),
            layer("conv2d", (1, 6, 5, 5), ints(10, 6, 1, 1), rng.integers(-500, 500, 10),
                  scales(10), {}, "conv_6_10"),
            layer("linear", (4, 12), ints(10, 12), rng.integers(-500, 500, 10), scales(10),
                  {}, "classifier"),
            layer("conv2d", (1, 20, 9, 9), ints(20, 1, 3, 3), rng.integers(-500, 500, 20),
                  scales(20), {"padding": (1, 1), "stride": (2, 2), "groups": 20},
                  "depthwise"),
        ]
        return g
    sw = 2.0 ** -rng.integers(5, 8, 32)
    wc = rng.integers(-wmax, wmax + 1, (32, 32, 3, 3))
    wl = rng.integers(-wmax, wmax + 1, (32, 32))
    g.outputs = [
        layer("conv2d", (1, 32, 8, 8), wc, rng.integers(-500, 500, 32), sw,
              {"padding": (1, 1)}, "conv"),
        layer("linear", (4, 32), wl, rng.integers(-500, 500, 32), sw, {}, "linear"),
    ]
    return g


def _inputs(g: Graph, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.2, 15.0, v.shape).astype(np.float32) for v in g.inputs]


@pytest.fixture(scope="module")
def built():
    """``built(path, wmax)``: (graph, module built for the path's target), once each."""
    cache: dict = {}

    def get(path: str, wmax: int, odd: bool = False):
        if (path, wmax, odd) not in cache:
            g = _qdq_graph(wmax, odd=odd)
            cache[path, wmax, odd] = g, btvm.build(g, PATHS[path][0])
        return cache[path, wmax, odd]

    return get


@pytest.mark.parametrize("path", list(PATHS))
def test_kernel_builds_uses_the_instruction_and_is_bit_exact(path, built):
    if not _available(path):
        pytest.skip(f"this CPU has no {path} int8 path")
    _, lanes, wmax = x86_int8.PATHS[path]
    g, module = built(path, min(wmax, 127))
    asm = module.assembly()
    assert asm.count(PATHS[path][1]) > 0, f"no {PATHS[path][1]} in the {path} kernels"
    x = _inputs(g)
    got = module.run(x)
    want = [t.numpy() for t in run(g, x)]
    for y, w in zip(got, want):
        assert y.dtype == np.uint8
        np.testing.assert_array_equal(y, w)


@pytest.mark.parametrize("path", list(PATHS))
def test_odd_channel_counts_use_the_kernel_with_zero_padded_weights(path, built, caplog):
    """A 3-channel stem conv, a 6 → 10 conv and a 10-class classifier: the channels are
    padded with zero weights (the extra outputs sliced off), so they run on the dot-product
    instruction too, and stay bit-exact; so does the depthwise kernel on 20 channels."""
    if not _available(path):
        pytest.skip(f"this CPU has no {path} int8 path")
    _, lanes, wmax = x86_int8.PATHS[path]
    with caplog.at_level("DEBUG", logger="shrinkc.backends.tvm.x86_int8"):
        g, module = built(path, min(wmax, 127), odd=True)
    assert f"int8 {path} kernels: 4 conv2d / matmul" in caplog.text
    assert "kernel not used" not in caplog.text
    assert "schedule failed" not in caplog.text
    assert module.assembly().count(PATHS[path][1]) > 0
    x = _inputs(g)
    for y, w in zip(module.run(x), [t.numpy() for t in run(g, x)]):
        assert y.shape == w.shape
        np.testing.assert_array_equal(y, w)


@pytest.mark.parametrize("path", list(PATHS))
def test_zero_padding_is_inlined_in_depthwise_and_vectorized_by_16_for_dot(path):
    """The padding of the kernels' input: computed in the depthwise kernel's loads (no pad
    buffer), and for the dot kernels at the root in vectors of 16 bytes (one 96-byte vector
    per channel row was scalarized by LLVM into byte inserts: 8× slower); both bit-exact."""
    if not _available(path):
        pytest.skip(f"this CPU has no {path} int8 path")
    g = _qdq_graph(min(x86_int8.PATHS[path][2], 127), pads=True)
    target = btvm.resolve_target(PATHS[path][0])
    mod = btvm.optimize_relax(btvm.lower(g).mod, target)
    kernels = {gv.name_hint: f.script() for gv, f in mod.functions_items()
               if "conv2d_int8" in gv.name_hint}
    dw = [t for n, t in kernels.items() if n.startswith("fused_dwconv2d_int8")]
    dot = [t for n, t in kernels.items() if "_conv2d_int8" in n and "dwconv" not in n
           and 'T.sblock("pad")' in t]
    assert len(dw) == 1 and len(dot) == 1, sorted(kernels)  # the 1×1 conv has no padding
    assert 'T.sblock("pad")' not in dw[0] and "T.if_then_else" in dw[0]
    pad_loop = dot[0].split('T.sblock("pad")')[0].rsplit("for ", 1)[1]
    assert "T.vectorized(T.int64(16))" in pad_loop, pad_loop
    module = btvm.build(g, PATHS[path][0])
    x = _inputs(g)
    for y, w in zip(module.run(x), [t.numpy() for t in run(g, x)]):
        np.testing.assert_array_equal(y, w)


@pytest.mark.parametrize("path", list(PATHS))
def test_dot_instruction_has_no_temporaries_in_the_parallel_loop(path):
    """The intrinsics' implementations name no temporaries: TVMScript makes an assignment
    a local buffer, which inside the parallel loop became two workspace allocations and
    frees per iteration (measured, Zen 5: the 1×1 conv 24 → 144 of int8 MobileNetV2 at 224
    px, 3,528 iterations, 162 → 46 µs; the whole model 1.50 → 1.04 ms)."""
    if not _available(path):
        pytest.skip(f"this CPU has no {path} int8 path")
    g = _qdq_graph(min(x86_int8.PATHS[path][2], 127), pads=True)
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(PATHS[path][0]))
    kernels = {gv.name_hint: f.script() for gv, f in mod.functions_items()
               if "_conv2d_int8" in gv.name_hint and "dwconv" not in gv.name_hint}
    assert len(kernels) == 2, sorted(kernels)
    for name, text in kernels.items():
        assert "T.alloc_local" not in text, name


@pytest.mark.parametrize("path", list(PATHS))
def test_residual_input_is_dequantized_inside_the_kernel_loop(path):
    """A conv whose requantize adds another quantized tensor (a residual): that tensor's
    dequantize (cast, subtract the zero point, scale) is inlined into the epilogue, so the
    kernel function is one parallel loop nest (it was four serial loops over the whole
    tensor at the root: 174 → 58 µs for MobileNetV2's 56 px projection); bit-exact."""
    if not _available(path):
        pytest.skip(f"this CPU has no {path} int8 path")
    g = _qdq_graph(min(x86_int8.PATHS[path][2], 127), residual=True)
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(PATHS[path][0]))
    kernels = [f.script() for gv, f in mod.functions_items() if "_conv2d_int8" in gv.name_hint]
    kernels = [k for k in kernels if "- 3" in k]  # the one with the skip's zero point
    assert len(kernels) == 1
    body = kernels[0].split('# with T.sblock("root"):')[1]
    top = [ln.strip() for ln in body.splitlines() if ln.startswith("    for ")]
    assert len(top) == 1 and "T.parallel(" in top[0], top
    module = btvm.build(g, PATHS[path][0])
    x = _inputs(g)
    for y, w in zip(module.run(x), [t.numpy() for t in run(g, x)]):
        np.testing.assert_array_equal(y, w)


def test_avx2_path_keeps_the_generic_kernel_for_8_bit_weights(built):
    """vpmaddubsw would saturate int16 pair sums: 8-bit weights get the generic kernel,
    still exact."""
    if not _available("avx2"):
        pytest.skip("this CPU has no avx2 int8 path")
    g, module = built("avx2", 127)
    assert "vpmaddubsw" not in module.assembly()
    x = _inputs(g)
    for y, w in zip(module.run(x), [t.numpy() for t in run(g, x)]):
        np.testing.assert_array_equal(y, w)


def test_weights_are_packed_lane_major():
    w = np.arange(32 * 3 * 3 * 8, dtype=np.int64).reshape(32, 3, 3, 8).astype(np.int8)
    p = x86_int8.pack_conv_weight(w, 16)
    assert p.shape == (2, 3, 3, 2, 16, 4)
    o, kh, kw, i = 21, 2, 1, 6
    assert p[o // 16, kh, kw, i // 4, o % 16, i % 4] == w[o, kh, kw, i]
    m = np.arange(8 * 24, dtype=np.int64).reshape(8, 24).astype(np.int8)
    pm = x86_int8.pack_matmul_weight(m, 8)
    assert pm.shape == (3, 2, 8, 4) and pm[2, 1, 5, 3] == m[1 * 4 + 3, 2 * 8 + 5]


def test_no_int8_path_off_x86():
    assert btvm.int8_isa("aarch64") is None


def test_schedule_version_is_part_of_the_tuning_workload(monkeypatch):
    """A tuning record replays the instructions of the schedule it was tuned with; the
    kernels carry ``SCHEDULE_VERSION`` so that a changed schedule changes the workload (the
    structural hash a database is keyed by) and old records stop matching."""
    import tvm_ffi

    g = _qdq_graph(64)
    target = btvm.resolve_target("host")
    if btvm.int8_isa(target) is None:
        pytest.skip("this CPU has no int8 path")

    def kernel_hashes():
        mod = btvm.prepare(btvm.lower(g).mod, target)
        return {gv.name_hint: tvm_ffi.structural_hash(f) for gv, f in mod.functions_items()
                if "conv2d_int8" in gv.name_hint or "matmul_int8" in gv.name_hint}

    before = kernel_hashes()
    assert len(before) == 2
    assert kernel_hashes() == before  # deterministic
    monkeypatch.setattr(x86_int8, "SCHEDULE_VERSION", x86_int8.SCHEDULE_VERSION + 1)
    after = kernel_hashes()
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in before)
