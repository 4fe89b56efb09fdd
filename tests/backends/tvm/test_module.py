"""backends/tvm/module.py: TVMModule runs, saves and loads (keep_params, cross-compiled
object files), and checks its inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkc import to_torch
from shrinkc.backends import tvm as btvm
from suite import assert_close  # the suite's comparison policy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def lenet5_kept(reference_graphs):
    """LeNet-5 built with its weights as parameters (``keep_params``), once."""
    _, x, g = reference_graphs("lenet5")
    return x, g, btvm.build(g, "host", keep_params=True)


def test_keep_params_binds_weights_separately(tmp_path, lenet5_kept):
    x, g, mod = lenet5_kept
    assert set(mod.params) == {n for n, v in g.constants.items() if v.type.rank > 0}
    func = btvm.lower(g, keep_params=True).mod["main"]
    assert len(func.params) == 1 + len(mod.params)
    with torch.no_grad():
        want = to_torch(g)(x).numpy()
    assert_close(mod.run([x.numpy()])[0], want, depth=g)
    entry = mod.export(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so", "params.safetensors"]
    loaded = btvm.TVMModule.load(tmp_path, entry, mod.inputs, mod.outputs)
    np.testing.assert_array_equal(loaded.run([x.numpy()])[0], mod.run([x.numpy()])[0])


def test_cross_compile_for_aarch64_writes_object_files(tmp_path, reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    mod = btvm.build(g, "aarch64")
    assert not mod.runs_here
    entry = mod.export(tmp_path)
    lib = tmp_path / entry["files"]["library"]
    assert lib.is_file()
    if lib.suffix == ".tar":  # no cross compiler here: the object files
        objs = btvm.object_files(lib)
        assert objs
        for data in objs.values():
            assert data[:4] == b"\x7fELF"
            assert int.from_bytes(data[18:20], "little") == 183  # e_machine EM_AARCH64
    with pytest.raises(btvm.TVMBackendError, match="cannot run on this machine"):
        mod.run([x.numpy()])


def test_runtime_input_checks(lenet5_kept):
    x, _, mod = lenet5_kept
    with pytest.raises(btvm.TVMBackendError, match="expects f32\\[1,1,28,28\\]"):
        mod.run([np.zeros((1, 1, 27, 28), np.float32)])
    with pytest.raises(btvm.TVMBackendError, match="takes 1 inputs"):
        mod.run([x.numpy(), x.numpy()])
    with pytest.raises(btvm.TVMBackendError, match=r"input \S+ expects f32 .*got f64"):
        mod.run([x.numpy().astype(np.float64)])  # not converted silently
    np.testing.assert_array_equal(mod.run([x.numpy().astype(np.float16)])[0],
                                  mod.run([x.numpy().astype(np.float16).astype(np.float32)])[0])
