"""One NaN-propagating max pool instead of three passes over the input.

The lowering (``ops._max_pool2d``) keeps PyTorch's NaN semantics with relax ops only —
``max_pool2d(x) + sqrt(-max_pool2d(float(isnan(x))))`` — because ConvertLayout has rules
for those and none for a TIR call. After the layout conversion, ``NanMaxPool`` replaces
that pattern (NHWC) by one TE max pool — NaN where any tap is, else the taps' max, the
taps written out — scheduled with channels in vectors, rows parallel. Padding: with
dilation 1 (and every pad smaller than the kernel) a tap in the padding reads the clamped
row / column, which lies in the same window, so no load is bounds-tested; otherwise the
-inf padding is computed in the loads.

Measured (Zen 5, 2 threads, fp32 ResNet-18 at 224 px: the stem's 3×3 stride-2 pool on
64 × 112 × 112): the three functions of the pattern 0.58 ms; the one pool with bounds-tested
loads 0.23 ms in the model (0.12 ms alone; LLVM made gathers of them), with clamped
indices 0.078 ms (0.030 alone); onnxruntime's MaxPool about 0.07 ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tvm
from tvm import relax, te, topi

from .relax_rewrite import bound_call, rewrite_functions
from .x86_int8 import POOL_RULE, SCHEDULE_VERSION, SCHEDULE_VERSION_KEY


def _nan_max_pool_te(x: te.Tensor, pool_size: Any, strides: Any, padding: Any,
                     dilation: Any) -> Any:
    """NHWC max pool that gives NaN where a window holds one."""
    n, ih, iw, c = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (dh, dw) = ([int(v) for v in a] for a in (pool_size, strides, dilation))
    pt, pl, pb, pr = (int(p) for p in padding)
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    # With dilation 1 a window is contiguous, so a tap in the padding can read the nearest
    # row / column inside instead (the index clamped): that one is in the same window
    # whenever the window holds any real tap — every window does when each pad is smaller
    # than the kernel — so the max and the NaN test are the same, and the loads need no
    # bounds condition (with one, LLVM emitted gathers: 0.12 ms alone and 0.2-0.5 ms in
    # ResNet-18 for the 224 px stem pool, against onnxruntime's 0.07).
    clamp = (dh, dw) == (1, 1) and max(pt, pb) < kh and max(pl, pr) < kw
    if not clamp and (pt or pl or pb or pr):
        x = topi.nn.pad(x, [0, pt, pl, 0], [0, pb, pr, 0], pad_value=-np.inf, name="pad")

    def index(o: Any, stride: int, tap: int, before: int, after: int, size: int) -> Any:
        """The input row / column tap ``tap`` of output ``o`` reads, clamped into the
        input on each side that has padding."""
        i = o * stride + tap - before
        i = tvm.tirx.max(i, 0) if before else i
        return tvm.tirx.min(i, size - 1) if after else i

    def nanmax(b: Any, y: Any, xx: Any, ch: Any) -> Any:
        # the taps written out (an element-wise block, no reduction: a reduction kept its
        # accumulator in the output buffer and LLVM scalarized it, 0.6 ms); the max and
        # "any tap is NaN" as two chains, each tap read in both (a chain of NaN-keeping
        # selects repeats the accumulator in each: exponential in the taps)
        if clamp:
            taps = [x[b, index(y, sh, i, pt, pb, ih), index(xx, sw, j, pl, pr, iw), ch]
                    for i in range(kh) for j in range(kw)]
        else:
            taps = [x[b, y * sh + i * dh, xx * sw + j * dw, ch]
                    for i in range(kh) for j in range(kw)]
        top, nan = taps[0], tvm.tirx.isnan(taps[0])
        for v in taps[1:]:
            top, nan = tvm.tirx.max(top, v), tvm.tirx.Or(nan, tvm.tirx.isnan(v))
        return tvm.tirx.Select(nan, tvm.tirx.const(np.nan, x.dtype), top)

    return te.compute((n, oh, ow, c), nanmax, name="max_pool2d_nan",
                      attrs={"schedule_rule": POOL_RULE, SCHEDULE_VERSION_KEY: SCHEDULE_VERSION})


#: The largest window written out tap by tap (larger ones keep the lowering's pattern).
MAX_TAPS = 64
_POOL_ATTRS = ("pool_size", "strides", "padding", "dilation", "layout", "out_layout",
               "ceil_mode")


@relax.expr_functor.mutator
class _NanMaxPoolRewriter(relax.PyExprMutator):
    def __init__(self, mod: Any):
        super().__init__(mod)
        self.rewritten = 0

    def _nan_pool_of(self, expr: Any) -> Any:
        """The max pool of ``sqrt(-max_pool2d(astype(isnan(x))))``, and ``x``."""
        expr_, pool = expr, None
        for op_name in ("relax.sqrt", "relax.negative", "relax.nn.max_pool2d", "relax.astype",
                        "relax.isnan"):
            call = bound_call(self, expr_, op_name)
            if call is None:
                return None, None
            if op_name == "relax.nn.max_pool2d":
                pool = call
            expr_ = call.args[0]
        return pool, expr_

    def visit_call_(self, op: Any) -> Any:
        call = super().visit_call_(op)
        if getattr(call.op, "name", "") != "relax.add":
            return call
        for first, second in ((0, 1), (1, 0)):
            pool = bound_call(self, call.args[first], "relax.nn.max_pool2d")
            mask_pool, x = self._nan_pool_of(call.args[second])
            if pool is None or mask_pool is None or not pool.args[0].same_as(x):
                continue
            at = pool.attrs
            if any(str(getattr(at, a)) != str(getattr(mask_pool.attrs, a))
                   for a in _POOL_ATTRS):
                continue
            if str(at.layout) != "NHWC" or str(at.out_layout) != "NHWC" or bool(at.ceil_mode):
                continue
            if int(at.pool_size[0]) * int(at.pool_size[1]) > MAX_TAPS:
                continue
            self.rewritten += 1
            return self.builder_.call_te(_nan_max_pool_te, x, at.pool_size, at.strides,
                                         at.padding, at.dilation,
                                         primfunc_name_hint="max_pool2d_nan")
        return call


@tvm.transform.module_pass(opt_level=0, name="shrinkc.NanMaxPool")
class NanMaxPool:
    """The lowering's NaN-keeping max pool pattern (NHWC) → one ``max_pool2d_nan`` kernel."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        rewriter = _NanMaxPoolRewriter(mod)
        rewritten = rewrite_functions(mod, rewriter)
        return rewritten if rewriter.rewritten else mod


__all__ = ["NanMaxPool"]
