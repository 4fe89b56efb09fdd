"""tools/bench_nan.py runs (smoke mode: the numbers are not checked, only that both forms
build, run and agree on finite input)."""

from __future__ import annotations

import pytest

from shrinkc.tools.bench_nan import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_bench_nan_smoke(capsys):
    assert main(["--quick", "--ops", "relu,max_pool2d"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| relu")
            or ln.startswith("| max_pool2d")]
    assert len(rows) == 2 and all(r.rstrip().endswith("| True |") for r in rows)
