"""ir/frontends/onnx/: ONNX → IR.

Each op handler on a small hand-made model (structure of the IR it gives, numbers against
onnxruntime on the original model, and ONNX → IR → ONNX → IR equality); the fusions; the
reference models exported by ``torch.onnx.export``; symbolic batch dims; bad input.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from shrinkc.backends.onnx import export_model, run_onnxruntime
from shrinkc.ir.frontends.onnx import OnnxImportError, load_onnx, supported_ops
from shrinkc.ir import batch
from shrinkc.ir.interpreter import random_inputs, run_numpy
from shrinkc.ir.text import graph_diff
from shrinkc.tools import zoo
from suite import assert_close  # the suite's comparison policy

F, I64, I8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT8
INT_MAX = 2**63 - 1


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed + sum(shape)).standard_normal(shape) * scale).astype(
        np.float32)


def make(nodes, inputs: dict, outputs, inits: dict | None = None, opset: int = 17,
         name: str = "g", checked: bool = True) -> onnx.ModelProto:
    """A model: ``inputs`` maps name -> shape (float) or (elem type, shape); ``outputs`` is a
    list of names (float) or a dict name -> elem type or (elem type, shape) (where ONNX shape
    inference cannot tell: the checker wants output shapes)."""
    ins = [oh.make_tensor_value_info(k, *(v if isinstance(v[0], int) and len(v) == 2 and
                                          isinstance(v[1], (list, tuple)) else (F, v)))
           for k, v in inputs.items()]
    outputs = outputs if isinstance(outputs, dict) else {o: F for o in outputs}
    outs = [oh.make_tensor_value_info(k, *(t if isinstance(t, tuple) else (t, None)))
            for k, t in outputs.items()]
    init = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    m = oh.make_model(oh.make_graph(nodes, name, ins, outs, init),
                      opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 10
    m = onnx.shape_inference.infer_shapes(m)  # output shapes (the checker wants them)
    if checked:
        onnx.checker.check_model(m)
    return m


def node(op: str, ins: list[str], outs: list[str], name: str | None = None, **attrs):
    return oh.make_node(op, ins, outs, name=name or f"{op.lower()}_{outs[0]}", **attrs)


def ops(g) -> Counter:
    return Counter(n.op for n in g.nodes)


def opset_of(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain == "")


def check(m: onnx.ModelProto, input_shapes=None, rt_opset: int | None = None, inputs=None):
    """Import; compare the interpreter with onnxruntime on the original model; export and
    re-import (ONNX → IR → ONNX → IR) and require an equal graph."""
    g = load_onnx(m, input_shapes)
    xs = inputs if inputs is not None else random_inputs(g, seed=1)
    got = run_numpy(g, xs)
    ref = run_onnxruntime(m.SerializeToString(), xs, threads=1)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert_close(got, ref, depth=g)  # onnxruntime's float32 kernels: tests/conftest.py
    again = load_onnx(export_model(g, rt_opset or opset_of(m)))
    assert graph_diff(g, again) is None, graph_diff(g, again)
    return g


# ============================================================================ op handlers
def test_conv_attributes_and_names():
    m = make([node("Conv", ["x", "W", "B"], ["y"], name="stem/conv", strides=[2, 1],
                   pads=[1, 0, 1, 0], dilations=[1, 2], group=2)],
             {"x": [1, 4, 9, 9]}, ["y"], {"W": rand(6, 2, 3, 3), "B": rand(6)})
    g = check(m)
    (n,) = g.nodes
    assert n.op == "conv2d" and n.loc == "stem/conv"
    assert n.attrs == {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}
    assert [v.name for v in n.inputs] == ["x", "W", "B"] and n.output.name == "y"
    assert g.name == "g"


def test_conv_auto_pad_same_is_symmetric_for_odd_kernels():
    m = make([node("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER")], {"x": [1, 3, 8, 8]},
             ["y"], {"W": rand(4, 3, 3, 3)})
    assert check(m).nodes[0].attrs["padding"] == (1, 1)


def test_conv_transpose():
    m = make([node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                   output_padding=[1, 1])], {"x": [1, 4, 5, 5]}, ["y"],
             {"W": rand(4, 3, 3, 3), "B": rand(3)})
    g = check(m)
    assert g.nodes[0].op == "conv_transpose2d" and g.nodes[0].attrs["output_padding"] == (1, 1)


def test_gemm_transb_is_linear_with_the_initializer_as_weight():
    w = rand(7, 5)
    m = make([node("Gemm", ["x", "W", "B"], ["y"], transB=1)], {"x": [3, 5]}, ["y"],
             {"W": w, "B": rand(7)})
    g = check(m)
    assert ops(g) == {"linear": 1}
    np.testing.assert_array_equal(g.constants["W"].data, w)


def test_gemm_alpha_beta_and_untransposed_weight():
    w = rand(5, 7)
    m = make([node("Gemm", ["x", "W", "C"], ["y"], alpha=2.0, beta=0.5)], {"x": [3, 5]}, ["y"],
             {"W": w, "C": rand(1, 7)})
    g = check(m)
    assert ops(g) == {"linear": 1}  # alpha folded into the weight, beta into the bias
    np.testing.assert_allclose(g.constants["W"].data, 2 * w.T)  # [out, in], name kept
    assert g.constants["C"].shape == (7,)


def test_gemm_with_computed_operands():
    m = make([node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, beta=2.0)],
             {"a": [5, 3], "b": [4, 5], "c": [3, 4]}, ["y"])
    assert ops(check(m)) == {"permute": 2, "matmul": 1, "mul": 1, "add": 1}


def test_matmul_add_fuses_into_linear():
    w = rand(5, 7)
    m = make([node("MatMul", ["x", "W"], ["mm"], name="fc/MatMul"),
              node("Add", ["B", "mm"], ["y"], name="fc/Add")],
             {"x": [2, 3, 5]}, ["y"], {"W": w, "B": rand(7)})
    g = check(m)
    (n,) = g.nodes
    assert n.op == "linear" and n.loc == "fc/MatMul" and n.output.name == "y"
    np.testing.assert_array_equal(g.constants["W"].data, w.T)


def test_shared_weight_keeps_its_name_once():
    """One initializer used transposed (linear) and as-is (add): two constants."""
    m = make([node("MatMul", ["x", "W"], ["mm"]), node("Add", ["mm", "W"], ["y"])],
             {"x": [4, 4]}, ["y"], {"W": rand(4, 4)})
    g = check(m)
    assert ops(g) == {"linear": 1, "add": 1}
    assert sorted(g.constants) == ["W", "W_c"]


def test_matmul_of_computed_tensors():
    m = make([node("MatMul", ["a", "b"], ["y"])], {"a": [2, 3, 4], "b": [2, 4, 5]}, ["y"])
    assert ops(check(m)) == {"matmul": 1}


def test_batch_norm():
    m = make([node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
             {"x": [2, 4, 3, 3]}, ["y"], {"s": rand(4), "b": rand(4), "m": rand(4),
                                          "v": np.abs(rand(4)) + 0.5})
    g = check(m)
    assert ops(g) == {"batch_norm": 1} and g.nodes[0].attrs["eps"] == 1e-3


@pytest.mark.parametrize("axis", [-1, -2])
def test_layer_norm(axis):
    shape = (6,) if axis == -1 else (5, 6)
    m = make([node("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis)], {"x": [2, 5, 6]},
             ["y"], {"s": rand(*shape), "b": rand(*shape)})
    g = check(m)
    assert g.nodes[0].op == "layer_norm" and g.nodes[0].attrs["normalized_shape"] == shape
    assert g.nodes[0].attrs["eps"] == 1e-5  # ONNX stores f32 9.99999974e-06


def test_group_norm_opset18_per_group_scale_becomes_per_channel():
    m = make([node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)],
             {"x": [2, 6, 3, 3]}, {"y": (F, [2, 6, 3, 3])},
             {"s": np.array([1.5, -0.5], np.float32),
                                          "b": np.array([0.1, 0.2], np.float32)}, opset=18,
             checked=False)  # GroupNormalization-18 is deprecated (onnxruntime runs it)
    g = check(m, rt_opset=21)  # below 21 group_norm is exported written out
    np.testing.assert_array_equal(g.constants["s"].data, [1.5, 1.5, 1.5, -0.5, -0.5, -0.5])


def test_group_norm_opset21():
    m = make([node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3)],
             {"x": [2, 6, 3, 3]}, {"y": (F, [2, 6, 3, 3])}, {"s": rand(6), "b": rand(6)},
             opset=21)
    assert ops(check(m)) == {"group_norm": 1}


def test_unary_chain():
    names = ["Relu", "Sigmoid", "Tanh", "HardSwish", "Neg", "Exp", "Sqrt", "Erf"]
    nodes = [node(op, ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"]) for i, op in enumerate(names)]
    g = check(make(nodes, {"x": [2, 8]}, [f"t{len(names) - 1}"]))
    assert [n.op for n in g.nodes] == ["relu", "sigmoid", "tanh", "hardswish", "neg", "exp",
                                       "sqrt", "erf"]


def test_hard_sigmoid_torch_parameters_and_onnx_defaults():
    m = make([node("HardSigmoid", ["x"], ["a"], alpha=1 / 6, beta=0.5),
              node("HardSigmoid", ["a"], ["y"])], {"x": [2, 8]}, ["y"])
    assert ops(check(m)) == {"hardsigmoid": 1, "mul": 1, "add": 1, "hardtanh": 1}


def test_clip_forms():
    m = make([node("Clip", ["x", "lo", "hi"], ["a"]), node("Clip", ["a", "zero"], ["b"]),
              node("Clip", ["b", "", "hi"], ["y"])], {"x": [2, 8]}, ["y"],
             {"lo": np.array(-1.0, np.float32), "hi": np.array(0.5, np.float32),
              "zero": np.array(0.0, np.float32)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["hardtanh", "relu", "hardtanh"]
    assert g.nodes[2].attrs == {"min_val": -np.inf, "max_val": 0.5}


def _half(x: str = "x"):
    return {"half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
            "sqrt2": np.array(np.sqrt(2.0), np.float32),
            "rsqrt2": np.array(1 / np.sqrt(2.0), np.float32)}


@pytest.mark.parametrize("form", ["torch", "mul_first", "half_first"])
def test_erf_gelu_is_fused(form):
    if form == "torch":  # x / sqrt2 -> erf -> +1 -> * x -> * 0.5 (torch.onnx.export)
        nodes = [node("Div", ["x", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]),
                 node("Add", ["e", "one"], ["a"]), node("Mul", ["x", "a"], ["m"]),
                 node("Mul", ["m", "half"], ["y"])]
    elif form == "mul_first":  # (x * 0.5) * (1 + erf(x * 1/sqrt2))
        nodes = [node("Mul", ["x", "rsqrt2"], ["d"]), node("Erf", ["d"], ["e"]),
                 node("Add", ["one", "e"], ["a"]), node("Mul", ["x", "half"], ["h"]),
                 node("Mul", ["h", "a"], ["y"])]
    else:  # ((1 + erf) * 0.5) * x
        nodes = [node("Div", ["x", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]),
                 node("Add", ["e", "one"], ["a"]), node("Mul", ["a", "half"], ["m"]),
                 node("Mul", ["m", "x"], ["y"])]
    g = check(make([node("Relu", ["inp"], ["x"])] + nodes, {"inp": [2, 16]}, ["y"], _half()))
    assert ops(g) == {"relu": 1, "gelu": 1}
    assert g.nodes[1].output.name == "y" and g.nodes[1].attrs["approximate"] == "none"
    assert not g.constants  # the pattern's scalars are gone


def test_erf_gelu_not_fused_when_an_intermediate_is_used_elsewhere():
    nodes = [node("Div", ["x", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]),
             node("Add", ["e", "one"], ["a"]), node("Mul", ["x", "a"], ["m"]),
             node("Mul", ["m", "half"], ["y"])]
    g = check(make(nodes, {"x": [2, 16]}, ["y", "e"], _half()))
    assert "gelu" not in ops(g) and ops(g)["erf"] == 1


def test_tanh_gelu_pattern_and_gelu_op():
    c = {"three": np.array(3.0, np.float32), "k": np.array(0.044715, np.float32),
         "s": np.array(np.sqrt(2 / np.pi), np.float32), **_half()}
    nodes = [node("Pow", ["x", "three"], ["p"]), node("Mul", ["p", "k"], ["a"]),
             node("Add", ["x", "a"], ["b"]), node("Mul", ["b", "s"], ["cc"]),
             node("Tanh", ["cc"], ["t"]), node("Add", ["t", "one"], ["o"]),
             node("Mul", ["x", "o"], ["m"]), node("Mul", ["m", "half"], ["y"])]
    g = check(make(nodes, {"x": [2, 16]}, ["y"], c))
    assert ops(g) == {"gelu": 1} and g.nodes[0].attrs["approximate"] == "tanh"
    m20 = make([node("Gelu", ["x"], ["a"]), node("Gelu", ["a"], ["y"], approximate="tanh")],
               {"x": [2, 16]}, ["y"], opset=20)
    assert [n.attrs["approximate"] for n in check(m20).nodes] == ["none", "tanh"]


def test_silu_pattern():
    g = check(make([node("Sigmoid", ["x"], ["s"]), node("Mul", ["s", "x"], ["y"])],
                   {"x": [2, 16]}, ["y"]))
    assert ops(g) == {"silu": 1}


def test_softmax_and_arithmetic_with_broadcast_constants():
    nodes = [node("Softmax", ["x"], ["s"], axis=1), node("LogSoftmax", ["s"], ["l"]),
             node("Add", ["l", "c1"], ["a"]), node("Sub", ["c2", "a"], ["b"]),
             node("Mul", ["b", "c3"], ["c"]), node("Div", ["c", "c4"], ["d"]),
             node("Pow", ["d", "two"], ["y"])]
    inits = {"c1": rand(5), "c2": rand(3, 1), "c3": np.array(0.5, np.float32),
             "c4": np.abs(rand(1, 5)) + 1, "two": np.array(2.0, np.float32)}
    g = check(make(nodes, {"x": [3, 5]}, ["y"], inits))
    assert [n.op for n in g.nodes] == ["softmax", "log_softmax", "add", "sub", "mul", "div",
                                       "pow"]
    assert g.nodes[0].attrs["axis"] == 1


def test_integer_div_is_refused():
    m = make([node("Div", ["x", "two"], ["y"], name="idiv")], {"x": (I64, [3])}, {"y": I64},
             {"two": np.array(2, np.int64)})
    with pytest.raises(OnnxImportError, match=r"idiv.*integer Div"):
        load_onnx(m)


def test_concat_and_split_forms():
    m = make([node("Concat", ["x", "c"], ["cat"], axis=1),
              node("Split", ["cat", "sizes"], ["a", "b"], axis=1),
              node("Split", ["b"], ["b1", "b2"], axis=-1)],
             {"x": [2, 3, 4]}, ["a", "b1", "b2"], {"c": rand(2, 2, 4),
                                                  "sizes": np.array([1, 4], np.int64)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["concat", "split", "split"]
    assert g.nodes[1].attrs["sizes"] == (1, 4) and g.nodes[2].attrs["sizes"] == (2, 2)
    assert [o.name for o in g.nodes[1].outputs] == ["a", "b"]


def test_split_num_outputs_opset18():
    m = make([node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)], {"x": [2, 7]},
             ["a", "b", "c"], opset=18)
    assert check(m).nodes[0].attrs["sizes"] == (3, 3, 1)


def test_slice_several_axes_becomes_a_chain():
    ints = lambda *v: np.array(v, np.int64)
    m = make([node("Slice", ["x", "s", "e", "ax", "st"], ["y"])], {"x": [2, 6, 8]}, ["y"],
             {"s": ints(-4, 1, 0), "e": ints(INT_MAX, 7, INT_MAX), "ax": ints(2, 1, 0),
              "st": ints(2, 1, 1)})
    g = check(m)
    assert [n.attrs for n in g.nodes] == [{"axis": 2, "start": 4, "end": 8, "step": 2},
                                          {"axis": 1, "start": 1, "end": 6, "step": 1}]
    assert g.nodes[-1].output.name == "y"


def test_slice_with_negative_step_is_refused():
    m = make([node("Slice", ["x", "s", "e", "ax", "st"], ["y"], name="rev")], {"x": [4]}, ["y"],
             {k: np.array([v], np.int64) for k, v in
              {"s": -1, "e": -INT_MAX, "ax": 0, "st": -1}.items()})
    with pytest.raises(OnnxImportError, match=r"rev.*positive steps"):
        load_onnx(m)


def test_shape_ops():
    ints = lambda *v: np.array(v, np.int64)
    nodes = [node("Reshape", ["x", "shp"], ["r"]), node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             node("Unsqueeze", ["t", "ax0"], ["u"]), node("Squeeze", ["u", "ax0"], ["s"]),
             node("Flatten", ["s"], ["f1"], axis=1), node("Flatten", ["s"], ["f0"], axis=0),
             node("Flatten", ["x"], ["f2"], axis=2), node("Expand", ["f0", "eshape"], ["y"])]
    m = make(nodes, {"x": [2, 3, 4, 2]}, ["f1", "f2", "y"],
             {"shp": ints(0, -1, 2), "ax0": ints(0), "eshape": ints(3, 1, 1)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["reshape", "permute", "reshape", "reshape", "flatten",
                                       "reshape", "reshape", "expand"]
    assert g.nodes[0].attrs["shape"] == (2, 12, 2)
    assert g.nodes[-1].attrs["shape"] == (3, 1, 48)


def test_pools_and_reductions():
    nodes = [node("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1], ceil_mode=1),
             node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                  strides=[1, 1]),
             node("AveragePool", ["ap"], ["ap2"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                  strides=[1, 1], count_include_pad=1),
             node("GlobalAveragePool", ["ap2"], ["g"]),
             node("ReduceMean", ["x"], ["rm"], axes=[-1, 2], keepdims=0),
             node("ReduceSum", ["rm", "ax1"], ["y"], keepdims=1)]
    m = make(nodes, {"x": [1, 3, 9, 9]}, ["g", "y"], {"ax1": np.array([1], np.int64)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["max_pool2d", "avg_pool2d", "avg_pool2d",
                                       "adaptive_avg_pool2d", "mean", "sum"]
    assert [n.attrs.get("count_include_pad") for n in g.nodes[1:3]] == [False, True]
    assert g.nodes[4].attrs == {"axes": (-1, 2), "keepdim": False}
    m18 = make([node("ReduceMean", ["x", "ax"], ["y"])], {"x": [2, 3, 4]}, ["y"],
               {"ax": np.array([1], np.int64)}, opset=18)
    assert check(m18).nodes[0].attrs == {"axes": (1,), "keepdim": True}


def test_asymmetric_pads_become_a_pad_op():
    nodes = [node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
             node("Conv", ["m", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
             node("AveragePool", ["c"], ["y"], kernel_shape=[2, 2], pads=[1, 0, 0, 1])]
    m = make(nodes, {"x": [1, 2, 5, 5]}, ["y"], {"w": rand(3, 2, 2, 2)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["pad", "max_pool2d", "pad", "conv2d", "pad",
                                       "avg_pool2d", "mul"]  # mul: count_include_pad=0
    assert g.nodes[0].attrs == {"pads": (0, 0, 0, 0, 0, 0, 1, 1), "mode": "constant",
                                "value": -math.inf}


def test_asymmetric_pads_with_ceil_mode_are_refused_with_the_node_named():
    m = make([node("MaxPool", ["x"], ["y"], name="pool1", kernel_shape=[2, 2],
                   pads=[0, 0, 1, 1], ceil_mode=1)], {"x": [1, 1, 4, 4]}, ["y"])
    with pytest.raises(OnnxImportError, match=r"'pool1' \(MaxPool\).*asymmetric pads"):
        load_onnx(m)


def test_1d_convs_and_pools_are_2d_on_a_view():
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1], dilations=[2], group=2),
             node("MaxPool", ["c"], ["m"], kernel_shape=[3], strides=[2]),
             node("AveragePool", ["m"], ["y"], kernel_shape=[2], pads=[0, 1])]
    m = make(nodes, {"x": [2, 4, 11]}, ["y"], {"w": rand(6, 2, 3), "b": rand(6)})
    g = check(m)
    assert ops(g) == {"reshape": 6, "conv2d": 1, "max_pool2d": 1, "pad": 1, "avg_pool2d": 1,
                      "mul": 1}
    assert g.node("c").op == "reshape" and g.node("c").inputs[0].producer.op == "conv2d"


def test_gather_with_nd_indices_and_legacy_prelu():
    nodes = [node("Gather", ["x", "idx"], ["g"], axis=1),
             node("PRelu", ["g", "slope"], ["y"])]
    m = make(nodes, {"x": [2, 5, 3]}, ["y"],
             {"idx": np.array([[[4, 0], [-1, 2]]], np.int64), "slope": rand(3)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["gather", "prelu"]
    assert g.node("g").output.shape == (2, 1, 2, 2, 3)
    # opset < 7 exports (ONNX's own node tests): one slope per channel as a 1-D [C] tensor
    legacy = make([node("PRelu", ["x", "slope"], ["y"])], {"x": [2, 3, 4]}, ["y"],
                  {"slope": rand(3)}, checked=False)
    g = load_onnx(legacy)
    assert g.nodes[0].inputs[1].shape == (3, 1)


def test_even_lrn_is_refused():
    m = make([node("LRN", ["x"], ["y"], name="norm1", size=4)], {"x": [1, 6, 3, 3]}, ["y"])
    with pytest.raises(OnnxImportError, match=r"'norm1' \(LRN\).*even size"):
        load_onnx(m)


def test_gather_as_embedding_and_as_index():
    m = make([node("Gather", ["table", "ids"], ["e"], axis=0),
              node("Gather", ["e", "one"], ["y"], axis=1)],
             {"ids": (I64, [2, 3])}, ["y"], {"table": rand(10, 4), "one": np.array(1, np.int64)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["embedding", "slice", "reshape"]
    assert g.nodes[0].inputs[1].name == "table"


def test_identity_dropout_cast_constant():
    c = oh.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(rand(4)))
    nodes = [c, node("Identity", ["x"], ["i"]), node("Dropout", ["i", "ratio"], ["d"]),
             node("Add", ["d", "k"], ["a"]), node("Cast", ["a"], ["same"], to=F),
             node("Cast", ["same"], ["y"], to=TensorProto.DOUBLE)]
    m = make(nodes, {"x": [2, 4]}, {"y": TensorProto.DOUBLE},
             {"ratio": np.array(0.25, np.float32)})
    g = check(m)
    assert [n.op for n in g.nodes] == ["dropout", "add", "cast"]
    assert g.nodes[0].inputs[0].name == "x" and g.nodes[0].attrs["p"] == 0.25
    assert "k" in g.constants


def test_identity_output_keeps_its_name():
    g = check(make([node("Identity", ["x"], ["y"])], {"x": [3]}, ["y"]))
    assert ops(g) == {"identity": 1} and g.outputs[0].name == "y"


def test_qdq_stays_quantized():
    scale = np.abs(rand(6)) / 50 + 1e-3
    wq = np.clip(np.round(rand(6, 3, 3, 3) / scale[:, None, None, None]), -127, 127)
    nodes = [node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    m = make(nodes, {"x": [1, 3, 6, 6]}, ["y"],
             {"xs": np.array(0.02, np.float32), "xz": np.array(3, np.int8),
              "wq": wq.astype(np.int8), "ws": scale, "wz": np.zeros(6, np.int8)})
    g = check(m)
    assert ops(g) == {"quantize": 1, "dequantize": 2, "conv2d": 1}
    dq_w = g.node("wd")
    assert dq_w.attrs["axis"] == 0 and g.constants["wq"].dtype == "i8"
    assert g.node("xq").attrs == {"dtype": "i8", "axis": None}


def test_shape_chain_folds_once_the_batch_is_known():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch writes x.view(b, -1)."""
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["b"], axis=0),
             node("Unsqueeze", ["b", "ax0"], ["bu"]), node("Concat", ["bu", "m1"], ["shp"], axis=0),
             node("Reshape", ["x", "shp"], ["y"])]
    m = make(nodes, {"x": [("N"), 4, 3, 3]}, ["y"],
             {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64),
              "m1": np.array([-1], np.int64)})
    g = check(m, input_shapes={"x": (2, 4, 3, 3)})
    # folded at batch 2 and 3 and compared: the batch position becomes -1
    assert ops(g) == {"reshape": 1} and g.nodes[0].attrs["shape"] == (-1, 36)
    assert g.inputs[0].shape == (2, 4, 3, 3) and batch.is_polymorphic(g)
    x = rand(5, 4, 3, 3)
    assert_close(run_numpy(g, [x]), run_onnxruntime(m.SerializeToString(), [x], threads=1))
    assert load_onnx(m).inputs[0].shape == (1, 4, 3, 3)  # nominal batch 1 by default


