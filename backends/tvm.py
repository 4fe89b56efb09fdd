"""TVM backend: IR → Relax (one lowering per op) → ``tvm.compile`` for a target → a VM.

``lower(graph)`` builds a Relax ``IRModule`` with ``relax.BlockBuilder``: one function
``main`` whose parameters are the graph inputs (then, with ``keep_params=True``, the
weights, bound separately at run time; otherwise weights are Relax constants). Each IR op
has one entry in ``LOWERINGS`` (keyed by the op table's names); after each node the Relax
type is checked against the IR type, so a wrong lowering fails at the node that made it.
``quantize`` / ``dequantize`` / ``cast`` are lowered to float arithmetic, round, clip and
``astype``, except the QDQ patterns around conv2d / linear / matmul, which ``tvm_int8``
lowers to integer compute (u8/i8 × i8 → int32, then requantize).

``build(graph, target)`` runs Relax's own optimisation (``DecomposeOpsForInference``,
``CanonicalizeBindings`` and the ``zero`` pipeline: ``LegalizeOps``, ``FoldConstant``,
``FuseOps``, ``FuseTIR``) under the target, then ``tvm.compile``. The result, a
``TVMModule``, runs on a ``relax.VirtualMachine`` when the target can run here, and exports
to a shared library (``model.so``), or for a cross-compiled target to ``model.tar`` (the
object files; ``tvm.runtime.load_module`` links it on the device).

Targets are TVM's dict form (TVM 0.27 rejects target strings with options and ignores
``mcpu=native``) or a preset name from ``TARGET_PRESETS``: ``host`` (this CPU, detected with
LLVM's ``llvm_get_system_cpu``), ``x86-avx2``, ``x86-avx512``, ``aarch64`` (cross-compile).
Every resolved target carries ``num-cores``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import ops as irops
from ..ir.graph import Graph, IRError, Node, Value
from ..ir.ops.quant import QRANGES
from ..ir.types import FLOAT_DTYPES, TensorType, to_numpy_dtype

log = logging.getLogger(__name__)

# Imported lazily: ``import tvm`` takes seconds (tvm_ffi imports torch).
tvm: Any = None
relax: Any = None


def _import_tvm() -> float:
    """Import tvm (once); returns the seconds it took (0 when already imported)."""
    global tvm, relax
    if tvm is not None:
        return 0.0
    t0 = time.perf_counter()
    import tvm as _tvm
    from tvm import relax as _relax

    tvm, relax = _tvm, _relax
    return time.perf_counter() - t0


import_tvm = _import_tvm


class TVMBackendError(IRError):
    """Something the TVM backend cannot do with a graph or a target."""


class TargetError(TVMBackendError):
    """An unknown target preset or a malformed target."""


class LoweringError(TVMBackendError):
    """An op with no TVM lowering, or a lowering whose result disagrees with the IR."""


class StaticShapeError(TVMBackendError):
    """A graph whose shapes are not fully static."""


# ============================================================================ dtypes
DTYPE_TO_TVM: dict[str, str] = {
    "f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16", "i8": "int8",
    "u8": "uint8", "i16": "int16", "i32": "int32", "i64": "int64", "bool": "bool",
}
TVM_TO_DTYPE: dict[str, str] = {v: k for k, v in DTYPE_TO_TVM.items()}


# ============================================================================ targets
def _host_triple() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform.startswith("linux"):
        return f"{arch}-linux-gnu"
    if sys.platform == "darwin":
        return f"{arch}-apple-darwin"
    _import_tvm()
    return str(tvm.target.codegen.llvm_get_system_triple())


def host_cores() -> int:
    """Physical cores of this machine (what TVM's thread pool should use)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is a dependency
        n = None
    return int(n or os.cpu_count() or 1)


def host_target() -> dict[str, Any]:
    """This machine as a TVM target dict, with the CPU detected by LLVM (``mcpu=native`` is
    ignored by TVM 0.27)."""
    _import_tvm()
    cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    target: dict[str, Any] = {"kind": "llvm", "mtriple": _host_triple(), "num-cores": host_cores()}
    if cpu and cpu != "generic":
        target["mcpu"] = cpu
    return target


#: Named targets. ``host`` is filled in by ``host_target()`` when resolved.
TARGET_PRESETS: dict[str, dict[str, Any] | None] = {
    "host": None,
    "x86-avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
    "x86-avx512": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"},
    "aarch64": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                "num-cores": 4},
}


def tuning_module() -> Any | None:
    """``shrinkc.backends.tvm_tuning`` (targets, tuning database, MetaSchedule) if installed,
    else None. When present it owns target resolution, so tuning and compiling agree on the
    target (and so on the tuning database key)."""
    try:
        from . import tvm_tuning  # type: ignore[attr-defined]
    except ImportError as e:
        if e.name and e.name.endswith("tvm_tuning"):
            return None
        raise
    return tvm_tuning


def target_presets() -> list[str]:
    """Names accepted as ``target=``."""
    tt = tuning_module()
    return list(tt.TARGET_PRESETS) if tt is not None else list(TARGET_PRESETS)


def _target_dict(target: Any) -> dict[str, Any]:
    """The user-level attributes of a ``tvm.target.Target`` (what TVM derives from mcpu and
    mtriple — keys, tag, ``feature.*`` — is left out)."""
    d = json.loads(str(target))
    return {k: v for k, v in d.items() if k not in ("tag", "keys") and not k.startswith("feature.")}


