"""The Relax pipeline: what runs between ``lower`` and ``relax.build``.

``inference_passes(layout)``: convolutions to ``layout`` (``ConvertLayout``, default NHWC;
``FoldTransposedPads`` for the pads it leaves behind), ``DecomposeOpsForInference``,
``CanonicalizeBindings`` and Relax's ``zero`` pipeline (``LegalizeOps``, ``FoldConstant``,
``FuseOps``, ``FuseTIR``). The untuned build runs them
(``optimize_relax``); tuning and the tuned build run ``prepare``, which adds the
layout-free weight buffers for ``cpu_weight_prepack``, so both see the same workloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax

from .errors import TVMBackendError
from .targets import tvm_target
from .nan_pool import NanMaxPool
from .relax_rewrite import bound_call, rewrite_functions
from .x86_fp32 import F32Kernels
from .x86_int8 import Int8Kernels, ScheduleInt8Kernels

#: Data layouts ``conv2d`` can be converted to before legalization, with the kernel layout
#: that goes with each. The IR (like PyTorch and ONNX) is NCHW/OIHW.
CONV_LAYOUTS: dict[str, tuple[str, str]] = {"NCHW": ("NCHW", "OIHW"), "NHWC": ("NHWC", "OHWI")}
#: What ``build`` and tuning use unless told otherwise. NHWC: measured here (Cascade
#: Lake, 2 threads, MetaSchedule, 40 trials on one fused conv2d+bias+ReLU), NHWC reached
#: 54 GFLOP/s where NCHW reached 29 (256 channels, 4×4), and 46 against 37 (64 channels,
#: 16×16): the vector loop runs over channels instead of a short image row.
DEFAULT_CONV_LAYOUT = "NHWC"


def layout_passes(layout: str | None = None) -> list[Any]:
    """Relax passes that put every ``conv2d`` in ``layout`` (``CONV_LAYOUTS``), with the
    transposes moved out through layout-agnostic ops (ReLU, add, pooling) and cancelled
    between convolutions by ``ConvertLayout``; [] for NCHW."""
    layout = layout or DEFAULT_CONV_LAYOUT
    if layout not in CONV_LAYOUTS:
        raise TVMBackendError(f"conv layout {layout!r}: choose one of {', '.join(CONV_LAYOUTS)}")
    if layout == "NCHW":
        return []
    return [relax.transform.ConvertLayout({"relax.nn.conv2d": list(CONV_LAYOUTS[layout])})]


@relax.expr_functor.mutator
class _TransposedPadFolder(relax.PyExprMutator):
    """``permute_dims(nn.pad(permute_dims(x, a)), b)`` with ``b ∘ a`` the identity →
    ``nn.pad(x)`` with the pad widths permuted."""

    def visit_call_(self, op: Any) -> Any:
        call = super().visit_call_(op)
        if getattr(call.op, "name", "") != "relax.permute_dims" or call.attrs.axes is None:
            return call
        pad = bound_call(self, call.args[0], "relax.nn.pad")
        first = bound_call(self, pad.args[0], "relax.permute_dims") if pad is not None else None
        if first is None or first.attrs.axes is None:
            return call
        a = [int(i) for i in first.attrs.axes]
        b = [int(i) for i in call.attrs.axes]
        if [a[j] for j in b] != list(range(len(a))):
            return call
        pw = [int(w) for w in pad.attrs.pad_width]
        widths = [w for i in range(len(b)) for w in pw[2 * b[i]:2 * b[i] + 2]]
        return relax.op.nn.pad(first.args[0], widths, pad_value=float(pad.attrs.pad_value),
                               pad_mode=str(pad.attrs.pad_mode))


@tvm.transform.module_pass(opt_level=0, name="shrinkc.FoldTransposedPads")
class FoldTransposedPads:
    """Pads that ``ConvertLayout`` left in NCHW between two transposes (it has no layout
    rule for ``nn.pad``), done in the converted layout instead: the int8 lowering pads an
    input with a nonzero zero point before the convolution, and each such pad became
    transpose → pad → transpose. Measured (int8 ResNet-18 64 px after ``cp-conv``, whose
    chains pass signed activations, 2 threads): those functions were 0.35 of 1.09 ms."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        return rewrite_functions(mod, _TransposedPadFolder(mod))


def inference_passes(layout: str | None = None) -> list[Any]:
    """Relax's own optimisation for inference: convolutions to ``layout``
    (``layout_passes``), the integer convolutions and matmuls to the target's int8
    dot-product kernels (``x86_int8.Int8Kernels``, weights packed), decompose,
    canonicalise, legalize, fold constants, fuse (the ``zero`` pipeline)."""
    return [
        *layout_passes(layout),
        FoldTransposedPads(),
        NanMaxPool(),
        Int8Kernels(),
        F32Kernels(),
        relax.transform.DeadCodeElimination(),  # the weights' layout permutes it replaced
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.get_pipeline("zero"),
    ]


def optimize_relax(mod: Any, target: Mapping[str, Any] | Any, layout: str | None = None) -> Any:
    """``inference_passes(layout)`` on ``mod`` under ``target``, then the int8 kernels'
    default schedule (the untuned build)."""
    seq = tvm.transform.Sequential([*inference_passes(layout), ScheduleInt8Kernels()])
    with tvm_target(target):
        return seq(mod)


def default_prepack(mod: Any) -> bool:
    """``cpu_weight_prepack`` unless told otherwise: on when the weights are constants of the
    module (MetaSchedule then picks a weight layout per conv/matmul and it is folded into
    the constants at compile time; measured here: a 256-channel 4×4 NHWC conv went from 54
    to 91 GFLOP/s). Off when ``main`` takes the weights as parameters (``num_input`` set,
    ``lower(keep_params=True)``), which would need ``main_transform_params`` at load."""
    try:
        return "num_input" not in (mod["main"].attrs or {})
    except (KeyError, AttributeError, tvm.TVMError):
        return False


def prepare(mod: Any, target: Any = None, cpu_weight_prepack: bool | None = None,
            layout: str | None = None) -> Any:
    """The module MetaSchedule extracts its tasks from (what tuning tunes and the tuned
    build applies its database to): ``inference_passes(layout)`` — what
    ``relax.get_pipeline("static_shape_tuning")`` does before tuning — and with
    ``cpu_weight_prepack`` (default ``default_prepack(mod)``) the layout-free buffers."""
    if cpu_weight_prepack is None:
        cpu_weight_prepack = default_prepack(mod)
    passes = inference_passes(layout)
    if cpu_weight_prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with tvm_target(target):
        return tvm.transform.Sequential(passes)(mod)


__all__ = ["CONV_LAYOUTS", "DEFAULT_CONV_LAYOUT", "FoldTransposedPads", "default_prepack",
           "inference_passes",
           "layout_passes", "optimize_relax", "prepare"]
