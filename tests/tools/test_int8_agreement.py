"""tools/int8_agreement.py: onnxruntime against the exact int8 result, per QDQ segment and end
to end, on this CPU and on an emulated one. The emulated Zen 3 (qemu's EPYC-Milan: AVX2, no
VNNI) is the issue's AVX2-only machine: there 8-bit weights saturate onnxruntime's int16 pair
sums, and reduce_range=auto, which reads CPUID, picks 7-bit weights, which agree."""

from __future__ import annotations

import json
import platform
import shutil

import pytest
from shrinkc.passes.analyses import calibration as cal
from shrinkc.tools import int8_agreement as ia


def test_this_cpu_agrees_with_auto_and_with_7_bit_weights(capsys, tmp_path):
    out_json = tmp_path / "a.json"
    assert ia.main(["--models", "lenet5", "--untrained", "--calib-images", "16",
                    "--test-images", "8", "--backends", "onnxruntime",
                    "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    rows = {r["weight_bits"]: ia.Agreement(**r) for r in data["rows"]}
    assert set(rows) == {8, 7} and rows[8].segments == rows[7].segments >= 4
    assert data["probe"]["reduce_range"] == cal.needs_reduce_range()
    auto = 7 if cal.needs_reduce_range() else 8
    assert rows[auto].auto and not rows[15 - auto].auto
    assert rows[auto].agrees and rows[7].agrees, out  # what auto picks is exact here
    assert rows[auto].e2e_top1_changed <= 0.25
    assert "| lenet5 | onnxruntime | 8-bit |" in out and "| lenet5 | onnxruntime | 7-bit |" in out
    assert "Target: this CPU" in out


def test_bad_options_are_one_clear_error(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        ia.main(["--models", ""])
    assert "--models is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="backends are onnxruntime, tvm; got tflite"):
        ia.main(["--models", "lenet5", "--backends", "tflite"])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="--cpu needs qemu-x86_64"):
        ia.main(["--models", "lenet5", "--untrained", "--calib-images", "4",
                 "--test-images", "2", "--cpu", "EPYC-Milan"])


def test_compare_segments_counts_steps_and_shares():
    import numpy as np

    want = [np.zeros(200, np.uint8), np.zeros(4, np.float32)]
    got = [want[0].copy(), np.ones(4, np.float32)]  # float outputs are not segments
    got[0][:3] = 1
    got[0][7] = 5
    assert ia.compare_segments(["a", "logits"], got, want) == (5, "a", 0.02)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64",
                    reason="needs qemu-x86_64 (Debian: qemu-user) on an x86-64 host")
def test_emulated_zen3_saturates_8_bit_weights_and_auto_picks_7(capsys):
    """~2 minutes: the probe, onnxruntime and the TVM modules run under qemu's TCG."""
    rows, probe = ia.agreement(["resnet18"], cpu="EPYC-Milan", trained=False,
                               calib_images=32, test_images=10)
    assert probe["cpuid_flags"] == ["avx2"] and probe["reduce_range"] is True
    assert probe["llvm_cpu"] == "znver3"
    by = {(r.backend, r.weight_bits): r for r in rows}
    assert by["onnxruntime", 7].auto and by["onnxruntime", 7].agrees
    # the emulator really runs the saturating kernel: 8-bit weights are off by many steps
    assert not by["onnxruntime", 8].agrees and by["onnxruntime", 8].worst_steps > 10
    # TVM's AVX2 dot kernel takes the 7-bit layers; 8-bit ones keep the generic kernel
    assert by["tvm", 7].agrees and by["tvm", 7].dot_instructions.startswith("vpmaddubsw")
    assert by["tvm", 8].agrees and by["tvm", 8].dot_instructions == "none"
