import os

import numpy as np
import pytest

from shrinkc import load, save
from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.serialize import weights_path
from shrinkc.ir.text import graph_diff
from shrinkc.tools import zoo


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_reference_models_save_load(name, reference_graphs, tmp_path):
    g = reference_graphs(name)[2]
    p = save(g, tmp_path / f"{name}.shrk")
    assert p.exists() and weights_path(p).exists()
    assert graph_diff(g, load(p)) is None, name


def test_all_dtypes_survive(tmp_path):
    g = Graph("d")
    x = g.add_input(TensorType("f32", (40,)), "x")
    outs = []
    for dt in ("i8", "u8", "i32", "i64", "f16", "f64", "bf16", "bool"):
        import ml_dtypes

        npdt = ml_dtypes.bfloat16 if dt == "bf16" else {"bool": np.bool_}.get(dt, None)
        arr = (np.arange(40) % 7).astype(npdt or {"i8": np.int8, "u8": np.uint8, "i32": np.int32,
                                                   "i64": np.int64, "f16": np.float16,
                                                   "f64": np.float64}[dt])
        c = g.add_constant(arr, f"c_{dt}")
        outs.append(g.add_node("add", [x, g.add_node("cast", [c], {"dtype": "f32"}).output]).output)
    g.outputs = outs
    g2 = load(save(g, tmp_path / "d.shrk"))
    assert graph_diff(g, g2) is None
    assert g2.constants["c_bf16"].dtype == "bf16"


def test_corrupt_weights_file_is_one_clear_error(reference_graphs, tmp_path):
    p = save(reference_graphs("lenet5")[2], tmp_path / "m.shrk")
    w = weights_path(p)
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(IRError, match="m.safetensors: corrupt or unreadable weights file"):
        load(p)


def test_tampered_weights_fail_the_digest(reference_graphs, tmp_path):
    from safetensors.numpy import load_file, save_file

    p = save(reference_graphs("lenet5")[2], tmp_path / "m.shrk")
    tensors = load_file(weights_path(p))
    tensors["conv1.weight"] = tensors["conv1.weight"] + 1
    save_file(tensors, weights_path(p))
    with pytest.raises(IRError, match="m.shrk: line .*conv1.weight do not match digest"):
        load(p)


def test_missing_and_bad_paths(tmp_path):
    with pytest.raises(IRError, match="no such file"):
        load(tmp_path / "nope.shrk")
    g = Graph("g")
    g.outputs = [g.add_input(TensorType("f32", (1,)), "x")]
    with pytest.raises(IRError, match="ends in .shrk"):
        save(g, tmp_path / "m.txt")
    assert os.listdir(tmp_path) == []


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    g = Graph("g")
    x = g.add_input(TensorType("f32", (1,)), "x")
    g.outputs = [g.add_node("add", [x, g.add_constant(np.ones(1, np.float32), "c")]).output]

    import safetensors.numpy

    def boom(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save(g, tmp_path / "m.shrk")
    assert os.listdir(tmp_path) == []


def test_encodings_and_masks_survive_save_load(tmp_path):
    from shrinkc.ir.encoding import Codebook, Sparse

    g = Graph("enc")
    x = g.add_input(TensorType("f32", (1, 16)), "x")
    rng = np.random.default_rng(0)
    w = np.where(rng.random((8, 16)) < 0.3, rng.choice([-0.5, 0.25], (8, 16)), 0).astype(np.float32)
    mask = w != 0
    mask[0, 0], w[0, 0] = True, 0.0  # a kept weight that is exactly zero: the mask is saved
    v = g.add_constant(w, "w")
    v.encoding = Sparse(mask, index_bits=3, codebook=Codebook(bits=2))
    g.outputs = [g.add_node("linear", [x, v]).output]
    g2 = load(save(g, tmp_path / "e.shrk"))
    assert g2.constants["w"].encoding == v.encoding and graph_diff(g, g2) is None
