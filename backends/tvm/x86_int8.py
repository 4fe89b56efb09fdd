"""x86 int8 kernels: u8 × i8 → int32 convolutions and matmuls on the CPU's dot-product
instructions, for the integer ops the ``int8`` lowering makes.

Why not MetaSchedule's own VNNI rule: it tensorizes a block with ``dot_16x4_vnni`` only
when the 16 output channels × 4 reduction elements of the weight are contiguous, and an
NHWC/OHWI (or NCHW/OIHW) convolution's are not. Its rewrite of the weight layout comes
after the tensorization, so the tensorization fails, the candidate is left with a
vectorized loop inside a vectorized loop, and the build stops in ``StorageRewrite``
("VectorizeLoop before LiftStorageAlloc"; with ``tirx.disable_storage_rewrite`` it stops
in LLVM's code generation instead: "cannot handle for type vectorized" — both measured).

So the weights are packed here, in numpy at compile time, to the layout the instruction
reads: ``[O/L, KH, KW, I/4, L, 4]`` for a convolution, ``[N/L, K/4, L, 4]`` for a matmul,
with ``L`` output lanes per instruction:

- ``vnni`` (AVX-512 VNNI: Cascade Lake, Zen 4, Zen 5): ``shrinkc_dot_16x4_vnni``, one
  ``vpdpbusd`` per 16 lanes × 4 bytes. Exact.
- ``avx2`` (Zen 3, Haswell and later without VNNI): ``shrinkc_dot_8x4_avx2``,
  ``vpmaddubsw`` (u8 × i8 pairs summed into int16, saturating) then ``vpmaddwd`` with ones
  (into int32). Exact when every pair sum fits int16, which holds for weights in
  [-64, 64] (``quantize(reduce_range=true)``, the default on such CPUs): ``2·255·64 =
  32640``. A layer with wider weights keeps the generic integer kernel (LLVM widens to
  16 bits: ``vpmaddwd``).

``Int8Kernels`` (a Relax pass, after the layout conversion and before legalization, in
``pipeline.inference_passes``) replaces each eligible ``relax.nn.conv2d`` (NHWC, OHWI,
groups 1) and ``relax.matmul`` (constant 2-D weight) with u8 × i8 → int32 operands by a
call to a TE kernel reading the packed weight; the requantize epilogue fuses into it as
before. Each kernel's block carries ``schedule_rule = shrinkc_int8_dot``: MetaSchedule's
``ApplyCustomRule`` schedules it with ``schedule_dot`` (tile sizes sampled, so tuning
searches them), and untuned builds get the same schedule with default tiles
(``ScheduleInt8Kernels``). Everything else (depthwise / grouped convolutions, channel
counts that are not multiples of ``L`` and 4, i8 activations, weights that are
parameters) keeps the generic kernel, with a debug log line saying why.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

import tvm
from tvm import relax, te, topi

from .imports import memoised_getmodule
from .relax_rewrite import rewrite_functions, slice_channels
from .targets import F32_ISAS, int8_isa

log = logging.getLogger(__name__)

#: The block annotation (and MetaSchedule custom-rule name) of the packed kernels, and the
#: annotation naming the int8 path their weights were packed for.
SCHEDULE_RULE = "shrinkc_int8_dot"
#: The same for the depthwise kernels (no dot product: int32 lanes over the channels).
DEPTHWISE_RULE = "shrinkc_int8_depthwise"
#: The fp32 kernels of ``x86_fp32`` (scheduled here too: ``schedule_dot`` without the
#: tensor intrinsic, one FMA per input channel).
F32_RULE, F32_DEPTHWISE_RULE = "shrinkc_f32_dot", "shrinkc_f32_depthwise"
_DEPTHWISE_RULES = (DEPTHWISE_RULE, F32_DEPTHWISE_RULE)
#: The NaN-keeping max pool of ``nan_pool`` (``schedule_pool``).
POOL_RULE = "shrinkc_max_pool"
KERNEL_RULES = (SCHEDULE_RULE, F32_RULE, *_DEPTHWISE_RULES, POOL_RULE)
PATH_KEY = "shrinkc_int8_path"
#: The version of what ``schedule_dot`` / ``schedule_depthwise`` emit, in every kernel block's
#: annotations, so in the workload a tuning database is keyed by. A database record
#: replays the schedule's instructions as they were when it was tuned (not the rule), so
#: bump this when the schedule changes: old records then stop matching and get retuned
#: instead of silently bringing the old schedule back. 2: the padding of 47071ea; 3: the
#: intrinsics without temporaries (their tiles were tuned against a per-iteration cost); 4:
#: register tiles across rows shorter than a tile.
SCHEDULE_VERSION_KEY, SCHEDULE_VERSION = "shrinkc_int8_schedule", 4
#: Per int8 path: (tensor intrinsic, output lanes L, largest |weight| that is exact).
PATHS: dict[str, tuple[str, int, int]] = {
    "vnni": ("shrinkc_dot_16x4_vnni", 16, 128),
    "avx2": ("shrinkc_dot_8x4_avx2", 8, 64),
}
_REDUCE = 4  # bytes per lane per instruction
_MAX_TILE = 8  # output pixels per register tile, at most
_PAD_VECTOR = 16  # bytes per vector of a root zero padding (see parallel_pads)
_BLOCKS = (1, 2, 4)  # output-channel vectors per register tile (tuning samples them)
#: The untuned default per path: a tile of 8 pixels × 2 vectors is 16 accumulators, half
#: of AVX-512's 32 vector registers but all of AVX2's 16.
_DEFAULT_BLOCKS = {"vnni": 2, "avx2": 1, "f32-avx512": 2, "f32-avx2": 1}
#: The fp32 paths (``x86_fp32``): the kernel blocks' ``PATH_KEY`` and their float32 lanes.
F32_LANES = {f"f32-{name}": lanes for name, _, lanes in F32_ISAS}


def _intrin_lanes(path: str) -> tuple[str | None, int]:
    """(tensor intrinsic, output lanes) of a kernel path; no intrinsic for fp32."""
    if path in F32_LANES:
        return None, F32_LANES[path]
    return PATHS[path][0], PATHS[path][1]


# ---------------------------------------------------------------------------- intrinsics
@functools.cache
def register_intrinsics() -> None:
    """``shrinkc_dot_16x4_vnni`` and ``shrinkc_dot_8x4_avx2``: ``C[L] += A[4] · B[L, 4]``
    (u8 × i8 → i32). TVM's own ``dot_16x4_vnni`` passes ``vpdpbusd`` int32 vectors, which
    the LLVM TVM 0.27 ships (22) rejects ("Call parameter type does not match function
    signature": since LLVM 21 the intrinsic takes i8 vectors)."""
    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get("shrinkc_dot_8x4_avx2", allow_missing=True) is not None:
        return
    i8_operands = tvm.target.codegen.llvm_version_major() >= 21
    with memoised_getmodule():  # TVMScript parsing calls inspect.stack()
        from tvm.script import tirx as T

        def desc_of(lanes: int) -> Any:
            @T.prim_func(s_tir=True)
            def desc(A: T.Buffer((4,), "uint8", offset_factor=1),
                     B: T.Buffer((lanes, 4), "int8", offset_factor=1),
                     C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
                with T.sblock("root"):
                    T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                    T.writes(C[0:lanes])
                    for i in T.serial(0, lanes):
                        for k in T.serial(0, 4):
                            with T.sblock("update"):
                                vi, vk = T.axis.remap("SR", [i, k])
                                C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk],
                                                                               "int32")

            return desc

        @T.prim_func(s_tir=True)
        def vnni(A: T.Buffer((4,), "uint8", offset_factor=1),
                 B: T.Buffer((16, 4), "int8", offset_factor=1),
                 C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:16], A[0:4], B[0:16, 0:4])
                T.writes(C[0:16])
                # no named temporaries: TVMScript makes an assignment a local buffer, which
                # inside the parallel loop is a workspace allocation per iteration
                if i8_operands:
                    C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                        C.vload([0], dtype="int32x16"),
                        T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"),
                                                                dtype="int32"), 16),
                                      dtype="uint8x64"),
                        B.vload([0, 0], dtype="int8x64"), dtype="int32x16")
                else:
                    C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                        C.vload([0], dtype="int32x16"),
                        T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                        T.reinterpret(B.vload([0, 0], dtype="int8x64"), dtype="int32x16"),
                        dtype="int32x16")

        @T.prim_func(s_tir=True)
        def avx2(A: T.Buffer((4,), "uint8", offset_factor=1),
                 B: T.Buffer((8, 4), "int8", offset_factor=1),
                 C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:8], A[0:4], B[0:8, 0:4])
                T.writes(C[0:8])
                C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                        T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"),
                                                                dtype="int32"), 8),
                                      dtype="uint8x32"),
                        B.vload([0, 0], dtype="int8x32"), dtype="int16x16"),
                    T.int16x16(1), dtype="int32x8")

        TensorIntrin.register("shrinkc_dot_16x4_vnni", desc_of(16), vnni)
        TensorIntrin.register("shrinkc_dot_8x4_avx2", desc_of(8), avx2)


