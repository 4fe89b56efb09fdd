"""The ONNX project's own tests, from the installed ``onnx`` package, through shrinkc.

- Node tests (``onnx/backend/test/data/pytorch-converted`` and ``pytorch-operator``, 117
  cases): import → IR → export → onnxruntime gives the reference output stored beside each
  model (and so does the interpreter on the imported graph). ``EXPECTED_FAILURES`` lists the
  cases that do not, each with its reason; it is empty today.
- The classic architectures in ``onnx/backend/test/data/light`` (AlexNet … ZFNet-512): their
  weights are ``ConstantOfShape`` placeholders, replaced here by seeded random initializers;
  shrinkc's import → export must match onnxruntime on that same (original) model, logits
  included (a final softmax alone could hide a difference).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import shrinkc
from shrinkc.backends.onnx import export_model, run_onnxruntime
from shrinkc.ir.interpreter import run_numpy

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
NODE_CASES = sorted(glob.glob(str(DATA / "pytorch-converted" / "test_*"))) + sorted(
    glob.glob(str(DATA / "pytorch-operator" / "test_*")))

#: case name -> why shrinkc does not give the reference output (none today).
EXPECTED_FAILURES: dict[str, str] = {}


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Single ONNX ops (or a few) in float32, computed by PyTorch for the reference and by
    onnxruntime / shrinkc's references here: equal to a few ulps of the output's scale."""
    assert got.shape == want.shape and got.dtype == want.dtype
    finite = np.abs(want[np.isfinite(want)]) if want.dtype.kind == "f" else np.abs(want)
    scale = max(float(finite.max()) if finite.size else 0.0, 1.0)  # sqrt(-1) is NaN in both
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def _tensors(folder: str, kind: str) -> list[np.ndarray]:
    return [numpy_helper.to_array(onnx.load_tensor(p))
            for p in sorted(glob.glob(os.path.join(folder, f"{kind}_*.pb")))]


def test_the_node_tests_are_there():
    assert len(NODE_CASES) == 117, "onnx ships 117 pytorch-converted + pytorch-operator cases"
    names = {os.path.basename(c) for c in NODE_CASES}
    assert set(EXPECTED_FAILURES) <= names
    assert len(EXPECTED_FAILURES) <= 117 - 111  # the target: at least 111 pass


@pytest.mark.parametrize("case", NODE_CASES, ids=os.path.basename)
def test_onnx_node_test(case):
    name = os.path.basename(case)
    if name in EXPECTED_FAILURES:
        pytest.xfail(EXPECTED_FAILURES[name])
    model = onnx.load(os.path.join(case, "model.onnx"))
    data = os.path.join(case, "test_data_set_0")
    inputs, outputs = _tensors(data, "input"), _tensors(data, "output")
    g = shrinkc.load_onnx(model)
    inputs = inputs[:len(g.inputs)]  # IR < 4: initializers may be listed among the inputs
    got = run_onnxruntime(export_model(g), inputs, threads=1)
    assert len(got) == len(outputs)
    for a, b in zip(got, outputs):
        _close(a, b)
    for a, b in zip(run_numpy(g, inputs), outputs):
        _close(a, b)


# ============================================================================ light models
LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
         "shufflenet", "squeezenet", "vgg19", "zfnet512"]
#: 60-140 M parameters: generating, folding and running them twice takes 20-60 s each
LIGHT_LARGE = {"bvlc_alexnet", "vgg19", "zfnet512"}


def randomized_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """``light_<name>.onnx`` with every ``ConstantOfShape`` weight placeholder replaced by a
    seeded random initializer (weights of rank >= 2 scaled by 1/sqrt(fan-in), so activations
    stay O(1) at any depth; vectors around the placeholder's own value, e.g. BN variances
    near 1), and the final softmax's input added as an output."""
    m = onnx.load(str(DATA / "light" / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in inits:
            keep.append(n)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]))
        fill = float(numpy_helper.to_array(n.attribute[0].t).reshape(-1)[0]) if n.attribute \
            else 0.0
        if len(shape) >= 2:
            arr = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(np.prod(shape[1:]))
        elif fill:
            arr = fill * rng.uniform(0.5, 1.5, shape)
        else:
            arr = rng.normal(0.0, 0.1, shape)
        m.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), n.output[0]))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    used = {i for n in m.graph.node for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    inputs = [i for i in m.graph.input if i.name in used]  # the placeholders' shape inputs go
    listed = {i.name for i in inputs}
    for t in kept:  # IR version 3: every initializer is listed among the graph inputs too
        if t.name not in listed:
            inputs.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    last = m.graph.node[-1]
    if last.op_type == "Softmax":
        vi = next(v for v in onnx.shape_inference.infer_shapes(m).graph.value_info
                  if v.name == last.input[0])
        m.graph.output.append(vi)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LIGHT_LARGE
                                  else n for n in LIGHT])
def test_light_model_matches_onnxruntime(name):
    m = randomized_light_model(name)
    assert m.ir_version < 4  # initializers listed as inputs
    inits = {t.name for t in m.graph.initializer}
    data = next(i for i in m.graph.input if i.name not in inits)
    shape = [d.dim_value for d in data.type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    want = run_onnxruntime(m, [x], threads=1)
    g = shrinkc.load_onnx(m)
    assert [v.name for v in g.inputs] == [data.name]
    got = run_onnxruntime(export_model(g), [x], threads=1)
    assert len(got) == len(want)
    assert float(want[-1].std()) > 1e-2  # logits that differ: the comparison is not vacuous
    for a, b in zip(got, want):
        # the same ONNX ops run by the same runtime: equal to float32 rounding of the scale
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
