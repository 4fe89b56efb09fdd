"""ir/batch.py: a graph traced at batch 1 runs at any batch — and one that cannot says why.

The must-show: every reference model, traced at batch 1, runs at batch 1, 7 and 64 in the
interpreter, in ``to_torch`` (both in float64 against the float64 eager model) and in
onnxruntime from one ``to_onnx`` file with a dynamic batch (float32, depth-scaled
tolerance). The models are small and their inputs 8×8 (16×16 for LeNet-5), so batch 64 is
cheap. Then the proof itself: models and graphs that mix the batch are static-batch with a
reason naming the node; the verifier refuses marks that do not hold; specialize; the text
form keeps the marks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shrinkc
from shrinkc.backends.onnx import OnnxRuntimeSession, to_onnx
from shrinkc.ir import batch
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.text import graph_diff, parse_graph, print_graph
from shrinkc.ir.verify import VerificationError, verify
from shrinkc.tools import zoo
from suite import TINY_CONFIGS, as_f64, assert_close, f64_inputs, f64_model

BATCHES = (1, 7, 64)


def _small(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny reference model for 8×8 RGB input (LeNet-5 needs 16×16), seeded, with
    non-trivial batch-norm statistics; and a batch-1 example."""
    torch.manual_seed(0)
    size = 16 if name == "lenet5" else 8
    # ViT: head dim 4, so its attention scale 4**-0.5 is exact in float32 (the traced graph
    # holds the scale as a float32 constant; an inexact one would differ from the float64
    # model's python float by 1e-8 relative, in the float64 comparison)
    config = {**TINY_CONFIGS[name], **({"heads": 4} if name == "vit" else {})}
    model = zoo.get_model(name, in_channels=3, input_size=size, **config).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model, torch.randn(1, 3, size, size, generator=gen)


_CACHE: dict = {}


def traced(name: str):
    """(model, float64 model, graph traced at batch 1, its float64 copy), once per worker."""
    if name not in _CACHE:
        model, x = _small(name)
        g = shrinkc.trace(model, (x,), name=name)
        _CACHE[name] = (model, f64_model(model), g, as_f64(g))
    return _CACHE[name]


def _x(g, n: int) -> torch.Tensor:
    return random_inputs(g, seed=n, batch_size=n)[0]


# ============================================================================ the must-show
@pytest.mark.parametrize("name", zoo.MODELS)
def test_traced_at_batch_1_is_batch_polymorphic(name):
    _, _, g, _ = traced(name)
    assert batch.is_polymorphic(g) and batch.nominal_batch(g) == 1
    assert batch.batch_inputs(g) == g.inputs and batch.batch_outputs(g) == g.outputs
    assert g.inputs[0].shape[0] == 1 and batch.check(g) is None
    verify(g)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", zoo.MODELS)
def test_interpreter_at_any_batch(name, n):
    _, model64, _, g64 = traced(name)
    x = f64_inputs([_x(g64, n)])
    with torch.no_grad():
        got, want = run(g64, x), model64(*x)
    assert got[0].shape[0] == n
    assert_close(got, want)  # float64 on both sides


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", zoo.MODELS)
def test_to_torch_at_any_batch(name, n):
    _, model64, _, g64 = traced(name)
    module = shrinkc.to_torch(g64)
    x = f64_inputs([_x(g64, n)])
    with torch.no_grad():
        assert_close(module(*x), model64(*x))


@pytest.mark.parametrize("name", zoo.MODELS)
def test_one_onnx_file_runs_at_any_batch(name, tmp_path):
    model, _, g, _ = traced(name)
    path = to_onnx(g, tmp_path / f"{name}.onnx")
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and all(d.dim_value > 0 for d in dims[1:])
    session = OnnxRuntimeSession(path, threads=1)
    for n in BATCHES:
        x = _x(g, n)
        with torch.no_grad():
            want = model(x)
        got = session([x])
        assert got[0].shape[0] == n
        assert_close(got, want, depth=g, msg=f"batch {n}")  # float32 kernels: depth-scaled


