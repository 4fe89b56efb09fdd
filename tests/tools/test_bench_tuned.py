"""tools/bench_tuned.py: the tuned-TVM benchmark's options and one (slow) row end to end."""

from __future__ import annotations

import pytest
from shrinkc.tools import bench_tuned

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("bad", ["5 min", "1.5h", "0s"])
def test_a_bad_time_budget_is_one_error_naming_the_option(bad, capsys):
    with pytest.raises(SystemExit) as e:
        bench_tuned.main(["--budget", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--budget" in err and "Traceback" not in err


def test_settle_below_one_is_one_error_naming_the_option(capsys):
    with pytest.raises(SystemExit) as e:
        bench_tuned.main(["--settle", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--settle 0" in err and "Traceback" not in err


def test_the_table_has_the_first_run_after_idle():
    """The last column: onnxruntime's first run after the pause and tuned TVM's over it."""
    row = {"model": "m", "variant": "fp32", "input": "1×3×8×8", "macs": 1, "param_bytes": 0,
           "prepack": True, "layout": "NHWC", "ms": {"onnxruntime": 2.0, "tvm": 1.0,
                                                       "tvm-tuned": 1.0},
           "ms_fmt": {"onnxruntime": "2.00", "tvm": "1.00", "tvm-tuned": "1.00"},
           "first_ms": {"onnxruntime": 4.0, "tvm": 3.0, "tvm-tuned": 3.0},
           "new_trials": 0, "db_valid": 0, "tasks": 1, "tune_s": 0, "build_errors": 0,
           "max_diff": {"tvm": 0.0}, "output_scale": 1.0, "tuned_vs_ort": 0.0}
    md = bench_tuned.markdown([row], 2, 1, 3, settle=7)
    assert md.splitlines()[0].endswith("first run after idle: ORT ms, tuned / ORT |")
    assert md.splitlines()[2].endswith("| 4.00, 0.75× |")
    assert "7 untimed runs" in md


@pytest.mark.slow
def test_one_int8_row_tuned_under_a_time_budget(tmp_path):
    """An int8 row: tuned under a time budget, TVM's output equal to onnxruntime's to one
    output step, the ratios and what ended the tuning in the row and the table."""
    row = bench_tuned.bench_one("resnet18", 32, trials=None, budget="40s", db_root=tmp_path,
                                threads=2, warmup=1, repeat=3, population=16,
                                stem="imagenet", variant="int8")
    assert row["ended_by"] == "time budget" and row["new_trials"] > 0
    assert row["build_errors"] == 0
    assert row["tuned_vs_ort"] <= 0.05 * row["output_scale"]
    md = bench_tuned.markdown([row], 2, 1, 3)
    assert "| resnet18 (imagenet stem) | int8" in md


def test_a_pass_pipeline_gets_its_own_safe_database_name():
    a = bench_tuned._slug("prune-channels(ratio=0.5)")
    b = bench_tuned._slug("prune-channels(ratio=0.7)")
    long = bench_tuned._slug("cp-conv(ratio=0.5), prune-channels(ratio=0.5, criterion=l1)")
    assert a != b and a.startswith("prune-channels_ratio=0.5")
    assert all(c.isalnum() or c in "._=-" for c in a + b + long) and len(long) <= 49
