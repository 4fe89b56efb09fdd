"""What the backend's Relax rewrites (``PyExprMutator`` passes) share: reading a value's
producing call through its binding, running a mutator over every Relax function of a
module, and slicing off the zero-padded channels a kernel added.

Used by the kernel rewriters (``x86_int8.Int8Kernels``, ``x86_fp32.F32Kernels``), the NaN
max pool (``nan_pool``) and ``pipeline.FoldTransposedPads``.
"""

from __future__ import annotations

from typing import Any

from tvm import relax


def bound_call(mutator: Any, expr: Any, op_name: str) -> Any:
    """The call ``expr`` is (or the variable ``expr`` is bound to) when its op is
    ``op_name``, else None."""
    if isinstance(expr, relax.Var):
        expr = mutator.lookup_binding(expr)
    if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == op_name:
        return expr
    return None


def rewrite_functions(mod: Any, mutator: Any) -> Any:
    """``mod`` with every Relax function replaced by ``mutator``'s rewrite of it."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def slice_channels(builder: Any, y: Any, n: int, pad: int) -> Any:
    """``y`` without the ``pad`` last entries of its last axis (the outputs of the zero
    weights a kernel was padded with), ``y`` itself when ``pad`` is 0."""
    if not pad:
        return y
    if not isinstance(y, relax.Var):
        y = builder.emit(y)
    return relax.op.strided_slice(y, axes=[len(y.ty.shape) - 1], begin=[0], end=[n])


__all__ = ["bound_call", "rewrite_functions", "slice_channels"]
