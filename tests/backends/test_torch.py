import numpy as np
import pytest
import torch

from shrinkc import IRError, to_torch, write_back
from shrinkc.ir import Graph, TensorType
from shrinkc.ir.encoding import Codebook, Sparse
from shrinkc.ir.interpreter import run
from shrinkc.ir.ops import constant_roles
from shrinkc.ir.verify import verify
from suite import assert_close  # the suite's comparison policy


def test_resnet18_weights_are_parameters_statistics_are_buffers(reference_graphs):
    model, _, g = reference_graphs("resnet18")
    m = to_torch(g)
    params, buffers = dict(m.named_parameters()), dict(m.named_buffers())
    # ResNet-18: 62 weights (20 convs, 20 BN affine pairs, the fc) and 40 BN statistics
    # (before roles: 102 parameters, 0 buffers)
    assert (len(params), len(buffers)) == (62, 40)
    assert all(p.requires_grad for p in params.values())
    ir_params = {m.shrinkc_names[a] for a in params}
    ir_buffers = {m.shrinkc_names[a] for a in buffers}
    assert ir_params == {n for n, _ in model.named_parameters()}
    assert ir_buffers == {n for n, _ in model.named_buffers() if "running" in n}
    assert set(m.shrinkc_names.values()) == set(g.constants)
    assert not m.training


def _bn_quant_graph():
    """linear -> batch_norm (with a constant both weight and statistic) -> q/dq -> * 0.5"""
    g = Graph("roles")
    x = g.add_input(TensorType("f32", (2, 4)), "x")
    rng = np.random.default_rng(0)
    w = g.add_constant(rng.standard_normal((3, 4)).astype(np.float32), "w")
    b = g.add_constant(np.zeros(3, np.float32), "b")
    ones = g.add_constant(np.ones(3, np.float32), "ones")  # BN gamma and BN var
    mean = g.add_constant(np.full(3, 0.1, np.float32), "mean")
    s = g.add_constant(np.float32(0.05), "scale")
    z = g.add_constant(np.int8(0), "zp")
    half = g.add_constant(np.float32(0.5), "half")
    pos = g.add_constant(rng.standard_normal((1, 3)).astype(np.float32), "pos")
    y = g.add_node("linear", [x, w, b]).output
    y = g.add_node("reshape", [y], {"shape": (2, 3, 1, 1)}).output
    y = g.add_node("batch_norm", [y, ones, b, mean, ones]).output
    y = g.add_node("reshape", [y], {"shape": (2, 3)}).output
    q = g.add_node("quantize", [y, s, z], {"dtype": "i8"}).output
    y = g.add_node("dequantize", [q, s, z]).output
    y = g.add_node("mul", [y, half]).output
    g.outputs = [g.add_node("add", [y, pos]).output]
    return g


def test_roles_come_from_the_op_table():
    g = _bn_quant_graph()
    assert constant_roles(g) == {"w": "weight", "b": "weight", "ones": "statistic",
                                 "mean": "statistic", "scale": "qparam", "zp": "qparam",
                                 "half": "constant", "pos": "weight"}
    m = to_torch(g)
    params = {m.shrinkc_names[a] for a, _ in m.named_parameters()}
    buffers = {m.shrinkc_names[a] for a, _ in m.named_buffers()}
    assert params == {"w", "b", "pos"}
    assert buffers == {"ones", "mean", "scale", "zp", "half"}
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert_close(m(x), run(g, [x])[0], tol=0.0)


def test_trainable_selects_weights():
    g = _bn_quant_graph()
    m = to_torch(g, trainable={"w"})
    assert {m.shrinkc_names[a] for a, p in m.named_parameters() if p.requires_grad} == {"w"}
    assert [p.shape for p in m.trainable_parameters()] == [torch.Size([3, 4])]
    m = to_torch(g, trainable=False)
    assert len(list(m.parameters())) == 3 and not list(m.trainable_parameters())
    m = to_torch(g, trainable=lambda v: v.name != "pos")
    assert {m.shrinkc_names[a] for a, p in m.named_parameters() if p.requires_grad} == {"w", "b"}
    with pytest.raises(IRError, match="%mean cannot be trained: it is a statistic"):
        to_torch(g, trainable={"w", "mean"})
    with pytest.raises(IRError, match="trainable names %nope, which is not a constant"):
        to_torch(g, trainable={"nope"})


