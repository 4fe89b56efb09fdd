"""backends/tvm/nan_pool.py: the lowering's NaN-keeping max pool (three passes: the pool,
the pooled NaN mask, the add) becomes one kernel in NHWC, which gives NaN exactly where PyTorch
does and the same values elsewhere (max is exact), padding and odd channel counts
included."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from shrinkc.backends import tvm as btvm
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pool_graph(channels: int, kernel: int, stride: int, padding: int, dilation: int = 1
                ) -> Graph:
    g = Graph("pool")
    x = g.add_input(TensorType("f32", (1, channels, 13, 13)), "x")
    # a 1×1 conv with an identity weight first: the layout conversion (by convolutions)
    # puts the pool in NHWC, where the rewrite applies
    eye = g.add_constant(np.eye(channels, dtype=np.float32)[:, :, None, None])
    x = g.add_node("conv2d", [x, eye], {"stride": [1, 1], "padding": [0, 0],
                                        "dilation": [1, 1], "groups": 1}).output
    g.outputs = [g.add_node("max_pool2d", [x], {"kernel": [kernel, kernel],
                                                "stride": [stride, stride],
                                                "padding": [padding, padding],
                                                "dilation": [dilation, dilation],
                                                "ceil_mode": False}).output]
    return g


@pytest.mark.parametrize("channels, kernel, stride, padding, dilation",
                         [(32, 3, 2, 1, 1), (6, 2, 2, 0, 1), (16, 3, 1, 1, 1), (8, 5, 2, 2, 1),
                          (16, 3, 1, 1, 2)])
def test_one_kernel_keeps_nan_and_equals_the_interpreter(channels, kernel, stride, padding,
                                                         dilation):
    g = _pool_graph(channels, kernel, stride, padding, dilation)
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target("host"))
    funcs = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("max_pool2d_nan" in n for n in funcs), funcs
    assert not any("isnan" in n or "sqrt" in n for n in funcs), funcs
    x = np.random.default_rng(0).standard_normal((1, channels, 13, 13)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan  # a border window (the padding must not hide it)
    x[0, -1, 6, 7] = np.nan
    x[0, 1 % channels, 3, 3] = -np.inf
    x[0, 2 % channels, 12, 12] = np.nan  # the bottom-right corner
    got = btvm.build(g, "host").run([x])[0]
    want = run(g, [x])[0].numpy()
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)  # NaN where the interpreter has NaN


def _pool_func(g: Graph):
    from shrinkc.backends.tvm import x86_int8
    from tvm import s_tir

    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target("host"))
    (func,) = [f for gv, f in mod.functions_items()
                   if isinstance(f, tvm.tirx.PrimFunc) and "max_pool2d_nan" in gv.name_hint]
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    x86_int8.schedule_pool(sch, sch.get_sblock("max_pool2d_nan"))
    return sch.mod.script()


def test_padding_is_read_as_the_nearest_row_or_column_without_bounds_tests():
    """With dilation 1 a padded tap reads the clamped index, a tap of the same window: the
    loads have no bounds condition (one made LLVM emit gathers, 4x slower). Dilated
    windows are not contiguous, so they keep the -inf padding."""
    plain = _pool_func(_pool_graph(32, 3, 2, 1))
    assert "if_then_else" not in plain and "-inf" not in plain
    dilated = _pool_func(_pool_graph(16, 3, 1, 1, dilation=2))
    assert "-inf" in dilated
