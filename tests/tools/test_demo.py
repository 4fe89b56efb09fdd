"""make demo (tools/demo.py): the whole path runs and prints the before/after table (slow:
it trains a reference model; the README's table comes from a full run)."""

from __future__ import annotations

import pytest

from shrinkc.tools import demo


@pytest.mark.slow
def test_quick_demo_prints_the_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path))
    assert demo.main(["--model", "lenet5", "--quick", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("test accuracy", "params", "MACs", "size on disk", "latency (batch 1)"):
        assert row in out
    for col in ("original (PyTorch eager)", "original (onnxruntime fp32)",
                "onnxruntime int8 (quantize_static)", "vs ORT int8"):
        assert col in out
    assert "[6/6]" in out and "compress and recover: prune-gradual+int8" in out