def resolve_target(target: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A target dict from a preset name, a dict (or its JSON text) or ``None`` (= ``host``);
    always with ``mtriple`` and ``num-cores``. Raises ``TargetError`` naming an unknown preset
    or an invalid target."""
    _import_tvm()
    if target is None:
        target = "host"
    if isinstance(target, str):
        name = target.strip()
        if name.startswith("{"):
            try:
                target = json.loads(name)
            except ValueError as e:
                raise TargetError(f"target {name!r} is not valid JSON: {e}") from None
        elif name not in target_presets():
            hint = (" (TVM 0.27 rejects target strings with options: give a dict such as "
                    "{\"kind\": \"llvm\", \"mcpu\": \"znver4\", \"num-cores\": 2})"
                    if " " in name or "-m" in name else "")
            raise TargetError(f"unknown target preset {name!r}; presets: "
                              f"{', '.join(target_presets())}, or a TVM target dict{hint}")
    tt = tuning_module()
    try:
        if tt is not None:
            out = _target_dict(tt.resolve_target(target))
        elif isinstance(target, str):
            preset = TARGET_PRESETS[target.strip()]
            out = host_target() if preset is None else dict(preset)
        elif isinstance(target, Mapping):
            out = dict(target)
        elif isinstance(target, tvm.target.Target):
            out = _target_dict(target)
        else:
            raise TargetError(f"target must be a preset name or a dict, got "
                              f"{type(target).__name__}")
    except (ValueError, TypeError, RuntimeError) as e:  # TVM raises RuntimeError kinds
        raise TargetError(f"invalid target {target!r}: {str(e).strip().splitlines()[-1]}"
                          ) from None
    if out.get("kind") != "llvm":
        raise TargetError(f"target {out}: only CPU targets (kind 'llvm') are supported")
    if out.get("mcpu") == "native":
        raise TargetError("mcpu='native' is ignored by TVM 0.27: use the 'host' preset, which "
                          "detects this CPU")
    out.setdefault("mtriple", _host_triple())
    out.setdefault("num-cores", host_cores())
    mcpu = out.get("mcpu")
    if mcpu and not tvm.target.codegen.llvm_is_valid_cpu(str(mcpu), str(out["mtriple"])):
        raise TargetError(f"target {out}: LLVM does not know mcpu {mcpu!r} for "
                          f"{out['mtriple']}")
    try:
        tvm.target.Target(out)
    except Exception as e:  # TVM's own validation, made one line
        raise TargetError(f"invalid target {out}: {str(e).strip().splitlines()[-1]}") from None
    return out


def target_runs_here(target: Mapping[str, Any]) -> bool:
    """Whether code for ``target`` can run on this machine (same arch, CPU features present)."""
    _import_tvm()
    triple = str(target.get("mtriple", _host_triple()))
    if triple.split("-")[0] != _host_triple().split("-")[0]:
        return False
    mcpu = target.get("mcpu")
    if not mcpu:
        return True
    host_cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    if mcpu == host_cpu:
        return True
    try:  # the target CPU's features must all be present on the host CPU
        want = set(tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(dict(target))))
        have = set(tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(host_target())))
    except Exception:  # pragma: no cover - older LLVM without the feature query
        return False
    return want <= have


# ============================================================================ lowering
class _Lowerer:
    """State while lowering one graph: the BlockBuilder and the Relax expr of each value."""

    def __init__(self, bb: Any):
        self.bb = bb
        self.env: dict[int, Any] = {}
        self.node: Node | None = None

    def emit(self, expr: Any) -> Any:
        return self.bb.emit(expr)

    def const(self, data: Any, dtype: str) -> Any:
        """A Relax constant in IR dtype ``dtype``."""
        arr = np.asarray(data, dtype=to_numpy_dtype(dtype))
        return relax.const(arr, DTYPE_TO_TVM[dtype])

    @staticmethod
    def constant(expr: Any) -> np.ndarray | None:
        """The value of a Relax constant, else None (operands that are weights)."""
        return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        """``reshape``, done here for constants (FoldConstant would compile a kernel each)."""
        c = self.constant(x)
        if c is not None:
            return relax.const(np.ascontiguousarray(c.reshape(shape)), str(c.dtype))
        return self.emit(relax.op.reshape(x, shape))

    def astype(self, x: Any, have: str, want: str) -> Any:
        if have == want:
            return x
        c = self.constant(x)
        if c is not None:
            return self.const(c.astype(to_numpy_dtype(want)), want)
        return self.emit(relax.op.astype(x, DTYPE_TO_TVM[want]))

    def out_type(self, i: int = 0) -> TensorType:
        return self.node.outputs[i].type

    def in_type(self, i: int) -> TensorType:
        return self.node.inputs[i].type


Lowering = Callable[[_Lowerer, Node, list], Any]
#: One lowering per IR op, keyed by the op table's names.
LOWERINGS: dict[str, Lowering] = {}


def lowers(*names: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            LOWERINGS[n] = fn
        return fn

    return deco


def _astype(lw: _Lowerer, x: Any, have: str, want: str) -> Any:
    return lw.astype(x, have, want)


def _bias_add(lw: _Lowerer, y: Any, bias: Any, rank: int) -> Any:
    return relax.op.add(y, lw.reshape(bias, [1, -1] + [1] * (rank - 2)))


# ---------------------------------------------------------------------------- nn
@lowers("conv2d")
def _conv2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    y = lw.emit(relax.op.nn.conv2d(
        a[0], a[1], strides=at["stride"], padding=at["padding"], dilation=at["dilation"],
        groups=at["groups"], data_layout="NCHW", kernel_layout="OIHW",
        out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return _bias_add(lw, y, a[2], 4) if len(a) > 2 else y


@lowers("circulant_matmul")
def _circulant_matmul(lw: _Lowerer, node: Node, a: list) -> Any:
    """Exact, without an FFT (Relax has none): a convolution over the circularly extended
    input, ``concat(x[..., 1:], x) * reverse(c)`` (see ir/ops/structured.py)."""
    p, q, k = lw.in_type(1).shape
    xt = lw.in_type(0)
    n = xt.numel // (q * k)
    x = lw.reshape(a[0], (n, q, 1, k))
    tail = lw.emit(relax.op.strided_slice(x, axes=[3], begin=[1], end=[k], assume_inbound=True))
    xe = lw.emit(relax.op.concat([tail, x], axis=3))
    c = lw.constant(a[1])
    if c is not None:
        w = lw.const(np.ascontiguousarray(c[..., ::-1].reshape(p, q, 1, k)), lw.in_type(1).dtype)
    else:
        w = lw.emit(relax.op.flip(a[1], axis=2))
        w = lw.reshape(w, (p, q, 1, k))
    y = lw.emit(relax.op.nn.conv2d(xe, w, data_layout="NCHW", kernel_layout="OIHW",
                                   out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return relax.op.reshape(y, lw.out_type().shape)


@lowers("conv_transpose2d")
def _conv_transpose2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    y = lw.emit(relax.op.nn.conv2d_transpose(
        a[0], a[1], strides=at["stride"], padding=at["padding"],
        output_padding=at["output_padding"], dilation=at["dilation"], groups=at["groups"],
        data_layout="NCHW", kernel_layout="IOHW", out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return _bias_add(lw, y, a[2], 4) if len(a) > 2 else y


@lowers("linear")
def _linear(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.linear(a[0], a[1], a[2] if len(a) > 2 else None)


@lowers("matmul")
def _matmul(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.matmul(a[0], a[1])


@lowers("batch_norm")
def _batch_norm(lw: _Lowerer, node: Node, a: list) -> Any:
    # x * scale + shift with scale = w / sqrt(var + eps); FoldConstant folds scale and shift
    # when the statistics are constants, FuseOps fuses the rest into the producer (conv).
    x, w, b, mean, var = a
    dt = lw.in_type(4).dtype
    shape = [1, -1] + [1] * (lw.in_type(0).rank - 2)
    stats = [lw.constant(v) for v in a[1:]]
    if all(c is not None for c in stats):  # the usual case: fold here, in float64
        cw, cb, cm, cv = (c.astype(np.float64) for c in stats)
        scale = cw / np.sqrt(cv + node.attrs["eps"])
        shift = cb - cm * scale
        return relax.op.add(relax.op.multiply(x, lw.const(scale.reshape(shape), dt)),
                            lw.const(shift.reshape(shape), dt))
    scale = lw.emit(relax.op.multiply(
        w, relax.op.rsqrt(relax.op.add(var, lw.const(node.attrs["eps"], dt)))))
    shift = lw.emit(relax.op.subtract(b, relax.op.multiply(mean, scale)))
    return relax.op.add(relax.op.multiply(x, lw.reshape(scale, shape)), lw.reshape(shift, shape))


def _norm_affine(lw: _Lowerer, a: list, shape: Sequence[int], dtype: str) -> tuple[Any, Any]:
    gamma = a[1] if len(a) > 1 else lw.const(np.ones(shape), dtype)
    beta = a[2] if len(a) > 2 else lw.const(np.zeros(shape), dtype)
    return gamma, beta


@lowers("layer_norm")
def _layer_norm(lw: _Lowerer, node: Node, a: list) -> Any:
    shape = node.attrs["normalized_shape"]
    gamma, beta = _norm_affine(lw, a, shape, lw.in_type(0).dtype)
    axes = list(range(-len(shape), 0))
    return relax.op.nn.layer_norm(a[0], gamma, beta, axes=axes, epsilon=node.attrs["eps"])


@lowers("group_norm")
def _group_norm(lw: _Lowerer, node: Node, a: list) -> Any:
    t = lw.in_type(0)
    gamma, beta = _norm_affine(lw, a, (t.shape[1],), t.dtype)
    return relax.op.nn.group_norm(a[0], gamma, beta, num_groups=node.attrs["num_groups"],
                                  channel_axis=1, axes=list(range(2, t.rank)),
                                  epsilon=node.attrs["eps"])


@lowers("softmax")
def _softmax(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.softmax(a[0], axis=node.attrs["axis"])


@lowers("log_softmax")
def _log_softmax(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.log_softmax(a[0], axis=node.attrs["axis"])


def _pool_padding(lw: _Lowerer, node: Node) -> tuple[tuple[int, int, int, int], bool]:
    """Padding (top, left, bottom, right) and ceil_mode for TVM's pool.

    With ``ceil_mode`` PyTorch drops a last window that would start in the right padding;
    TVM does not. Instead of ceil_mode we pad the bottom/right by just enough to produce the
    IR's output size, and keep ceil_mode off."""
    at = node.attrs
    (ph, pw), (sh, sw) = at["padding"], at["stride"]
    kh, kw = at["kernel"]
    dh, dw = at.get("dilation", (1, 1))
    _, _, h, w = lw.in_type(0).shape
    _, _, oh, ow = lw.out_type().shape
    extra_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    return (ph, pw, ph + extra_h, pw + extra_w), bool(extra_h or extra_w)


@lowers("max_pool2d")
def _max_pool2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, _ = _pool_padding(lw, node)

    def pool(x: Any) -> Any:
        return relax.op.nn.max_pool2d(x, pool_size=at["kernel"], strides=at["stride"],
                                      padding=pad, dilation=at["dilation"], ceil_mode=False,
                                      layout="NCHW")

    return _keeping_nan(lw, a[0], pool)


def _keeping_nan(lw: _Lowerer, x: Any, reduce: Callable[[Any], Any],
                 reduce_max: Callable[[Any], Any] | None = None) -> Any:
    """``reduce(x)`` — a max or min over windows or axes — with NaN wherever it reads one.

    TVM's max / min reductions drop NaN (the combiner is ``acc > x ? acc : x``); the IR
    (PyTorch) gives NaN. The max over the same windows / axes (``reduce_max``; default
    ``reduce``) of the NaN mask (0/1) says which outputs read one; ``sqrt(-that)`` is -0
    or NaN, added to the result. Only element-wise ops and the reduction itself, so the
    NHWC conversion moves through (``where`` would stop it: ConvertLayout has no rule for
    it)."""
    dtype = _dtype_of(x)
    if dtype not in FLOAT_DTYPES:
        return reduce(x)
    return relax.op.add(lw.emit(reduce(x)), _nan_or_zero(lw, relax.op.isnan(x), dtype,
                                                          reduce=reduce_max or reduce))


def _nan_or_zero(lw: _Lowerer, isnan: Any, dtype: str, reduce: Callable[[Any], Any] | None
                 = None) -> Any:
    """-0 where the bool ``isnan`` (reduced by ``reduce``, a max, if given) is false, NaN
    where it is true: what a NaN-propagating result adds."""
    mask = relax.op.astype(isnan, DTYPE_TO_TVM[dtype])
    if reduce is not None:
        mask = lw.emit(reduce(mask))
    return relax.op.sqrt(relax.op.negative(mask))


def _dtype_of(expr: Any) -> str:
    (dtype, _), = _relax_types(expr)
    return next(k for k, v in DTYPE_TO_TVM.items() if v == dtype)


@lowers("avg_pool2d")
def _avg_pool2d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, extended = _pool_padding(lw, node)
    if not (extended and at["count_include_pad"]):
        return relax.op.nn.avg_pool2d(a[0], pool_size=at["kernel"], strides=at["stride"],
                                      padding=pad, ceil_mode=False,
                                      count_include_pad=at["count_include_pad"], layout="NCHW")
    # ceil_mode windows that overhang the symmetric padding: PyTorch divides by the window
    # clipped to the padded input. Sum-pool (avg * k without padding counted) and divide by
    # that count, computed here as a constant.
    kh, kw = at["kernel"]
    summed = lw.emit(relax.op.multiply(
        relax.op.nn.avg_pool2d(a[0], pool_size=at["kernel"], strides=at["stride"],
                               padding=pad, ceil_mode=False, count_include_pad=True,
                               layout="NCHW"),
        lw.const(kh * kw, lw.in_type(0).dtype)))
    _, _, h, w = lw.in_type(0).shape
    _, _, oh, ow = lw.out_type().shape
    (ph, pw), (sh, sw) = at["padding"], at["stride"]

    def counts(n_out: int, size: int, k: int, s: int, p: int) -> np.ndarray:
        start = np.arange(n_out) * s - p
        end = np.minimum(start + k, size + p)
        return (end - start).astype(np.float64)

    div = np.outer(counts(oh, h, kh, sh, ph), counts(ow, w, kw, sw, pw))
    return relax.op.divide(summed, lw.const(div, lw.in_type(0).dtype))


@lowers("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.adaptive_avg_pool2d(a[0], output_size=node.attrs["output_size"],
                                           layout="NCHW")


@lowers("embedding")
def _embedding(lw: _Lowerer, node: Node, a: list) -> Any:
    idx = _astype(lw, a[0], lw.in_type(0).dtype, "i32")
    return relax.op.take(a[1], idx, axis=0)


# ---------------------------------------------------------------------------- elementwise
def _simple(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        fn = relax.op
        for part in fn_name.split("."):
            fn = getattr(fn, part)
        return fn(a[0])

    return lower


def _clip(lw: _Lowerer, x: Any, lo: float | None, hi: float | None, dtype: str) -> Any:
    """``clip(x, lo, hi)`` (``relu`` is lo=0) that keeps NaN, as PyTorch and onnxruntime do.

    TVM lowers ``maximum(a, b)`` to ``a > b ? a : b`` (and ``minimum`` to ``a < b ? a : b``),
    so the operand order decides NaN: Relax's ``relu(x)`` / ``clip`` are ``max(x, 0)`` and
    give 0 for NaN, while ``max(0, x)`` gives NaN. Constant first, then: the same single
    compare and select, and still element-wise for the NHWC layout conversion (a
    ``where(isnan(x), …)`` would keep NaN too but ConvertLayout has no rule for
    ``where``: every relu would be wrapped in transposes). The NaN tests of
    ``tests/backends/test_nan_propagation.py`` guard the order."""
    y = x
    if hi is not None:
        y = lw.emit(relax.op.minimum(lw.const(hi, dtype), y))
    if lo is not None:
        y = relax.op.maximum(lw.const(lo, dtype), y)
    return y


@lowers("relu")
def _relu(lw: _Lowerer, node: Node, a: list) -> Any:
    return _clip(lw, a[0], 0, None, lw.in_type(0).dtype)


for _op, _fn in (("silu", "nn.silu"), ("sigmoid", "sigmoid"),
                 ("tanh", "tanh"), ("neg", "negative"), ("sqrt", "sqrt"), ("exp", "exp"),
                 ("erf", "erf")):
    LOWERINGS[_op] = _simple(_fn)


@lowers("identity", "dropout")
def _identity(lw: _Lowerer, node: Node, a: list) -> Any:
    return a[0]


@lowers("hardtanh")
def _hardtanh(lw: _Lowerer, node: Node, a: list) -> Any:
    return _clip(lw, a[0], node.attrs["min_val"], node.attrs["max_val"], lw.in_type(0).dtype)


@lowers("gelu")
def _gelu(lw: _Lowerer, node: Node, a: list) -> Any:
    approx = node.attrs["approximate"]
    if approx == "none":
        return relax.op.nn.gelu(a[0])
    if approx == "tanh":
        return relax.op.nn.gelu_tanh(a[0])
    raise LoweringError(f"node {node.describe()}: gelu approximate={approx!r} has no TVM "
                        f"lowering (known: 'none', 'tanh')")


def _relu6_plus3(lw: _Lowerer, x: Any, dtype: str) -> Any:
    shifted = lw.emit(relax.op.add(x, lw.const(3, dtype)))
    return relax.op.divide(_clip(lw, shifted, 0, 6, dtype), lw.const(6, dtype))


@lowers("hardsigmoid")
def _hardsigmoid(lw: _Lowerer, node: Node, a: list) -> Any:
    return _relu6_plus3(lw, a[0], lw.in_type(0).dtype)


@lowers("hardswish")
def _hardswish(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.multiply(a[0], _relu6_plus3(lw, a[0], lw.in_type(0).dtype))


def _binary(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        # the IR's output dtype is torch's promotion result (int / int is float, …)
        want = lw.out_type().dtype
        x = _astype(lw, a[0], lw.in_type(0).dtype, want)
        y = _astype(lw, a[1], lw.in_type(1).dtype, want)
        return getattr(relax.op, fn_name)(x, y)

    return lower


for _op, _fn in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("div", "divide"),
                 ("pow", "power")):
    LOWERINGS[_op] = _binary(_fn)


# ---------------------------------------------------------------------------- shape
@lowers("reshape", "flatten")
def _reshape(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.reshape(a[0], lw.out_type().shape)


@lowers("permute")
def _permute(lw: _Lowerer, node: Node, a: list) -> Any:
    rank = lw.in_type(0).rank
    return relax.op.permute_dims(a[0], [d % rank for d in node.attrs["perm"]])


@lowers("concat")
def _concat(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.concat(list(a), axis=node.attrs["axis"] % lw.in_type(0).rank)


@lowers("split")
def _split(lw: _Lowerer, node: Node, a: list) -> list:
    sizes = node.attrs["sizes"]
    if len(sizes) == 1:
        return [a[0]]
    cuts = list(np.cumsum(sizes[:-1]).tolist())
    parts = lw.emit(relax.op.split(a[0], cuts, axis=node.attrs["axis"] % lw.in_type(0).rank))
    return [lw.emit(relax.TupleGetItem(parts, i)) for i in range(len(sizes))]


@lowers("slice")
def _slice(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    axis = at["axis"] % lw.in_type(0).rank
    start, stop, step = slice(at["start"], at["end"], at["step"]).indices(
        lw.in_type(0).shape[axis])
    stop = max(stop, start)
    return relax.op.strided_slice(a[0], axes=[axis], begin=[start], end=[stop], strides=[step],
                                  assume_inbound=True)


@lowers("expand")
def _expand(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.broadcast_to(a[0], lw.out_type().shape)


def _reduce(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        rank = lw.in_type(0).rank
        axes = [d % rank for d in node.attrs["axes"]] or None  # () = all dims, as torch
        x = _astype(lw, a[0], lw.in_type(0).dtype, lw.out_type().dtype)  # sum(i32) is i64
        return getattr(relax.op, fn_name)(x, axis=axes, keepdims=node.attrs["keepdim"])

    return lower


LOWERINGS["mean"] = _reduce("mean")
LOWERINGS["sum"] = _reduce("sum")


# ---------------------------------------------------------------------------- quant

def _per_axis(lw: _Lowerer, p: Any, p_type: TensorType, x_type: TensorType,
              axis: int | None) -> Any:
    if axis is None or p_type.rank == 0:
        return p
    shape = [1] * x_type.rank
    shape[axis % x_type.rank] = -1
    return lw.reshape(p, shape)


@lowers("quantize")
def _quantize(lw: _Lowerer, node: Node, a: list) -> Any:
    # clamp(round_half_even(x / scale) + zero_point), as the op table's reference; TVM's
    # round is LLVM nearbyint (half to even).
    x_t, s_t, z_t = (lw.in_type(i) for i in range(3))
    dtype, axis = node.attrs["dtype"], node.attrs["axis"]
    ft = "f64" if x_t.dtype == "f64" else "f32"
    x = _astype(lw, a[0], x_t.dtype, ft)
    s = _astype(lw, _per_axis(lw, a[1], s_t, x_t, axis), s_t.dtype, ft)
    z = _astype(lw, _per_axis(lw, a[2], z_t, x_t, axis), z_t.dtype, ft)
    q = lw.emit(relax.op.add(relax.op.round(relax.op.divide(x, s)), z))
    if dtype == "i32":  # ints above 2**24 are not exact in f32: clamp in f64
        q = _astype(lw, q, ft, "f64")
    lo, hi = QRANGES[dtype]
    return relax.op.astype(relax.op.clip(q, lo, hi), DTYPE_TO_TVM[dtype])


@lowers("dequantize")
def _dequantize(lw: _Lowerer, node: Node, a: list) -> Any:
    q_t, s_t, z_t = (lw.in_type(i) for i in range(3))
    axis = node.attrs["axis"]
    q = _astype(lw, a[0], q_t.dtype, "i32")
    z = _astype(lw, _per_axis(lw, a[2], z_t, q_t, axis), z_t.dtype, "i32")
    s = _per_axis(lw, a[1], s_t, q_t, axis)
    return relax.op.multiply(relax.op.astype(relax.op.subtract(q, z), "float32"), s)


@lowers("fake_quantize")
def _fake_quantize(lw: _Lowerer, node: Node, a: list) -> Any:
    # (clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale, in the input's float type
    x_t, s_t, z_t = (lw.in_type(i) for i in range(3))
    at = node.attrs
    lo, hi = QRANGES[at["dtype"]]
    lo = lo if at["qmin"] is None else at["qmin"]
    hi = hi if at["qmax"] is None else at["qmax"]
    ft = "f64" if x_t.dtype == "f64" else "f32"
    x = _astype(lw, a[0], x_t.dtype, ft)
    s = _astype(lw, _per_axis(lw, a[1], s_t, x_t, at["axis"]), s_t.dtype, ft)
    z = _astype(lw, _per_axis(lw, a[2], z_t, x_t, at["axis"]), z_t.dtype, ft)
    q = relax.op.clip(relax.op.add(relax.op.round(relax.op.divide(x, s)), z), lo, hi)
    return _astype(lw, lw.emit(relax.op.multiply(relax.op.subtract(q, z), s)), ft, x_t.dtype)


@lowers("dynamic_quantize")
def _dynamic_quantize(lw: _Lowerer, node: Node, a: list) -> list:
    # ONNX DynamicQuantizeLinear: the range [min(0, min x), max(0, max x)] onto u8
    lo, hi = QRANGES[node.attrs["dtype"]]
    x = a[0]
    zero = relax.const(0.0, "float32")
    xmin = lw.emit(relax.op.minimum(relax.op.min(x), zero))
    xmax = lw.emit(relax.op.maximum(relax.op.max(x), zero))
    scale = lw.emit(relax.op.divide(relax.op.subtract(xmax, xmin),
                                    relax.const(float(hi - lo), "float32")))
    scale = lw.emit(relax.op.where(relax.op.equal(scale, zero), relax.const(1.0, "float32"),
                                   scale))
    zp = lw.emit(relax.op.clip(relax.op.round(relax.op.subtract(
        relax.const(float(lo), "float32"), relax.op.divide(xmin, scale))), lo, hi))
    q = relax.op.clip(relax.op.add(relax.op.round(relax.op.divide(x, scale)), zp), lo, hi)
    tdt = DTYPE_TO_TVM[node.attrs["dtype"]]
    return [lw.emit(relax.op.astype(q, tdt)), scale, lw.emit(relax.op.astype(zp, tdt))]


@lowers("cast")
def _cast(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.astype(a[0], DTYPE_TO_TVM[node.attrs["dtype"]])


# ---------------------------------------------------------------------------- more element-wise
for _op, _fn in (("abs", "abs"), ("log", "log"), ("rsqrt", "rsqrt"), ("selu", "nn.selu"),
                 ("logical_not", "logical_not")):
    LOWERINGS[_op] = _simple(_fn)


@lowers("leaky_relu")
def _leaky_relu(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.leakyrelu(a[0], node.attrs["negative_slope"])


@lowers("elu")
def _elu(lw: _Lowerer, node: Node, a: list) -> Any:
    dt = lw.in_type(0).dtype
    neg = relax.op.multiply(lw.const(node.attrs["alpha"], dt),
                            relax.op.subtract(relax.op.exp(a[0]), lw.const(1.0, dt)))
    return relax.op.where(relax.op.greater(a[0], lw.const(0.0, dt)), a[0], neg)


@lowers("softplus")
def _softplus(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.nn.softplus(a[0], node.attrs["beta"], node.attrs["threshold"])


@lowers("softsign")
def _softsign(lw: _Lowerer, node: Node, a: list) -> Any:
    dt = lw.in_type(0).dtype
    return relax.op.divide(a[0], relax.op.add(lw.const(1.0, dt), relax.op.abs(a[0])))


@lowers("prelu")
def _prelu(lw: _Lowerer, node: Node, a: list) -> Any:
    dt = lw.out_type().dtype
    x = _astype(lw, a[0], lw.in_type(0).dtype, dt)
    s = _astype(lw, a[1], lw.in_type(1).dtype, dt)
    return relax.op.where(relax.op.greater_equal(x, lw.const(0, dt)), x, relax.op.multiply(x, s))


def _promoted(lw: _Lowerer, a: list) -> tuple[list, str]:
    """The operands cast to torch's promotion of their dtypes (comparisons: the result is
    bool, so the output type does not say)."""
    import torch

    from ..ir.types import dtype_from_torch, to_torch_dtype

    t = to_torch_dtype(lw.in_type(0).dtype)
    for i in range(1, len(a)):
        t = torch.promote_types(t, to_torch_dtype(lw.in_type(i).dtype))
    want = dtype_from_torch(t)
    return [_astype(lw, x, lw.in_type(i).dtype, want) for i, x in enumerate(a)], want


def _compare(fn_name: str) -> Lowering:
    def lower(lw: _Lowerer, node: Node, a: list) -> Any:
        xs, _ = _promoted(lw, a)
        return getattr(relax.op, fn_name)(*xs)

    return lower


for _op, _fn in (("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal"),
                 ("gt", "greater"), ("ge", "greater_equal"), ("logical_and", "logical_and"),
                 ("logical_or", "logical_or")):
    LOWERINGS[_op] = _compare(_fn)


@lowers("ne")
def _ne(lw: _Lowerer, node: Node, a: list) -> Any:
    # TVM's not_equal is the ordered compare (false for NaN); torch: NaN != anything
    xs, _ = _promoted(lw, a)
    return relax.op.logical_not(relax.op.equal(*xs))


@lowers("maximum", "minimum")
def _maximum_minimum(lw: _Lowerer, node: Node, a: list) -> Any:
    """NaN if either operand is (torch.maximum / minimum). TVM's ``maximum(a, b)`` is
    ``a > b ? a : b``, NaN only from ``b`` (see ``_clip``): a NaN-free constant goes
    first; two tensors get the NaN mask of both added (``_nan_or_zero``)."""
    want = lw.out_type().dtype
    x, y = (_astype(lw, v, lw.in_type(i).dtype, want) for i, v in enumerate(a))
    fn = relax.op.maximum if node.op == "maximum" else relax.op.minimum
    if want not in FLOAT_DTYPES:
        return fn(x, y)
    cx, cy = lw.constant(x), lw.constant(y)
    if cx is not None and not np.isnan(cx).any():
        return fn(x, y)
    if cy is not None and not np.isnan(cy).any():
        return fn(y, x)
    either = relax.op.logical_or(relax.op.isnan(x), relax.op.isnan(y))
    return relax.op.add(lw.emit(fn(x, y)), _nan_or_zero(lw, either, want))


@lowers("where")
def _where(lw: _Lowerer, node: Node, a: list) -> Any:
    want = lw.out_type().dtype
    return relax.op.where(a[0], _astype(lw, a[1], lw.in_type(1).dtype, want),
                          _astype(lw, a[2], lw.in_type(2).dtype, want))


@lowers("max", "min")
def _reduce_max_min(lw: _Lowerer, node: Node, a: list) -> Any:
    rank = lw.in_type(0).rank
    axes = [d % rank for d in node.attrs["axes"]] or None
    keep = node.attrs["keepdim"]
    fn = relax.op.max if node.op == "max" else relax.op.min
    return _keeping_nan(lw, a[0], lambda x: fn(x, axis=axes, keepdims=keep),
                        lambda m: relax.op.max(m, axis=axes, keepdims=keep))


@lowers("cumsum")
def _cumsum(lw: _Lowerer, node: Node, a: list) -> Any:
    axis = node.attrs["axis"] % lw.in_type(0).rank
    return relax.op.cumsum(a[0], axis=axis, dtype=DTYPE_TO_TVM[lw.out_type().dtype])


# ---------------------------------------------------------------------------- pad, tile, gather
_TVM_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "replicate"}


@lowers("pad")
def _pad(lw: _Lowerer, node: Node, a: list) -> Any:
    """Negative pads (constant mode) crop: a strided slice first, then the positive pads."""
    t = lw.in_type(0)
    r, p = t.rank, node.attrs["pads"]
    x = a[0]
    if min(p) < 0:
        begin = [max(-p[d], 0) for d in range(r)]
        end = [t.shape[d] - max(-p[r + d], 0) for d in range(r)]
        x = lw.emit(relax.op.strided_slice(x, axes=list(range(r)), begin=begin, end=end,
                                           assume_inbound=True))
    width = []
    for d in range(r):
        width += [max(p[d], 0), max(p[r + d], 0)]
    if not any(width):
        return x
    return relax.op.nn.pad(x, width, _TVM_PAD_MODES[node.attrs["mode"]], node.attrs["value"])


@lowers("tile")
def _tile(lw: _Lowerer, node: Node, a: list) -> Any:
    return relax.op.tile(a[0], list(node.attrs["repeats"]))


def _wrapped_indices(lw: _Lowerer, idx: Any, itype: TensorType, dim: int) -> Any:
    """Indices with negative ones counted from the end (as ONNX), in int32 or int64."""
    c = lw.constant(idx)
    if c is not None:
        return lw.const(np.where(c < 0, c + dim, c), itype.dtype)
    neg = relax.op.less(idx, lw.const(0, itype.dtype))
    return lw.emit(relax.op.where(neg, relax.op.add(idx, lw.const(dim, itype.dtype)), idx))


@lowers("gather")
def _gather(lw: _Lowerer, node: Node, a: list) -> Any:
    t = lw.in_type(0)
    axis = node.attrs["axis"] % t.rank
    idx = _wrapped_indices(lw, a[1], lw.in_type(1), t.shape[axis])
    return relax.op.take(a[0], idx, axis=axis)


@lowers("gather_elements")
def _gather_elements(lw: _Lowerer, node: Node, a: list) -> Any:
    t = lw.in_type(0)
    axis = node.attrs["axis"] % t.rank
    idx = _wrapped_indices(lw, a[1], lw.in_type(1), t.shape[axis])
    return relax.op.gather_elements(a[0], idx, axis=axis)


# ---------------------------------------------------------------------------- 3-D, LRN
@lowers("conv3d")
def _conv3d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    y = lw.emit(relax.op.nn.conv3d(
        a[0], a[1], strides=at["stride"], padding=at["padding"], dilation=at["dilation"],
        groups=at["groups"], data_layout="NCDHW", kernel_layout="OIDHW",
        out_dtype=DTYPE_TO_TVM[lw.out_type().dtype]))
    return _bias_add(lw, y, a[2], 5) if len(a) > 2 else y


def _pool3d_padding(lw: _Lowerer, node: Node) -> tuple[list[int], bool]:
    """As ``_pool_padding`` for 3-D: ceil_mode as extra padding at the end of each dim."""
    at = node.attrs
    ins, outs = lw.in_type(0).shape[2:], lw.out_type().shape[2:]
    dil = at.get("dilation", (1, 1, 1))
    extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (i + 2 * p))
             for i, o, s, d, k, p in zip(ins, outs, at["stride"], dil, at["kernel"],
                                         at["padding"])]
    pads = list(at["padding"]) + [p + e for p, e in zip(at["padding"], extra)]
    return pads, any(extra)


@lowers("max_pool3d")
def _max_pool3d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, _ = _pool3d_padding(lw, node)
    return _keeping_nan(lw, a[0], lambda x: relax.op.nn.max_pool3d(
        x, pool_size=at["kernel"], strides=at["stride"], padding=pad, dilation=at["dilation"],
        ceil_mode=False, layout="NCDHW"))


@lowers("avg_pool3d")
def _avg_pool3d(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    pad, extended = _pool3d_padding(lw, node)
    if extended and at["count_include_pad"]:
        raise LoweringError(f"node {node.describe()}: avg_pool3d with ceil_mode windows past "
                            f"the padding and count_include_pad has no TVM lowering")
    return relax.op.nn.avg_pool3d(a[0], pool_size=at["kernel"], strides=at["stride"],
                                  padding=pad, ceil_mode=False,
                                  count_include_pad=at["count_include_pad"], layout="NCDHW")


@lowers("lrn")
def _lrn(lw: _Lowerer, node: Node, a: list) -> Any:
    """x / (bias + alpha / size * window sum of x^2) ^ beta; the window sum over channels is
    ``size`` shifted slices of the zero-padded squares (torch's window: size // 2 before)."""
    t = lw.in_type(0)
    size, dt = node.attrs["size"], t.dtype
    sq = lw.emit(relax.op.multiply(a[0], a[0]))
    width = [0, 0, size // 2, (size - 1) // 2] + [0, 0] * (t.rank - 2)
    padded = lw.emit(relax.op.nn.pad(sq, width))
    c = t.shape[1]
    total = None
    for j in range(size):
        part = lw.emit(relax.op.strided_slice(padded, axes=[1], begin=[j], end=[j + c],
                                              assume_inbound=True))
        total = part if total is None else lw.emit(relax.op.add(total, part))
    at = node.attrs
    div = relax.op.power(relax.op.add(lw.const(at["bias"], dt), relax.op.multiply(
        lw.const(at["alpha"] / size, dt), total)), lw.const(at["beta"], dt))
    return relax.op.divide(a[0], lw.emit(div))


# ---------------------------------------------------------------------------- attention
@lowers("scaled_dot_product_attention")
def _sdpa(lw: _Lowerer, node: Node, a: list) -> Any:
    """softmax(q kᵀ · scale + mask) v with matmul and softmax (Relax's attention op wants
    [batch, seq, heads, dim] and no bool mask); k / v heads are repeated for grouped queries."""
    q_t, k_t = lw.in_type(0), lw.in_type(1)
    dt, r = q_t.dtype, q_t.rank
    L, S, E = q_t.shape[-2], k_t.shape[-2], q_t.shape[-1]
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / np.sqrt(E)
    q, k, v = a[:3]
    if k_t.shape[-3] != q_t.shape[-3]:
        g = q_t.shape[-3] // k_t.shape[-3]
        k = lw.emit(relax.op.repeat(k, g, axis=r - 3))
        v = lw.emit(relax.op.repeat(v, g, axis=r - 3))
    kt = lw.emit(relax.op.permute_dims(k, list(range(r - 2)) + [r - 1, r - 2]))
    s = lw.emit(relax.op.multiply(relax.op.matmul(q, kt), lw.const(scale, dt)))
    if len(a) > 3:
        if lw.in_type(3).dtype == "bool":
            s = lw.emit(relax.op.where(a[3], s, lw.const(-np.inf, dt)))
        else:
            s = lw.emit(relax.op.add(s, a[3]))
    if node.attrs["causal"]:
        tri = np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf)
        s = lw.emit(relax.op.add(s, lw.const(tri, dt)))
    p = lw.emit(relax.op.nn.softmax(s, axis=-1))
    return relax.op.matmul(p, v)


# ---------------------------------------------------------------------------- upsample
@lowers("upsample")
def _upsample(lw: _Lowerer, node: Node, a: list) -> Any:
    at = node.attrs
    if at["mode"] == "nearest":
        return relax.op.image.resize2d(a[0], list(at["size"]), layout="NCHW",
                                       method="nearest_neighbor",
                                       coordinate_transformation_mode="asymmetric",
                                       rounding_method="floor")
    return relax.op.image.resize2d(a[0], list(at["size"]), layout="NCHW", method="linear",
                                   coordinate_transformation_mode="align_corners"
                                   if at["align_corners"] else "pytorch_half_pixel")


# ============================================================================ driver
@dataclass
class Lowered:
    """A Relax module for a graph, and the weights to bind when ``keep_params``."""

    mod: Any  # tvm.IRModule
    params: dict[str, np.ndarray]  # parameter name -> array, in the function's order
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]


def _relax_types(expr: Any) -> list[tuple[str, tuple[int, ...] | None]]:
    ty = expr.ty
    if isinstance(ty, relax.TupleType):
        return [t for f in ty.fields for t in _relax_types_of(f)]
    return _relax_types_of(ty)


def _relax_types_of(ty: Any) -> list[tuple[str, tuple[int, ...] | None]]:
    try:
        shape = tuple(int(s) for s in ty.shape)
    except (TypeError, AttributeError):
        shape = None
    return [(str(ty.dtype), shape)]


def check_static(graph: Graph) -> None:
    """Raise ``StaticShapeError`` naming the first value whose shape is not static ints."""
    for v in list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]:
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in v.type.shape):
            raise StaticShapeError(f"graph {graph.name}: %{v.name} has shape {v.type.shape}, "
                                   f"which is not static; TVM needs static input shapes")


def lower(graph: Graph, keep_params: bool = False, int8: bool = True) -> Lowered:
    """IR graph → Relax ``IRModule`` with one function ``main``.

    ``keep_params``: weights (constants of rank ≥ 1) become parameters of ``main`` after the
    inputs (``num_input`` attribute set), returned in ``Lowered.params``; otherwise they are
    constants in the module. Scalars are always constants.

    ``int8``: lower QDQ conv2d / linear / matmul patterns to integer compute (see
    ``tvm_int8``); False lowers quantize / dequantize to float arithmetic like other ops.
    """
    _import_tvm()
    check_static(graph)
    missing = sorted({n.op for n in graph.nodes if n.op not in LOWERINGS})
    if missing:
        where = {op: next(n.describe() for n in graph.nodes if n.op == op) for op in missing}
        raise LoweringError("no TVM lowering for op(s) " + ", ".join(
            f"{op} (e.g. node {where[op]})" for op in missing)
            + " in backends/tvm.py LOWERINGS")
    bb = relax.BlockBuilder()
    lw = _Lowerer(bb)
    args = []
    for v in graph.inputs:
        var = relax.Var(v.name, relax.TensorType(v.shape, DTYPE_TO_TVM[v.dtype]))
        lw.env[id(v)] = var
        args.append(var)
    params: dict[str, np.ndarray] = {}
    for name, v in graph.constants.items():
        if keep_params and v.type.rank > 0:
            var = relax.Var(name, relax.TensorType(v.shape, DTYPE_TO_TVM[v.dtype]))
            lw.env[id(v)] = var
            args.append(var)
            params[name] = np.ascontiguousarray(v.data)
        else:
            lw.env[id(v)] = _const_of(v)
    attrs = {"num_input": len(graph.inputs)} if keep_params else None
    with bb.function("main", args, attrs=attrs):
        with bb.dataflow():
            # int8 hook: QDQ patterns around conv2d/linear/matmul lower to integer compute
            # (backends/tvm_int8.py); it returns False for every other node.
            int8_plan = _int8_plan(graph) if int8 else None
            for node in graph.nodes:
                if int8_plan is None or not int8_plan.lower(lw, node):
                    _lower_node(lw, node)
            outs = [lw.env[id(v)] for v in graph.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv)
    return Lowered(bb.get(), params, [(v.name, v.type) for v in graph.inputs],
                   [(v.name, v.type) for v in graph.outputs])


def _const_of(v: Value) -> Any:
    return relax.const(np.ascontiguousarray(v.data), DTYPE_TO_TVM[v.dtype])


def _int8_plan(graph: Graph) -> Any:
    from . import tvm_int8  # imports this module

    return tvm_int8.plan(graph)


def _lower_node(lw: _Lowerer, node: Node, lowering: Lowering | None = None,
                outputs: Sequence[Value] | None = None) -> None:
    """Lower ``node`` with ``LOWERINGS`` (or ``lowering``) and check its result types against
    ``node.outputs`` (or ``outputs``: the int8 lowering produces a fused quantize's output)."""
    lw.node = node
    outputs = node.outputs if outputs is None else outputs
    try:
        fn = LOWERINGS[node.op] if lowering is None else lowering
        # (the int8 lowering reads its operands itself: the dequantized ones are not lowered)
        result = fn(lw, node, [lw.env[id(v)] for v in node.inputs] if lowering is None else [])
    except KeyError:
        raise LoweringError(f"no TVM lowering for op {node.op} (node {node.describe()})"
                            ) from None
    except IRError:
        raise
    except Exception as e:  # a Relax type error, made to name the node
        msg = str(e).strip().splitlines()
        raise LoweringError(f"node {node.describe()}: lowering {node.op} to Relax failed: "
                            f"{msg[-1] if msg else type(e).__name__}") from e
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(outputs):
        raise LoweringError(f"node {node.describe()}: lowering of {node.op} gave "
                            f"{len(results)} results for {len(outputs)} outputs")
    for out, expr in zip(outputs, results):
        if not isinstance(expr, (relax.Var, tvm.ir.expr.Constant)):
            expr = lw.emit(expr)
        (dtype, shape), = _relax_types(expr)
        want = (DTYPE_TO_TVM[out.dtype], out.shape)
        if (dtype, shape) != want:
            raise LoweringError(
                f"node {node.describe()}: TVM lowering of {node.op} gives "
                f"{dtype}{list(shape or ())} but the IR says %{out.name}: {out.type}")
        lw.env[id(out)] = expr


#: Data layouts ``conv2d`` can be converted to before legalization, with the kernel layout
#: that goes with each. The IR (like PyTorch and ONNX) is NCHW/OIHW.
CONV_LAYOUTS: dict[str, tuple[str, str]] = {"NCHW": ("NCHW", "OIHW"), "NHWC": ("NHWC", "OHWI")}
#: What ``build`` / ``tvm_tuning`` use unless told otherwise. NHWC: measured here (Cascade
#: Lake, 2 threads, MetaSchedule, 40 trials on one fused conv2d+bias+ReLU), NHWC reached
#: 54 GFLOP/s where NCHW reached 29 (256 channels, 4×4), and 46 against 37 (64 channels,
#: 16×16): the vector loop runs over channels instead of a short image row.
DEFAULT_CONV_LAYOUT = "NHWC"


def layout_passes(layout: str | None = None) -> list[Any]:
    """Relax passes that put every ``conv2d`` in ``layout`` (``CONV_LAYOUTS``), with the
    transposes moved out through layout-agnostic ops (ReLU, add, pooling) and cancelled
    between convolutions by ``ConvertLayout``; [] for NCHW."""
    _import_tvm()
    layout = layout or DEFAULT_CONV_LAYOUT
    if layout not in CONV_LAYOUTS:
        raise TVMBackendError(f"conv layout {layout!r}: choose one of {', '.join(CONV_LAYOUTS)}")
    if layout == "NCHW":
        return []
    return [relax.transform.ConvertLayout({"relax.nn.conv2d": list(CONV_LAYOUTS[layout])})]


def inference_passes(layout: str | None = None) -> list[Any]:
    """Relax's own optimisation for inference: convolutions to ``layout``
    (``layout_passes``), decompose, canonicalise, legalize, fold constants, fuse (the
    ``zero`` pipeline). Shared with ``tvm_tuning.prepare``, so tuned and untuned builds
    see the same workloads."""
    _import_tvm()
    return [
        *layout_passes(layout),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.get_pipeline("zero"),
    ]


def optimize_relax(mod: Any, target: Mapping[str, Any], layout: str | None = None) -> Any:
    """``inference_passes(layout)`` on ``mod`` under ``target``."""
    seq = tvm.transform.Sequential(inference_passes(layout))
    with tvm.target.Target(dict(target)):
        return seq(mod)


# ============================================================================ module
LIBRARY_SO = "model.so"
LIBRARY_TAR = "model.tar"
PARAMS_FILE = "params.safetensors"


@dataclass
class TVMModule:
    """A compiled graph: the Relax VM executable, its target and (if kept) its weights."""

    executable: Any  # relax.VMExecutable or a loaded runtime module
    target: dict[str, Any]
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    library_path: Path | None = None  # the linked shared library, once there is one
    _vm: Any = field(default=None, repr=False)
    _param_tensors: list[Any] = field(default_factory=list, repr=False)

    @property
    def runs_here(self) -> bool:
        return target_runs_here(self.target)

    @property
    def threads(self) -> int:
        """Threads TVM's runtime uses (``TVM_NUM_THREADS``; set to the target's cores)."""
        return int(os.environ.get("TVM_NUM_THREADS", self.target.get("num-cores", 1)))

    def _ensure_vm(self) -> Any:
        if self._vm is None:
            if not self.runs_here:
                raise TVMBackendError(
                    f"module compiled for {self.target.get('mtriple')} "
                    f"(mcpu={self.target.get('mcpu', 'generic')}) cannot run on this machine; "
                    f"export it and load it on the target device")
            # TVM's thread pool defaults to half the cores on x86 (it assumes SMT); use the
            # target's core count unless the user set TVM_NUM_THREADS. Read when the pool starts.
            if "TVM_NUM_THREADS" not in os.environ:
                os.environ["TVM_NUM_THREADS"] = str(self.target.get("num-cores", host_cores()))
                log.info("TVM runtime threads: %s", os.environ["TVM_NUM_THREADS"])
            self._vm = relax.VirtualMachine(self.link(), tvm.cpu())
            dev = tvm.cpu()
            self._param_tensors = [tvm.runtime.tensor(p, dev) for p in self.params.values()]
        return self._vm

    def link(self) -> Any:
        """The executable as a loaded shared library. Emitting the object code (LLVM) and
        linking take seconds, so it is done once, into a temporary file ``export`` copies."""
        if self.library_path is None and hasattr(self.executable, "export_library"):
            import tempfile
            import weakref

            tmp = Path(tempfile.mkdtemp(prefix="shrinkc-tvm-"))
            weakref.finalize(self, shutil.rmtree, str(tmp), True)
            t0 = time.perf_counter()
            self.executable.export_library(str(tmp / LIBRARY_SO))
            self.timings["emit_link_s"] = time.perf_counter() - t0
            self.library_path = tmp / LIBRARY_SO
            self.executable = tvm.runtime.load_module(str(self.library_path))
        return self.executable

    def to_device(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """Inputs as TVM tensors (checked against the input types)."""
        _import_tvm()
        if len(arrays) != len(self.inputs):
            raise TVMBackendError(f"module takes {len(self.inputs)} inputs "
                                  f"({', '.join(n for n, _ in self.inputs)}), got {len(arrays)}")
        out = []
        for (name, t), x in zip(self.inputs, arrays):
            x = np.ascontiguousarray(x, dtype=to_numpy_dtype(t.dtype))
            if x.shape != t.shape:
                raise TVMBackendError(f"input {name} expects {t}, got shape {list(x.shape)}")
            out.append(tvm.runtime.tensor(x, tvm.cpu()))
        return out

    def run_device(self, tensors: Sequence[Any]) -> Any:
        """Run on TVM tensors (from ``to_device``); returns TVM's result (tensor or array)."""
        vm = self._ensure_vm()
        return vm["main"](*tensors, *self._param_tensors)

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on numpy arrays; returns the outputs as numpy arrays."""
        _import_tvm()
        self._ensure_vm()
        res = self.run_device(self.to_device(arrays))
        outs = [res] if len(self.outputs) == 1 else list(res)
        return [o.numpy() for o in outs]

    # ------------------------------------------------------------------ export
    def export(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write the library (``model.so``, or ``model.tar`` of object files for a target
        that does not run here) and the weights (``params.safetensors``) into
        ``directory``; returns the manifest entries that ``load`` needs."""
        from safetensors.numpy import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if self.runs_here:
            lib = LIBRARY_SO
            self.link()
            if self.library_path is not None and self.library_path != d / lib:
                shutil.copyfile(self.library_path, d / lib)
        else:
            lib = _export_cross(self.executable, self.target, d)
        files = {"library": lib}
        if self.params:
            save_file({k: np.ascontiguousarray(v) for k, v in self.params.items()},
                      str(d / PARAMS_FILE))
            files["params"] = PARAMS_FILE
        self.timings["export_s"] = time.perf_counter() - t0
        return {"files": files, "target": self.target, "param_names": list(self.params)}

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any],
             inputs: list[tuple[str, TensorType]],
             outputs: list[tuple[str, TensorType]]) -> TVMModule:
        """A module from ``export``'s files; ``entry`` is what ``export`` returned."""
        _import_tvm()
        d = Path(directory)
        lib_path = d / entry["files"]["library"]
        if not lib_path.is_file():
            raise TVMBackendError(f"{lib_path}: no such file")
        if not target_runs_here(entry["target"]):
            raise TVMBackendError(
                f"{lib_path} was compiled for {entry['target'].get('mtriple')} "
                f"(mcpu={entry['target'].get('mcpu', 'generic')}), which this machine cannot "
                f"run: load it on the target device")
        params: dict[str, np.ndarray] = {}
        if "params" in entry["files"]:
            from safetensors.numpy import load_file

            loaded = load_file(str(d / entry["files"]["params"]))
            params = {k: loaded[k] for k in entry.get("param_names", loaded)}
        lib = tvm.runtime.load_module(str(lib_path))
        return cls(lib, dict(entry["target"]), inputs, outputs, params, library_path=lib_path)


_CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"),
                    "arm": ("arm-linux-gnueabihf-gcc",),
                    "riscv64": ("riscv64-linux-gnu-gcc",)}


def _export_cross(executable: Any, target: Mapping[str, Any], d: Path) -> str:
    """Export for another machine: a ``.so`` if a cross compiler for the target's arch is
    on PATH, else ``model.tar`` holding the object files (no linker needed here)."""
    arch = str(target.get("mtriple", "")).split("-")[0]
    for cc in _CROSS_COMPILERS.get(arch, ()):
        path = shutil.which(cc)
        if path:
            from tvm.support import cc as tvm_cc  # type: ignore[import-not-found]

            executable.export_library(str(d / LIBRARY_SO),
                                      fcompile=tvm_cc.cross_compiler(path))
            log.info("cross-compiled %s with %s", LIBRARY_SO, path)
            return LIBRARY_SO
    executable.export_library(str(d / LIBRARY_TAR))
    log.info("no cross compiler for %s on PATH: wrote object files in %s", arch, LIBRARY_TAR)
    return LIBRARY_TAR


def object_files(tar_path: str | os.PathLike) -> dict[str, bytes]:
    """The ELF object files in an exported ``model.tar`` (name -> bytes)."""
    with tarfile.open(tar_path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()
                if m.isfile() and m.name.endswith(".o")}


def build(graph: Graph, target: str | Mapping[str, Any] | None = None, *,
          keep_params: bool = False,
          pipeline: Callable[[Any, dict[str, Any]], Any] | None = None) -> TVMModule:
    """Lower ``graph``, optimise with Relax's passes and ``tvm.compile`` for ``target``.

    ``pipeline(mod, target_dict) -> mod`` replaces ``optimize_relax`` (e.g. one that applies
    a tuning database). Times for each phase go in ``.timings``.
    """
    _import_tvm()
    tgt = resolve_target(target)
    t0 = time.perf_counter()
    lowered = lower(graph, keep_params=keep_params)
    lower_s = time.perf_counter() - t0
    module = build_lowered(lowered, tgt, pipeline=pipeline, name=graph.name)
    module.timings = {"lower_s": lower_s, **module.timings}
    return module


def build_lowered(lowered: Lowered, target: str | Mapping[str, Any] | None = None, *,
                  pipeline: Callable[[Any, dict[str, Any]], Any] | None = None,
                  name: str = "main") -> TVMModule:
    """``build`` for a module made by ``lower`` (so tuning can see the same module)."""
    _import_tvm()
    tgt = resolve_target(target)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mod = (pipeline or optimize_relax)(lowered.mod, tgt)
    timings["relax_passes_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        ex = tvm.compile(mod, target=tvm.target.Target(tgt))
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise TVMBackendError(f"graph {name}: tvm.compile for {json.dumps(tgt)} failed: "
                              f"{msg[-1] if msg else type(e).__name__}") from e
    timings["codegen_s"] = time.perf_counter() - t0
    log.info("TVM build of %s for %s: relax passes %.2fs, codegen %.2fs", name,
             tgt.get("mcpu", tgt.get("mtriple")), timings["relax_passes_s"],
             timings["codegen_s"])
    return TVMModule(ex, tgt, lowered.inputs, lowered.outputs, lowered.params, timings)


def database_coverage(lowered: Lowered, target: Mapping[str, Any],
                      db_dir: str | os.PathLike) -> tuple[int, int]:
    """(tuning tasks with a valid record in the MetaSchedule database at ``db_dir``, tuning
    tasks of the module). The tasks are those ``tvm_tuning.tune`` extracts (from
    ``tvm_tuning.prepare``, with its default layout and weight prepacking)."""
    _import_tvm()
    db_dir = Path(db_dir)
    if not (db_dir / "database_workload.json").is_file():
        return 0, -1
    tt = tuning_module()
    if tt is not None and hasattr(tt, "fast_tvm_imports"):
        tt.fast_tvm_imports()  # MetaSchedule's import is slow with torch loaded; see there
    from tvm.s_tir import meta_schedule as ms

    tgt = tvm.target.Target(dict(target))
    prepared = (tt.prepare(lowered.mod, tgt) if tt is not None and hasattr(tt, "prepare")
                else optimize_relax(lowered.mod, target))
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, tgt)
             if not t.mod.attrs.get("tirx.is_scheduled", False)]
    db = ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")
    covered = sum(1 for t in tasks
                  if db.query_tuning_record(t.dispatched[0], tgt, t.task_name) is not None)
    return covered, len(tasks)


def missing_lowerings() -> list[str]:
    """Ops in the op table with no TVM lowering (should be empty)."""
    return sorted(set(irops.OPS) - set(LOWERINGS))


__all__ = [
    "DTYPE_TO_TVM", "LOWERINGS", "LoweringError", "Lowered", "StaticShapeError",
    "TARGET_PRESETS", "TVMBackendError", "TVMModule", "TargetError", "build", "build_lowered",
    "check_static", "database_coverage",
    "host_cores", "host_target", "import_tvm", "lower", "missing_lowerings", "object_files",
    "optimize_relax", "resolve_target", "target_presets", "target_runs_here", "tuning_module",
]
