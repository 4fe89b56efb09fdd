"""backends/tvm/x86_fp32.py: the packed fp32 FMA kernels replace the convolutions (groups
1 and depthwise, odd channel counts, strides, dilations, a residual epilogue), use the
FMA instruction, and match the IR interpreter — on whichever fp32 paths this CPU runs
(AVX-512, AVX2); the pass is a no-op when turned off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from shrinkc.backends import tvm as btvm
from shrinkc.backends.tvm import x86_fp32
from shrinkc.ir.frontends.torch import trace
from shrinkc.ir.interpreter import run
from suite import assert_close  # the suite's comparison policy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: fp32 path → the target that selects it.
TARGETS = {"avx512": "host", "avx2": "x86-avx2"}


def _runs(path: str) -> bool:
    t = btvm.resolve_target(TARGETS[path])
    return btvm.target_runs_here(t) and btvm.f32_isa(t) == path


class _Net(torch.nn.Module):
    """A 7×7 stride-2 stem 3 → 20 (not a multiple of the lanes), a dilated depthwise 3×3,
    a 1×1 conv 20 → 32 plus a 1×1 projection of its input (a residual add in the
    epilogue), a 3×3 stride-2 max pool, a flatten and a linear."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 20, 7, stride=2, padding=3)
        self.dw = torch.nn.Conv2d(20, 20, 3, padding=2, dilation=2, groups=20)
        self.pw = torch.nn.Conv2d(20, 32, 1)
        self.proj = torch.nn.Conv2d(20, 32, 1, bias=False)
        self.fc = torch.nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.dw(h))
        h = torch.relu(self.pw(h) + self.proj(h))
        h = torch.nn.functional.max_pool2d(h, 3, stride=2, padding=1)
        return self.fc(h.flatten(1))


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 30, 30)
    return trace(_Net().eval(), (x,), name="fp32_net"), x.numpy()


def _kernels(g, target: str) -> list[str]:
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(target))
    return sorted(gv.name_hint for gv, _ in mod.functions_items()
                  if "conv2d_f32" in gv.name_hint)


@pytest.mark.parametrize("path", list(TARGETS))
def test_convolutions_run_on_the_fma_kernels_and_match_the_interpreter(path, graph):
    if not _runs(path):
        pytest.skip(f"this CPU cannot run the {path} fp32 path")
    g, x = graph
    names = _kernels(g, TARGETS[path])
    assert sum("dwconv2d_f32" in n for n in names) == 1, names
    assert sum("dwconv2d_f32" not in n for n in names) == 3, names  # stem, pw, proj
    module = btvm.build(g, TARGETS[path])
    assert "vfmadd" in module.assembly()
    assert_close(module.run([x])[0], run(g, [x])[0].numpy(), depth=g)


