"""tools/bench_structured: the rows hold the run's own numbers (no timing assertions)."""

from __future__ import annotations

import pytest

from shrinkc.tools import bench_structured as bs


def test_layer_rows_are_measured_per_kind_and_backend():
    rows = bs.bench_layers((64,), (2,), ("monarch", "toeplitz", "lowrank"), warmup=0,
                           repeat=2)
    by = {r.kind: r for r in rows}
    assert set(by) == {"dense", "monarch", "toeplitz", "lowrank"}
    assert by["dense"].error == 0.0 and by["dense"].params == 64 * 64 + 64
    for kind in ("monarch", "toeplitz", "lowrank"):
        r = by[kind]
        assert r.params < by["dense"].params and 0.0 < r.error <= 1.0
        assert {b: len(t.runs_ms) for b, t in r.timings.items()} == {"torch": 2,
                                                                      "onnxruntime": 2}
    text = bs.markdown_layers(rows, threads=1, repeat=2)
    assert text.count("\n| 64 | 2 |") == 4


@pytest.mark.slow
def test_bert_rows_recover_toward_the_original():
    rows = bs.bench_bert(("lowrank",), recover_epochs=1, train_sequences=128, test_sequences=8)
    original, lowrank = rows
    assert original.rel_error == 0.0 and original.cosine == 1.0
    assert lowrank.params < original.params and lowrank.mlp_params < original.mlp_params
    assert lowrank.rel_error > 0 and lowrank.rel_error_recovered < lowrank.rel_error
    assert "| lowrank |" in bs.markdown_bert(rows)