def test_every_reshape_in_the_vit_is_batch_relative():
    _, _, g, _ = traced("vit")
    reshapes = [n for n in g.nodes if n.op == "reshape"]
    assert len(reshapes) >= 4
    assert all(n.attrs["shape"].count(-1) == 1 and n.attrs["shape"][0] == -1 for n in reshapes)


# ============================================================================ specialize
def test_specialize_reinfers_types_and_cost_follows():
    _, _, g, _ = traced("resnet18")
    g32 = g.with_batch(32)  # = batch.specialize(g, 32)
    assert g32 is not g and g.inputs[0].shape[0] == 1  # the original is unchanged
    assert g32.inputs[0].shape == (32,) + g.inputs[0].shape[1:]
    assert g32.outputs[0].shape == (32, 10) and batch.nominal_batch(g32) == 32
    verify(g32)
    # the cost model reports at the nominal batch
    assert graph_cost(g32).total.macs == 32 * graph_cost(g).total.macs
    assert graph_cost(g32).params == graph_cost(g).params
    assert graph_diff(batch.specialize(g32, 1), g) is None
    with pytest.raises(batch.BatchError, match="batch must be >= 1"):
        batch.specialize(g, 0)


def test_static_graph_specializes_only_to_its_own_batch():
    model, x = _small("lenet_300_100")
    g = shrinkc.trace(model, (x,), batch=False)
    assert not batch.is_polymorphic(g) and "batch" not in print_graph(g).splitlines()[0]
    assert graph_diff(batch.specialize(g, 1), g) is None
    with pytest.raises(batch.BatchError, match="static-batch.*cannot run at batch 5.*no "
                                               "batch marks"):
        batch.specialize(g, 5)
    batch.mark(g)  # provable: mark() proves and marks it
    assert batch.specialize(g, 5).outputs[0].shape == (5, 10)


# ============================================================================ refusals
class SumOverBatch(torch.nn.Module):
    def forward(self, x):
        return x.sum(0)


class SoftmaxOverBatch(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, 0)


class BatchIntoTwoDims(torch.nn.Module):
    def forward(self, x):
        return x.reshape(2, -1, 4)


class BranchOnBatch(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[0] > 2 else x


class RepeatBatch(torch.nn.Module):
    def forward(self, x):
        return x.repeat(2, 1)


class BatchAsValue(torch.nn.Module):
    def forward(self, x):
        return x / x.shape[0]


class FirstSample(torch.nn.Module):
    def forward(self, x):
        return x - x[:1]


class SqueezeAll(torch.nn.Module):
    def forward(self, x):
        return x.squeeze()


REFUSED = {
    SumOverBatch: r"node sum\S*: sum mixes the samples of a batch: operand %x carries the "
                  r"batch in dim 0",
    SoftmaxOverBatch: r"node softmax\S*: softmax mixes the samples",
    BatchIntoTwoDims: r"torch.export cannot keep the batch dynamic: the model's code "
                      r"specialises it to 2",
    BranchOnBatch: r"specialises it to 2 .*\(guard batch <= 2 at .*test_batch.py:\d+ in "
                   r"forward\)",
    RepeatBatch: r"node repeat\S*: tile mixes the samples of a batch",
    BatchAsValue: r"takes a size computed from the batch",
    FirstSample: r"slices along the batch dim",
    SqueezeAll: r"at batch 1 the model returns shapes \[\(8,\)\], its dynamic-batch trace "
                r"\[\(1, 8\)\]",
}


@pytest.mark.parametrize("cls", list(REFUSED), ids=lambda c: c.__name__)
def test_model_that_mixes_the_batch_stays_static_and_says_why(cls):
    model = cls()
    x = torch.randn(1, 8)
    g = shrinkc.trace(model, (x,))
    assert not batch.is_polymorphic(g)
    with torch.no_grad():
        assert_close(run(g, [x]), model(x))  # at its own batch, the static graph is right
    with pytest.raises(batch.BatchError) as e:
        run(g, [torch.randn(4, 8)])
    msg = str(e.value)
    assert msg.startswith(f"input %x expects f32[1,8], got shape (4, 8): graph {cls.__name__} "
                          f"is static-batch (its types are at batch 1); it cannot run at "
                          f"batch 4: ")
    import re

    assert re.search(REFUSED[cls], msg), msg


class ClassToken(torch.nn.Module):
    """A class token expanded to the batch, a mask of ones at the batch size."""

    def __init__(self):
        super().__init__()
        self.token = torch.nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), x.reshape(-1, 1, 8)], 1)
        return tokens * torch.ones(x.shape[0], 2, 1)