def _mlp(seed=0):
    g = Graph("mlp")
    x = g.add_input(TensorType("f32", (8, 16)), "x")
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((32, 16)).astype(np.float32)
    w1[np.abs(w1) < 0.8] = 0.0  # pruned
    levels = np.array([-0.6, -0.2, 0.1, 0.5], np.float32)
    w2 = levels[rng.integers(0, 4, (10, 32))]  # shared
    w3 = levels[rng.integers(0, 4, (10, 10))]
    w3[rng.random((10, 10)) < 0.5] = 0.0  # pruned and shared
    v1, v2, v3 = (g.add_constant(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3")))
    v1.encoding = Sparse.of(w1, index_bits=4)
    v2.encoding = Codebook(bits=2)
    v3.encoding = Sparse.of(w3, index_bits=3, codebook=Codebook(bits=2))
    b1 = g.add_constant(np.zeros(32, np.float32), "b1")
    h = g.add_node("relu", [g.add_node("linear", [x, v1, b1]).output]).output
    h = g.add_node("linear", [h, v2]).output
    g.outputs = [g.add_node("linear", [h, v3]).output]
    verify(g)
    return g


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_encodings_survive_training(optimizer):
    g = _mlp()
    m = to_torch(g)
    x, target = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    with torch.no_grad():
        assert_close(m(x), run(g, [x])[0], tol=0.0)
    # what trains: w1's dense values, w2's and w3's centroids, b1
    shapes = {a: tuple(p.shape) for a, p in m.named_parameters()}
    assert shapes == {"w_w1.dense": (32, 16), "w_w2.centroids": (4,),
                      "w_w3.centroids": (4,), "w_b1": (32,)}
    assert m.get_buffer("w_w2.indices").dtype == torch.int64
    opt = (torch.optim.SGD(m.trainable_parameters(), lr=0.002, momentum=0.9, weight_decay=1e-3)
           if optimizer == "sgd" else torch.optim.AdamW(m.trainable_parameters(), lr=0.01))
    losses = []
    m.train()
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0]
    # pruned positions got no gradient, and are still zero
    mask1 = torch.from_numpy(g.constants["w1"].encoding.mask.copy())
    assert torch.all(m.get_parameter("w_w1.dense").grad[~mask1] == 0)
    g2 = write_back(g, m)
    verify(g2)
    for name in ("w1", "w2", "w3"):
        old, new = g.constants[name], g2.constants[name]
        assert new.encoding == old.encoding, name
        assert not np.array_equal(new.data, old.data), name
    assert np.all(g2.constants["w1"].data[~g.constants["w1"].encoding.mask] == 0)
    # a centroid moved as one: positions that shared a value still share one
    for name in ("w2", "w3"):
        old, new = g.constants[name].data, g2.constants[name].data
        for val in np.unique(old[old != 0]):
            assert len(np.unique(new[old == val])) == 1, (name, val)
    assert len(np.unique(g2.constants["w2"].data)) <= 4
    with torch.no_grad():
        assert_close(run(g2, [x])[0], m.eval()(x), tol=0.0)


def test_centroid_gradient_is_the_sum_over_its_cluster():
    g = _mlp()
    m = to_torch(g)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    m(x).square().sum().backward()
    # the same loss through a plain dense weight: its gradient summed per cluster
    w2 = torch.from_numpy(g.constants["w2"].data.copy()).requires_grad_()
    m_dense = to_torch(g, trainable=False)
    h = torch.relu(torch.nn.functional.linear(x, m_dense.constant_tensor("w1"),
                                              m_dense.constant_tensor("b1")))
    out = torch.nn.functional.linear(torch.nn.functional.linear(h, w2),
                                     m_dense.constant_tensor("w3"))
    out.square().sum().backward()
    centroids = m.get_parameter("w_w2.centroids")
    idx = m.get_buffer("w_w2.indices")
    expect = torch.zeros(4).index_add_(0, idx.reshape(-1), w2.grad.reshape(-1))
    torch.testing.assert_close(centroids.grad, expect)


def test_write_back_refuses_what_breaks_an_encoding():
    g = _mlp()
    m = to_torch(g)
    with torch.no_grad():
        m.get_buffer("w_w1.mask")[0, :] = True  # someone edited the mask
    with pytest.raises(IRError, match="write_back: the mask of %w1 in the module is not the "
                                      "graph's sparse"):
        write_back(g, m)
    # a graph pruned after to_torch: the module trained a dense weight
    dense = g.clone()
    for v in dense.constants.values():
        v.encoding = None
    m = to_torch(dense)
    with torch.no_grad():
        m.get_parameter("w_w1").add_(0.01)
    before = {n: v.data.copy() for n, v in g.constants.items()}
    with pytest.raises(IRError, match="write_back: replace_constant: new data for %w1 .*breaks "
                                      "its encoding sparse.*non-zero value"):
        write_back(g, m, inplace=True)
    assert all(np.array_equal(v.data, before[n]) for n, v in g.constants.items())  # atomic
    m = to_torch(dense)
    m.w_w2 = torch.nn.Parameter(torch.zeros(10, 31))
    with pytest.raises(IRError, match="write_back: %w2 is f32\\[10,32\\] in the graph but "
                                      "\\[10, 31\\] in the module"):
        write_back(g, m)


def test_fine_tune_and_write_back(reference_graphs):
    model, x, g = reference_graphs("lenet5")
    m = to_torch(g)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    target = torch.tensor([3])
    before = torch.nn.functional.cross_entropy(m(x), target).item()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), target).backward()
        opt.step()
    g2 = write_back(g, m)
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(run(g2, [x])[0], target).item()
        assert_close(run(g2, [x])[0], m(x), tol=0.0)  # the same references, the same weights
    assert after < before
    assert not np.array_equal(g2.constants["conv1.weight"].data, g.constants["conv1.weight"].data)
    # the original graph is untouched
    with torch.no_grad():
        assert_close(run(g, [x])[0], model(x), depth=model)


