import numpy as np
import pytest
import torch

from shrinkc import optimize, to_torch, write_back
from shrinkc.ir.encoding import Sparse
from shrinkc.ir.interpreter import run
from shrinkc.ir.text import graph_diff
from shrinkc.ir.verify import verify
from shrinkc.passes import PipelineError, canonical
from suite import SMALL_CONFIGS

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


def test_structure_weights_become_sparse(ir, apply):
    before = ir(MLP)
    after, result = apply(before, "prune-weights(sparsity=0.75)")
    expected = ir(MLP.replace("const #1", "const #1 as sparse(index_bits=5, nnz=128)")
                  .replace("const #3", "const #3 as sparse(index_bits=5, nnz=80)")
                  .replace("const #4", "const #4 as sparse(index_bits=8, nnz=9)"))
    assert graph_diff(after, expected, data=False) is None
    assert result.changed
    assert {k: result.stats[k] for k in ("pruned", "weights", "zeros", "sparsity")} == {
        "pruned": 3, "weights": 512 + 320 + 36, "zeros": 384 + 240 + 27,
        "sparsity": round(651 / 868, 6)}
    assert after.constants["fc1.bias"].encoding is None  # biases are not pruned


def test_the_smallest_magnitudes_are_pruned(ir, apply):
    before = ir(MLP)
    after, _ = apply(before, "prune-weights(sparsity=0.5)")
    w, p = before.constants["fc1.weight"].data, after.constants["fc1.weight"].data
    mask = after.constants["fc1.weight"].encoding.mask
    assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()
    assert np.array_equal(p, np.where(mask, w, 0)) and mask.sum() == 256
    assert np.all(np.signbit(p[~mask]) == 0)  # pruned positions hold +0.0


def test_global_scope_uses_one_threshold(ir, apply):
    before = ir(MLP)
    for name, scale in (("fc1.weight", 3.0), ("fc2.weight", 0.1)):  # different magnitudes
        before.constants[name].data = (before.constants[name].data * scale).astype(np.float32)
    after, result = apply(before, "prune-weights(sparsity=0.6, scope=global)")
    masks = {n: v.encoding.mask for n, v in after.constants.items() if v.encoding}
    kept = np.concatenate([np.abs(before.constants[n].data[m]) for n, m in masks.items()])
    pruned = np.concatenate([np.abs(before.constants[n].data[~m]) for n, m in masks.items()])
    assert kept.min() >= pruned.max()
    assert result.stats["zeros"] == round(0.6 * 868)
    assert masks["fc2.weight"].mean() < 0.1 and masks["fc1.weight"].mean() > 0.5


def test_per_layer_overrides_and_errors(ir, apply):
    after, _ = apply(ir(MLP), 'prune-weights(sparsity=0.5, per_layer={"fc2": 0.9, '
                                   '"conv*": 0.0})')
    assert after.constants["fc2.weight"].encoding.nnz == 32
    assert after.constants["fc1.weight"].encoding.nnz == 256
    assert after.constants["conv.weight"].encoding.nnz == 36
    assert canonical('prune-weights(per_layer={"fc2": 0.9}, scope=global)') == (
        'prune-weights(sparsity=0.5, scope="global", per_layer={"fc2": 0.9}, index_bits=None)')
    with pytest.raises(Exception, match="per_layer: 'fc9' matches no layer \\(layers: fc1, "
                                        "fc2, conv\\)"):
        apply(ir(MLP), 'prune-weights(per_layer={"fc9": 0.5})')
    with pytest.raises(PipelineError, match="per_layer\\['fc1'\\] = 1.5: a sparsity is in"):
        apply(ir(MLP), 'prune-weights(per_layer={"fc1": 1.5})')
    with pytest.raises(PipelineError, match="sparsity: must be < 1.0"):
        apply(ir(MLP), "prune-weights(sparsity=1.0)")


def test_pruning_again_only_shrinks_the_mask(ir, apply):
    once, _ = apply(ir(MLP), "prune-weights(sparsity=0.5)")
    twice, result = apply(once, "prune-weights(sparsity=0.8)")
    for name in ("fc1.weight", "fc2.weight", "conv.weight"):
        m1, m2 = once.constants[name].encoding.mask, twice.constants[name].encoding.mask
        assert not np.any(m2 & ~m1), name
    again, result = apply(twice, "prune-weights(sparsity=0.5)")  # already sparser: unchanged
    assert result.stats["unchanged"] == 3 and not result.changed
    assert graph_diff(again, twice) is None


def test_sparsity_zero_is_exact(ir, apply, assert_same_outputs):
    before = ir(MLP)
    after, result = apply(before, "prune-weights(sparsity=0)")
    for name in ("fc1.weight", "fc2.weight", "conv.weight"):
        v = after.constants[name]
        assert v.encoding.mask.all() and v.data.tobytes() == before.constants[name].data.tobytes()
    assert result.stats["zeros"] == 0
    assert_same_outputs(before, after, bitwise=True)


def test_does_not_prune_shared_or_non_constant_weights(ir, apply):
    g = ir("""
    graph "g" (%x: f32[2,4], %w: f32[3,4]) {
      %a: f32[3,4] = const #1 as codebook(bits=2)
      %y: f32[2,3] = linear(%x, %w)
      %z: f32[2,3] = linear(%x, %a)
      %i: i8[3,4] = const #2
      return %y, %z
    }""")
    g.constants["a"].data = np.array([0.5, -0.5, 0.25, 1.0] * 3, np.float32).reshape(3, 4)
    after, result = apply(g, "prune-weights(sparsity=0.5)")
    assert result.stats["skipped_nonconstant"] == 1 and result.stats["skipped_codebook"] == 1
    assert not result.changed and graph_diff(after, g) is None


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "vgg11_bn"])
def test_pruned_reference_models_fine_tune_masked(name, reference_graphs):
    _, x, g = reference_graphs(name)
    pruned = optimize(g, "prune-weights(sparsity=0.8)")
    verify(pruned)
    m = to_torch(pruned)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.01)
    m.train()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), torch.tensor([1])).backward()
        opt.step()
    tuned = write_back(pruned, m)
    verify(tuned)  # no pruned weight revived
    for v in tuned.constants.values():
        if isinstance(v.encoding, Sparse):
            assert v.encoding == pruned.constants[v.name].encoding
    with torch.no_grad():
        assert torch.isfinite(run(tuned, [x])[0]).all()


def test_every_reference_model_prunes(reference_graphs):
    for name in SMALL_CONFIGS:  # a cheap structural sweep (one trace per model, cached)
        g = optimize(reference_graphs(name)[2], "prune-weights(sparsity=0.5)")
        verify(g)