def test_expanding_to_the_batch_reads_it_at_run_time(tmp_path):
    model = ClassToken()
    g = shrinkc.trace(model, (torch.randn(1, 8),))
    assert batch.is_polymorphic(g), g.meta.get("batch_static")
    expands = [n for n in g.nodes if n.op == "expand"]
    assert [n.attrs["shape"][0] for n in expands] == [0, 0]  # 0: like's dim 0, the batch
    assert all(n.inputs[1] is g.inputs[0] for n in expands)
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = model(x)
        assert_close(run(g, [x]), want)
        assert_close(shrinkc.to_torch(g)(x), want)
    path = to_onnx(g, tmp_path / "token.onnx")
    assert_close(OnnxRuntimeSession(path, threads=1)([x]), want)
    back = shrinkc.load_onnx(path)  # folded to a repeated constant on import, expanded again
    assert batch.is_polymorphic(back)
    assert_close(run(back, [x]), want)


def test_hugging_face_class_token_model_is_batch_polymorphic():
    """CLIP's vision tower: class embedding expanded to the batch, concatenated."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=32)).eval()  # head dim 4: an exact scale
    g = shrinkc.trace(model, (torch.randn(1, 3, 16, 16),))
    assert batch.is_polymorphic(g), g.meta.get("batch_static")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():  # float32: quick_gelu's 1.702 is a float32 constant in the graph
        want = [w for w in model(x).to_tuple() if isinstance(w, torch.Tensor)]
        assert_close(run(g, [x]), want, depth=g)
    pruned = shrinkc.optimize(g, "prune-channels(ratio=0.5)")  # resizes keep the 0 and -1s
    assert batch.is_polymorphic(pruned) and run(pruned, [x])[0].shape == want[0].shape


# Graphs written as text: one per rule of the proof (module docstring of ir/batch.py).
HEAD = 'graph "g" (%x: f32[1,4,8] batch) {\n  %w: f32[8,8] = const #0\n'
BROKEN = {
    "stored batch": ("%r: f32[1,32] = reshape(%x) {shape=[1, 32]}", "r",
                     r"node r: at batch 2: op reshape: cannot reshape f32\[2,4,8\] to \[1, 32\]"),
    "concat along the batch": ("%r: f32[2,4,8] = concat(%x, %x) {axis=0}", "r",
                               r"node r: concat mixes the samples of a batch.*dim 0"),
    "matmul contracting it": ("%t: f32[4,8,1] = permute(%x) {perm=[1, 2, 0]}\n"
                              "  %f: f32[1,32] = reshape(%x) {shape=[-1, 32]}\n"
                              "  %r: f32[4,8,32] = matmul(%t, %f)", "r",
                              r"node r: matmul mixes the samples.*%t carries the batch in dim 2"),
    "outer product": ("%a: f32[1,1,4,8] = reshape(%x) {shape=[-1, 1, 4, 8]}\n"
                      "  %b: f32[1,1,4,8] = permute(%a) {perm=[1, 0, 2, 3]}\n"
                      "  %r: f32[1,1,4,8] = add(%a, %b)", "r",
                      r"node r: add combines the batch dims of its operands"),
    "batch leaves dim 0": ("%r: f32[4,1,8] = permute(%x) {perm=[1, 0, 2]}", "r",
                           r"graph output %r carries the batch in dim 1"),
    "4 x batch": ("%r: f32[4,8] = reshape(%x) {shape=[-1, 8]}", "r",
                  r"graph output %r has dim 0 = 4 at batch 1, 8 at batch 2, 12 at batch 3"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_verifier_refuses_marks_that_do_not_hold(case):
    body, out, pattern = BROKEN[case]
    text = HEAD + f"  {body}\n  return %{out} batch\n}}\n"
    g = parse_graph(text, missing_weights="random")
    with pytest.raises(VerificationError, match="batch marks do not hold: " + pattern):
        verify(g)
    assert batch.is_polymorphic(g)
    with pytest.raises(batch.BatchError, match=pattern):
        batch.mark(g)


def test_marks_must_match_the_outputs():
    text = HEAD + "  %r: f32[1,4,8] = relu(%x)\n  return %r\n}\n"
    g = parse_graph(text, missing_weights="random")
    with pytest.raises(VerificationError, match="output %r carries the batch but is not marked"):
        verify(g)
    assert batch.marks(batch.mark(g)) == batch.BatchAxes((0,), (0,))
    verify(g)


def test_a_pass_that_breaks_the_marks_is_caught_by_the_verifier():
    _, _, g, _ = traced("vit")
    g = g.clone()
    node = next(n for n in g.nodes if n.op == "reshape")
    static = tuple(1 if d == -1 else d for d in node.attrs["shape"])  # the traced batch
    g.set_attrs(node, {"shape": static})  # types unchanged at the nominal batch
    with pytest.raises(VerificationError, match=f"node {node.name}.*: at batch 2: op reshape"):
        verify(g)


# ============================================================================ text, running
def test_text_form_and_files_keep_the_marks(tmp_path):
    _, _, g, _ = traced("vit")
    text = print_graph(g)
    assert text.splitlines()[0].endswith(": f32[1,3,8,8] batch) {")
    assert text.rstrip().splitlines()[-2].endswith(" batch")
    g2 = parse_graph(text, {n: v.data for n, v in g.constants.items()})
    assert batch.marks(g2) == batch.marks(g) and graph_diff(g, g2) is None
    g3 = shrinkc.load(shrinkc.save(g, tmp_path / "vit.shrk"))
    assert batch.marks(g3) == batch.marks(g)
    assert batch.marks(g.clone()) == batch.marks(g)


def test_interpreter_checks_the_other_dims_and_that_batch_inputs_agree():
    text = ('graph "two" (%a: f32[1,4] batch, %b: f32[1,4] batch) {\n'
            "  %s: f32[1,4] = add(%a, %b)\n  return %s batch\n}\n")
    g = parse_graph(text)
    verify(g)
    assert run(g, [torch.ones(5, 4), torch.ones(5, 4)])[0].shape == (5, 4)
    with pytest.raises(shrinkc.IRError, match="batch inputs disagree.*%a has 5, %b has 6"):
        run(g, [torch.ones(5, 4), torch.ones(6, 4)])
    with pytest.raises(shrinkc.IRError, match=r"expects f32\[1,4\], got shape \(5, 3\) \(its "
                                              r"dim 0 is the batch: any size\)"):
        run(g, [torch.ones(5, 3), torch.ones(5, 3)])
    assert [t.shape for t in random_inputs(g, batch_size=3)] == [(3, 4), (3, 4)]


def test_trace_of_a_batch_4_example_has_nominal_batch_4():
    model, x = _small("mobilenet_v2")
    x4 = torch.cat([x] * 4)
    g = shrinkc.trace(model, (x4,))
    assert batch.nominal_batch(g) == 4 and g.outputs[0].shape == (4, 10)
    with torch.no_grad():
        assert_close(run(as_f64(g), f64_inputs([x]))[0], f64_model(model)(x.double()))
    np.testing.assert_array_equal(batch.specialize(g, 1).inputs[0].shape, (1, 3, 8, 8))
