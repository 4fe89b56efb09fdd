"""backends/tvm/pipeline.py: the Relax passes between ``lower`` and ``tvm.compile``; here
``FoldTransposedPads`` (pads ConvertLayout left between two transposes)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from shrinkc.backends import tvm as btvm
from shrinkc.backends.tvm.pipeline import FoldTransposedPads
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _module(axes_in, axes_out, widths=(0, 0, 0, 0, 1, 2, 0, 3)):
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 6, 4), "uint8"))  # NHWC
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.permute_dims(x, list(axes_in)))
            p = bb.emit(relax.op.nn.pad(a, list(widths), pad_value=3.0))
            o = bb.emit_output(bb.emit(relax.op.permute_dims(p, list(axes_out))))
        bb.emit_func_output(o)
    mod = bb.get()
    folded = tvm.transform.Sequential([FoldTransposedPads(),
                                       relax.transform.DeadCodeElimination()])(mod)
    return mod, folded


def _run(mod, x):
    import tvm
    from tvm import relax

    ex = tvm.compile(mod, target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_transpose_pad_transpose_becomes_one_pad_in_the_outer_layout():
    mod, folded = _module((0, 3, 1, 2), (0, 2, 3, 1))  # NHWC → NCHW, pad H and W, → NHWC
    text = folded.script()
    assert "permute_dims" not in text
    assert text.count("R.nn.pad") == 1 and "pad_width=[0, 0, 1, 2, 0, 3, 0, 0]" in text
    x = np.random.default_rng(0).integers(0, 256, (1, 5, 6, 4)).astype(np.uint8)
    want = np.pad(x, [(0, 0), (1, 2), (0, 3), (0, 0)], constant_values=3)
    np.testing.assert_array_equal(_run(mod, x), want)
    np.testing.assert_array_equal(_run(folded, x), want)


def test_transposes_that_do_not_cancel_are_kept():
    _, folded = _module((0, 3, 1, 2), (0, 1, 3, 2))
    assert folded.script().count("permute_dims") == 2


def test_int8_conv_padded_with_its_zero_point_has_no_transposes_around_the_pad():
    """A QDQ conv whose input has zero point 3 after another conv: the int8 lowering pads
    with 3 (exact borders) before it; in NHWC that pad no longer sits between transposes,
    and the result stays bit-exact (power-of-two scales: see test_x86_int8)."""
    rng = np.random.default_rng(0)
    g = Graph("zp_pad")

    def c(a, dtype):
        return g.add_constant(np.asarray(a, dtype=dtype))

    def conv(xq, zx, w, attrs, zy):
        n, sx = len(w), 2.0 ** -3
        sw = 2.0 ** -rng.integers(5, 8, n)
        xd = g.add_node("dequantize", [xq, c(sx, np.float32), c(zx, np.uint8)]).output
        wd = g.add_node("dequantize", [c(w, np.int8), c(sw, np.float32),
                                       c(np.zeros(n), np.int8)], {"axis": 0}).output
        bd = g.add_node("dequantize", [c(rng.integers(-300, 300, n), np.int32),
                                       c(sx * sw, np.float32), c(np.zeros(n), np.int32)],
                        {"axis": 0}).output
        y = g.add_node("conv2d", [xd, wd, bd], attrs).output
        return g.add_node("quantize", [y, c(2.0 ** -3, np.float32), c(zy, np.uint8)],
                          {"dtype": "u8"}).output

    x = g.add_input(TensorType("f32", (1, 16, 6, 6)), "x")
    h = g.add_node("quantize", [x, c(2.0 ** -3, np.float32), c(0, np.uint8)],
                   {"dtype": "u8"}).output
    h = conv(h, 0, rng.integers(-60, 61, (16, 16, 1, 1)), {}, zy=3)
    g.outputs = [conv(h, 3, rng.integers(-60, 61, (16, 16, 3, 3)), {"padding": (1, 1)}, zy=0)]
    target = btvm.resolve_target("host")
    mod = btvm.optimize_relax(btvm.lower(g).mod, target)
    names = [gv.name_hint for gv, _ in mod.functions_items()]
    assert not [n for n in names if re.search(r"transpose\d*_pad\d*_transpose", n)], names
    xs = [np.random.default_rng(1).uniform(0, 20, (1, 16, 6, 6)).astype(np.float32)]
    np.testing.assert_array_equal(btvm.build(g, target).run(xs)[0], run(g, xs)[0].numpy())
