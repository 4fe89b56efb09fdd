from shrinkc.tools.cli import main


def test_inspect_zoo_model(capsys):
    assert main(["inspect", "zoo:lenet_300_100"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "op", "output", "params", "MACs"]
    assert any(line.split()[:4] == ["fc1", "linear", "f32[1,300]", "235500"] for line in lines)
    assert "266,610 params" in out and "266.20K MACs" in out and "532.80K FLOPs" in out


def test_inspect_ir_and_saved_graph(capsys, tmp_path, reference_graphs):
    from shrinkc import save

    p = save(reference_graphs("lenet5")[2], tmp_path / "l.shrk")
    assert main(["inspect", str(p), "--ir"]) == 0
    assert capsys.readouterr().out.startswith('graph "lenet5"')


def test_bad_model_spec_is_one_line_error(capsys, tmp_path):
    assert main(["inspect", "zoo:nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'nope'" in err[0] and "resnet18" in err[0]
    assert main(["inspect", "no_such_module:factory", "--input-shape", "1,3"]) == 2
    assert "cannot import factory from no_such_module" in capsys.readouterr().err
    assert main(["inspect", "zoo:lenet5", "--input-shape", "1,x"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.shrk")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_inspect_reports_storage_of_a_compressed_graph(capsys, tmp_path, reference_graphs):
    from shrinkc import optimize, save

    g = optimize(reference_graphs("lenet5")[2], "prune-weights(sparsity=0.8),share-weights")
    p = save(g, tmp_path / "l.shrkz")
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "storage (bytes per stage):" in out and ".shrkz file (with IR text)" in out
    assert main(["inspect", "zoo:lenet5", "--storage"]) == 0
    assert "1.0x" in capsys.readouterr().out  # dense: every stage is the dense size


def test_inspect_dot(capsys, tmp_path, reference_graphs):
    import shutil

    from shrinkc.ir.serialize import save

    p = save(reference_graphs("lenet5")[2], tmp_path / "l.shrk")
    assert main(["inspect", str(p), "--dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "lenet5" {') and "conv2d  (+2 const)\\nf32[1,6,28,28]\\nconv1" in out
    assert main(["inspect", str(p), "--dot", str(tmp_path / "l.dot")]) == 0
    assert (tmp_path / "l.dot").read_text() == out
    if shutil.which("dot"):  # rendering needs Graphviz's program
        assert main(["inspect", str(p), "--dot", str(tmp_path / "l.svg")]) == 0
        assert (tmp_path / "l.svg").read_bytes().startswith(b"<?xml")
