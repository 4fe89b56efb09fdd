"""bench_lowrank: the smoke run works and its table holds what it says (no timing asserted)."""

from __future__ import annotations

import json

from shrinkc.tools import bench_lowrank


def test_smoke_run_prints_the_table_and_json(capsys, tmp_path):
    out = tmp_path / "rows.json"
    code = bench_lowrank.main(["--models", "vgg11_bn", "--passes", "tucker-conv,svd-linear",
                               "--settings", "ratio=0.5", "--smoke", "--untrained",
                               "--test-images", "20", "--train-images", "64", "--json",
                               str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for name in ("fold-bn (baseline)", "tucker-conv(ratio=0.5)", "svd-linear(ratio=0.5)"):
        assert f"| vgg11_bn | {name} |" in text
    base, tucker, svd = json.loads(out.read_text())
    assert base["pipeline"] == "" and base["decomposed"] == 0
    assert tucker["decomposed"] > 0 and svd["decomposed"] > 0
    assert base["recovered_accuracy"] is None
    for r in (tucker, svd):
        assert r["params"] < base["params"] and r["macs"] < base["macs"]
        assert 0 < r["max_error"] < 1
        assert 0.0 <= r["recovered_accuracy"] <= 1.0
    for r in (base, tucker, svd):
        assert set(r["timings"]) == {"torch", "onnxruntime"}
        assert r["max_diff_ort"] < 1e-3 and 0.0 <= r["accuracy"] <= 1.0
