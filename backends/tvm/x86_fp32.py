"""x86 fp32 kernels: NHWC convolutions and matmuls by a constant weight on the CPU's FMA
vectors, the weights packed at
compile time, scheduled like the int8 kernels (``x86_int8.schedule_dot`` /
``schedule_depthwise``).

Why: MetaSchedule's generic schedules for an fp32 convolution are unusable untuned (int8
and fp32 ResNet-18 at 224 px untuned: 1.6 s) and need tens of minutes of tuning to reach
onnxruntime. This kernel is the one an expert writes by hand, with two parameters to
tune instead of a search over loop nests:

- the weight packed ``[O/L, KH, KW, I, L]`` (``L`` float32 lanes: 16 with AVX-512, 8 with
  AVX2), so the ``L`` output channels of one input channel and tap are one vector load;
- a register tile of ``tile`` output pixels × ``blocks`` vectors of ``L`` output channels:
  per input channel and tap, ``blocks`` weight loads and ``tile`` broadcasts of the input
  feed ``tile × blocks`` FMAs into accumulators that stay in registers;
- the epilogue (bias, ReLU, a residual add) computed per tile; outer loops parallel.

Measured (Zen 5, 2 threads, one 3×3 conv + bias + ReLU, NHWC, default tile 8 × 2 —
against onnxruntime's NCHWc convolutions in fp32 ResNet-18 at 224 px): 64 channels at
56 px 451 µs (onnxruntime 455), 128 at 28 px 449 (463), 256 at 14 px 450 (483), 512 at 7
px 466 (620); 250-257 GMAC/s, onnxruntime's level or better, untuned.

3×3 stride-1 convolutions with enough channels and pixels take the Winograd kernel of
``winograd`` instead (``winograd.applies``; ``SHRINKC_TVM_WINOGRAD=0``: direct everywhere).

Depthwise convolutions: ``L`` channels per vector, taps unrolled, the padding computed in
the loads (``schedule_depthwise``). Matmuls by a constant 2-D weight (linear layers): the
weight packed ``[N/L, K, L]``, the same register tile over rows × column vectors
(``schedule_dot``), with batch dims; matmuls of two activations with the same batch dims
and ``N`` a multiple of the lanes (attention's Q·Kᵀ and P·V) the same way, the second
operand's rows read as vectors (measured: the 4-layer BERT of ``bench_quant``, untuned,
202 → 6.6 ms with the linear layers, 3.5 ms with the attention too;
``SHRINKC_TVM_F32_MATMUL=0`` keeps the generic kernel). Everything else (grouped
convolutions, other layouts, weights that are parameters, dtypes other than float32)
keeps the generic kernel, with a debug log line saying why. ``SHRINKC_TVM_F32_KERNELS=0``
turns the pass off (to compare with MetaSchedule's generic schedules).

Output channels padded to the lanes (zero weights) are sliced off after the kernel,
unless the consumer is another of these convolutions: then it reads the padded tensor
with zero weights for those channels (``READ_PADDED``, up to a sixteenth of the
channels), as in cp-conv's chains 1×1 → depthwise k×1 → depthwise 1×k → 1×1 at a rank of
16·n + 8 on AVX-512 (ResNet-18 64 px after ``cp-conv(ratio=0.5)``, untuned, side by side:
1.142 → 1.119 ms, the same output bit for bit). A 1×1's padded channels are x · 0, NaN
for an infinite x, so a ``where`` fused into it makes them exactly 0 first.

A 1×1 convolution from at most ``MERGE_MAX_CHANNELS`` (an image's) channels whose output
a depthwise convolution reads is merged into it first (``_PointwiseDepthwiseMerger``):
one convolution with the depthwise's window, weights ``K[r, i, j] · B[r, c]``. cp-conv
writes a stem 7×7 as 1×1 3 → R at full resolution, then the strided depthwise 7×1: the
merged 7×1 conv 3 → R has 1.6× their multiply-adds but no R-channel tensor at full
resolution (ResNet-18 64 px after ``cp-conv(ratio=0.5)``, R = 56, untuned, side by side:
1.120 → 1.068 ms; outputs within 4e-5 of 10, a different rounding of the same sum).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

import tvm
from tvm import relax, te, topi

from . import winograd
from .relax_rewrite import bound_call, rewrite_functions, slice_channels
from .targets import F32_ISAS, f32_isa
from .x86_int8 import (F32_DEPTHWISE_RULE, F32_RULE, PATH_KEY, SCHEDULE_VERSION,
                       SCHEDULE_VERSION_KEY, bound_constant, depthwise_attrs, depthwise_weight,
                       expr_dtype, expr_shape, nhwc_conv_kind)

log = logging.getLogger(__name__)

#: The environment variable that turns the fp32 kernels off ("0").
ENV = "SHRINKC_TVM_F32_KERNELS"
#: The one that turns the Winograd kernel off ("0"; the direct kernel for every conv).
WINOGRAD_ENV = "SHRINKC_TVM_WINOGRAD"
#: The one that keeps the generic kernel for float32 matmuls ("0"; convolutions unchanged).
MATMUL_ENV = "SHRINKC_TVM_F32_MATMUL"
#: Whether a convolution whose input is a kernel's output with its zero-weight padded
#: channels sliced off reads that output itself instead (see ``_zero_padded_source``).
READ_PADDED = True
#: Up to which share of the real channels the padded ones are read (numerator,
#: denominator): each costs as much as a real one.
READ_PADDED_MAX_SHARE = (1, 16)
#: A 1×1 convolution from at most this many channels whose output a depthwise one reads
#: is merged into it (``_PointwiseDepthwiseMerger``; 0: never).
MERGE_MAX_CHANNELS = 4


def lanes_of(path: str) -> int:
    """The float32 lanes of an ``F32_ISAS`` path."""
    return next(lanes for name, _, lanes in F32_ISAS if name == path)


def pack_conv_weight(w_ohwi: np.ndarray, lanes: int) -> np.ndarray:
    """OHWI float32 → ``[O/L, KH, KW, I, L]``."""
    o, kh, kw, i = w_ohwi.shape
    return np.ascontiguousarray(w_ohwi.reshape(o // lanes, lanes, kh, kw, i)
                                .transpose(0, 2, 3, 4, 1))


def pack_matmul_weight(w_kn: np.ndarray, lanes: int) -> np.ndarray:
    """``[K, N]`` float32 → ``[N/L, K, L]``: the ``L`` columns of one row are one vector."""
    k, n = w_kn.shape
    return np.ascontiguousarray(w_kn.reshape(k, n // lanes, lanes).transpose(1, 0, 2))


def _attrs(rule: str, path: str) -> dict[str, Any]:
    return {"schedule_rule": rule, PATH_KEY: f"f32-{path}",
            SCHEDULE_VERSION_KEY: SCHEDULE_VERSION}


def _pad(x: te.Tensor, padding: Any, extra_c: int = 0) -> te.Tensor:
    pt, pl, pb, pr = (int(p) for p in padding)
    if pt or pl or pb or pr or extra_c:
        return topi.nn.pad(x, [0, pt, pl, 0], [0, pb, pr, extra_c], pad_value=0.0,
                           name="pad")
    return x


def _out_size(ih: int, iw: int, k: tuple[int, int], strides: Any, padding: Any,
              dilation: Any) -> tuple[int, int]:
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    return ((ih + pt + pb - (k[0] - 1) * dh - 1) // sh + 1,
            (iw + pl + pr - (k[1] - 1) * dw - 1) // sw + 1)


def _conv_te(x: te.Tensor, wp: te.Tensor, strides: Any, padding: Any, dilation: Any,
             path: str) -> Any:
    n, ih, iw, ic = (int(d) for d in x.shape)
    ob, kh, kw, _, lanes = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    oh, ow = _out_size(ih, iw, (kh, kw), strides, padding, dilation)
    x = _pad(x, padding)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, ic), "rc")
    return te.compute(
        (n, oh, ow, ob * lanes),
        lambda b, y, xx, o: te.sum(
            x[b, y * sh + rh * dh, xx * sw + rw * dw, rc] * wp[o // lanes, rh, rw, rc, o % lanes],
            axis=[rh, rw, rc]),
        name="conv2d_nhwc_f32", attrs=_attrs(F32_RULE, path))


def _depthwise_te(x: te.Tensor, w: te.Tensor, strides: Any, padding: Any, dilation: Any,
                  path: str, lanes: int) -> Any:
    """NHWC depthwise, the weight ``[KH, KW, C]``; ``C`` may exceed the input's channels
    (zero weights on zero-padded input channels, the extra outputs sliced)."""
    n, ih, iw, ic = (int(d) for d in x.shape)
    kh, kw, c = (int(d) for d in w.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    oh, ow = _out_size(ih, iw, (kh, kw), strides, padding, dilation)
    x = _pad(x, padding, c - ic)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        (n, oh, ow, c),
        lambda b, y, xx, ch: te.sum(x[b, y * sh + rh * dh, xx * sw + rw * dw, ch]
                                    * w[rh, rw, ch], axis=[rh, rw]),
        name="dwconv2d_nhwc_f32",
        attrs=depthwise_attrs(F32_DEPTHWISE_RULE, f"f32-{path}", lanes, lanes_of(path)))


def _matmul_te(x: te.Tensor, w: te.Tensor, path: str, packed: bool) -> Any:
    """``x[..., M, K] · W``: with ``packed`` a constant weight packed ``[N/L, K, L]``, else
    an activation ``w[..., K, N]`` with ``x``'s batch dims, its rows read as vectors."""
    rk = te.reduce_axis((0, int(x.shape[-1])), "rk")
    if packed:
        nb, _, lanes = (int(d) for d in w.shape)
        n = nb * lanes

        def w_at(i: Any) -> Any:
            return w[i[-1] // lanes, rk, i[-1] % lanes]
    else:
        n = int(w.shape[-1])

        def w_at(i: Any) -> Any:
            return w[(*i[:-2], rk, i[-1])]
    return te.compute(
        (*(int(d) for d in x.shape[:-1]), n),
        lambda *i: te.sum(x[(*i[:-1], rk)] * w_at(i), axis=[rk]),
        name="matmul_f32" if packed else "matmul_act_f32", attrs=_attrs(F32_RULE, path))


@relax.expr_functor.mutator
class _PointwiseDepthwiseMerger(relax.PyExprMutator):
    """``depthwise(conv1x1(x, B), K)`` → ``conv(x, W)``, ``W[r, i, j, c] = K[r, i, j] ·
    B[r, c]``, with the depthwise's strides, padding and dilation, where the 1×1 reads at
    most ``MERGE_MAX_CHANNELS`` channels (float32, constant weights; the 1×1 has no bias,
    stride or padding in the graph: a bias is a separate add, which would not match)."""

    def __init__(self, mod: Any):
        super().__init__(mod)
        self.merged = 0

    def visit_call_(self, op: Any) -> Any:
        call = super().visit_call_(op)
        if (not isinstance(call, relax.Call) or not isinstance(call.ty, relax.TensorType)
                or getattr(call.op, "name", "") != "relax.nn.conv2d"
                or nhwc_conv_kind(call)[0] != "depthwise"):
            return call
        pw = bound_call(self, call.args[0], "relax.nn.conv2d")
        if pw is None or nhwc_conv_kind(pw)[0] != "dense":
            return call
        if any(expr_dtype(e) != "float32" for e in (call, pw, pw.args[0])):
            return call
        at = pw.attrs
        if (any(int(v) != 1 for v in (*at.strides, *at.dilation))
                or any(int(v) != 0 for v in at.padding)):
            return call
        b, k = bound_constant(self, pw.args[1]), bound_constant(self, call.args[1])
        if b is None or k is None or b.shape[1:3] != (1, 1) or b.shape[3] > MERGE_MAX_CHANNELS:
            return call
        w = (k.astype(np.float64) * b.astype(np.float64)).astype(np.float32)  # [R, KH, KW, C]
        self.merged += 1
        d = call.attrs
        return relax.op.nn.conv2d(pw.args[0], relax.const(w, "float32"), strides=d.strides,
                                  padding=d.padding, dilation=d.dilation, groups=1,
                                  data_layout="NHWC", kernel_layout="OHWI", out_layout="NHWC",
                                  out_dtype="float32")


@relax.expr_functor.mutator
class _F32KernelRewriter(relax.PyExprMutator):
    def __init__(self, mod: Any, path: str):
        super().__init__(mod)
        self.path = path
        self.lanes = lanes_of(path)
        self.winograd = os.environ.get(WINOGRAD_ENV, "1") != "0"
        self.matmul = os.environ.get(MATMUL_ENV, "1") != "0"
        self.rewritten = 0
        self.peeled = 0
        # [padded var, its real channels, the var with the padded ones exactly 0: itself,
        # or a where made when a consumer first needs it (None until then)]
        self._padded: list[list[Any]] = []

    def _register_padded(self, y: Any, n: int, zero: bool) -> Any:
        """Bind ``y``, a kernel output whose channels from ``n`` on come from zero
        weights: exactly 0 when ``zero``, else 0 only for a finite input (x · 0)."""
        y = self.builder_.emit(y)
        self._padded.append([y, n, y if zero else None])
        return y

    def _zero_padded_source(self, x: Any) -> tuple[Any, int] | None:
        """When ``x`` is the channel slice ``slice_channels`` made of a registered padded
        output: that output with its padded channels exactly 0, and how many there are.
        Where they are x · 0 (NaN for an infinite x), a ``where`` on the channel makes them
        0, emitted once per output and fused into its producer's epilogue."""
        sl = bound_call(self, x, "relax.strided_slice")
        if sl is None:
            return None
        entry = next((e for e in self._padded if e[0].same_as(sl.args[0])), None)
        if entry is None:
            return None
        y, n, zeroed = entry
        c = expr_shape(y)[-1]
        if (c - n) * READ_PADDED_MAX_SHARE[1] > n * READ_PADDED_MAX_SHARE[0]:
            return None
        if zeroed is None:
            real = relax.const(np.arange(c) < n)
            zeroed = entry[2] = self.builder_.emit(
                relax.op.where(real, y, relax.const(0.0, "float32")))
        return zeroed, c - n

    def _skip(self, call: Any, why: str) -> None:
        log.debug("fp32 %s kernel not used for %s: %s", self.path, call.op.name, why)

    def visit_call_(self, op: Any) -> Any:
        call = super().visit_call_(op)
        if not isinstance(call, relax.Call) or not isinstance(call.ty, relax.TensorType):
            return call
        name = getattr(call.op, "name", "")
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            return call
        if any(expr_dtype(e) != "float32" for e in (call, call.args[0], call.args[1])):
            return call
        if name == "relax.nn.conv2d":
            return self._conv(call)
        return self._matmul(call) if self.matmul else call

    def _matmul(self, call: Any) -> Any:
        """``x[..., M, K] · W`` with a constant 2-D ``W`` (a linear layer's, transposed) →
        the packed kernel; columns padded to the lanes with zero weights, sliced off."""
        a_shape, b_shape = expr_shape(call.args[0]), expr_shape(call.args[1])
        w = bound_constant(self, call.args[1])
        if (w is None and len(a_shape) >= 3 and a_shape[:-2] == b_shape[:-2]
                and b_shape[-1] % self.lanes == 0):
            self.rewritten += 1  # two activations (attention's Q·Kᵀ and P·V)
            return self.builder_.call_te(_matmul_te, call.args[0], call.args[1],
                                         path=self.path, packed=False,
                                         primfunc_name_hint="matmul_act_f32")
        if len(b_shape) != 2 or len(a_shape) < 2:
            self._skip(call, "not a matmul with a 2-D weight, or of two activations with "
                       "the same batch dims and N a multiple of the lanes")
            return call
        if w is None:
            self._skip(call, "the weight is not a constant (keep_params, or an activation)")
            return call
        n = w.shape[1]
        pad = -n % self.lanes
        wp = pack_matmul_weight(np.pad(w, [(0, 0), (0, pad)]), self.lanes)
        self.rewritten += 1
        y = self.builder_.call_te(_matmul_te, call.args[0], relax.const(wp, "float32"),
                                  path=self.path, packed=True, primfunc_name_hint="matmul_f32")
        return slice_channels(self.builder_, y, n, pad)

    def _conv(self, call: Any) -> Any:
        at = call.attrs
        kind, why = nhwc_conv_kind(call)
        if kind is None:
            self._skip(call, why)
            return call
        w = bound_constant(self, call.args[1])
        if w is None:
            self._skip(call, "the weight is not a constant (keep_params?)")
            return call
        o = w.shape[0]
        x, extra = call.args[0], 0
        peeled = self._zero_padded_source(x) if READ_PADDED else None
        if peeled is not None:  # read the padded channels too, with zero weights
            x, extra = peeled
            self.peeled += 1
        if kind == "depthwise":
            wk, lanes, pad = depthwise_weight(np.pad(w, [(0, extra), (0, 0), (0, 0), (0, 0)]),
                                              self.lanes)
            y = self.builder_.call_te(_depthwise_te, x, relax.const(wk, "float32"),
                                      at.strides, at.padding, at.dilation, path=self.path,
                                      lanes=lanes, primfunc_name_hint="dwconv2d_f32")
            pad += extra  # per channel: 0 in, 0 weight, exactly 0 out
        else:
            pad = -o % self.lanes  # output channels padded with zero weights, sliced off
            w = np.pad(w, [(0, pad), (0, 0), (0, 0), (0, extra)])
            why = winograd.applies(w.shape[1:3], at.strides, at.dilation,
                                   expr_shape(x), at.padding, o)
            if why is None and self.winograd:
                blocked = winograd.row_blocked(expr_shape(x), at.padding,
                                               w.shape[3], w.shape[0], padded_out=pad)
                y = self.builder_.call_te(
                    winograd.conv_te, x,
                    relax.const(winograd.transform_weight(w, self.lanes), "float32"),
                    at.padding, path=self.path, blocked=blocked,
                    primfunc_name_hint="conv2d_wino_f32")
            else:
                y = self.builder_.call_te(_conv_te, x,
                                          relax.const(pack_conv_weight(w, self.lanes), "float32"),
                                          at.strides, at.padding, at.dilation, path=self.path,
                                          primfunc_name_hint="conv2d_f32")
        self.rewritten += 1
        if pad:
            y = self._register_padded(y, o, zero=kind == "depthwise")
        return slice_channels(self.builder_, y, o, pad)


def enabled() -> bool:
    """Whether the pass runs (``SHRINKC_TVM_F32_KERNELS`` is not "0")."""
    return os.environ.get(ENV, "1") != "0"


@tvm.transform.module_pass(opt_level=0, name="shrinkc.F32Kernels")
class F32Kernels:
    """float32 NHWC conv2d (groups 1, or depthwise) with a constant weight and matmul (by a
    constant, or of two activations) → the packed FMA kernels of the current target's fp32
    path (``targets.f32_isa``); a no-op on targets without one, or with
    ``SHRINKC_TVM_F32_KERNELS=0``."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        target = tvm.target.Target.current()
        path = f32_isa(target) if target is not None else None
        if path is None or not enabled():
            return mod
        merger = _PointwiseDepthwiseMerger(mod)
        if MERGE_MAX_CHANNELS:
            mod = rewrite_functions(mod, merger)
        rewriter = _F32KernelRewriter(mod, path)
        mod = rewrite_functions(mod, rewriter)
        if rewriter.rewritten:
            log.debug("fp32 %s kernels: %d conv2d / matmul (%d merged 1×1 → depthwise), %d "
                      "reading a padded input", path, rewriter.rewritten, merger.merged,
                      rewriter.peeled)
        return mod


__all__ = ["ENV", "MATMUL_ENV", "WINOGRAD_ENV", "F32Kernels", "enabled", "lanes_of",
           "pack_conv_weight", "pack_matmul_weight"]
