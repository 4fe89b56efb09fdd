"""tools/progress.py and the status lines of ``shrinkc compile`` / ``bench``: drawn on a
terminal only, never with -q, and the stages the library reports."""

from __future__ import annotations

import io
import sys

import pytest

from shrinkc.ir.serialize import save
from shrinkc.tools.cli import main
from shrinkc.tools.progress import Status, enabled


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_draws_only_on_a_terminal():
    tty, pipe = _Terminal(), io.StringIO()
    for stream in (tty, pipe):
        with Status("work", stream=stream) as s:
            s("first")
            s("second")
        assert s.stages == ["first", "second"]
    assert "work: second" in tty.getvalue() and pipe.getvalue() == ""
    assert enabled(stream=tty) and not enabled(stream=pipe) and not enabled(True, tty)
    quiet = _Terminal()
    with Status("work", quiet=True, stream=quiet) as s:
        s("x")
    assert quiet.getvalue() == ""


@pytest.fixture
def lenet(tmp_path, reference_graphs):
    return save(reference_graphs("lenet5")[2], tmp_path / "lenet.shrk")


def test_compile_shows_its_stages_on_a_terminal(lenet, tmp_path, monkeypatch, capsys):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["compile", str(lenet), "--backend", "tvm", "-o", str(tmp_path / "out")]) == 0
    drawn = term.getvalue()
    for stage in ("loading the model", "lower", "relax passes", "codegen", "link", "check",
                  "save"):
        assert f"compile {lenet}: {stage}" in drawn, stage
    assert "backend    tvm" in capsys.readouterr().out  # the report itself is on stdout
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["compile", str(lenet), "--backend", "torch", "-q"]) == 0
    assert quiet.getvalue() == ""


def test_bench_reports_model_and_backend_on_a_terminal(monkeypatch, capsys):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["bench", "lenet5", "lenet_300_100", "--backends", "torch,onnxruntime",
                 "--repeat", "1", "--warmup", "0", "--threads", "1"]) == 0
    drawn = term.getvalue()
    assert "[1/2] lenet5: building onnxruntime" in drawn
    assert "[2/2] lenet_300_100: timing" in drawn
    assert "| lenet5 |" in capsys.readouterr().out


def test_no_status_line_when_stderr_is_not_a_terminal(lenet, capsys):
    assert main(["compile", str(lenet), "--backend", "torch"]) == 0
    assert capsys.readouterr().err == ""
