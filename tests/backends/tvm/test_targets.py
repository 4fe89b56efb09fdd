"""backends/tvm/targets.py: presets, host detection, dicts, and one clear error for each
kind of bad target."""

from __future__ import annotations

import os

import pytest
import tvm
from shrinkc import IRError
from shrinkc.backends import tvm as btvm


def test_host_target_is_detected():
    t = btvm.resolve_target("host")
    assert t["kind"] == "llvm" and t["num-cores"] >= 1
    assert t["mcpu"] == str(tvm.target.codegen.llvm_get_system_cpu())
    assert btvm.resolve_target(None) == t and btvm.target_runs_here(t)


def test_presets_and_dicts():
    assert set(btvm.target_presets()) >= {"host", "x86-avx2", "x86-avx512", "aarch64"}
    a = btvm.resolve_target("aarch64")
    assert a["mtriple"].startswith("aarch64") and a["num-cores"] >= 1
    assert not btvm.target_runs_here(a)
    d = btvm.resolve_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 4})
    assert d["num-cores"] == 4 and d["mcpu"] == "znver4" and "mtriple" in d
    assert btvm.resolve_target('{"kind": "llvm", "mcpu": "haswell"}')["mcpu"] == "haswell"


@pytest.mark.parametrize("bad, words", [
    ("x86-avx3", ["unknown target preset 'x86-avx3'", "host", "aarch64"]),
    ("llvm -mcpu=znver4", ["unknown target preset", "dict"]),
    ({"kind": "llvm", "mcpu": "pentium9000"}, ["mcpu 'pentium9000'"]),
    ({"kind": "llvm", "mcpu": "native"}, ["native", "host"]),
    ({"kind": "cuda"}, ["only CPU targets"]),
])
def test_bad_targets_are_one_clear_error(bad, words):
    with pytest.raises(btvm.TargetError) as e:
        btvm.resolve_target(bad)
    assert isinstance(e.value, IRError)
    for w in words:
        assert w in str(e.value)


def test_host_target_detects_cpu_and_cores():
    t = btvm.host_target()
    assert t["kind"] == "llvm"
    assert t["mcpu"] == tvm.target.codegen.llvm_get_system_cpu()
    # the one thread-count rule (backends/runtime.py): the CPUs this process may use
    assert t["num-cores"] == len(os.sched_getaffinity(0)) == btvm.host_cores()
    assert t["mtriple"].endswith("linux-gnu")
    assert btvm.host_target(3)["num-cores"] == 3
    assert btvm.resolve_target("host", num_cores=3)["num-cores"] == 3


@pytest.mark.parametrize(
    "name, triple, cpus",
    [
        ("x86-avx2", "x86_64", {"x86-64-v3", "haswell", "core-avx2"}),
        ("x86-avx512", "x86_64", {"skylake-avx512", "znver4"}),
        ("aarch64", "aarch64-linux-gnu", {"cortex-a72", "neoverse-n1"}),
    ],
)
def test_presets(name, triple, cpus):
    t = btvm.resolve_target(name)
    assert t["mtriple"].startswith(triple)
    assert t["mcpu"] in cpus
    assert tvm.target.codegen.llvm_is_valid_cpu(t["mcpu"], t["mtriple"])


def test_resolve_target_forms_and_error():
    d = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 4}
    from_dict = btvm.resolve_target(d)
    assert from_dict["mcpu"] == "haswell" and from_dict["num-cores"] == 4
    as_tvm = btvm.tvm_target(d)
    assert btvm.tvm_target(as_tvm) is as_tvm
    assert btvm.resolve_target(as_tvm) == from_dict  # a Target comes back as its dict
    assert btvm.resolve_target(None)["mcpu"] == btvm.host_target()["mcpu"]
    with pytest.raises(ValueError) as err:  # TargetError is a ValueError
        btvm.resolve_target("x86-avx1024")
    for preset in btvm.TARGET_PRESETS:
        assert preset in str(err.value)


def test_db_dir_keyed_by_target(monkeypatch, tmp_path):
    from shrinkc.backends.tvm import tuning as tt

    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path))
    a, b = tt.default_db_dir("x86-avx2"), tt.default_db_dir("x86-avx512")
    assert a.parent == tmp_path / "tuning" and a != b
    assert a == tt.default_db_dir(btvm.resolve_target("x86-avx2"))  # stable
    assert a == tt.default_db_dir(btvm.tvm_target("x86-avx2"))
    assert "x86_64_v3" in a.name  # the preset's mcpu, x86-64-v3
    assert tt.default_db_dir(btvm.host_target(1)) != tt.default_db_dir(btvm.host_target(2))
    monkeypatch.delenv("SHRINKC_CACHE_DIR")
    assert "shrinkc" in str(tt.default_db_dir("host"))