def test_shape_chain_used_as_data_stays_static():
    """x / x.shape[0]: the folded batch size is a constant operand, which cannot follow the
    batch; the graph is static-batch and says which constant."""
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["b"], axis=0),
             node("Cast", ["b"], ["bf"], to=F), node("Div", ["x", "bf"], ["y"])]
    m = make(nodes, {"x": ["N", 4]}, ["y"], {"zero": np.array(0, np.int64)})
    g = load_onnx(m)
    assert not batch.is_polymorphic(g) and g.inputs[0].shape == (1, 4)
    assert "changes with the batch" in g.meta["batch_static"]
    with pytest.raises(batch.BatchError, match="static-batch.*cannot run at batch 3.*changes "
                                               "with the batch"):
        run_numpy(g, [rand(3, 4)])
    assert_close(run_numpy(g, [rand(1, 4)]), run_onnxruntime(m.SerializeToString(), [rand(1, 4)]))


def test_reshape_that_moves_the_batch_stays_static():
    m = make([node("Reshape", ["x", "shp"], ["y"], name="split_batch")], {"x": ["N", 6]}, ["y"],
             {"shp": np.array([2, -1], np.int64)})
    g = load_onnx(m)
    assert not batch.is_polymorphic(g)
    assert "node y (split_batch): reshape moves the batch out of dim 0" in g.meta["batch_static"]


