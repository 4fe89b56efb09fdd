"""x86 fp32 kernels: NHWC convolutions on the CPU's FMA vectors, the weights packed at
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
the loads (``schedule_depthwise``). Everything else (grouped convolutions, other layouts,
weights that are parameters, dtypes other than float32) keeps the generic kernel, with a
debug log line saying why. ``SHRINKC_TVM_F32_KERNELS=0`` turns the pass off (to compare
with MetaSchedule's generic schedules).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

import tvm
from tvm import relax, te, topi

from . import winograd
from .relax_rewrite import rewrite_functions, slice_channels
from .targets import F32_ISAS, f32_isa
from .x86_int8 import (F32_DEPTHWISE_RULE, F32_RULE, PATH_KEY, SCHEDULE_VERSION,
                       SCHEDULE_VERSION_KEY, bound_constant, depthwise_attrs, depthwise_weight,
                       expr_dtype, expr_shape, nhwc_conv_kind)

log = logging.getLogger(__name__)

#: The environment variable that turns the fp32 kernels off ("0").
ENV = "SHRINKC_TVM_F32_KERNELS"
#: The one that turns the Winograd kernel off ("0"; the direct kernel for every conv).
WINOGRAD_ENV = "SHRINKC_TVM_WINOGRAD"


def lanes_of(path: str) -> int:
    """The float32 lanes of an ``F32_ISAS`` path."""
    return next(lanes for name, _, lanes in F32_ISAS if name == path)


def pack_conv_weight(w_ohwi: np.ndarray, lanes: int) -> np.ndarray:
    """OHWI float32 → ``[O/L, KH, KW, I, L]``."""
    o, kh, kw, i = w_ohwi.shape
    return np.ascontiguousarray(w_ohwi.reshape(o // lanes, lanes, kh, kw, i)
                                .transpose(0, 2, 3, 4, 1))


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


@relax.expr_functor.mutator
class _F32KernelRewriter(relax.PyExprMutator):
    def __init__(self, mod: Any, path: str):
        super().__init__(mod)
        self.path = path
        self.lanes = lanes_of(path)
        self.winograd = os.environ.get(WINOGRAD_ENV, "1") != "0"
        self.rewritten = 0

    def _skip(self, call: Any, why: str) -> None:
        log.debug("fp32 %s kernel not used for conv2d: %s", self.path, why)

    def visit_call_(self, op: Any) -> Any:
        call = super().visit_call_(op)
        if (not isinstance(call, relax.Call) or not isinstance(call.ty, relax.TensorType)
                or getattr(call.op, "name", "") != "relax.nn.conv2d"):
            return call
        if any(expr_dtype(e) != "float32" for e in (call, call.args[0], call.args[1])):
            return call
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
        if kind == "depthwise":
            wk, lanes, pad = depthwise_weight(w, self.lanes)
            y = self.builder_.call_te(_depthwise_te, call.args[0], relax.const(wk, "float32"),
                                      at.strides, at.padding, at.dilation, path=self.path,
                                      lanes=lanes, primfunc_name_hint="dwconv2d_f32")
        else:
            pad = -o % self.lanes  # output channels padded with zero weights, sliced off
            w = np.pad(w, [(0, pad), (0, 0), (0, 0), (0, 0)])
            why = winograd.applies(w.shape[1:3], at.strides, at.dilation,
                                   expr_shape(call.args[0]), at.padding, o)
            if why is None and self.winograd:
                blocked = winograd.row_blocked(expr_shape(call.args[0]), at.padding,
                                               w.shape[3], w.shape[0], padded_out=pad)
                y = self.builder_.call_te(
                    winograd.conv_te, call.args[0],
                    relax.const(winograd.transform_weight(w, self.lanes), "float32"),
                    at.padding, path=self.path, blocked=blocked,
                    primfunc_name_hint="conv2d_wino_f32")
            else:
                y = self.builder_.call_te(_conv_te, call.args[0],
                                          relax.const(pack_conv_weight(w, self.lanes), "float32"),
                                          at.strides, at.padding, at.dilation, path=self.path,
                                          primfunc_name_hint="conv2d_f32")
        self.rewritten += 1
        return slice_channels(self.builder_, y, o, pad)


def enabled() -> bool:
    """Whether the pass runs (``SHRINKC_TVM_F32_KERNELS`` is not "0")."""
    return os.environ.get(ENV, "1") != "0"


@tvm.transform.module_pass(opt_level=0, name="shrinkc.F32Kernels")
class F32Kernels:
    """float32 NHWC conv2d (groups 1, or depthwise) with a constant weight → the packed FMA
    kernels of the current target's fp32 path (``targets.f32_isa``); a no-op on targets
    without one, or with ``SHRINKC_TVM_F32_KERNELS=0``."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        target = tvm.target.Target.current()
        path = f32_isa(target) if target is not None else None
        if path is None or not enabled():
            return mod
        rewriter = _F32KernelRewriter(mod, path)
        mod = rewrite_functions(mod, rewriter)
        if rewriter.rewritten:
            log.debug("fp32 %s kernels: %d conv2d", path, rewriter.rewritten)
        return mod


__all__ = ["ENV", "WINOGRAD_ENV", "F32Kernels", "enabled", "lanes_of", "pack_conv_weight"]