def test_weights_are_packed_lane_major():
    w = np.arange(32 * 3 * 3 * 5, dtype=np.float32).reshape(32, 3, 3, 5)
    p = x86_fp32.pack_conv_weight(w, 16)
    assert p.shape == (2, 3, 3, 5, 16)
    assert p[21 // 16, 2, 1, 4, 21 % 16] == w[21, 2, 1, 4]


def test_turned_off_keeps_the_generic_convolutions(graph, monkeypatch):
    if btvm.f32_isa(btvm.resolve_target("host")) is None:
        pytest.skip("this CPU has no fp32 kernel path")
    monkeypatch.setenv(x86_fp32.ENV, "0")
    assert _kernels(graph[0], "host") == []


def test_no_fp32_path_off_x86():
    assert btvm.f32_isa("aarch64") is None


def test_depthwise_lanes_divide_the_channels_before_padding():
    from shrinkc.backends.tvm.x86_int8 import depthwise_lanes

    assert [depthwise_lanes(c, 16) for c in (64, 56, 136, 20, 18, 3)] == [16, 8, 8, 4, 16, 16]
    assert [depthwise_lanes(c, 8) for c in (56, 20, 18)] == [8, 4, 8]


class _CPChain(torch.nn.Module):
    """A CP-decomposed 7×7 stride-2 conv as cp-conv writes it: 1×1 3 → 56, depthwise 7×1
    stride (2, 1), depthwise 1×7 stride (1, 2), 1×1 56 → 18; then a depthwise 3×3 on 18
    channels (no lane count divides them: padded)."""

    def __init__(self):
        super().__init__()
        self.cp_in = torch.nn.Conv2d(3, 56, 1, bias=False)
        self.cp_h = torch.nn.Conv2d(56, 56, (7, 1), stride=(2, 1), padding=(3, 0), groups=56,
                                    bias=False)
        self.cp_w = torch.nn.Conv2d(56, 56, (1, 7), stride=(1, 2), padding=(0, 3), groups=56,
                                    bias=False)
        self.cp_out = torch.nn.Conv2d(56, 18, 1)
        self.dw = torch.nn.Conv2d(18, 18, 3, padding=1, groups=18)

    def forward(self, x):
        return self.dw(torch.relu(self.cp_out(self.cp_w(self.cp_h(self.cp_in(x))))))


@pytest.mark.parametrize("path", list(TARGETS))
def test_depthwise_channels_not_a_multiple_of_the_lanes_take_fewer_lanes(path, monkeypatch):
    """56 channels on AVX-512 run as 8 lanes, unpadded (padded to 64, the input's extra
    channels were a per-lane condition in every load: the CP stem's 7×1 depthwise 0.99 →
    0.044 ms in ResNet-18); 18 channels are still padded; both match the interpreter.
    (The 1×1 from 3 channels would be merged into the 7×1: not here.)"""
    if not _runs(path):
        pytest.skip(f"this CPU cannot run the {path} fp32 path")
    from shrinkc.backends.tvm.x86_int8 import LANES_KEY

    monkeypatch.setattr(x86_fp32, "MERGE_MAX_CHANNELS", 0)

    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, 20)
    g = trace(_CPChain().eval(), (x,), name="cp_chain")
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(TARGETS[path]))
    dw = {gv.name_hint: f.script() for gv, f in mod.functions_items()
          if "dwconv2d_f32" in gv.name_hint}
    assert len(dw) == 3, sorted(dw)
    lanes = x86_fp32.lanes_of(path)
    chain = [t for t in dw.values() if "56" in t]
    assert len(chain) == 2
    for t in chain:  # fewer lanes only where 56 needs them; never padded to 64 channels
        assert (LANES_KEY in t) == (56 % lanes != 0), t[:400]
        assert "T.int64(64)" not in t, t[:400]
    module = btvm.build(g, TARGETS[path])
    assert_close(module.run([x.numpy()])[0], run(g, [x.numpy()])[0].numpy(), depth=g)


class _WideChain(_CPChain):
    """``_CPChain`` from 8 channels: too many to merge the 1×1 into the depthwise."""

    def __init__(self):
        super().__init__()
        self.cp_in = torch.nn.Conv2d(8, 56, 1, bias=False)


@pytest.mark.parametrize("path", list(TARGETS))
def test_a_pointwise_conv_from_an_image_merges_into_the_depthwise_after_it(path):
    """cp-conv's stem chain starts with a 1×1 from the image's 3 channels to the rank,
    at full resolution, then the strided depthwise 7×1: they become one 7×1 conv 3 → 56
    (weights K[r, i] · B[r, c]), one depthwise kernel fewer and no 56-channel tensor at
    full resolution; the result matches the interpreter. From 8 channels they stay apart."""
    if not _runs(path):
        pytest.skip(f"this CPU cannot run the {path} fp32 path")
    torch.manual_seed(0)
    for net, c, dw in ((_CPChain(), 3, 2), (_WideChain(), 8, 3)):
        x = torch.randn(1, c, 20, 20)
        g = trace(net.eval(), (x,), name=f"cp_chain_{c}")
        names = _chain_functions(g, TARGETS[path])
        assert sum("dwconv2d_f32" in n for n in names) == dw, names
        assert_close(btvm.build(g, TARGETS[path]).run([x.numpy()])[0],
                     run(g, [x.numpy()])[0].numpy(), depth=g)


class _RankChain(torch.nn.Module):
    """cp-conv's chain at rank ``r``: 1×1 24 → r (no bias), depthwise 3×1, depthwise 1×3,
    1×1 r → 32 with bias and ReLU; all weights positive with ``positive``."""

    def __init__(self, r: int, positive: bool = False):
        super().__init__()
        self.cp_in = torch.nn.Conv2d(24, r, 1, bias=False)
        self.cp_h = torch.nn.Conv2d(r, r, (3, 1), padding=(1, 0), groups=r, bias=False)
        self.cp_w = torch.nn.Conv2d(r, r, (1, 3), padding=(0, 1), groups=r, bias=False)
        self.cp_out = torch.nn.Conv2d(r, 32, 1)
        if positive:
            with torch.no_grad():
                for p in self.parameters():
                    p.abs_()

    def forward(self, x):
        return torch.relu(self.cp_out(self.cp_w(self.cp_h(self.cp_in(x)))))