# ---------------------------------------------------------------------------- weights and TE
def pack_conv_weight(w_ohwi: np.ndarray, lanes: int) -> np.ndarray:
    """OHWI int8 → ``[O/L, KH, KW, I/4, L, 4]``."""
    o, kh, kw, i = w_ohwi.shape
    w = w_ohwi.reshape(o // lanes, lanes, kh, kw, i // _REDUCE, _REDUCE)
    return np.ascontiguousarray(w.transpose(0, 2, 3, 4, 1, 5))


def pack_matmul_weight(w_kn: np.ndarray, lanes: int) -> np.ndarray:
    """``[K, N]`` int8 → ``[N/L, K/4, L, 4]``."""
    k, n = w_kn.shape
    w = w_kn.reshape(k // _REDUCE, _REDUCE, n // lanes, lanes)
    return np.ascontiguousarray(w.transpose(2, 0, 3, 1))


def _attrs(rule: str, path: str) -> dict[str, Any]:
    """A kernel block's annotations: its schedule rule, int8 path and schedule version."""
    return {"schedule_rule": rule, PATH_KEY: path, SCHEDULE_VERSION_KEY: SCHEDULE_VERSION}


#: A depthwise kernel block's channel lanes, where they are fewer than its path's.
LANES_KEY = "shrinkc_lanes"


def depthwise_lanes(c: int, lanes: int) -> int:
    """The channel lanes of a depthwise kernel over ``c`` channels: the path's ``lanes``, or
    the largest power-of-two fraction of them (at least 4) that divides ``c``, or, when none
    does, ``lanes`` with the channels padded. Fewer lanes beat padding: the input's padded
    channels are a per-lane condition in every load, which LLVM does not vectorize (the 7×1
    depthwise of a CP-decomposed ResNet-18 stem, 56 channels at 32×64 px: 0.99 ms padded to
    64 as 16 lanes, 0.044 ms as 8 lanes; per-kernel profile in the model, 2 threads)."""
    n = lanes
    while n >= 4:
        if c % n == 0:
            return n
        n //= 2
    return lanes


def depthwise_attrs(rule: str, path: str, lanes: int, path_lanes: int) -> dict[str, Any]:
    """``_attrs``, and ``LANES_KEY`` when ``lanes`` differ from the path's."""
    attrs = _attrs(rule, path)
    if lanes != path_lanes:
        attrs[LANES_KEY] = lanes
    return attrs


def _conv_te(x: te.Tensor, wp: te.Tensor, strides: Any, padding: Any, dilation: Any,
             path: str) -> Any:
    n, ih, iw, ic = (int(d) for d in x.shape)
    ob, kh, kw, ib, lanes, _ = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    extra_c = ib * _REDUCE - ic  # input channels padded to a multiple of 4: zero weights
    if pt or pl or pb or pr or extra_c:
        x = topi.nn.pad(x, [0, pt, pl, 0], [0, pb, pr, extra_c], pad_value=0, name="pad")
        ic += extra_c
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, ic), "rc")
    return te.compute(
        (n, oh, ow, ob * lanes),
        lambda b, y, xx, o: te.sum(
            x[b, y * sh + rh * dh, xx * sw + rw * dw, rc].astype("int32")
            * wp[o // lanes, rh, rw, rc // _REDUCE, o % lanes, rc % _REDUCE].astype("int32"),
            axis=[rh, rw, rc]),
        name="conv2d_nhwc_int8", attrs=_attrs(SCHEDULE_RULE, path))


def _depthwise_te(x: te.Tensor, w: te.Tensor, strides: Any, padding: Any, dilation: Any,
                  path: str, lanes: int) -> Any:
    """NHWC depthwise u8 × i8 → int32, the weight ``[KH, KW, C]`` (channels innermost, so
    the channel lanes of one tap are one vector load); ``C`` may exceed the input's
    channels (zero weights: the input is padded with zeros, the extra outputs sliced)."""
    n, ih, iw, ic = (int(d) for d in x.shape)
    kh, kw, c = (int(d) for d in w.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    if pt or pl or pb or pr or c != ic:
        x = topi.nn.pad(x, [0, pt, pl, 0], [0, pb, pr, c - ic], pad_value=0, name="pad")
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        (n, oh, ow, c),
        lambda b, y, xx, ch: te.sum(
            x[b, y * sh + rh * dh, xx * sw + rw * dw, ch].astype("int32")
            * w[rh, rw, ch].astype("int32"), axis=[rh, rw]),
        name="dwconv2d_nhwc_int8",
        attrs=depthwise_attrs(DEPTHWISE_RULE, path, lanes, PATHS[path][1]))


def _matmul_te(x: te.Tensor, wp: te.Tensor, path: str) -> Any:
    *batch, _, k = (int(d) for d in x.shape)
    nb, _, lanes, _ = (int(d) for d in wp.shape)
    rk = te.reduce_axis((0, k), "rk")
    return te.compute(
        (*batch, int(x.shape[-2]), nb * lanes),
        lambda *i: te.sum(
            x[(*i[:-1], rk)].astype("int32")
            * wp[i[-1] // lanes, rk // _REDUCE, i[-1] % lanes, rk % _REDUCE].astype("int32"),
            axis=[rk]),
        name="matmul_int8", attrs=_attrs(SCHEDULE_RULE, path))


# ---------------------------------------------------------------------------- the Relax pass
def bound_constant(mutator: Any, expr: Any) -> np.ndarray | None:
    """The numpy value of ``expr``: a constant, or a ``permute_dims`` of one (what the layout
    conversion makes of a weight); else None."""
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if bound is None:
            return None
        expr = bound
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    if (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.permute_dims"):
        inner = bound_constant(mutator, expr.args[0])
        if inner is None:
            return None
        axes = expr.attrs.axes
        return np.transpose(inner, [int(a) for a in axes] if axes is not None else None)
    return None


def expr_dtype(expr: Any) -> str:
    return str(expr.ty.dtype)


def expr_shape(expr: Any) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def nhwc_conv_kind(call: Any) -> tuple[str | None, str]:
    """Which packed kernel an NHWC / OHWI ``conv2d`` call can use: ``"dense"`` (groups 1),
    ``"depthwise"`` (one input channel per group, no channel multiplier), or None and why
    not."""
    at = call.attrs
    if (str(at.data_layout), str(at.kernel_layout), str(at.out_layout)) != (
            "NHWC", "OHWI", "NHWC"):
        return None, f"layout {at.data_layout}/{at.kernel_layout} (NHWC/OHWI needed)"
    groups = int(at.groups)
    if groups == 1:
        return "dense", ""
    o, _, _, i = expr_shape(call.args[1])
    if i == 1 and o == groups == expr_shape(call.args[0])[3]:
        return "depthwise", ""
    return None, f"groups={groups} (grouped, or a depthwise channel multiplier)"


def depthwise_weight(w: np.ndarray, lanes: int) -> tuple[np.ndarray, int, int]:
    """An OHWI depthwise weight ``[C, KH, KW, 1]`` as the kernels' ``[KH, KW, C + pad]``,
    the lanes its kernel uses (``depthwise_lanes``) and ``pad``, the zero-weight channels
    added to reach a multiple of them (their outputs are sliced off)."""
    c = w.shape[0]
    lanes = depthwise_lanes(c, lanes)
    pad = -c % lanes
    wk = np.ascontiguousarray(np.pad(w[..., 0], [(0, pad), (0, 0), (0, 0)]).transpose(1, 2, 0))
    return wk, lanes, pad


@relax.expr_functor.mutator
class _Int8KernelRewriter(relax.PyExprMutator):
    def __init__(self, mod: Any, path: str):
        super().__init__(mod)
        self.path = path
        self.intrin, self.lanes, self.wmax = PATHS[path]
        self.rewritten = 0

    def _skip(self, call: Any, why: str) -> None:
        log.debug("int8 %s kernel not used for %s: %s", self.path, call.op.name, why)

    def _weight(self, call: Any, w_arg: Any, dot: bool = True) -> np.ndarray | None:
        """The constant int8 weight; ``dot``: for a dot-product kernel (the AVX2 one
        saturates beyond ±64)."""
        w = bound_constant(self, w_arg)
        if w is None:
            self._skip(call, "the weight is not a constant (keep_params?)")
            return None
        if w.dtype != np.int8:
            self._skip(call, f"weight dtype {w.dtype}")
            return None
        if dot and np.abs(w.astype(np.int32)).max(initial=0) > self.wmax:
            self._skip(call, f"weights beyond ±{self.wmax} would saturate vpmaddubsw's int16 "
                             f"pair sums (quantize with reduce_range=true)")
            return None
        return w

    def _int_operands(self, call: Any) -> bool:
        if expr_dtype(call) != "int32" or expr_dtype(call.args[1]) != "int8":
            return False
        if expr_dtype(call.args[0]) != "uint8":
            self._skip(call, f"activations are {expr_dtype(call.args[0])} (u8 needed)")
            return False
        return True

    def visit_call_(self, op: Any) -> Any:
        call = super().visit_call_(op)
        if not isinstance(call, relax.Call) or not isinstance(call.ty, relax.TensorType):
            return call
        name = getattr(call.op, "name", "")
        if name == "relax.nn.conv2d" and self._int_operands(call):
            return self._conv(call)
        if name == "relax.matmul" and self._int_operands(call):
            return self._matmul(call)
        return call

    def _conv(self, call: Any) -> Any:
        at = call.attrs
        kind, why = nhwc_conv_kind(call)
        if kind is None:
            self._skip(call, why)
            return call
        if kind == "depthwise":
            return self._depthwise(call)
        o, _, _, i = expr_shape(call.args[1])
        w = self._weight(call, call.args[1])
        if w is None:
            return call
        # channel counts that are not multiples of the lanes / 4 (a 3-channel stem, pruned
        # layers) are padded with zero weights: the padded inputs add nothing, the padded
        # outputs are sliced off
        o_pad, i_pad = -o % self.lanes, -i % _REDUCE
        if o_pad or i_pad:
            w = np.pad(w, [(0, o_pad), (0, 0), (0, 0), (0, i_pad)])
            log.debug("int8 %s kernel for conv2d: channels %d→%d out, %d→%d in (zero weights)",
                      self.path, o, o + o_pad, i, i + i_pad)
        wp = relax.const(pack_conv_weight(w, self.lanes), "int8")
        self.rewritten += 1
        y = self.builder_.call_te(_conv_te, call.args[0], wp, at.strides, at.padding,
                                  at.dilation, path=self.path, primfunc_name_hint="conv2d_int8")
        return slice_channels(self.builder_, y, o, o_pad)

    def _depthwise(self, call: Any) -> Any:
        at = call.attrs
        w = self._weight(call, call.args[1], dot=False)
        if w is None:
            return call
        wk, lanes, pad = depthwise_weight(w, self.lanes)
        self.rewritten += 1
        y = self.builder_.call_te(_depthwise_te, call.args[0], relax.const(wk, "int8"),
                                  at.strides, at.padding, at.dilation, path=self.path,
                                  lanes=lanes, primfunc_name_hint="dwconv2d_int8")
        return slice_channels(self.builder_, y, w.shape[0], pad)

    def _matmul(self, call: Any) -> Any:
        w_shape = expr_shape(call.args[1])
        if len(w_shape) != 2 or len(expr_shape(call.args[0])) < 2:
            self._skip(call, "not a matmul with a 2-D weight")
            return call
        k, n = w_shape
        if k % _REDUCE:
            self._skip(call, f"K={k} (a multiple of {_REDUCE} needed)")
            return call
        w = self._weight(call, call.args[1])
        if w is None:
            return call
        n_pad = -n % self.lanes  # output columns padded with zero weights, sliced off
        if n_pad:
            w = np.pad(w, [(0, 0), (0, n_pad)])
        wp = relax.const(pack_matmul_weight(w, self.lanes), "int8")
        self.rewritten += 1
        y = self.builder_.call_te(_matmul_te, call.args[0], wp, path=self.path,
                                  primfunc_name_hint="matmul_int8")
        return slice_channels(self.builder_, y, n, n_pad)


@tvm.transform.module_pass(opt_level=0, name="shrinkc.Int8Kernels")
class Int8Kernels:
    """Integer conv2d / matmul → the packed dot-product kernels of the current target's
    int8 path (``targets.int8_isa``); a no-op on targets without one."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        target = tvm.target.Target.current()
        path = int8_isa(target) if target is not None else None
        if path is None:
            return mod
        register_intrinsics()
        rewriter = _Int8KernelRewriter(mod, path)
        mod = rewrite_functions(mod, rewriter)
        if rewriter.rewritten:
            log.debug("int8 %s kernels: %d conv2d / matmul", path, rewriter.rewritten)
        return mod


# ---------------------------------------------------------------------------- the schedule
#: Kernel rules of other modules (``register_kernel_rule``): rule → schedule function.
_REGISTERED: dict[str, Any] = {}


def register_kernel_rule(rule: str, schedule: Any) -> None:
    """A kernel block annotation ``schedule_rule = rule`` of another module, scheduled by
    ``schedule(sch, block, tile=None, blocks=None)`` (None: sampled, for tuning) in
    untuned builds (``default_schedule``) and by MetaSchedule's ``ApplyCustomRule``."""
    _REGISTERED[rule] = schedule
    tvm.register_global_func(f"s_tir.meta_schedule.cpu.{rule}",
                             lambda sch, block: [schedule(sch, block)], override=True)


def _kernel_blocks(sch: Any) -> list[Any]:
    """The blocks of ``sch``'s ``main`` made by ``_conv_te`` / ``_matmul_te`` (or with a
    registered rule)."""
    out = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        ann = sch.get(block).annotations.get("schedule_rule")
        if ann is not None and (str(ann) in KERNEL_RULES or str(ann) in _REGISTERED):
            out.append(block)
    return out


def _path_of(sch: Any, block: Any) -> str:
    """The int8 path a kernel block's weight was packed for (its annotation)."""
    return str(sch.get(block).annotations[PATH_KEY])


def channel_blocks(sch: Any, n_vectors: int, blocks: int | None) -> Any:
    """Output-channel vectors per register tile for ``n_vectors`` of them: the largest of
    ``_BLOCKS`` dividing them up to ``blocks``, or sampled among those when ``blocks`` is
    None (tuning)."""
    choices = [q for q in _BLOCKS if n_vectors % q == 0]
    if blocks is None:
        return sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices))
    return max(c for c in choices if c <= blocks)


def split_tile(sch: Any, loop: Any, tile: int | None) -> tuple[Any, Any]:
    """``loop`` split into (outer, a register tile of output pixels): the largest divisor
    of its extent up to ``tile``, or sampled (at most 8) when ``tile`` is None (tuning)."""
    extent = int(sch.get(loop).extent)
    if tile is None:
        factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=_MAX_TILE)
    else:
        tile = max(d for d in range(1, min(tile, extent) + 1) if extent % d == 0)
        factors = [extent // tile, tile]
    return sch.split(loop, factors)


def parallel_pads(sch: Any, block: Any, inline: bool = False) -> None:
    """The kernel's zero padding. ``inline`` (the depthwise kernel, one multiply-add per
    load): computed in the kernel's loads, a border test per tap; else (the dot kernels,
    where each load feeds a tile of channel vectors) at the root, rows parallel, channels
    in vectors of 16 bytes.

    Measured (Zen 5, 2 threads, the stride-2 depthwise 3×3 of int8 MobileNetV2 at 224 px:
    96 channels, 112 → 56 px): the pad as one vector per channel row, as before, 410 µs —
    LLVM scalarized the 96-byte vectors into byte extracts and inserts; in vectors of 16,
    81 µs; inlined, 49 µs (the kernel alone on unpadded input: 28 µs). Whole model: 2.17 →
    1.41 ms. Inlined into the dot kernels it was 2× (MobileNetV2) to 180× (ResNet-18)
    slower."""
    for producer in sch.get_producers(block):
        if not sch.get(producer).name_hint.startswith("pad"):
            continue
        if inline:
            try:
                sch.compute_inline(producer)
                continue
            except (RuntimeError, ValueError):
                pass
        *rows, ch = sch.get_loops(producer)
        sch.parallel(sch.fuse(*rows[:2]) if len(rows) > 1 else rows[0])
        n = int(sch.get(ch).extent)
        if n % _PAD_VECTOR == 0:
            ch = sch.split(ch, [None, _PAD_VECTOR])[1]
        sch.vectorize(ch)


def _weight_larger(sch: Any, block: Any) -> bool:
    """Whether a kernel block's weight (its second operand) has more bytes than its input
    (the first)."""
    def nbytes(region: Any) -> int:
        buf = region.source
        return int(np.prod([int(d) for d in buf.shape])) * buf.dtype.bits // 8

    data, weight = sch.get(block).reads[:2]
    return nbytes(weight) > nbytes(data)


def schedule_dot(sch: Any, block: Any, tile: int | None = None, blocks: int | None = None,
                 epilogue: bool = True) -> Any:
    """Schedule one packed kernel block: output lanes by ``L``, the channel reduction by 4,
    tensorized with the path's intrinsic; a register tile of ``tile`` output pixels (conv:
    along W; matmul: rows) × ``blocks`` vectors of ``L`` output channels: each weight
    vector is loaded once per tile's pixels and each input broadcast once per tile's
    channel vectors (``None``: sampled, for tuning); outer loops parallel; the epilogue
    (requantize) computed per tile, vectorized. Returns ``sch``.

    Measured (untuned ResNet-18 int8, 224 px, 2 threads, Zen 5): tiles of 4 × 1 8.55 ms,
    8 × 1 3.98, 8 × 2 2.81, 8 × 4 3.85 (32 accumulators: every vector register)."""
    register_intrinsics()
    intrin, lanes = _intrin_lanes(_path_of(sch, block))
    iters = sch.get(block).iter_vars
    n_red = sum(1 for v in iters if int(v.iter_type) == 2)  # CommReduce
    loops = sch.get_loops(block)
    spatial, reduce = loops[:len(loops) - n_red], loops[len(loops) - n_red:]
    *outer, rows, out_ch = spatial
    if intrin is None and outer and int(sch.get(rows).extent) < _MAX_TILE:
        # fp32 rows shorter than a tile (a convolution's last 2×2 or 4×4 pixels): the tile
        # takes pixels of the next rows too, so each weight vector is loaded once per tile
        # instead of once per row (measured: ResNet-18 at 64 px, whose 512-channel 2×2
        # convolutions are bound by reading their 9.4 MB weight, 222 → 205 µs each). Not
        # with a tensor intrinsic: the fused pixel index cannot be blockized for it.
        rows = sch.fuse(outer.pop(), rows)
    *r_outer, r_ch = reduce
    o_o, o_i = sch.split(out_ch, [None, lanes])
    if intrin is None:  # fp32: one FMA per input channel, the lanes vectorized
        c_o, c_i = r_ch, None
    else:
        c_o, c_i = sch.split(r_ch, [None, _REDUCE])
    r_o, r_i = split_tile(sch, rows, tile)
    o_oo, o_oi = sch.split(o_o, [None, channel_blocks(sch, int(sch.get(o_o).extent), blocks)])
    # the operand that is larger outermost, so that consecutive iterations of a thread
    # reuse the other one's block from its cache
    par_loops = [o_oo, *outer, r_o] if _weight_larger(sch, block) else [*outer, r_o, o_oo]
    sch.reorder(*par_loops, *r_outer, c_o, r_i, o_oi, o_i, *([c_i] if c_i else []))
    par = sch.fuse(*par_loops)
    sch.parallel(par)  # before the tensorization, which makes the block opaque to the check
    if epilogue:
        _schedule_epilogue(sch, block, par)
    parallel_pads(sch, block)
    if intrin is None:
        sch.vectorize(o_i)  # while the block still has its init (a reduction block)
    sch.unroll(r_i)  # the tile's pixels reuse the weight vector in registers
    sch.unroll(o_oi)
    init = sch.decompose_reduction(block, r_outer[0] if r_outer else c_o)
    init_loop = sch.get_loops(init)[-1]
    if sch.get(init_loop).kind != tvm.tirx.ForKind.VECTORIZED:
        sch.vectorize(init_loop)
    if intrin is not None:
        sch.tensorize(o_i, intrin)
    return sch


def schedule_depthwise(sch: Any, block: Any, tile: int | None = None) -> Any:
    """Schedule one depthwise kernel block: channels in vectors of ``L`` int32 lanes, a
    tile of ``tile`` output pixels along W (``None``: sampled) accumulating in registers
    over the unrolled taps, outer loops parallel, the epilogue computed per tile."""
    annotations = sch.get(block).annotations
    lanes = (int(annotations[LANES_KEY]) if LANES_KEY in annotations
             else _intrin_lanes(_path_of(sch, block))[1])
    b, y, xx, ch, rh, rw = sch.get_loops(block)
    c_o, c_i = sch.split(ch, [None, lanes])
    x_o, x_i = split_tile(sch, xx, tile)
    sch.reorder(b, y, x_o, c_o, rh, rw, x_i, c_i)
    par = sch.fuse(b, y, x_o, c_o)
    sch.parallel(par)
    _schedule_epilogue(sch, block, par)
    parallel_pads(sch, block, inline=True)
    sch.vectorize(c_i)  # while the block still has its init (a reduction block)
    sch.unroll(rh)
    sch.unroll(rw)
    sch.unroll(x_i)
    init = sch.decompose_reduction(block, rh)
    init_loop = sch.get_loops(init)[-1]
    if sch.get(init_loop).kind != tvm.tirx.ForKind.VECTORIZED:
        sch.vectorize(init_loop)
    return sch


def schedule_pool(sch: Any, block: Any) -> Any:
    """Schedule an element-wise window block over NHWC (``nan_pool``'s max pool): channels
    in vectors of 16, rows parallel, the padding computed in the loads, the epilogue per
    row."""
    b, y, xx, ch = sch.get_loops(block)
    if int(sch.get(ch).extent) % 16 == 0:
        ch = sch.split(ch, [None, 16])[1]
    par = sch.fuse(b, y)
    sch.parallel(par)
    _schedule_epilogue(sch, block, par)
    parallel_pads(sch, block, inline=True)
    sch.vectorize(ch)
    return sch


def _schedule_block(sch: Any, block: Any, tile: int, blocks: int | None) -> Any:
    """``schedule_dot``, ``schedule_depthwise`` or ``schedule_pool``, by the block's rule;
    ``blocks`` None: the path's default."""
    rule = str(sch.get(block).annotations["schedule_rule"])
    if rule in _REGISTERED:
        return _REGISTERED[rule](sch, block, tile, blocks or _DEFAULT_BLOCKS[_path_of(sch, block)])
    if rule == POOL_RULE:
        return schedule_pool(sch, block)
    if rule in _DEPTHWISE_RULES:
        return schedule_depthwise(sch, block, tile)
    return schedule_dot(sch, block, tile, blocks or _DEFAULT_BLOCKS[_path_of(sch, block)])


def _schedule_epilogue(sch: Any, block: Any, loop: Any) -> None:
    """The elementwise chain after the kernel, inlined into its last block, computed at
    ``loop`` and vectorized; left at the root (parallel) where it cannot move."""
    chain = []
    cur = block
    while True:
        consumers = sch.get_consumers(cur)
        if len(consumers) != 1:
            break
        cur = consumers[0]
        chain.append(cur)
    if not chain:
        return
    for b in chain[:-1]:
        try:
            sch.compute_inline(b)
        except (RuntimeError, ValueError):
            break
    last = chain[-1]
    _inline_other_inputs(sch, last, sch.get(block).name_hint)
    if not _reads_pointwise(sch, last, sch.get(block).writes[0].source):
        parallel_vectorize(sch, last)
        return
    try:
        sch.reverse_compute_at(last, loop, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(last)[-1])
    except (RuntimeError, ValueError):
        parallel_vectorize(sch, last)


def _reads_pointwise(sch: Any, block: Any, buffer: Any) -> bool:
    """Whether ``block`` reads ``buffer`` only at its own iteration point (element-wise,
    or a slice from 0). A transpose or reshape in the epilogue (a flatten before a
    classifier) is not, and moving it into the kernel's tile loop is wrong: TVM's
    ``reverse_compute_at`` accepted a pool → transpose → reshape and gave each tile a
    wrong slice of the output (measured: LeNet-5's second pool, off by 0.03)."""
    blk = sch.get(block)
    point = [iv.var for iv in blk.iter_vars]
    for region in blk.reads:
        if not region.source.same_as(buffer):
            continue
        ranges = list(region.region)
        if len(ranges) != len(point):
            return False
        for r, v in zip(ranges, point):
            if not (r.min.same_as(v) and int(getattr(r.extent, "value", -1)) == 1):
                return False
    return True


def _inline_other_inputs(sch: Any, last: Any, kernel: str) -> None:
    """The elementwise producers of the epilogue's other inputs (a residual's dequantize:
    cast, subtract the zero point, scale) inlined into it, so the epilogue reads the input
    itself per tile. Left at the root they were serial loops over whole intermediate
    tensors (measured, Zen 5: the projection conv 144 → 24 of an int8 MobileNetV2 block
    with its residual add, 56 px, 174 → 58 µs)."""
    todo = list(sch.get_producers(last))
    while todo:
        producer = todo.pop()
        name = sch.get(producer).name_hint
        if name == kernel or name.startswith("pad"):
            continue
        inputs = sch.get_producers(producer)
        try:
            sch.compute_inline(producer)
        except (RuntimeError, ValueError):
            continue
        todo.extend(inputs)


def parallel_vectorize(sch: Any, block: Any) -> None:
    """``block`` at the root: its last loop vectorized (split into vectors of 16 when it is
    longer than 64: a flattened epilogue's 2,048-lane vector stalled LLVM for minutes), the
    others fused and parallel."""
    *outer, inner = sch.get_loops(block)
    try:
        n = int(sch.get(inner).extent)
        if n > 64:
            if n % _PAD_VECTOR:
                outer, inner = [*outer, inner], None
            else:
                o, inner = sch.split(inner, [None, _PAD_VECTOR])
                outer.append(o)
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        if inner is not None:
            sch.vectorize(inner)
    except (RuntimeError, ValueError):
        pass


def _meta_schedule_rule(sch: Any, block: Any) -> list[Any]:
    """MetaSchedule's ``ApplyCustomRule`` for the kernel blocks: ``schedule_dot`` with the
    tile sampled."""
    return [schedule_dot(sch, block)]


def _meta_schedule_depthwise_rule(sch: Any, block: Any) -> list[Any]:
    """The same for the depthwise kernels: ``schedule_depthwise``, tile sampled."""
    return [schedule_depthwise(sch, block)]


def _meta_schedule_pool_rule(sch: Any, block: Any) -> list[Any]:
    """The NaN-keeping max pool: ``schedule_pool`` (nothing to sample)."""
    return [schedule_pool(sch, block)]


for _rule, _fn in ((SCHEDULE_RULE, _meta_schedule_rule), (F32_RULE, _meta_schedule_rule),
                   (DEPTHWISE_RULE, _meta_schedule_depthwise_rule),
                   (F32_DEPTHWISE_RULE, _meta_schedule_depthwise_rule),
                   (POOL_RULE, _meta_schedule_pool_rule)):
    tvm.register_global_func(f"s_tir.meta_schedule.cpu.{_rule}", _fn)


@functools.cache
def _rule_classes() -> type:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.schedule_rule import PyScheduleRule

    @derived_object
    class SkipKernelFuncs(PyScheduleRule):
        """``inner`` (a generic MetaSchedule rule) except in functions with a packed kernel:
        ``schedule_dot`` / ``schedule_depthwise`` schedule them whole. Measured: with
        ``ParallelizeVectorizeUnroll`` the root annotations made
        ``RewriteParallelVectorizeUnroll`` reject every candidate (it cannot rework loops
        that are parallel or hold a tensorized block), and ``RandomComputeLocation``
        crashed the process (a segfault in ``SampleComputeLocation``, int8 ResNet-18)."""

        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def _initialize_with_tune_context(self, context: Any) -> None:
            self.inner._initialize_with_tune_context(context)  # noqa: SLF001

        def apply(self, sch: Any, block: Any) -> list[Any]:
            if _kernel_blocks(sch):
                return [sch]
            return list(self.inner.apply(sch, block))

        def clone(self) -> Any:
            return SkipKernelFuncs(self.inner.clone())

    return SkipKernelFuncs


def schedule_rules() -> list[Any]:
    """MetaSchedule's generic LLVM rules (``ApplyCustomRule`` first: the kernels get
    ``schedule_dot`` / ``schedule_depthwise``), every other rule left out of kernel
    functions."""
    from tvm.s_tir import meta_schedule as ms

    register_intrinsics()
    rules = list(ms.ScheduleRule.create("llvm"))
    skip = _rule_classes()
    return [r if type(r).__name__ == "ApplyCustomRule" else skip(r) for r in rules]


def default_schedule(func: Any, tile: int = 8, blocks: int | None = None) -> Any | None:
    """The ``s_tir.Schedule`` of ``func`` (a PrimFunc with packed kernel blocks) with default
    tiles (``tile`` pixels × ``blocks`` channel vectors, default per path), its trace free of
    sampling (tuning seeds its database with it); None when ``func`` has no kernel block or
    its schedule fails (logged; the function stays generic)."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    kernels = _kernel_blocks(sch)
    if not kernels:
        return None
    try:
        for b in kernels:
            _schedule_block(sch, b, tile, blocks)
    except (RuntimeError, ValueError) as e:
        log.debug("int8 kernel schedule failed, generic kernel kept: %s",
                  str(e).strip().splitlines()[-1])
        return None
    return sch


def schedule_func(func: Any, tile: int = 8, blocks: int | None = None) -> Any | None:
    """``func`` scheduled by ``default_schedule`` (marked scheduled), or None."""
    sch = default_schedule(func, tile, blocks)
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="shrinkc.ScheduleInt8Kernels")
class ScheduleInt8Kernels:
    """The default schedule (``schedule_func``) for every not yet scheduled PrimFunc with a
    packed kernel block: what an untuned build, or a tuned one whose database lacks the
    workload, runs."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
                continue
            new = schedule_func(func)
            if new is not None:
                updates[gv] = new
        if not updates:
            return mod
        mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else tvm.IRModule(mod.functions)
        for gv, func in updates.items():
            mod[gv] = func
        return mod


__all__ = ["DEPTHWISE_RULE", "F32_DEPTHWISE_RULE", "bound_constant", "depthwise_weight", "nhwc_conv_kind", "expr_dtype", "expr_shape", "F32_LANES", "F32_RULE", "Int8Kernels", "KERNEL_RULES", "PATHS", "POOL_RULE", "SCHEDULE_RULE", "LANES_KEY", "ScheduleInt8Kernels", "default_schedule", "depthwise_attrs", "depthwise_lanes", "pack_conv_weight",
           "pack_matmul_weight", "channel_blocks", "split_tile", "parallel_pads", "parallel_vectorize", "register_intrinsics",
           "register_kernel_rule", "schedule_depthwise", "schedule_dot", "schedule_pool", "schedule_func",
           "schedule_rules"]
