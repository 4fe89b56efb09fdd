"""passes/quantize.py: the QDQ structure it writes, its numbers (exact where the float graph
is already on the int8 grid), interpreter / onnxruntime / TVM agreement to one
quantization step on reference models (with 7-bit weights too), dynamic quantization,
refusals and errors, and its stats."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from shrinkc import optimize
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.interpreter import run
from shrinkc.passes import PassError, PipelineError
from shrinkc.passes.analyses import calibration as cal
from shrinkc.passes.quantize import QuantizePlan
from shrinkc.tools.int8_agreement import (
    TIE_SHARE,
    TIE_STEPS,
    compare_segments,
    cut_at_quantizes,
    segment_feeds,
)
from suite import assert_close

CONV_RELU_CONV = """\
graph "crc" (%x: f32[1,3,8,8]) {
  %w1: f32[4,3,3,3] = const #a1
  %b1: f32[4] = const #b1
  %w2: f32[6,4,1,1] = const #a2
  %y1: f32[1,4,8,8] = conv2d(%x, %w1, %b1) {stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1} loc("conv1")
  %r1: f32[1,4,8,8] = relu(%y1) loc("relu1")
  %p1: f32[1,4,4,4] = max_pool2d(%r1) {kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=false}
  %y2: f32[1,6,4,4] = conv2d(%p1, %w2) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("conv2")
  %y3: f32[1,6,4,4] = conv2d(%p1, %w2) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("conv3")
  %s: f32[1,6,4,4] = add(%y2, %y3)
  return %s
}
"""

# the nodes quantize writes for it (constants elided): x quantized once; relu1 absorbed
# into the quantize after conv1; the max pool's output shares relu1's scale; p1 feeds two
# convs through one dequantize; the weight w2 (shared) is quantized once; the convs'
# outputs are quantized because add reads them; the bias is int32
EXPECTED_NODES = """\
%x.q: u8[1,3,8,8] = quantize(%x, %x.scale, %x.zero_point) {dtype="u8", axis=none}
%x.dq: f32[1,3,8,8] = dequantize(%x.q, %x.scale, %x.zero_point) {axis=none}
%w1.dq: f32[4,3,3,3] = dequantize(%w1.q, %w1.scale, %w1.zero_point) {axis=0}
%b1.dq: f32[4] = dequantize(%b1.q, %b1.scale, %b1.zero_point) {axis=0}
%y1: f32[1,4,8,8] = conv2d(%x.dq, %w1.dq, %b1.dq) {stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1} loc("conv1")
%r1.q: u8[1,4,8,8] = quantize(%y1, %r1.scale, %r1.zero_point) {dtype="u8", axis=none}
%r1.dq: f32[1,4,8,8] = dequantize(%r1.q, %r1.scale, %r1.zero_point) {axis=none}
%p1: f32[1,4,4,4] = max_pool2d(%r1.dq) {kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=false}
%p1.q: u8[1,4,4,4] = quantize(%p1, %r1.scale, %r1.zero_point) {dtype="u8", axis=none}
%p1.dq: f32[1,4,4,4] = dequantize(%p1.q, %r1.scale, %r1.zero_point) {axis=none}
%w2.dq: f32[6,4,1,1] = dequantize(%w2.q, %w2.scale, %w2.zero_point) {axis=0}
%y2: f32[1,6,4,4] = conv2d(%p1.dq, %w2.dq) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("conv2")
%y2.q: u8[1,6,4,4] = quantize(%y2, %y2.scale, %y2.zero_point) {dtype="u8", axis=none}
%y2.dq: f32[1,6,4,4] = dequantize(%y2.q, %y2.scale, %y2.zero_point) {axis=none}
%y3: f32[1,6,4,4] = conv2d(%p1.dq, %w2.dq) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("conv3")
%y3.q: u8[1,6,4,4] = quantize(%y3, %y3.scale, %y3.zero_point) {dtype="u8", axis=none}
%y3.dq: f32[1,6,4,4] = dequantize(%y3.q, %y3.scale, %y3.zero_point) {axis=none}
%s: f32[1,6,4,4] = add(%y2.dq, %y3.dq)"""


def _node_lines(g: Graph) -> str:
    return "\n".join(line.strip() for line in str(g).splitlines()
                     if "=" in line and " const " not in line)


def _calib(g: Graph, n: int = 4, seed: int = 0, scale: float = 1.0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(v.shape, generator=gen) * scale for v in g.inputs] for _ in range(n)]


def test_structure_one_quantization_per_activation(ir, apply):
    g = ir(CONV_RELU_CONV)
    q, res = apply(g, "quantize", calibration=_calib(g))
    assert _node_lines(q) == EXPECTED_NODES
    s = res.stats
    assert (s["quantized_conv2d"], s["activations"], s["absorbed_activations"],
            s["shared_ranges"], s["bias_int32"]) == (3, 5, 1, 1, 1)
    assert s["calibration_batches"] == 4
    assert q.constants["w1.q"].dtype == "i8" and q.constants["b1.q"].dtype == "i32"
    # bias scale = input scale x per-channel weight scale (what QLinearConv assumes)
    np.testing.assert_array_equal(q.constants["b1.scale"].data,
                                  np.float32(q.constants["x.scale"].data)
                                  * q.constants["w1.scale"].data)
    assert "w2" not in q.constants and "b1" not in q.constants  # float weights are gone


def test_quantized_model_stays_close_to_float(reference_graphs):
    _, x, g = reference_graphs("resnet18")
    g = optimize(g, "fold-bn")
    calib = _calib(g, 4)
    q = optimize(g, "quantize", calibration=calib)
    with torch.no_grad():
        want, got = run(g, [x])[0], run(q, [x])[0]
    rel = float((got - want).norm() / want.norm())
    assert rel < 0.1, rel  # int8 error on a random-weight ResNet-18 (measured ~0.02)
    assert int(got.argmax()) == int(want.argmax())


def test_exact_when_the_float_graph_is_on_the_grid():
    """Inputs that are multiples of 0.5 in [0, 127.5] (u8 with scale 0.5), weights that are
    multiples of a power of two with a full-scale element per channel and biases that are
    multiples of sx·sw: quantization changes nothing but float rounding."""
    rng = np.random.default_rng(0)
    g = Graph("grid")
    x = g.add_input(TensorType("f32", (1, 3, 5, 5)), "x")
    k = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.float32)
    k[:, 0, 0, 0] = 127
    sw = np.float32([2.0 ** -6, 2.0 ** -7, 2.0 ** -5, 2.0 ** -8])
    w = g.add_constant(k * sw[:, None, None, None], "w")
    b = g.add_constant(rng.integers(-1000, 1000, 4).astype(np.float32) * 0.5 * sw, "b")
    g.outputs = [g.add_node("conv2d", [x, w, b], {"padding": (1, 1)}).output]
    data = [[torch.as_tensor(rng.integers(0, 256, (1, 3, 5, 5)).astype(np.float32) * 0.5)]
            for _ in range(3)]
    data[0][0][0, 0, 0, 0] = 127.5  # the calibration sees the full range
    data[0][0][0, 0, 0, 1] = 0.0
    q = optimize(g, "quantize", calibration=data)
    assert float(q.constants["x.scale"].data) == 0.5
    np.testing.assert_array_equal(q.constants["w.q"].data, k.astype(np.int8))
    for batch in data:
        with torch.no_grad():
            assert_close(run(q, batch), run(g, batch), depth=g)


def test_no_calibration_data_is_one_clear_error(ir, apply):
    g = ir(CONV_RELU_CONV)
    with pytest.raises(PassError, match=r"quantize\(activations=uint8\) needs calibration data"
                                         r".*--calibration FILE.npz\|zoo-data:mnist") as e:
        apply(g, "quantize")
    assert "pass 'quantize(" in str(e.value) and "Traceback" not in str(e.value)
    with pytest.raises(PassError, match="needs calibration data"):
        apply(g, "quantize", calibration=[])
    with pytest.raises(PassError, match=r"calibration batch 0: input %x expects f32\[1,3,8,8\]"):
        apply(g, "quantize", calibration=[[torch.zeros(2, 3, 8, 8)]])


def test_bad_options_are_pipeline_errors():
    with pytest.raises(PipelineError, match="entropy calibration needs bins >= 2048"):
        optimize(Graph("g"), "quantize(calibration=entropy, bins=512)")
    with pytest.raises(PipelineError, match="option activations"):
        optimize(Graph("g"), "quantize(activations=int4)")


UNSUPPORTED = """\
graph "mixed" (%x: f32[1,4,6,6]) {
  %wt: f32[4,2,3,3] = const #c1
  %w: f32[3,2,1,1] = const #c2
  %u: f32[1,2,8,8] = conv_transpose2d(%x, %wt) {stride=[1, 1], padding=[0, 0], output_padding=[0, 0], groups=1, dilation=[1, 1]} loc("up")
  %y: f32[1,3,8,8] = conv2d(%u, %w) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("head")
  %z: f32[1,3,8,8] = conv2d(%u, %w) {stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1} loc("skip.me")
  %o: f32[1,3,8,8] = add(%y, %z)
  return %o
}
"""


def test_unsupported_op_stays_float_and_is_listed(ir, caplog):
    g = ir(UNSUPPORTED)
    art: dict = {}
    with caplog.at_level(logging.INFO, logger="shrinkc.passes"):
        q = optimize(g, "quantize(exclude=['skip.*'])", calibration=_calib(g), artifacts=art)
    ops = [n.op for n in q.nodes]
    assert "conv_transpose2d" in ops and q.constants["wt"].dtype == "f32"
    plan: QuantizePlan = art["quantize"]
    assert plan.float_nodes == {"u (up)": "conv_transpose2d has no int8 form",
                                "z (skip.me)": "skipped_excluded"}
    assert plan.layers == ["y"]
    assert any("u (up) stays float" in r.message for r in caplog.records)
    from shrinkc.passes import PassContext, PassManager

    pm = PassManager("quantize(exclude=['skip.*'])", PassContext(calibration=_calib(g)))
    pm.run(g.clone())
    stats = pm.steps[0].result.stats
    assert stats["float_conv_transpose2d"] == 1 and stats["skipped_excluded"] == 1
    assert stats["quantized_conv2d"] == 1


def test_does_not_fire_twice_nor_without_targets(ir, apply):
    g = ir(CONV_RELU_CONV)
    q, _ = apply(g, "quantize", calibration=_calib(g))
    _, res = apply(q, "quantize", calibration=_calib(g))
    assert not res.changed and res.stats["skipped_quantized"] == 3
    plain = ir('graph "p" (%x: f32[2,3]) {\n  %y: f32[2,3] = relu(%x)\n  return %y\n}\n')
    _, res = apply(plain, "quantize")  # nothing to quantize: no calibration needed
    assert not res.changed


@pytest.mark.parametrize("forced", [True, False])
def test_reduce_range(ir, apply, monkeypatch, forced):
    g = ir(CONV_RELU_CONV)
    q, res = apply(g, f"quantize(reduce_range={forced})", calibration=_calib(g))
    assert np.abs(q.constants["w1.q"].data).max() == (64 if forced else 127)
    assert res.stats["reduce_range"] == int(forced)
    monkeypatch.setattr(cal, "needs_reduce_range", lambda *a, **k: forced)  # an AVX2-only CPU
    q, res = apply(g, "quantize", calibration=_calib(g))
    assert res.stats["reduce_range"] == int(forced) and res.stats["weight_qmax"] == (
        64 if forced else 127)


def test_int8_activations_per_tensor_and_asymmetric_weights(ir, apply):
    g = ir(CONV_RELU_CONV)
    q, _ = apply(g, "quantize(activations=int8, per_channel=false, symmetric_weights=false)",
                 calibration=_calib(g))
    assert q.constants["x.zero_point"].dtype == "i8"
    assert q.constants["w1.scale"].type.rank == 0
    assert q.value("w1.dq").producer.attrs["axis"] is None
    assert int(q.constants["w1.zero_point"].data) != 0
    x = _calib(g, 1, seed=5)[0]
    with torch.no_grad():
        rel = float((run(q, x)[0] - run(g, x)[0]).norm() / run(g, x)[0].norm())
    assert rel < 0.05


def test_bias_that_overflows_int32_stays_float(ir, apply):
    g = ir(CONV_RELU_CONV)
    g.constants["b1"].data = np.full(4, 1e9, np.float32)
    q, res = apply(g, "quantize", calibration=_calib(g, scale=1e-6))
    assert res.stats["bias_float"] == 1 and res.stats["bias_int32"] == 0
    assert q.constants["b1"].dtype == "f32"


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_calibrator_quantizes_a_model(reference_graphs, method):
    _, x, g = reference_graphs("lenet5")
    art: dict = {}
    q = optimize(g, f"quantize(calibration={method})", calibration=_calib(g, 3), artifacts=art)
    plan = art["quantize"]
    assert plan.calibration == method and len(plan.layers) == 5
    for lo, hi, s, z in plan.ranges.values():
        assert lo <= 0 <= hi or lo >= 0
    with torch.no_grad():
        want, got = run(g, [x])[0], run(q, [x])[0]
    assert float((got - want).norm() / want.norm()) < 0.1


# ---------------------------------------------------------------------------- dynamic
def test_dynamic_quantizes_linear_inputs_at_run_time(reference_graphs):
    _, x, g = reference_graphs("vit")
    art: dict = {}
    from shrinkc.passes import PassContext, PassManager

    pm = PassManager("quantize(activations=dynamic)", PassContext(artifacts=art))
    q = g.clone()
    pm.run(q)  # no calibration needed
    stats = pm.steps[0].result.stats
    lin = sum(1 for n in g.nodes if n.op == "linear")
    assert stats["quantized_linear"] == lin and stats["calibration_batches"] == 0
    assert stats["skipped_dynamic_activations"] >= 2  # q·k and attention·v stay float
    assert stats.get("skipped_dynamic_conv2d", 0) == sum(n.op == "conv2d" for n in g.nodes)
    dq = [n for n in q.nodes if n.op == "dynamic_quantize"]
    assert len(dq) == lin  # one per linear input (the ViT's q, k, v are one fused linear)
    for n in q.nodes:
        if n.op == "linear":
            assert n.inputs[0].producer.inputs[0].producer.op == "dynamic_quantize"
            assert n.inputs[1].producer.inputs[0].dtype == "i8"
    with torch.no_grad():
        want, got = run(g, [x])[0], run(q, [x])[0]
    cos = float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0))
    assert cos > 0.99


def _grid_conv(groups: int, bias: bool) -> tuple[Graph, np.ndarray, list[np.ndarray]]:
    """A conv whose weights are on the int8 grid (a power-of-two scale per output channel,
    127 in every channel), and inputs on the u8 grid of DynamicQuantizeLinear: multiples of
    2**-4 from -8 (u8 0, zero point 128) to 7.9375 (u8 255), both ends present, so the
    run-time range is [-8, 7.9375] and its scale exactly 2**-4."""
    rng = np.random.default_rng(3)
    g = Graph("grid_conv")
    x = g.add_input(TensorType("f32", (1, 4, 6, 6)), "x")
    k = rng.integers(-127, 128, (8, 4 // groups, 3, 3)).astype(np.float32)
    k[:, 0, 0, 0] = 127
    sw = np.float32([2.0 ** -e for e in (5, 6, 7, 8, 6, 5, 9, 4)])
    ops = [x, g.add_constant(k * sw[:, None, None, None], "w")]
    if bias:
        ops.append(g.add_constant(rng.normal(size=8).astype(np.float32), "b"))
    g.outputs = [g.add_node("conv2d", ops, {"padding": (1, 1), "stride": (2, 1),
                                            "groups": groups}).output]
    xs = []
    for _ in range(3):
        xq = rng.integers(0, 256, (1, 4, 6, 6))
        xq.flat[:2] = (0, 255)
        xs.append(((xq - 128) * 2.0 ** -4).astype(np.float32))
    return g, k, xs


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True), (4, True)])
def test_dynamic_conv_is_exact_on_the_grid_in_the_interpreter_and_onnxruntime(
        groups, bias):
    """quantize(activations=dynamic,dynamic_conv=true): the conv reads dynamic_quantize'd
    input and i8 weights; in ONNX it is one ConvInteger (onnxruntime's integer kernel, as
    quantize_dynamic writes it), no float Conv. Where inputs and weights are already on the
    grid, fp32, the interpreter's quantized graph and onnxruntime agree to float rounding."""
    from shrinkc.backends.onnx import OnnxRuntimeSession, export_model

    g, k, xs = _grid_conv(groups, bias)
    assert optimize(g, "quantize(activations=dynamic)").nodes[0].op == "conv2d"  # default: float
    q = optimize(g, "quantize(activations=dynamic,dynamic_conv=true)")
    assert [n.op for n in q.nodes] == ["dynamic_quantize", "dequantize", "dequantize", "conv2d"]
    np.testing.assert_array_equal(q.constants["w.q"].data, k.astype(np.int8))
    model = export_model(q)
    ops = [n.op_type for n in model.graph.node]
    assert "ConvInteger" in ops and "Conv" not in ops and "DequantizeLinear" not in ops
    sess = OnnxRuntimeSession(model.SerializeToString(), 1)
    for x in xs:
        with torch.no_grad():
            want = run(g, [torch.as_tensor(x)])[0]
            got = run(q, [torch.as_tensor(x)])[0]
        assert_close(got, want, depth=g)
        assert_close(sess.run([x])[0], want, depth=g)