def _chain_functions(g, target: str) -> list[str]:
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(target))
    return sorted(gv.name_hint for gv, _ in mod.functions_items())


def _traced(path: str, make, shape: tuple[int, ...], name: str):
    """(graph, input, its Relax functions after the pipeline) of the net ``make()`` on a
    seeded random input of ``shape`` for the fp32 ``path``; skipped where this CPU cannot
    run it."""
    if not _runs(path):
        pytest.skip(f"this CPU cannot run the {path} fp32 path")
    torch.manual_seed(0)
    x = torch.randn(*shape)
    g = trace(make().eval(), (x,), name=name)
    return g, x.numpy(), _chain_functions(g, TARGETS[path])


@pytest.mark.parametrize("path", list(TARGETS))
def test_a_chain_reads_the_padded_channels_instead_of_slicing_them(path, monkeypatch):
    """A rank the lanes leave half a vector of (16·L + L/2): the first 1×1's output keeps
    its zero-weight channels (made exactly 0 by a ``where`` fused into it), both
    depthwise kernels and the last 1×1 read them with zero weights, nothing is sliced;
    the result is the sliced build's bit for bit, and the interpreter's. An infinite input
    stays +inf, as in the interpreter: without the ``where`` the padded channels were
    inf · 0 = NaN, and the last 1×1 spread them into every output."""
    if not _runs(path):
        pytest.skip(f"this CPU cannot run the {path} fp32 path")
    lanes = x86_fp32.lanes_of(path)
    torch.manual_seed(0)
    x = torch.randn(1, 24, 6, 6).numpy()
    g = trace(_RankChain(16 * lanes + lanes // 2).eval(), (torch.from_numpy(x),),
              name="rank_chain")
    names = _chain_functions(g, TARGETS[path])
    assert not any("strided_slice" in n for n in names), names
    assert sum("where" in n for n in names) == 1, names
    read = btvm.build(g, TARGETS[path]).run([x])[0]
    assert_close(read, run(g, [x])[0].numpy(), depth=g)
    monkeypatch.setattr(x86_fp32, "READ_PADDED", False)
    assert sum("strided_slice" in n for n in _chain_functions(g, TARGETS[path])) == 1
    assert np.array_equal(read, btvm.build(g, TARGETS[path]).run([x])[0])
    monkeypatch.setattr(x86_fp32, "READ_PADDED", True)

    gp = trace(_RankChain(16 * lanes + lanes // 2, positive=True).eval(),
               (torch.from_numpy(x),), name="rank_chain_pos")
    xi = np.abs(x)
    xi[0, 0, 2, 3] = np.inf
    got, ref = btvm.build(gp, TARGETS[path]).run([xi])[0], run(gp, [xi])[0].numpy()
    assert np.isposinf(ref).any() and not np.isnan(ref).any()
    assert np.array_equal(np.isposinf(got), np.isposinf(ref)) and not np.isnan(got).any()


@pytest.mark.parametrize("path", list(TARGETS))
def test_a_chain_slices_where_the_padding_is_a_large_share(path):
    """Half a vector on a rank of 1.5 vectors: reading the padded channels would cost a
    third more work in the chain (``READ_PADDED_MAX_SHARE``), so they are sliced off."""
    lanes = x86_fp32.lanes_of(path)
    _, _, names = _traced(path, lambda: _RankChain(lanes + lanes // 2), (1, 24, 6, 6),
                          "rank_chain_short")
    assert any("strided_slice" in n for n in names) and not any("where" in n for n in names)


class _MLP(torch.nn.Module):
    """Tokens through two linear layers (24 → 20, not a multiple of the lanes, GELU; 20 →
    32) and an activation × activation matmul (not a constant weight: generic)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(24, 20)
        self.fc2 = torch.nn.Linear(20, 32)

    def forward(self, x):
        h = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return h @ h.transpose(-1, -2)


def test_matmul_weights_are_packed_lane_major():
    w = np.arange(5 * 32, dtype=np.float32).reshape(5, 32)
    p = x86_fp32.pack_matmul_weight(w, 16)
    assert p.shape == (2, 5, 16)
    assert p[1, 3, 4] == w[3, 16 + 4]


@pytest.mark.parametrize("path", list(TARGETS))
def test_linear_layers_run_on_the_fma_kernel_and_match_the_interpreter(path):
    """A matmul by a constant weight (a linear layer) takes the packed kernel, with batch
    dims and padded columns; the activation × activation matmul keeps the generic one."""
    g, x, names = _traced(path, _MLP, (2, 5, 24), "mlp")
    assert sum("matmul_f32" in n for n in names) == 2, names
    assert sum("matmul" in n and "matmul_f32" not in n for n in names) == 1, names
    module = btvm.build(g, TARGETS[path])
    assert "vfmadd" in module.assembly()
    assert_close(module.run([x])[0], run(g, [x])[0].numpy(), depth=g)


class _Attention(torch.nn.Module):
    """Self-attention over 16 tokens, 2 heads of 16: Q·Kᵀ and P·V multiply activations."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(1, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
        p = torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1)
        return (p @ v).transpose(1, 2).reshape(1, 16, 32)


@pytest.mark.parametrize("path", list(TARGETS))
def test_attention_matmuls_of_activations_run_on_the_fma_kernel(path):
    """Q·Kᵀ and P·V (the same batch dims, N a multiple of the lanes) take the kernel too,
    reading the second operand's rows as vectors; the result matches the interpreter."""
    g, x, names = _traced(path, _Attention, (1, 16, 32), "attention")
    assert sum("matmul_act_f32" in n for n in names) == 2, names
    assert sum("matmul_f32" in n for n in names) == 1, names  # the qkv linear
    assert_close(btvm.build(g, TARGETS[path]).run([x])[0], run(g, [x])[0].numpy(), depth=g)


def test_linear_weights_kept_as_parameters_keep_the_generic_kernel():
    if btvm.f32_isa(btvm.resolve_target("host")) is None:
        pytest.skip("this CPU has no fp32 kernel path")
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24)
    g = trace(_MLP().eval(), (x,), name="mlp")
    lowered = btvm.lower(g, keep_params=True)
    mod = btvm.optimize_relax(lowered.mod, btvm.resolve_target("host"))
    assert not any("matmul_f32" in gv.name_hint for gv, _ in mod.functions_items())


# ------------------------------------------------------------------------------ Winograd


def test_winograd_transforms_compute_the_correlation_of_a_tile():
    """``Aᵀ [U ⊙ (Bᵀ d B)] A`` with ``U = transform_weight(g)`` is the 2×2 valid
    correlation of a 4×4 tile with the 3×3 kernel (known answer, float64)."""
    from shrinkc.backends.tvm import winograd

    rng = np.random.default_rng(0)
    d = rng.standard_normal((4, 4))
    g = rng.standard_normal((3, 3)).astype(np.float32)
    u = winograd.transform_weight(g.reshape(1, 3, 3, 1), lanes=1)[:, :, 0, 0, 0]
    bt, at = winograd._BT.astype(np.float64), winograd._AT.astype(np.float64)
    y = at @ (u * (bt @ d @ bt.T)) @ at.T
    want = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


class _Wino(torch.nn.Module):
    """3×3 stride-1 convolutions that take the Winograd kernel — 32 → 48 (a tile count
    of 64 from a 15×15 input: odd, the last tile half outside), 48 → 48 with a residual
    add, 48 → 40 unpadded (output channels padded to the lanes, sliced) — and two that
    keep the direct kernel: 16 output channels (fewer than MIN_CHANNELS) and one on a
    3×3 image (fewer than MIN_TILES)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(32, 48, 3, padding=1)
        self.b = torch.nn.Conv2d(48, 48, 3, padding=1)
        self.c = torch.nn.Conv2d(48, 40, 3)
        self.narrow = torch.nn.Conv2d(40, 16, 3, padding=1)
        self.small = torch.nn.Conv2d(40, 32, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h) + h)
        h = torch.relu(self.c(h))
        return self.narrow(h), self.small(torch.nn.functional.max_pool2d(h, 4))


@pytest.fixture(scope="module", params=[15, 16], ids=["odd", "even"])
def wino_graph(request):
    """15 px: odd outputs, the three stages apart; 16 px: even outputs and small weights,
    row-blocked (``winograd.row_blocked``) where the output channels need no padding."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, request.param, request.param)
    return trace(_Wino().eval(), (x,), name="wino_net"), x.numpy()


def _blocked(g, target: str) -> int:
    """Winograd functions of ``g`` built for ``target`` that are row-blocked."""
    from shrinkc.backends.tvm import winograd

    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(target))
    return sum(winograd.BLOCKED_KEY in f.script() for gv, f in mod.functions_items()
               if "conv2d_wino_f32" in gv.name_hint)


