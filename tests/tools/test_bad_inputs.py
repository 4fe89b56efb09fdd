"""Bad input to the command line, kind by kind (issue 12): each one is exit status 2, exactly
one ``shrinkc: error:`` line on stderr naming the path / option / node, no traceback, nothing
on stdout, and no file left behind — not in the output's folder, not in the temp folder.

The commands run in-process (``cli.main``); the cases that need a real process (a closed
pipe) are in ``test_cli.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from shrinkc.ir.serialize import save
from shrinkc.passes import PASSES, unregister_pass
from shrinkc.tools.cli import main


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def work(tmp_path, monkeypatch, reference_graphs):
    """A folder with a saved LeNet-5 (``lenet.shrk``), a plain file, a directory named like
    an output, plugins; the temp folder redirected so a stray reproducer would be seen."""
    save(reference_graphs("lenet5")[2], tmp_path / "lenet.shrk")
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "dir.shrk").mkdir()
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "outdir").mkdir()
    (tmp_path / "pics.dot").mkdir()
    (tmp_path / "broken.shrk").write_text('graph "g" (%x: f32[1,2]) {\n  %y = relu(%x\n')
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07not onnx at all" * 10)
    (tmp_path / "syntax_plugin.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('plugin says no')\n")
    (tmp_path / "badmodels.py").write_text(textwrap.dedent("""
        import torch

        class Branchy(torch.nn.Module):
            def forward(self, x):
                if x.sum() > 0:  # data-dependent: torch.export prints its FX graph
                    return x * 2
                return x

        def branchy():
            return Branchy()

        def needs_args(width, depth):
            return torch.nn.Linear(width, depth)

        def not_a_module():
            return 42

        def raises():
            raise RuntimeError("factory exploded")

        NOT_CALLABLE = 3
    """))
    (tmp_path / "breaking_plugin.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        from shrinkc.passes import Pass, PassResult, register_pass

        @register_pass("break-order")
        @dataclass
        class BreakOrder(Pass):
            '''Puts the nodes in reverse order: the graph no longer verifies.'''

            exact = True

            def run(self, graph, ctx):
                graph.nodes.reverse()
                return PassResult(True)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    if "break-order" in PASSES:
        unregister_pass("break-order")
    for mod in ("badmodels", "breaking_plugin", "syntax_plugin", "raising_plugin"):
        sys.modules.pop(mod, None)


def _unwritable_dir(root: Path) -> Path:
    """A folder in which creating a file fails (root ignores mode bits: then /sys or /proc)."""
    d = root / "readonly"
    d.mkdir()
    d.chmod(0o555)
    candidates = [d] + [Path(p) for p in ("/sys", "/proc")]
    for c in candidates:
        try:
            fd, tmp = tempfile.mkstemp(dir=c)
        except OSError:
            return c
        os.close(fd)
        os.unlink(tmp)
    pytest.skip("no folder here refuses new files")


# (args, words the one error line must contain); W = the work folder
CASES = {
    # ---------------------------------------------------------------- output locations
    "opt -o is an existing directory (.shrk)":
        (["opt", "lenet.shrk", "-o", "dir.shrk"], "-o dir.shrk: is an existing directory"),
    "opt -o is an existing directory (.onnx)":
        (["opt", "lenet.shrk", "-o", "dir.onnx"], "-o dir.onnx: is an existing directory"),
    "opt -o in a folder that does not exist":
        (["opt", "lenet.shrk", "-o", "nope/out.shrk"], "folder nope does not exist"),
    "opt -o under a file":
        (["opt", "lenet.shrk", "-o", "file.txt/out.shrk"], "file.txt is a file, not a folder"),
    "opt -o with another suffix":
        (["opt", "lenet.shrk", "-o", "out.txt"], "the output is a .shrk, .shrkz or .onnx file"),
    "opt --dump-dir under a file":
        (["opt", "lenet.shrk", "--passes=dce", "--dump-dir", "file.txt/dumps"],
         "--dump-dir file.txt/dumps: file.txt is a file"),
    "opt --dump-dir is a file":
        (["opt", "lenet.shrk", "--passes=dce", "--dump-dir", "file.txt"],
         "--dump-dir file.txt: is an existing file"),
    "opt --reproducer-dir under a file":
        (["opt", "lenet.shrk", "--passes=dce", "--reproducer-dir", "file.txt/r"],
         "--reproducer-dir file.txt/r: file.txt is a file"),
    "compile -o is an existing file (checked before the model is even looked at)":
        (["compile", "zoo:nope", "-o", "file.txt"], "-o file.txt: is an existing file"),
    "compile -o under a file":
        (["compile", "lenet.shrk", "--backend", "torch", "-o", "file.txt/out"],
         "-o file.txt/out: file.txt is a file"),
    "bench -o is an existing directory (before the benchmark runs)":
        (["bench", "lenet5", "--repeat", "1", "-o", "outdir"], "-o outdir: is an existing directory"),
    "inspect --dot with a suffix that is no picture":
        (["inspect", "zoo:nope", "--dot", "g.txt"], "--dot g.txt: a graph picture is .dot"),
    "inspect --dot into an existing directory":
        (["inspect", "lenet.shrk", "--dot", "pics.dot"], "--dot pics.dot: is an existing directory"),
    "opt --dot-after an unknown pass":
        (["opt", "lenet.shrk", "--passes=dce", "--dot-after", "fold-bm"], "unknown pass 'fold-bm'"),
    "opt --dot-after with no file after '='":
        (["opt", "lenet.shrk", "--passes=dce", "--dot-after", "dce="], "give a FILE after '='"),
    "opt --dot-after into a folder that does not exist":
        (["opt", "lenet.shrk", "--passes=dce", "--dot-after", "dce=nope/g.dot"],
         "folder nope does not exist"),
    # ---------------------------------------------------------------- models
    "unknown zoo model": (["inspect", "zoo:nope"], "zoo:nope: unknown model 'nope'"),
    "MODEL of no known kind": (["inspect", "model.pt"], "MODEL must be zoo:NAME"),
    "missing .shrk": (["inspect", "missing.shrk"], "missing.shrk: no such file"),
    "a .shrk that is a directory": (["inspect", "dir.shrk"], "dir.shrk: no such file"),
    "a .shrk that does not parse": (["inspect", "broken.shrk"], "broken.shrk: line 2"),
    "missing .onnx": (["inspect", "missing.onnx"], "missing.onnx: no such file"),
    "a corrupt .onnx": (["inspect", "corrupt.onnx"], "corrupt.onnx"),
    "module that does not exist":
        (["inspect", "no_such_module:make", "--input-shape", "1,4"], "cannot import make"),
    "factory that does not exist":
        (["inspect", "badmodels:nope", "--input-shape", "1,4"], "cannot import nope"),
    "factory that needs arguments":
        (["inspect", "badmodels:needs_args", "--input-shape", "1,4"],
         "needs_args cannot be called without arguments"),
    "factory that is not callable":
        (["inspect", "badmodels:NOT_CALLABLE", "--input-shape", "1,4"], "not a callable"),
    "factory that returns no module":
        (["inspect", "badmodels:not_a_module", "--input-shape", "1,4"],
         "not_a_module() returned a int, not a torch.nn.Module"),
    "factory that raises":
        (["inspect", "badmodels:raises", "--input-shape", "1,4"],
         "raises() failed: RuntimeError: factory exploded"),
    "factory without --input-shape": (["inspect", "badmodels:branchy"], "give --input-shape"),
    "model torch.export cannot capture (no FX dump, no fake-tensor log)":
        (["inspect", "badmodels:branchy", "--input-shape", "1,4"], "data-dependent control flow"),
    "an input too large to allocate":
        (["inspect", "zoo:lenet5", "--input-shape", "100000,3,1000,1000"],
         "out of memory (tried to allocate 1117.59 GiB)"),
    "--input-shape that is no shape": (["inspect", "zoo:lenet5", "--input-shape", "1,x,3"],
                                       "--input-shape '1,x,3': expected comma-separated ints"),
    "--input-shape with a zero": (["inspect", "zoo:lenet5", "--input-shape", "1,0"],
                                  "dims must be positive"),
    # ---------------------------------------------------------------- pipelines and plugins
    "unknown pass": (["opt", "lenet.shrk", "--passes=fold-bm"], "unknown pass 'fold-bm'"),
    "bad pass option": (["opt", "lenet.shrk", "--passes=fold-constants(max_growth=0.5)"],
                        "option max_growth: must be >= 1.0"),
    "plugin file that does not exist":
        (["opt", "lenet.shrk", "--load-plugin", "nope.py"], "--load-plugin nope.py: plugin"),
    "plugin module that does not exist":
        (["opt", "lenet.shrk", "--load-plugin", "no_such_plugin"], "cannot import it"),
    "plugin with a syntax error":
        (["opt", "lenet.shrk", "--load-plugin", "syntax_plugin.py"],
         "--load-plugin syntax_plugin.py: syntax error in"),
    "plugin that raises while imported":
        (["opt", "lenet.shrk", "--load-plugin", "raising_plugin.py"],
         "importing it failed: RuntimeError: plugin says no"),
    "--no-verify-each -o of a graph that does not verify":
        (["opt", "lenet.shrk", "--load-plugin", "breaking_plugin.py", "--passes=break-order",
          "--no-verify-each", "-o", "out.shrk"],
         "-o out.shrk: not written: the result does not verify"),
    "--stop-after a pass not in the pipeline":
        (["opt", "lenet.shrk", "--passes=dce", "--stop-after=fold-bn"], "stop-after: no pass"),
    # ---------------------------------------------------------------- options
    "unknown option": (["opt", "lenet.shrk", "--frobnicate"],
                       "opt: unrecognized arguments: --frobnicate"),
    "option value of the wrong type": (["compile", "lenet.shrk", "--tune-trials", "many"],
                                       "argument --tune-trials: invalid int value: 'many'"),
    "unknown backend choice": (["compile", "lenet.shrk", "--backend", "tensorrt"],
                               "argument -b/--backend: invalid choice: 'tensorrt'"),
    "missing MODEL": (["compile"], "the following arguments are required: MODEL"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "--target that is broken JSON": (["compile", "lenet.shrk", "--target", "{nope"],
                                     "--target '{nope' is not valid JSON"),
    "target for a backend that takes none":
        (["compile", "lenet.shrk", "--backend", "torch", "--target", "host"],
         "target and tune_trials apply to the tvm backend, not torch"),
    "negative --tune-trials": (["compile", "lenet.shrk", "--tune-trials", "-3"],
                               "--tune-trials -3: must be >= 0"),
    "bench: unknown backend": (["bench", "lenet5", "--backends", "torch,tensorrt"],
                               "--backends 'torch,tensorrt': choose from"),
    "bench: unknown model": (["bench", "nope"], "unknown model 'nope'"),
    "bench: zero threads": (["bench", "lenet5", "--threads", "0"], "--threads 0: must be >= 1"),
    "tune: negative trials": (["tune", "lenet.shrk", "--trials", "-1"], "--trials -1: must be >= 0"),
    "tune: tracker without a key": (["tune", "lenet.shrk", "--rpc-tracker", "localhost:9190"],
                                    "--rpc-tracker and --rpc-key go together"),
}


def _check_one_error(rc: int, captured, words: str) -> str:
    err_lines = captured.err.strip().splitlines()
    errors = [ln for ln in err_lines if ln.startswith("shrinkc: error: ")]
    assert rc == 2, captured.err
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err, captured.err
    assert words in errors[0], errors[0]
    return captured.err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_leaves_nothing(case, work, capsys):
    args, words = CASES[case]
    before = _tree(work)
    rc = main(args)
    captured = capsys.readouterr()
    err = _check_one_error(rc, captured, words)
    assert captured.out == ""
    assert _tree(work) == before, "files left behind"
    assert "def forward" not in err and "Unable to find user code" not in err  # torch noise


def test_output_in_a_folder_that_refuses_files(work, capsys):
    """A folder that is not writable: caught before the work when the mode bits say so, and
    as one line when the OS refuses only at creation (e.g. /sys for root)."""
    d = _unwritable_dir(work)
    before = _tree(work)
    rc = main(["opt", "lenet.shrk", "-o", str(d / "out.shrk")])
    _check_one_error(rc, capsys.readouterr(), f"{d / 'out'}")
    assert _tree(work) == before


def test_existing_dir_output_leaves_no_weights_file(work, capsys):
    """The case of issue 12: ``-o existing_dir.shrk`` used to leave ``existing_dir.safetensors``."""
    assert main(["opt", "lenet.shrk", "-o", "dir.shrk"]) == 2
    capsys.readouterr()
    assert not (work / "dir.safetensors").exists()


def test_rendering_without_graphviz_is_one_line(work, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    before = _tree(work)
    rc = main(["inspect", "lenet.shrk", "--dot", "g.svg"])
    _check_one_error(rc, capsys.readouterr(), "rendering .svg needs Graphviz's 'dot' program")
    assert _tree(work) == before


def test_verbose_shows_the_traceback_and_library_output(work, capsys):
    """-v (here after the subcommand) adds the traceback; the error line stays the same."""
    rc = main(["inspect", "badmodels:raises", "--input-shape", "1,4", "-v"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("shrinkc: error: badmodels:raises: raises() "
                                                    "failed: RuntimeError: factory exploded")