def test_dynamic_conv_with_per_channel_zero_points_exports_as_float_conv():
    """ConvInteger takes one weight zero point (onnxruntime refuses a per-channel one):
    asymmetric per-channel weights are written as DequantizeLinear → Conv instead, which
    computes the same as the interpreter."""
    from shrinkc.backends.onnx import OnnxRuntimeSession, export_model

    g, _, xs = _grid_conv(1, True)
    q = optimize(g, "quantize(activations=dynamic,dynamic_conv=true,symmetric_weights=false)")
    assert np.asarray(q.constants["w.zero_point"].data).any()
    model = export_model(q)
    ops = [n.op_type for n in model.graph.node]
    assert "ConvInteger" not in ops and "Conv" in ops
    got = OnnxRuntimeSession(model.SerializeToString(), 1).run([xs[0]])[0]
    with torch.no_grad():
        want = run(q, [torch.as_tensor(xs[0])])[0].numpy()
    assert_close(got, want, depth=g)


def _ort_fused(model: bytes | str, path) -> tuple[object, list]:
    """(session, the graph onnxruntime runs at ORT_ENABLE_ALL: its nodes)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return sess, list(onnx.load(str(path)).graph.node)


# the integer matmuls of a dynamically quantized transformer after onnxruntime's fusions,
# and the float ops those fusions leave or make. Not compared: quantize_dynamic also makes
# convolutions ConvInteger (a DynamicQuantizeLinear and a Cast more; shrinkc keeps them
# float unless dynamic_conv=true), and the float file it starts from gets intermediate
# shapes from its shape inference, which lets onnxruntime fuse an Add into
# SkipLayerNormalization where shrinkc's batch-polymorphic export has no shapes (so
# LayerNormalization is counted with it)
FUSED_OPS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "MatMul",
             "Gelu", "BiasGelu", "Softmax", "Transpose")


def test_dynamic_runs_in_onnxruntime_as_quantize_dynamic_does(reference_graphs, tmp_path):
    """onnxruntime fuses shrinkc's dynamic graph as it fuses quantize_dynamic's own output
    for the same float model: the same count of every fused / float op (the int8 matmuls
    into DynamicQuantizeMatMul / MatMulIntegerToFloat, none left as MatMulInteger), and
    symmetric weights keep a scalar zero point (MLAS skips its per-column correction)."""
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from shrinkc.backends.onnx import export_model

    _, x, g = reference_graphs("vit")
    q = optimize(g, "quantize(activations=dynamic)")
    (tmp_path / "fp32.onnx").write_bytes(export_model(g).SerializeToString())
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "ort.onnx"),
                     weight_type=QuantType.QInt8, per_channel=True)
    sess, ours = _ort_fused(export_model(q).SerializeToString(), tmp_path / "ours.opt.onnx")
    _, theirs = _ort_fused(str(tmp_path / "ort.onnx"), tmp_path / "ort.opt.onnx")
    def count(nodes) -> dict[str, int]:
        c = {op: sum(n.op_type == op for n in nodes) for op in FUSED_OPS}
        c["norms"] = sum(n.op_type in ("LayerNormalization", "SkipLayerNormalization")
                         for n in nodes)
        return c

    assert count(ours) == count(theirs)
    assert count(ours)["MatMulInteger"] == 0
    fused = [n for n in ours if n.op_type in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")]
    assert len(fused) == sum(n.op == "linear" for n in q.nodes)
    model = __import__("onnx").load(str(tmp_path / "ours.opt.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zp_index = {"DynamicQuantizeMatMul": 3, "MatMulIntegerToFloat": 5}
    for n in fused:
        assert inits[n.input[zp_index[n.op_type]]].shape == ()  # scalar 0, scales per channel
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = run(q, [x])[0].numpy()
    # integer kernels vs the interpreter's float reference: a few quantization steps
    assert float(np.abs(got - want).max()) < 0.05 * float(np.abs(want).max())


# ---------------------------------------------------------------------------- backends
def _agree(got: list[np.ndarray], want: list[np.ndarray], names: list[str]) -> None:
    worst, where, share = compare_segments(names, got, want)
    assert worst <= TIE_STEPS, f"{where}: {worst} steps"
    assert share <= TIE_SHARE, f"{share:.2%} elements differ in a segment"
    for name, a, b in zip(names, got, want):
        if not np.issubdtype(b.dtype, np.integer):
            assert_close(a, b, tol=1e-4, msg=name)  # f32 logits: float rounding only


def _segment_case(reference_graphs, name: str, reduce_range, passes: str = ""):
    _, x, g = reference_graphs(name)
    g = optimize(g, "fold-bn" + passes, example_inputs=(x,), seed=0)
    q = optimize(g, f"quantize(reduce_range={reduce_range})", calibration=_calib(g, 3))
    cut = cut_at_quantizes(q)
    feeds, want = segment_feeds(q, cut, x)
    return q, cut, feeds, want


@pytest.mark.parametrize("reduce_range", [True, "auto"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit"])
def test_onnxruntime_agrees_to_one_step(reference_graphs, name, reduce_range):
    """7-bit weights cannot saturate the int16 pair sums of an AVX2-only CPU's u8 × s8 kernel
    (``vpmaddubsw``); auto is whatever this CPU needs. On an emulated Zen 3 (no VNNI) 8-bit
    weights do saturate and auto picks 7 bits: tests/tools/test_int8_agreement.py."""
    from shrinkc.backends.onnx import run_onnxruntime

    _, cut, feeds, want = _segment_case(reference_graphs, name, reduce_range)
    got = run_onnxruntime(cut, feeds, threads=1)
    _agree(got, want, [v.name for v in cut.outputs])


def test_onnxruntime_agrees_to_one_step_on_cp_chains(reference_graphs):
    """The CP chains (1×1 → depthwise k×1 → depthwise 1×k → 1×1, signed activations
    between) too. End to end, onnxruntime's output differs from the interpreter's far more
    on the decomposed ResNet-18 than on the original (ImageNet stem, 64 px: 1.07 of 11.6
    against 0.27 of 19.9): one-step ties amplified through 82 quantized layers, not a
    segment that disagrees."""
    from shrinkc.backends.onnx import run_onnxruntime

    q, cut, feeds, want = _segment_case(reference_graphs, "resnet18", "auto",
                                        ",cp-conv(ratio=0.5)")
    assert sum(n.op == "conv2d" and n.attrs["groups"] > 1 for n in q.nodes) >= 16
    got = run_onnxruntime(cut, feeds, threads=1)
    _agree(got, want, [v.name for v in cut.outputs])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["resnet18", pytest.param("mobilenet_v2", marks=pytest.mark.slow),
                                  pytest.param("vit", marks=pytest.mark.slow)])
def test_tvm_agrees_to_one_step(reference_graphs, name):
    from shrinkc.backends import tvm as btvm
    from shrinkc.backends.tvm import int8 as tvm_int8

    q, cut, feeds, want = _segment_case(reference_graphs, name, True)
    lowered = btvm.lower(cut)
    assert len(tvm_int8.integer_ops(lowered.mod)) >= sum(
        n.op in ("conv2d", "linear") for n in q.nodes) - 1  # all but the f32-output head
    got = btvm.build_lowered(lowered, name=name).run(feeds)
    _agree(got, want, [v.name for v in cut.outputs])