def _encode_half(g):
    """Prune the smaller half of every conv/linear weight; share the rest on 16 values
    (every third layer shared only)."""
    layers = [n for n in g.nodes if n.op in ("conv2d", "linear")]
    for i, node in enumerate(layers):
        v = node.inputs[1]
        w = v.data
        thr = np.quantile(np.abs(w), 0.5)
        kept = np.abs(w) > thr
        levels = np.quantile(w[kept], np.linspace(0, 1, 16)).astype(w.dtype)
        shared = levels[np.abs(w[..., None] - levels).argmin(-1)]
        if i % 3 == 2:
            v.data, v.encoding = shared, Codebook(bits=4)
        else:
            v.data = np.where(kept, shared, 0).astype(w.dtype)
            v.encoding = Sparse(kept, index_bits=5, codebook=Codebook(bits=4))
    verify(g)
    return g


def test_fine_tuning_a_zoo_model_keeps_statistics_and_encodings(reference_graphs):
    _, x, traced = reference_graphs("vgg11_bn")
    g = _encode_half(traced.clone())
    m = to_torch(g)
    xs = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(2))
    ys = torch.arange(8) % 10
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.01, momentum=0.9)
    m.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(xs), ys).backward()
        opt.step()
    g2 = write_back(g, m)
    verify(g2)  # every encoding's invariant
    roles = constant_roles(g)
    stats = [n for n, r in roles.items() if r == "statistic"]
    assert len(stats) == 16
    for n in stats:  # batch-norm statistics: bit for bit
        assert g2.constants[n].data.tobytes() == g.constants[n].data.tobytes(), n
    changed = 0
    for n, v in g.constants.items():
        w = g2.constants[n]
        assert w.encoding == v.encoding, n
        if isinstance(v.encoding, Sparse):
            assert np.all(w.data[~v.encoding.mask] == 0), n
        changed += not np.array_equal(w.data, v.data)
    assert changed == sum(r == "weight" for r in roles.values())


def test_write_back_refuses_foreign_modules(reference_graphs):
    g = reference_graphs("lenet5")[2]
    with pytest.raises(IRError, match="needs a module made by shrinkc.to_torch"):
        write_back(g, torch.nn.Linear(2, 2))