def test_old_opset_is_upgraded():
    """Opset 11: Unsqueeze axes and Split sizes are attributes; upgraded to 13 on import."""
    m = make([node("Unsqueeze", ["x"], ["u"], axes=[0]),
              node("Split", ["u"], ["a", "b"], axis=2, split=[1, 3])],
             {"x": [2, 4]}, ["a", "b"], opset=11)
    g = load_onnx(m)
    assert [n.op for n in g.nodes] == ["reshape", "split"]
    assert g.nodes[1].attrs["sizes"] == (1, 3) and g.meta["opset"] == 13
    x = torch.randn(2, 4)
    for a, b in zip(run_numpy(g, [x]), run_onnxruntime(m, [x])):
        np.testing.assert_array_equal(a, b)


def test_every_handled_op_is_listed():
    assert {"Conv", "Gemm", "MatMul", "Erf", "QuantizeLinear", "Shape"} <= set(supported_ops())


# ============================================================================ bad input
@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    m = make([node("Conv", ["x", "W"], ["c"]), node("Relu", ["c"], ["y"])], {"x": [1, 3, 8, 8]},
             ["y"], {"W": rand(16, 3, 3, 3)})
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated_file(small_onnx, tmp_path, cut):
    data = small_onnx.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(OnnxImportError, match=r"truncated\.onnx.*(truncated or corrupt)"):
        load_onnx(bad)