def _wino_kernels(g, target: str) -> tuple[int, int]:
    """(Winograd, direct) fp32 convolution functions of ``g`` built for ``target``."""
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target(target))
    names = [gv.name_hint for gv, _ in mod.functions_items()]
    return (sum("conv2d_wino_f32" in n for n in names), sum("conv2d_f32" in n for n in names))


@pytest.mark.parametrize("path", list(TARGETS))
def test_winograd_convolutions_match_the_interpreter(path, wino_graph, caplog):
    """... and every kernel keeps its schedule (the 3×3-pixel one tiles across rows)."""
    if not _runs(path):
        pytest.skip(f"this CPU cannot run the {path} fp32 path")
    g, x = wino_graph
    assert _wino_kernels(g, TARGETS[path]) == (3, 2)
    # even: a and b row-blocked, and c where its 40 output channels need no padding to the
    # lanes (AVX2's 8; AVX-512's 16 pad them, and a padded one is not blocked)
    even = x.shape[-1] % 2 == 0
    assert _blocked(g, TARGETS[path]) == (2 + (40 % x86_fp32.lanes_of(path) == 0)) * even
    with caplog.at_level("DEBUG", logger="shrinkc.backends.tvm"):
        module = btvm.build(g, TARGETS[path])
    assert "schedule failed" not in caplog.text
    for got, want in zip(module.run([x]), run(g, [x]), strict=True):
        assert_close(got, want.numpy(), depth=g)


