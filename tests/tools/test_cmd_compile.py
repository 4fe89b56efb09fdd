"""``shrinkc compile``: compile to a directory that load_compiled reads, cross-compile,
JSON report, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import shrinkc
from shrinkc.tools.cli import main
from suite import assert_close  # the suite's comparison policy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def test_compile_tvm_to_a_directory(capsys, tmp_path, reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    src = shrinkc.save(g, tmp_path / "lenet.shrk")
    out = tmp_path / "lenet"
    assert main(["compile", str(src), "--backend", "tvm", "--passes", "dce",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "backend    tvm: requested" in text and "pipeline   dce" in text
    assert "error      max |Δ|" in text and f"saved      {out}" in text
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so"]
    cm = shrinkc.load_compiled(out)
    with torch.no_grad():
        want = shrinkc.run(g, [x])[0].numpy()
    assert_close(cm(x).numpy(), want, depth=g)


def test_cross_compile_aarch64_writes_an_object_archive(capsys, tmp_path):
    assert main(["compile", "zoo:lenet_300_100", "--target", "aarch64", "-o",
                 str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "backend    tvm: a target was given (aarch64)" in text
    assert "not measured: code for aarch64-linux-gnu does not run here" in text
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["target"]["mtriple"] == "aarch64-linux-gnu"
    lib = tmp_path / manifest["files"]["library"]["path"]
    assert lib.name in ("model.tar", "model.so") and lib.stat().st_size > 0
    with pytest.raises(shrinkc.IRError, match="compiled for aarch64-linux-gnu.*load it on the "
                                              "target device"):
        shrinkc.load_compiled(tmp_path)


def test_json_report_and_default_backend(capsys):
    assert main(["compile", "zoo:lenet5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnxruntime"
    assert "only built and timed when tuning is asked" in report["reason"]
    assert report["params"] == 61706 and report["max_abs_error"] < 1e-4


def test_target_as_json_dict(capsys):
    assert main(["compile", "zoo:lenet_300_100", "--target",
                 '{"kind": "llvm", "mcpu": "haswell", "num-cores": 1}']) == 0
    assert '"mcpu": "haswell"' in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--target", "x86-avx3"], "unknown target preset 'x86-avx3'; presets: host"),
    (["--target", "{nope"], "is not valid JSON"),
    (["--backend", "torch", "--tune-trials", "3"], "apply to the tvm backend, not torch"),
    (["--tune-budget", "soon"], "--tune-budget 'soon': expected a duration such as 90s, 5m"),
    (["--backend", "torch", "--tune-budget", "5m"], "tune_budget applies to the tvm backend"),
    (["--passes", "no-such-pass"], "no-such-pass"),
])
def test_errors_are_one_line(capsys, args, words):
    assert main(["compile", "zoo:lenet5", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shrinkc: error: ") and words in err[0]
