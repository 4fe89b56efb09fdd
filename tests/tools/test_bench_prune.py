"""bench_prune: the smoke run works and its table holds what it says (no timing asserted)."""

from __future__ import annotations

import json

from shrinkc.tools import bench_prune


def test_smoke_run_prints_the_table_and_json(capsys, tmp_path):
    out = tmp_path / "rows.json"
    code = bench_prune.main(["--models", "vgg11_bn", "--ratios", "0.5", "--smoke",
                             "--untrained", "--test-images", "20", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| vgg11_bn | 0 |" in text and "| vgg11_bn | 0.5 |" in text
    rows = json.loads(out.read_text())
    base, pruned = rows
    assert base["ratio"] == 0 and base["channels_removed"] == 0
    assert pruned["params"] < base["params"] and pruned["macs"] < base["macs"]
    for r in rows:
        assert set(r["timings"]) == {"torch", "onnxruntime"}
        assert r["max_diff_ort"] < 1e-3 and 0.0 <= r["accuracy"] <= 1.0


def test_recovery_rows(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert bench_prune.main(["--models", "lenet5", "--ratios", "0.5", "--smoke", "--untrained",
                             "--test-images", "20", "--recover-epochs", "1",
                             "--train-images", "64", "--json", str(out)]) == 0
    assert "| lenet5 | 0.5 | 1 epochs |" in capsys.readouterr().out
    base, pruned, recovered = json.loads(out.read_text())
    assert (pruned["recover_epochs"], recovered["recover_epochs"]) == (0, 1)
    assert recovered["params"] == pruned["params"]
