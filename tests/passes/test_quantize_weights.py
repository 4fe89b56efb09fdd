"""passes/quantize_weights.py: weight-only 8/4/2/1-bit quantization — levels, scales, the
codebook storage below 8 bits, exactness on the grid, refusals, onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shrinkc import optimize
from shrinkc.ir.interpreter import run
from shrinkc.ir.verify import verify
from shrinkc.passes import PassContext, PassManager
from suite import assert_close

LINEAR = """\
graph "l" (%x: f32[2,16]) {
  %w: f32[8,16] = const #1
  %b: f32[8] = const #2
  %e: f32[10,16] = const #3
  %i: i64[2,3] = const [[0, 1, 2], [3, 9, 9]]
  %y: f32[2,8] = linear(%x, %w, %b) loc("fc")
  %g: f32[2,3,16] = embedding(%i, %e) loc("emb")
  return %y, %g
}
"""


def _run(g, pipeline):
    pm = PassManager(pipeline, PassContext())
    out = g.clone()
    pm.run(out)
    return out, pm.steps[-1].result.stats


@pytest.mark.parametrize("bits, levels", [(8, 255), (4, 15), (2, 3), (1, 2)])
def test_levels_storage_and_error(ir, bits, levels):
    g = ir(LINEAR)
    q, stats = _run(g, f"quantize-weights(bits={bits})")
    verify(q)  # the codebook invariant holds
    assert stats["quantized_linear"] == 1 and stats["quantized_embedding"] == 1
    wq = q.constants["w.q"]
    assert wq.dtype == "i8" and len(np.unique(wq.data)) <= levels
    if bits == 1:
        assert set(np.unique(wq.data).tolist()) == {-1, 1}
        w = g.constants["w"].data
        np.testing.assert_allclose(q.constants["w.scale"].data, np.abs(w).mean(axis=1),
                                   rtol=1e-6)
    if bits < 8:
        assert wq.encoding is not None and wq.encoding.bits == bits
    # storage: bits per weight plus scales and the table
    numel = 8 * 16 + 10 * 16
    assert stats["weight_bytes_before"] == 4 * numel
    assert stats["weight_bytes_after"] < numel * bits / 8 + 2 * (8 + 10) * 4 + 2 * 2 ** bits
    assert 0 < stats["weight_rel_error"] < {8: 0.01, 4: 0.15, 2: 0.6, 1: 0.8}[bits]
    x = torch.randn(2, 16)
    with torch.no_grad():
        want, got = run(g, [x]), run(q, [x])
    rel = float((got[0] - want[0]).norm() / want[0].norm())
    assert rel < {8: 0.02, 4: 0.2, 2: 0.7, 1: 1.0}[bits]


def test_exact_on_a_four_bit_grid(ir):
    g = ir(LINEAR)
    k = np.random.default_rng(0).integers(-7, 8, (8, 16)).astype(np.float32)
    k[:, 0] = 7
    g.constants["w"].data = k * np.float32(0.125)
    q, _ = _run(g, "quantize-weights(bits=4, exclude=['emb'])")
    np.testing.assert_array_equal(q.constants["w.q"].data, k.astype(np.int8))
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert_close(run(q, [x]), run(g, [x]), depth=g)


def test_refusals_and_per_tensor(ir):
    g = ir(LINEAR)
    q, stats = _run(g, "quantize-weights(per_channel=false, exclude=['emb'])")
    assert stats["skipped_excluded"] == 1 and q.constants["e"].dtype == "f32"
    assert q.constants["w.scale"].type.rank == 0
    _, stats = _run(q, "quantize-weights")
    assert stats["skipped_quantized"] == 1 and stats["quantized_embedding"] == 1


def test_runs_in_onnxruntime(reference_graphs):
    from shrinkc.backends.onnx import run_onnxruntime

    _, x, g = reference_graphs("resnet18")
    q = optimize(g, "fold-bn,quantize-weights(bits=4)")
    with torch.no_grad():
        want = run(q, [x])[0].numpy()
    got = run_onnxruntime(q, [x.numpy()], threads=1)[0]
    assert_close(got, want, depth=q)  # float kernels on the same dequantized weights