def test_which_winograd_convolutions_are_row_blocked():
    """Even outputs, a transformed weight within ``BLOCKED_WEIGHT_BYTES`` and no padded
    output channels."""
    from shrinkc.backends.tvm import winograd

    same = (1, 1, 1, 1)
    assert winograd.row_blocked((1, 16, 16, 32), same, 32, 32)
    assert not winograd.row_blocked((1, 16, 16, 32), same, 32, 32, padded_out=8)
    assert not winograd.row_blocked((1, 15, 15, 32), same, 32, 32)  # 15×15 outputs
    assert winograd.row_blocked((1, 15, 15, 32), (1, 1, 2, 2), 32, 32)  # 16×16
    big = int((winograd.BLOCKED_WEIGHT_BYTES / 64) ** 0.5) + 1  # 16·4·C² bytes
    assert not winograd.row_blocked((1, 16, 16, big), same, big, big)


def test_winograd_turned_off_keeps_the_direct_kernel(wino_graph, monkeypatch):
    if btvm.f32_isa(btvm.resolve_target("host")) is None:
        pytest.skip("this CPU has no fp32 kernel path")
    monkeypatch.setenv(x86_fp32.WINOGRAD_ENV, "0")
    assert _wino_kernels(wino_graph[0], "host") == (0, 5)


def test_winograd_schedule_with_sampled_tiles_matches(wino_graph):
    """What MetaSchedule's custom rule does with a Winograd function (tiles sampled, not
    the defaults) builds and computes the same as the default schedule."""
    if btvm.f32_isa(btvm.resolve_target("host")) is None:
        pytest.skip("this CPU has no fp32 kernel path")
    from tvm import s_tir
    from shrinkc.backends.tvm import winograd, x86_int8
    from shrinkc.backends.tvm.pipeline import prepare

    g, _ = wino_graph
    # what tuning extracts its tasks from: not yet scheduled
    mod = prepare(btvm.lower(g).mod, btvm.resolve_target("host"), cpu_weight_prepack=False)
    gv = next(gv for gv, _ in mod.functions_items() if "wino" in gv.name_hint
              and "add1" in gv.name_hint)  # the residual one: bias, add, ReLU
    func = mod[gv].with_attr("global_symbol", "main")
    outs = []
    for seed in (None, 3, 4):
        sch = s_tir.Schedule(tvm.IRModule({"main": func}), seed=seed or 1)
        (block,) = x86_int8._kernel_blocks(sch)
        if seed is None:
            winograd.schedule(sch, block, tile=8, blocks=2)
        else:
            winograd.schedule(sch, block)  # sampled, as the tuning rule does
            assert any(i.kind.name == "SamplePerfectTile" for i in sch.trace.insts)
        lib = tvm.compile(sch.mod, target=tvm.target.Target(btvm.resolve_target("host")))
        args = [np.random.default_rng(1).standard_normal([int(d) for d in p.shape])
                .astype("float32") for p in (v.ty for v in func.params)]
        tensors = [tvm.runtime.tensor(a) for a in args]
        lib["main"](*tensors)
        outs.append(tensors[-1].numpy())
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-5)
    assert np.abs(outs[0]).max() > 0