def test_random_bytes_and_missing_file(tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(OnnxImportError, match="random.onnx"):
        load_onnx(bad)
    with pytest.raises(OnnxImportError, match="no such file"):
        load_onnx(tmp_path / "nope.onnx")
    with pytest.raises(OnnxImportError, match="not an ONNX model"):
        load_onnx(b"\x00\x01garbage")


def test_invalid_model_fails_the_checker():
    m = make([node("Relu", ["x"], ["y"])], {"x": [2]}, ["y"])
    m.graph.node[0].input[0] = "undefined"
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        load_onnx(m)


def test_unsupported_op_names_node_and_op_type():
    m = make([node("Relu", ["a"], ["r"]),
              node("Einsum", ["r", "b"], ["y"], name="attn/einsum_3", equation="ij,jk->ik")],
             {"a": [2, 3], "b": [3, 4]}, ["y"])
    with pytest.raises(OnnxImportError) as e:
        load_onnx(m)
    assert "'attn/einsum_3'" in str(e.value) and "'Einsum'" in str(e.value)
    assert "\n" not in str(e.value).split("Supported")[0]


def test_symbolic_dims_need_input_shapes():
    m = make([node("Relu", ["x"], ["y"])], {"x": ["batch", 3, "len"]}, ["y"])
    with pytest.raises(OnnxImportError) as e:
        load_onnx(m)
    msg = str(e.value)
    assert "input 'x' dim 0 ('batch')" in msg and "dim 2 ('len')" in msg
    assert "input_shapes" in msg
    with pytest.raises(OnnxImportError, match=r"not inputs of the model.*\['x'\]"):
        load_onnx(m, {"y": (1, 3, 4)})
    with pytest.raises(OnnxImportError, match="rank 3"):
        load_onnx(m, {"x": (1, 3)})
    with pytest.raises(OnnxImportError, match="dim 1 is 3 in the model but input_shapes gives 5"):
        load_onnx(m, {"*": (1, 5, 4)})
    assert load_onnx(m, {"*": (2, 3, 4)}).inputs[0].shape == (2, 3, 4)
    assert load_onnx(m, {"x": (1, 3, 7)}).inputs[0].shape == (1, 3, 7)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # not mutated


def test_star_does_not_change_static_inputs(caplog):
    m = make([node("Relu", ["x"], ["y"])], {"x": [1, 3]}, ["y"])
    with caplog.at_level(logging.WARNING):
        g = load_onnx(m, {"*": (4, 3)})
    assert g.inputs[0].shape == (1, 3) and "ignored" in caplog.text


# ============================================================================ reference models


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """Every reference model written by torch's own exporter (TorchScript, opset 17)."""
    folder = tmp_path_factory.mktemp("torch_onnx")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in zoo.MODELS:
            model, x = tiny_model(name)
            paths[name] = folder / f"{name}.onnx"
            torch.onnx.export(model, (x,), str(paths[name]), dynamo=False, opset_version=17,
                              input_names=["x"])
        model, x = tiny_model("vit")
        paths["vit_dynamic"] = folder / "vit_dynamic.onnx"
        torch.onnx.export(model, (x,), str(paths["vit_dynamic"]), dynamo=False,
                          opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return paths


def test_torch_exported_model_matches_onnxruntime(exported, tiny_name):
    name = tiny_name
    g = load_onnx(exported[name])
    x = torch.randn(g.inputs[0].shape, generator=torch.Generator().manual_seed(2))
    ref = run_onnxruntime(exported[name], [x])
    assert_close(run_numpy(g, [x]), ref, depth=g)
    assert float(np.abs(ref[0]).max()) > 1e-3  # the check is not vacuous
    assert all(n.loc for n in g.nodes)  # every node maps back to an ONNX node
    if name == "vit":
        assert ops(g)["gelu"] == 2 and ops(g)["linear"] == 9 and "erf" not in ops(g)


def test_onnx_ir_onnx_ir_round_trip(exported, tiny_name, tmp_path):
    name = tiny_name
    from shrinkc.backends.onnx import to_onnx

    g1 = load_onnx(exported[name])
    g2 = load_onnx(to_onnx(g1, tmp_path / "again.onnx"))
    assert graph_diff(g1, g2) is None, graph_diff(g1, g2)


def test_symbolic_batch_file(exported):
    """torch.onnx.export with a dynamic batch: Shape chains everywhere in the attention."""
    path = exported["vit_dynamic"]
    g = load_onnx(path)  # batch-polymorphic, nominal batch 1
    assert g.inputs[0].shape == (1, 3, 32, 32) and batch.is_polymorphic(g)
    assert batch.batch_outputs(g) == g.outputs
    assert all(n.attrs["shape"][0] == -1 for n in g.nodes if n.op == "reshape")
    for n in (1, 7):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        assert_close(run_numpy(g, [x]), run_onnxruntime(path, [x]), depth=g)
    g = load_onnx(path, input_shapes={"*": (3, 3, 32, 32)})
    assert g.inputs[0].shape == (3, 3, 32, 32) and g.outputs[0].shape == (3, 10)
    assert not {"Shape", "Gather"} & set(ops(g))  # the shape chains folded away
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert_close(run_numpy(g, [x]), run_onnxruntime(path, [x]), depth=g)
    g1 = load_onnx(path, input_shapes={"x": (1, 3, 32, 32)})
    assert [n.op for n in g1.nodes] == [n.op for n in load_onnx(exported["vit"]).nodes]


def test_cli_loads_onnx(exported, capsys):
    from shrinkc.tools.cli import main
    from shrinkc.tools.load import load_model

    g = load_model(str(exported["vit_dynamic"]), (2, 3, 32, 32))
    assert g.inputs[0].shape == (2, 3, 32, 32)
    assert main(["inspect", str(exported["lenet5"])]) == 0
    assert "/conv1/Conv" in capsys.readouterr().out
    assert main(["inspect", str(exported["vit_dynamic"])]) == 0  # at nominal batch 1
    assert "f32[1,10]" in capsys.readouterr().out


def test_bert_as_torch_onnx_exports_it():
    """The standard BERT export (torch.onnx, TorchScript path, dynamic batch and sequence):
    Gather on the embeddings, the attention-mask arithmetic behind Shape / Expand (folded over
    several rounds once the sizes are given), Where / And on the mask."""
    import io
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=64, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, attn_implementation="eager")
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask):
            return self.bert(input_ids=ids, attention_mask=mask).to_tuple()

    ids, mask = torch.randint(0, 100, (1, 8)), torch.tensor([[1] * 6 + [0] * 2])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(), (ids, mask), buf, input_names=["input_ids", "mask"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}},
                          opset_version=17, dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    assert {"Shape", "Range", "Where", "Expand"} <= {n.op_type for n in m.graph.node}
    g = load_onnx(m, input_shapes={"*": (1, 8)})
    assert not {"Shape", "Range"} & {n.op for n in g.nodes}
    assert ops(g)["scaled_dot_product_attention"] == 2 and ops(g)["linear"] == 13
    assert "softmax" not in ops(g)  # the attention pattern fused back into one op per layer
    want = run_onnxruntime(m.SerializeToString(), [ids.numpy(), mask.numpy()], threads=1)
    for got in (run_numpy(g, [ids, mask]),
                run_onnxruntime(export_model(g), [ids.numpy(), mask.numpy()], threads=1)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
