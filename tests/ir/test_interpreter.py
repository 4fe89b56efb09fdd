import numpy as np
import pytest
import torch

from shrinkc.ir import IRError
from shrinkc.ir.interpreter import random_inputs, run, run_numpy
from shrinkc.tools import zoo


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_matches_reference_models(name, reference_graphs, assert_matches_model):
    model, x, g = reference_graphs(name)
    assert_matches_model(g, model, [x], msg=name)  # in float64: see tests/conftest.py


def test_gradients_reach_constants(reference_graphs):
    model, x, g = reference_graphs("lenet5")
    params = {k: torch.from_numpy(v.data.copy()).requires_grad_() for k, v in g.constants.items()}
    (y,) = run(g, [x], params=params)
    y.sum().backward()
    model.zero_grad()
    model(x).sum().backward()
    torch.testing.assert_close(params["conv1.weight"].grad, model.conv1.weight.grad)
    assert all(p.grad is not None for p in params.values())


def test_gradients_reach_batch_norm_statistics(reference_graphs):
    _, x, g = reference_graphs("resnet18")
    name = next(v.name for v in g.constants.values() if v.name.endswith("running_mean"))
    p = torch.from_numpy(g.constants[name].data.copy()).requires_grad_()
    (y,) = run(g, [x], params={name: p})
    y.sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_capture_and_hook(reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    seen = []
    outs, acts = run(g, [x], capture=True, hook=lambda node, o: seen.append(node.op))
    assert seen == [n.op for n in g.nodes]
    assert set(acts) == {o.name for n in g.nodes for o in n.outputs} | {g.inputs[0].name}
    torch.testing.assert_close(acts[g.outputs[0].name], outs[0])
    _, only = run(g, [x], capture=[g.nodes[1].output.name])
    assert list(only) == [g.nodes[1].output.name]


def test_inputs_by_name_numpy_and_errors(reference_graphs):
    _, x, g = reference_graphs("lenet5")
    a = run_numpy(g, {g.inputs[0].name: x.numpy()})[0]
    b = run_numpy(g, random_inputs(g))[0]
    assert a.shape == b.shape == (1, 10) and not np.allclose(a, b)
    with pytest.raises(IRError, match="expects f32\\[1,1,28,28\\], got shape \\(1, 3\\)"):
        run(g, [torch.zeros(1, 3)])
    with pytest.raises(IRError, match="takes 1 inputs"):
        run(g, [x, x])
    with pytest.raises(IRError, match="missing inputs"):
        run(g, {"nope": x})


def test_input_dtypes_convert_only_when_safe_or_say_so(assert_close):
    import warnings

    import torch as _torch

    import shrinkc

    lin = shrinkc.trace(_torch.nn.Linear(4, 2), (_torch.randn(1, 4),))
    emb = shrinkc.trace(_torch.nn.Embedding(10, 3), (_torch.tensor([[1, 2]]),))
    x = _torch.randn(1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lossless: f16 -> f32, u8 -> f32, i32 -> i64
        assert run(lin, [x.half()])[0].dtype == _torch.float32
        run(lin, [_torch.ones(1, 4, dtype=_torch.uint8)])
        run(emb, [_torch.tensor([[1, 2]], dtype=_torch.int32)])
    with pytest.warns(RuntimeWarning, match=r"input %\w+ is f64, converted to f32"):
        got = run(lin, [x.double()])
    assert_close(got, run(lin, [x]))
    with pytest.raises(IRError, match=r"expects i64\[1,2\], got f32 values: convert them first"):
        run(emb, [_torch.tensor([[1.0, 2.0]])])
