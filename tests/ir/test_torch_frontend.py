import numpy as np
import pytest
import torch
import torch.nn as nn
from shrinkc import TraceError, to_torch, trace
from shrinkc.ir.interpreter import run
from shrinkc.ir.verify import verify
from shrinkc.tools import zoo


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_every_reference_model_round_trips(name, reference_graphs, f64, assert_close):
    model, x, g = reference_graphs(name)
    verify(g)
    m64, module = f64.model(model), to_torch(f64.graph(g))  # float64: see tests/conftest.py
    with torch.no_grad():
        for seed in (0, 1):
            xi = x if seed == 0 else torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
            assert_close(module(xi.double()), m64(xi.double()), msg=f"{name} seed {seed}")
            # and the float32 module runs the model's float32 arithmetic, to depth-scaled noise
            assert_close(to_torch(g)(xi), model(xi), depth=model, msg=f"{name} f32 seed {seed}")


def test_weights_and_locations_come_from_the_module(reference_graphs):
    model, _, g = reference_graphs("resnet18")
    state = model.state_dict()
    for name, v in g.constants.items():
        if name in state:
            assert (state[name].numpy() == v.data).all()
    params = {k for k, _ in model.named_parameters()}
    assert params <= set(g.constants)
    conv = next(n for n in g.nodes if n.op == "conv2d" and n.loc and "layer2.0" in n.loc)
    assert conv.loc.startswith("layer2.0.") and conv.inputs[1].name == f"{conv.loc}.weight"


class _Sub(nn.Module):
    def forward(self, x):
        return torch.cumprod(x, 1)


class _Unmappable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Sub()

    def forward(self, x):
        return self.inner(x) + 1


def test_unmappable_op_names_op_module_and_line():
    with pytest.raises(TraceError) as e:
        trace(_Unmappable(), (torch.randn(2, 3),))
    msg = str(e.value)
    assert "aten.cumprod.default" in msg and "module inner" in msg
    assert "test_torch_frontend.py" in msg and "return torch.cumprod(x, 1)" not in msg


def test_non_module_is_refused():
    with pytest.raises(TraceError, match="expects a torch.nn.Module, got function"):
        trace(lambda x: x, (torch.randn(1),))
    with pytest.raises(TraceError, match="example input 0 is a list"):
        trace(nn.ReLU(), ([1, 2],))


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_data_dependent_branch_is_refused():
    with pytest.raises(TraceError, match="data-dependent control flow"):
        trace(_Branchy(), (torch.randn(3),))


class _Kw(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, *, scale):
        return self.fc(x) * scale, x.mean(-1)


def test_keyword_inputs_and_multiple_outputs():
    m = _Kw().eval()
    x, s = torch.randn(2, 4), torch.randn(2, 1)
    g = trace(m, (x,), kwargs={"scale": s})
    assert [v.name for v in g.inputs] == ["x", "scale"] and len(g.outputs) == 2
    a, b = to_torch(g)(x, s)
    ra, rb = m(x, scale=s)
    torch.testing.assert_close(a, ra) and torch.testing.assert_close(b, rb)


def test_model_left_in_its_mode():
    m = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    m.train()
    g = trace(m, (torch.randn(1, 3),))
    assert m.training and [n.op for n in g.nodes] == ["linear", "dropout"]


class _Folding(nn.Module):
    """Position ids from a buffer, a mask from arange, a metadata check: all constant."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pos", torch.arange(16), persistent=False)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):  # x: [1, 8, 4]
        n = x.shape[1]
        pos = self.pos[:n].float().unsqueeze(-1) * 0.5
        keep = torch.arange(n)[:, None] >= torch.arange(n)[None, :]  # causal, from sizes only
        y = (x + pos) @ self.w.t()  # the parameter stays an operand (not folded)
        scores = torch.where(keep, y @ y.transpose(-1, -2), torch.full_like(keep, -1e9,
                                                                            dtype=x.dtype))
        return scores.softmax(-1) @ y


def test_constants_and_shapes_fold_at_trace_time():
    model = _Folding().eval()
    x = torch.randn(1, 8, 4)
    g = trace(model, (x,))
    ops = [n.op for n in g.nodes]
    assert "slice" not in ops and "ge" not in ops  # pos[:n], arange >= arange: folded
    assert ops.count("where") == 1 and ops.count("permute") == 2  # w.t() and y^T stay
    perm = next(n for n in g.nodes if n.op == "permute")
    assert perm.inputs[0].name == "w"
    cond = next(n for n in g.nodes if n.op == "where").inputs[0]
    np.testing.assert_array_equal(cond.data, np.tril(np.ones((8, 8), bool)))
    with torch.no_grad():
        torch.testing.assert_close(run(g, [x])[0], model(x))


class _IndexOps(nn.Module):
    def forward(self, x, i):
        a = torch.take_along_dim(x, i, 1)
        b = torch.nn.functional.local_response_norm(x[:, :, None], 3)  # pad + avg_pool3d
        c = torch.nn.functional.interpolate(x[:, None], scale_factor=2.0, mode="nearest")
        return a, b, c


def test_take_along_dim_lrn_and_interpolate_trace():
    x, i = torch.randn(2, 6, 5), torch.randint(0, 6, (2, 3, 1))
    g = trace(_IndexOps(), (x, i))
    assert {"gather_elements", "pad", "avg_pool3d", "upsample"} <= {n.op for n in g.nodes}
    with torch.no_grad():
        for got, want in zip(run(g, [x, i]), _IndexOps()(x, i)):
            torch.testing.assert_close(got, want)
