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


def _pool_graph(channels: int, kernel: int, stride: int, padding: int) -> Graph:
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
                                                "dilation": [1, 1],
                                                "ceil_mode": False}).output]
    return g


@pytest.mark.parametrize("channels, kernel, stride, padding",
                         [(32, 3, 2, 1), (6, 2, 2, 0), (16, 3, 1, 1)])
def test_one_kernel_keeps_nan_and_equals_the_interpreter(channels, kernel, stride, padding):
    g = _pool_graph(channels, kernel, stride, padding)
    mod = btvm.optimize_relax(btvm.lower(g).mod, btvm.resolve_target("host"))
    funcs = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("max_pool2d_nan" in n for n in funcs), funcs
    assert not any("isnan" in n or "sqrt" in n for n in funcs), funcs
    x = np.random.default_rng(0).standard_normal((1, channels, 13, 13)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan  # a border window (the padding must not hide it)
    x[0, -1, 6, 7] = np.nan
    x[0, 1 % channels, 3, 3] = -np.inf
    got = btvm.build(g, "host").run([x])[0]
    want = run(g, [x])[0].numpy()
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)  # NaN where the interpreter has NaN
