import numpy as np
import pytest
import torch

from shrinkc import optimize, to_torch, write_back
from shrinkc.ir.encoding import Codebook, Sparse
from shrinkc.ir.text import graph_diff
from shrinkc.ir.verify import verify
from shrinkc.passes import PipelineError
from shrinkc.passes.share_weights import init_centroids, kmeans_1d

MLP = """
graph "mlp" (%x: f32[2,16]) {
  %fc1.weight: f32[32,16] = const #1
  %fc1.bias: f32[32] = const #2
  %fc2.weight: f32[10,32] = const #3
  %conv.weight: f32[4,1,3,3] = const #4
  %fc1: f32[2,32] = linear(%x, %fc1.weight, %fc1.bias) loc("fc1")
  %relu: f32[2,32] = relu(%fc1)
  %fc2: f32[2,10] = linear(%relu, %fc2.weight) loc("fc2")
  %r: f32[2,1,2,5] = reshape(%fc2) {shape=[2, 1, 2, 5]}
  %conv: f32[2,4,2,5] = conv2d(%r, %conv.weight) {padding=[1, 1]} loc("conv")
  return %conv
}
"""


def test_structure_weights_become_codebooks(ir, apply):
    after, result = apply(ir(MLP), "share-weights(bits=3)")
    expected = ir(MLP.replace("const #1", "const #1 as codebook(bits=3)")
                  .replace("const #3", "const #3 as codebook(bits=3)")
                  .replace("const #4", "const #4 as codebook(bits=3)"))
    assert graph_diff(after, expected, data=False) is None
    assert result.stats["shared"] == 3 and result.stats["exact"] == 0
    assert result.stats["centroids"] == 8 + 8 + 8
    for name in ("fc1.weight", "fc2.weight", "conv.weight"):
        assert len(np.unique(after.constants[name].data)) <= 8


def test_paper_bits_by_default_and_per_layer(ir, apply):
    after, _ = apply(ir(MLP), 'share-weights(per_layer={"fc2": 2})')
    enc = {n: v.encoding for n, v in after.constants.items() if v.encoding}
    assert enc == {"fc1.weight": Codebook(5), "fc2.weight": Codebook(2),
                   "conv.weight": Codebook(8)}
    assert len(np.unique(after.constants["conv.weight"].data)) == 36  # 36 < 2**8: exact
    with pytest.raises(PipelineError, match="per_layer\\['fc1'\\] = 17: bits are in 1..16"):
        apply(ir(MLP), 'share-weights(per_layer={"fc1": 17})')


def test_each_weight_becomes_its_nearest_centroid(ir, apply):
    before = ir(MLP)
    after, result = apply(before, "share-weights(bits=2)")
    w = before.constants["fc1.weight"].data.astype(np.float64)
    q = after.constants["fc1.weight"].data.astype(np.float64)
    c = np.unique(q)
    nearest = c[np.abs(w[..., None] - c).argmin(-1)]
    assert np.array_equal(q, nearest)
    for x in c:  # a converged Lloyd: each centroid is its cluster's mean
        assert abs(w[q == x].mean() - x) < 1e-6
    assert result.stats["max_abs_error"] == pytest.approx(
        max(np.abs(before.constants[n].data - after.constants[n].data).max()
            for n in ("fc1.weight", "fc2.weight", "conv.weight")), rel=1e-6)


def test_stacks_on_sparse_over_the_kept_values(ir, apply):
    after, _ = apply(ir(MLP), "prune-weights(sparsity=0.75),share-weights(bits=2)")
    v = after.constants["fc1.weight"]
    assert v.encoding == Sparse(v.encoding.mask, 5, codebook=Codebook(2))
    assert np.all(v.data[~v.encoding.mask] == 0)
    assert len(np.unique(v.data[v.encoding.mask])) == 4  # zero is not a centroid
    verify(after)
    assert "as sparse(index_bits=5, nnz=128) then codebook(bits=2)" in str(after)


def test_as_many_centroids_as_values_is_exact(ir, apply, assert_same_outputs):
    before = ir(MLP.replace("const #1", "const #1 as codebook(bits=3)"))  # 8 levels
    after, result = apply(before, "share-weights(bits=3)")
    assert after.constants["fc1.weight"].data.tobytes() == \
        before.constants["fc1.weight"].data.tobytes()
    assert result.stats["exact"] == 1  # fc1; the others had more than 8 values
    sparse, _ = apply(before, 'prune-weights(per_layer={"fc2": 0.9}, sparsity=0)')
    shared, result = apply(sparse, 'share-weights(per_layer={"fc2": 5, "*": 8})')
    assert result.stats["exact"] == 3  # 32 kept values of fc2 <= 2**5; the others <= 256
    for n in ("fc1.weight", "fc2.weight", "conv.weight"):
        assert shared.constants[n].data.tobytes() == sparse.constants[n].data.tobytes()
    assert_same_outputs(sparse, shared, bitwise=True)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_is_deterministic_and_uses_every_centroid(init, ir, apply):
    g = ir(MLP)
    a, _ = apply(g, f"prune-weights(sparsity=0.8),share-weights(bits=3, init={init})", seed=3)
    b, _ = apply(g, f"prune-weights(sparsity=0.8),share-weights(bits=3, init={init})", seed=3)
    assert graph_diff(a, b) is None
    v = a.constants["fc1.weight"]
    assert len(np.unique(v.data[v.encoding.mask])) == 8  # no centroid lost in the gap


def test_kmeans_1d_on_known_clusters():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(m, 0.01, 200) for m in (-1.0, 0.0, 2.0)])
    c, assign, rounds = kmeans_1d(v, init_centroids(v, 3, "linear", rng), 50)
    np.testing.assert_allclose(c, [-1.0, 0.0, 2.0], atol=0.005)
    assert 1 <= rounds < 50 and np.bincount(assign).tolist() == [200, 200, 200]


def test_fine_tuning_trains_the_centroids(reference_graphs):
    _, x, g = reference_graphs("lenet5")
    shared = optimize(g, "prune-weights(sparsity=0.7),share-weights(bits=4)")
    m = to_torch(shared)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=1e-3)
    m.train()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), torch.tensor([2])).backward()
        opt.step()
    tuned = write_back(shared, m)
    verify(tuned)
    for v in tuned.constants.values():
        if v.encoding is not None:
            old = shared.constants[v.name]
            assert v.encoding == old.encoding
            assert len(np.unique(v.data[v.encoding.mask])) <= 16
            assert not np.array_equal(v.data, old.data)


def test_skips_what_it_cannot_share(ir, apply):
    g = ir("""
    graph "g" (%x: f32[2,4], %w: f32[3,4]) {
      %y: f32[2,3] = linear(%x, %w)
      return %y
    }""")
    _, result = apply(g, "share-weights(bits=2)")
    assert result.stats["skipped_nonconstant"] == 1 and not result.changed
