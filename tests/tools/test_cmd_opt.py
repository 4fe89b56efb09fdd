from __future__ import annotations

import re

import pytest
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.serialize import load, save
from shrinkc.ir.text import graph_diff, parse_graph
from shrinkc.passes import PASSES
from shrinkc.tools.cli import main


@pytest.fixture
def resnet(tmp_path, reference_graphs):
    """The small reference ResNet-18 saved as a .shrk (no tracing in the command)."""
    return save(reference_graphs("resnet18")[2], tmp_path / "resnet18.shrk")


@pytest.mark.parametrize("pipeline, message", [
    ("fold-bn,fold-bm", ("unknown pass 'fold-bm' in pipeline 'fold-bn,fold-bm' (did you mean "
                         "'fold-bn'?); known passes: ")),
    ("fold-constants(max_growth=0.5)", ("pass 'fold-constants' option max_growth: must be >= "
                                        "1.0, got 0.5")),
    ("fold-constants(grow=2)", ("pass 'fold-constants' has no option 'grow'; its options: "
                                "max_growth: float = 1.0")),
    ("fold-bn(", "unclosed '(' in pipeline 'fold-bn('"),
])
def test_bad_pipeline_is_one_error_line_and_no_output(pipeline, message, tmp_path, capsys):
    out = tmp_path / "out.shrk"
    # zoo:resnet18 is never traced: the pipeline is checked first
    assert main(["opt", "zoo:resnet18", f"--passes={pipeline}", "-o", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shrinkc: error: ") and message in err[0]
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_unknown_pass_error_lists_every_pass(capsys):
    assert main(["opt", "zoo:lenet5", "--passes=nope"]) == 2
    err = capsys.readouterr().err
    for name in PASSES:
        assert name in err


@pytest.mark.parametrize("args, message", [
    (["--print-after=fold-bm"], "unknown pass 'fold-bm'"),
    (["--stop-after=dce"], "stop-after: no pass 'dce' in the pipeline (its passes: fold-bn)"),
    (["-o", "OUT.txt"], "the output is a .shrk, .shrkz or .onnx file"),
])
def test_bad_options_fail_before_anything_is_written(args, message, tmp_path, capsys):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert main(["opt", "zoo:resnet18", "--passes=fold-bn", *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_print_passes_lists_every_pass(capsys):
    assert main(["opt", "--print-passes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["pass", "exact", "summary"]
    listed = {ln.split()[0]: ln.split()[1] for ln in lines[1:] if not ln.startswith(" ")}
    assert listed == {n: "yes" if c.exact else "no" for n, c in PASSES.items()}
    assert any("max_growth: float = 1.0 (>= 1.0)" in ln for ln in lines)


def test_model_is_required_without_print_passes(capsys):
    assert main(["opt", "--passes=dce"]) == 2
    assert "give a MODEL" in capsys.readouterr().err


def test_opt_writes_an_equivalent_graph_and_reports(resnet, tmp_path, capsys):
    out = tmp_path / "folded.shrk"
    dump = tmp_path / "dump"
    rc = main(["opt", str(resnet), "--passes=fold-bn,remove-identity,dce", "-o", str(out),
               "--stats", "--numeric-diff", "--time-passes", "--dump-dir", str(dump)])
    assert rc == 0
    captured = capsys.readouterr()
    before, after = load(resnet), load(out)
    assert not any(n.op == "batch_norm" for n in after.nodes)
    xs = random_inputs(before, seed=3)
    y0, y1 = run(before, xs)[0], run(after, xs)[0]
    assert (y0 - y1).abs().max().item() < 1e-4
    lines = captured.out.splitlines()
    assert any(ln.startswith("stats 001_fold-bn: nodes 68 -> 48 (-20)") and "folded=20" in ln
               for ln in lines)
    diffs = [ln for ln in lines if ln.startswith("numeric-diff")]
    assert [d.split()[1] for d in diffs] == ["001_fold-bn", "002_remove-identity", "003_dce"]
    assert all("cosine=1.000000 top1=100.0%" in d for d in diffs)
    assert "time-passes:" in lines
    assert captured.err.strip() == (
        f"shrinkc opt: fold-bn,remove-identity,dce: nodes 68 -> 48, params "
        f"{before.num_params:,} -> {after.num_params:,}; wrote {out}")
    # every dump loads back; the last is the output, the first the input
    assert sorted(p.name for p in dump.glob("*.shrk")) == [
        "000_input.shrk", "001_fold-bn.shrk", "002_remove-identity.shrk", "003_dce.shrk"]
    assert graph_diff(load(dump / "000_input.shrk"), before) is None
    assert graph_diff(load(dump / "003_dce.shrk"), after) is None


def test_stats_show_per_layer_rows_of_a_low_rank_pass(resnet, capsys):
    assert main(["opt", str(resnet), "--passes=fold-bn,tucker-conv(rank=8)", "--stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("stats 002_tucker-conv:"))
    assert lines[i + 1].split() == ["node", "loc", "status", "rank", "error", "params", "macs",
                                    "seconds", "note"]
    rows = [ln.split() for ln in lines[i + 2:] if ln.startswith("  ")]
    assert [r[1] for r in rows][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert all(r[2] in ("decomposed", "skipped_break_even", "skipped_tiny") for r in rows)
    assert any(r[2] == "decomposed" and r[3] == "8x8" for r in rows)


def test_print_after_named_pass_prints_parseable_ir(resnet, capsys):
    assert main(["opt", str(resnet), "--passes=fold-bn,dce", "--print-after=fold-bn"]) == 0
    out = capsys.readouterr().out
    assert out.count("// IR after") == 1 and out.startswith("// IR after 001_fold-bn fold-bn\n")
    g = parse_graph(out, missing_weights="random")
    assert not any(n.op == "batch_norm" for n in g.nodes)


def test_print_before_and_after_all(resnet, capsys):
    assert main(["opt", str(resnet), "--passes=fold-bn,dce", "--print-before-all",
                 "--print-after-all"]) == 0
    headers = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("// IR")]
    assert headers == ["// IR before 001_fold-bn fold-bn", "// IR after 001_fold-bn fold-bn",
                       "// IR before 002_dce dce", "// IR after 002_dce dce"]


def test_print_changed(resnet, capsys):
    assert main(["opt", str(resnet), "--passes=fold-bn,dce", "--print-changed"]) == 0
    out = capsys.readouterr().out
    headers = [ln for ln in out.splitlines() if ln.startswith("//")]
    assert headers == ["// IR of the input", "// IR after 001_fold-bn fold-bn",
                       "// 002_dce dce: no change"]


def test_stop_after_and_no_output(resnet, capsys):
    assert main(["opt", str(resnet), "--passes=remove-identity,fold-bn,dce",
                 "--stop-after=fold-bn", "--no-verify-each"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("shrinkc opt: remove-identity,fold-bn: nodes 68 -> 48")
    assert err.strip().endswith("nothing written (no -o)")


def test_onnx_output_needs_the_onnx_backend(resnet, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    try:
        from shrinkc.backends.onnx import to_onnx  # noqa: F401
    except ImportError:
        assert main(["opt", str(resnet), "--passes=fold-bn", "-o", str(out)]) == 2
        assert "ONNX output needs shrinkc.backends.onnx" in capsys.readouterr().err
        assert not out.exists()
    else:
        assert main(["opt", str(resnet), "--passes=fold-bn", "-o", str(out)]) == 0
        assert out.is_file()


RULE_GRAPH = """
graph "g" (%x: f32[1,3,8,8]) {
  %w1: f32[4,3,1,1] = const #1
  %w2: f32[4,4,1,1] = const #2
  %g: f32[4] = const [1.0, 2.0, 0.5, 1.5]
  %b: f32[4] = const [0.0, 0.1, -0.2, 0.3]
  %m: f32[4] = const [0.1, -0.1, 0.2, 0.0]
  %v: f32[4] = const [1.0, 0.5, 2.0, 1.5]
  %c1: f32[1,4,8,8] = conv2d(%x, %w1) loc("conv1")
  %b1: f32[1,4,8,8] = batch_norm(%c1, %g, %b, %m, %v) loc("bn1")
  %c2: f32[1,4,8,8] = conv2d(%b1, %w2) loc("conv2")
  %b2: f32[1,4,8,8] = batch_norm(%c2, %g, %b, %m, %v) loc("bn2")
  %r: f32[1,4,8,8] = relu(%b2)
  %b3: f32[1,4,8,8] = batch_norm(%r, %g, %b, %m, %v) loc("bn3")
  %s: f32[1,4,8,8] = add(%b3, %c2)
  return %s
}
"""


def test_stats_show_rule_counters_and_non_match_reasons_and_explain_names_them(tmp_path,
                                                                               capsys):
    path = save(parse_graph(RULE_GRAPH, missing_weights="random"), tmp_path / "g.shrk")
    assert main(["opt", str(path), "--passes=fold-bn", "--stats", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    stats = [ln for ln in lines if ln.startswith("stats 001_fold-bn:")]
    assert len(stats) == 1 and stats[0].endswith("; folded=1, skipped_shared=1, unmatched=1")
    assert [ln for ln in lines if ln.startswith("explain ")] == [
        "explain rule fold-bn: rewrote b1 (bn1)",
        "explain rule fold-bn: b2 (bn2) refused: skipped_shared",
        "explain rule fold-bn: b3 (bn3) not matched: operand 0 %r: r is relu, not conv2d | "
        "conv_transpose2d | linear",
    ]
    assert main(["opt", str(path), "--passes=fold-bn"]) == 0
    assert "explain" not in capsys.readouterr().out  # only with --explain


def test_opt_writes_a_compressed_file_with_storage_stats(tmp_path, capsys, reference_graphs):
    src = save(reference_graphs("lenet_300_100")[2], tmp_path / "l.shrk")
    out = tmp_path / "l.shrkz"
    assert main(["opt", str(src), "--passes=prune-weights(sparsity=0.9),share-weights(bits=4)",
                 "-o", str(out), "--stats"]) == 0
    text = capsys.readouterr().out
    assert "pruned (CSR, relative idx)" in text and "Huffman-coded" in text
    assert "storage only: the backends run the dense graph" in text
    g = load(out)
    assert g.constants["fc1.weight"].encoding.codebook.bits == 4
    assert main(["opt", str(out), "-o", str(tmp_path / "again.shrkz")]) == 0  # reads .shrkz
    assert graph_diff(load(tmp_path / "again.shrkz"), g) is None

# ---------------------------------------------------------------------------- calibration
def test_quantize_without_calibration_is_one_error_line(capsys, tmp_path):
    out = tmp_path / "q.shrk"
    assert main(["opt", "zoo:lenet5", "--passes=quantize", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("shrinkc: error: pass 'quantize(")
    assert "needs calibration data" in err[0] and "--calibration FILE.npz|zoo-data:mnist" in err[0]
    assert err[1].startswith("  reproduce with: ") and not out.exists()


def test_calibration_from_zoo_data_and_npz(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "q.shrk"
    assert main(["opt", "zoo:lenet5", "--passes=quantize(calibration=percentile)",
                 "--calibration", "zoo-data:mnist", "--calibration-samples", "16",
                 "-o", str(out), "--stats"]) == 0
    assert re.search(r"calibration_batches=1\b", capsys.readouterr().out)  # 16 in one batch of 32
    g = load(out)
    assert sum(n.op == "quantize" for n in g.nodes) >= 5
    images = np.random.default_rng(0).standard_normal((6, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", images=images)
    assert main(["opt", "zoo:lenet5", "--passes=quantize", "--calibration",
                 str(tmp_path / "cal.npz"), "--stats"]) == 0
    assert re.search(r"calibration_batches=1\b", capsys.readouterr().out)
    assert main(["opt", "zoo:lenet5", "--passes=quantize", "--calibration", "zoo-data:cifar"]) == 2
    assert "unknown dataset 'cifar'" in capsys.readouterr().err


def test_reproducer_keeps_the_calibration_data(tmp_path, capsys, reference_graphs):
    import shlex

    import numpy as np

    model = save(reference_graphs("lenet5")[2], tmp_path / "lenet5.shrk")
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    images[3, 0, 0, 0] = np.nan  # calibration fails on the last batch
    np.savez(tmp_path / "bad.npz", x=images)
    rdir = tmp_path / "repro"
    args = ["opt", str(model), "--passes=fold-bn,quantize", "--calibration",
            str(tmp_path / "bad.npz"), "--reproducer-dir", str(rdir)]
    assert main(args) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "has NaN or infinite values" in first
    cmd = (rdir / "reproducer.sh").read_text().splitlines()[-1]
    assert f"--calibration {(rdir / 'calibration.npz').resolve()}" in cmd
    np.testing.assert_array_equal(np.load(rdir / "calibration.npz")["x"], images)
    # the command alone fails the same way, on the same data
    argv = shlex.split(cmd)
    assert argv[1:4] == ["-m", "shrinkc.tools.cli", "opt"]  # python -m shrinkc.tools.cli opt …
    assert main(argv[3:] + ["--reproducer-dir", str(tmp_path / "r2")]) == 2
    again = capsys.readouterr().err.splitlines()[0]
    assert "has NaN or infinite values" in again and "pass 1 of 1" in again


def test_dot_after_highlights_what_the_pass_changed(resnet, tmp_path, capsys):
    import re
    import shutil

    assert main(["opt", str(resnet), "--passes=fold-bn,dce", "--dot-after", "fold-bn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "')
    assert "after 001_fold-bn fold-bn: 0 added, 20 changed, 20 removed" in out
    assert len(re.findall(r"removed: batch_norm", out)) == 20
    target = tmp_path / ("fb.svg" if shutil.which("dot") else "fb.dot")
    assert main(["opt", str(resnet), "--passes=fold-bn", f"--dot-after=fold-bn={target}"]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_bytes()[:5] in (b"<?xml", b"digra")
