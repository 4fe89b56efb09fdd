"""``tools/bench.py`` and ``shrinkc bench``: every backend timed, the table's columns."""

from __future__ import annotations

import pytest

from shrinkc.tools.bench import bench_model, markdown
from shrinkc.tools.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_bench_model_times_every_backend():
    row = bench_model("lenet_300_100", warmup=1, repeat=3, threads=1, pause=0)
    assert set(row.timings) == {"torch", "onnxruntime", "tvm"}
    assert all(len(t.runs_ms) == 3 and t.median > 0 for t in row.timings.values())
    assert max(row.max_diff.values()) < 1e-4  # every backend computes the same thing
    assert row.params == 266_610 and row.speedup("torch") == 1.0
    table = markdown([row], threads=1, warmup=1, repeat=3)
    header = table.splitlines()[0]
    for col in ("PyTorch ms", "onnxruntime ms", "TVM untuned ms", "TVM vs PyTorch", "MACs"):
        assert col in header
    assert "| lenet_300_100 | 1×1×28×28 | 266.61K |" in table
    assert "1 threads per backend" in table and "Medians of 3 runs" in table
    assert "10 untimed runs" in table  # the default settle


def test_bench_command(capsys):
    assert main(["bench", "lenet5", "--backends", "torch,onnxruntime", "--repeat", "2",
                 "--warmup", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| lenet5 |" in out and "×" in out
    assert main(["bench", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["bench", "lenet5", "--settle", "0"]) == 2
    err = capsys.readouterr().err
    assert "--settle must be >= 1" in err and "Traceback" not in err


def test_speedup_cell():
    from shrinkc.tools.bench import Timing, speedup

    assert speedup(Timing([2.0, 4.0, 3.0]), Timing([1.0, 1.5, 2.0])) == "2.00×"
    assert speedup(Timing([1.0]), Timing([4.0])) == "0.25×"
    assert speedup(Timing([1.0]), Timing()) == "-" and speedup(Timing(), Timing([1.0])) == "-"


def test_block_plans():
    from shrinkc.tools.bench import balanced_rounds, rounds_of

    # bench_tuned's plan: blocks of 10 until --repeat runs
    assert rounds_of(30) == [10, 10, 10] and rounds_of(25) == [10, 10, 5]
    assert rounds_of(3) == [3] and rounds_of(0) == []
    # a multiple of the runner count of equal rounds, at least `repeat` runs
    assert balanced_rounds(50, 12) == [5] * 12
    assert balanced_rounds(200, 7) == [10] * 21
    assert balanced_rounds(2, 5) == [1] * 5 and balanced_rounds(30, 1) == [10] * 3


def test_time_in_blocks_rotates_the_order():
    """Each block is one untimed and `rounds[r]` timed runs of one runner; round r starts
    with runner r mod n. Only the calls are checked, not the clock."""
    from shrinkc.tools.bench import time_in_blocks

    calls: list[str] = []
    runners = [lambda name=name: calls.append(name) for name in "abc"]
    timings = time_in_blocks(runners, [2, 1, 1], pause=0.0)
    assert "".join(calls) == "aaabbbccc" + "bbccaa" + "ccaabb"
    assert [len(t.runs_ms) for t in timings] == [4, 4, 4]
    assert [len(t.first_ms) for t in timings] == [3, 3, 3]  # one per block
    calls.clear()  # `settle` untimed runs per block, the first of them recorded
    timings = time_in_blocks(runners[:2], [1, 1], pause=0.0, settle=3)
    assert "".join(calls) == "aaaabbbb" + "bbbbaaaa"
    assert [(len(t.runs_ms), len(t.first_ms)) for t in timings] == [(2, 2), (2, 2)]
