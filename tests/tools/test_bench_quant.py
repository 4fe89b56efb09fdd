"""tools/bench_quant.py runs end to end (untrained models, a few images): every row has an
accuracy, a size and timings; the table has a line per row."""

from __future__ import annotations

from shrinkc.tools import bench_quant


def test_bench_quant_smoke(capsys):
    assert bench_quant.main(["--models", "lenet5", "--equalize-models", "lenet5",
                             "--bias-correct", "--transformers", "vit,bert", "--smoke",
                             "--untrained", "--calib-images", "4", "--test-images", "20"]) == 0
    out = capsys.readouterr().out
    for variant in ("fp32", "shrinkc minmax", "shrinkc equalize+minmax",
                    "shrinkc minmax+bias-correct", "ORT MinMax", "shrinkc dynamic",
                    "shrinkc dynamic+weights",
                    "ORT quantize_dynamic", "ORT quantize_dynamic per-channel"):
        assert f"| {variant} |" in out, variant
    rows = [ln for ln in out.splitlines() if ln.startswith(("| lenet5", "| vit", "| bert"))]
    assert len(rows) == 15
    bert = [ln for ln in rows if ln.startswith("| bert")]
    assert all("| - | - |" in ln for ln in bert)  # no labels: cosine only
