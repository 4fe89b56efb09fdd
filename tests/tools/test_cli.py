"""``tools/cli.py``: the one error boundary, -v anywhere, closed pipes, library noise, the
reproducer run without the venv on PATH, seeded zoo models. Bad input kind by kind is
``test_bad_inputs.py``. Subprocesses only where the behaviour needs a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shrinkc.ir.serialize import save
from shrinkc.passes import unregister_pass
from shrinkc.tools import cmd_inspect
from shrinkc.tools.cli import EXIT_INTERNAL, main


def _cli(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "TMPDIR": str(cwd / "tmp"), **(env or {})}
    (cwd / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "shrinkc.tools.cli", *args], cwd=cwd,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.fixture
def lenet(tmp_path, reference_graphs) -> Path:
    return save(reference_graphs("lenet5")[2], tmp_path / "lenet.shrk")


def test_verbose_and_quiet_are_accepted_after_the_subcommand(lenet, capsys):
    for flags in (["-v"], ["--debug"], ["-q"], ["-vv", "-q"]):
        assert main(["inspect", str(lenet), *flags]) == 0, flags
    assert main(["-v", "inspect", str(lenet), "-v"]) == 0
    assert "conv1" in capsys.readouterr().out


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert main(["compile", "--help"]) == 0
    assert "-v, --verbose" in capsys.readouterr().out


def test_an_internal_error_is_one_line_exit_70(lenet, capsys, monkeypatch):
    def boom(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cmd_inspect, "inspect_table", boom)
    assert main(["inspect", str(lenet)]) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["shrinkc: error: internal error: ZeroDivisionError: division by zero (a bug "
                   "in shrinkc; rerun with -v for the traceback)"]
    assert main(["inspect", str(lenet), "-v"]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_zoo_models_are_seeded(capsys):
    """The same --seed gives the same weights (and the walkthrough's numbers repeat)."""
    texts = []
    for seed in ("0", "0", "1"):
        assert main(["inspect", "zoo:lenet_300_100", "--ir", "--seed", seed]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] != texts[2]


def test_print_piped_to_head_is_not_a_failing_pass(tmp_path):
    """``shrinkc opt … --print-after-all | head -3``: exit 0, nothing on stderr, no
    reproducer, and the run still writes its -o output."""
    p = _cli("opt", "zoo:lenet5", "--passes=fold-bn,remove-identity,dce", "--print-after-all",
             "-o", "out.shrk", cwd=tmp_path)
    head = [p.stdout.readline() for _ in range(3)]
    p.stdout.close()  # what head does after 3 lines
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert head[0].startswith("// IR after 001_fold-bn")
    assert "Traceback" not in err and "error" not in err and "Exception ignored" not in err
    assert list((tmp_path / "tmp").iterdir()) == []  # no shrinkc-repro-* folder
    assert (tmp_path / "out.shrk").is_file()


def test_inspect_piped_to_head_exits_quietly(tmp_path, lenet):
    p = _cli("inspect", str(lenet), "--ir", "--all", cwd=tmp_path)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0 and err == ""


BRANCHY = """
import torch

class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x
"""


def test_library_noise_is_not_shown(tmp_path):
    """torch.export's warning log and the FX graph it prints on a failed export do not
    come before shrinkc's one line (a real process: torch's handlers hold the real stderr)."""
    (tmp_path / "branchy.py").write_text(BRANCHY)
    p = _cli("inspect", "branchy:Branchy", "--input-shape", "1,4", cwd=tmp_path,
             env={"PYTHONPATH": str(tmp_path)})
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(
        "shrinkc: error: trace: Branchy has data-dependent control flow")


def test_verbose_shows_what_torch_export_printed(tmp_path, monkeypatch, capsys, caplog):
    (tmp_path / "branchy.py").write_text(BRANCHY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "branchy:Branchy", "--input-shape", "1,4", "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert "torch.export printed" in caplog.text and "def forward" in caplog.text
    sys.modules.pop("branchy", None)


def test_reproducer_script_runs_without_the_venv_on_path(tmp_path, lenet, capsys):
    """The reproducer calls the interpreter that wrote it (``python -m shrinkc.tools.cli``):
    it reruns the failing pass with PATH holding only the system folders."""
    plugin = tmp_path / "failing.py"
    plugin.write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from shrinkc.passes import Pass, PassError, PassResult, register_pass

        @register_pass("fail-on-relu")
        @dataclass
        class FailOnRelu(Pass):
            '''Fails on the first relu.'''
            exact = True

            def run(self, graph, ctx):
                for n in graph.nodes:
                    if n.op == "relu":
                        raise PassError("relu is not welcome", node=n)
                return PassResult(False)
    """))
    try:
        assert main(["opt", str(lenet), "--passes=fold-bn,fail-on-relu", "--load-plugin",
                     str(plugin), "--reproducer-dir", str(tmp_path / "repro")]) == 2
    finally:
        unregister_pass("fail-on-relu")
        sys.modules.pop("failing", None)
    assert "relu is not welcome" in capsys.readouterr().err
    script = tmp_path / "repro" / "reproducer.sh"
    assert f"{sys.executable} -m shrinkc.tools.cli opt" in script.read_text()
    r = subprocess.run([str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                            "TMPDIR": str(tmp_path / "tmp")})
    assert r.returncode == 2, r.stderr  # not 127 (command not found)
    assert "pass 'fail-on-relu' failed on node relu" in r.stderr
