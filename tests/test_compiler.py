"""The compile API: backends, the backend=None rule, the report, save / load_compiled in a
fresh process, calling conventions, and one clear error for each kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import shrinkc
from shrinkc import IRError
from shrinkc.backends import tvm as btvm
from shrinkc.compiler import (CompileError, CompiledModel, TuningUnavailableError,
                              _choose_backend)
from shrinkc.ir.interpreter import run
from suite import F32_TOL_PER_LAYER, assert_close, depth_of  # the comparison policy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """No tuning database from the user's cache may decide a backend in these tests."""
    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _want(graph, x) -> np.ndarray:
    with torch.no_grad():
        return run(graph, [x])[0].numpy()


@pytest.fixture(scope="module")
def resnet_tvm(reference_graphs):
    """ResNet-18 (small) from its torch module, with a pipeline, compiled by TVM once."""
    model, x, g = reference_graphs("resnet18")
    cm = shrinkc.compile(model, x, passes="fold-bn", backend="tvm", target="host")
    return model, x, g, cm


def test_tvm_compile_matches_and_reports(resnet_tvm):
    import tvm

    model, x, g, cm = resnet_tvm
    assert isinstance(cm, CompiledModel) and cm.backend == "tvm"
    y = cm(x)
    assert isinstance(y, torch.Tensor)
    assert_close(y.numpy(), _want(g, x), depth=g)
    r = cm.report()
    assert r.backend == "tvm" and r.reason == "requested"
    assert r.pipeline.startswith("fold-bn")  # canonical text, every option spelled out
    assert r.target["mcpu"] == str(tvm.target.codegen.llvm_get_system_cpu())
    assert r.params < r.original_params  # fold-bn removed the BN parameters
    assert r.macs == r.original_macs > 0
    # against the eager original, through TVM's float32 kernels (tests/conftest.py)
    assert r.rel_l2_error <= F32_TOL_PER_LAYER * depth_of(g)
    for phase in ("frontend_s", "passes_s", "lower_s", "relax_passes_s", "codegen_s",
                  "emit_link_s", "check_s", "total_s"):
        assert r.times[phase] >= 0, phase
    text = str(r)
    for words in ("backend    tvm: requested", "pipeline   fold-bn", "was 703,866",
                  "rel-L2", "codegen"):
        assert words in text


def test_calling_conventions(resnet_tvm):
    _, x, g, cm = resnet_tvm
    want = _want(g, x)
    out_np = cm(x.numpy())
    assert isinstance(out_np, np.ndarray)
    assert_close(out_np, want, depth=g)
    np.testing.assert_array_equal(cm([x.numpy()]), out_np)
    np.testing.assert_array_equal(cm({g.inputs[0].name: x}).numpy(), out_np)
    # another dtype: converted only when lossless (f16 -> f32), else an error naming the input
    xh = x.half()
    np.testing.assert_array_equal(cm(xh).numpy(), cm(xh.float()).numpy())
    name = g.inputs[0].name
    for bad, dtype in ((x.double(), "f64"), (x.numpy().astype(np.int64), "i64")):
        with pytest.raises(CompileError, match=rf"input {name} expects f32 .*got {dtype}"):
            cm(bad)
    with pytest.raises(CompileError, match=r"expects f32\[1,3,32,32\], got shape \[1, 3, 16, 16\]"):
        cm(torch.zeros(1, 3, 16, 16))
    with pytest.raises(CompileError, match="takes 1 inputs"):
        cm(x, x)
    with pytest.raises(CompileError, match="missing inputs"):
        cm({"nope": x})


def test_saved_artifacts_reload_in_a_fresh_process(tmp_path, resnet_tvm, reference_graphs):
    """TVM, onnxruntime and torch artifacts load with load_compiled in a new interpreter,
    without importing any pass, and give the same outputs."""
    _, x, g, cm = resnet_tvm
    dirs = {"tvm": cm.save(tmp_path / "tvm")}
    assert sorted(p.name for p in dirs["tvm"].iterdir()) == ["manifest.json", "model.so"]
    manifest = json.loads((dirs["tvm"] / "manifest.json").read_text())
    assert manifest["backend"] == "tvm" and manifest["pipeline"] == cm.report().pipeline
    assert manifest["target"] == cm.report().target
    assert manifest["inputs"] == [{"name": g.inputs[0].name, "dtype": "f32",
                                   "shape": [1, 3, 32, 32]}]
    assert cm.report().artifact_bytes == (dirs["tvm"] / "model.so").stat().st_size
    lenet_model, lx, lg = reference_graphs("lenet5")
    for backend in ("onnxruntime", "torch"):
        dirs[backend] = shrinkc.compile(lg, lx, backend=backend).save(tmp_path / backend)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "lx.npy", lx.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np
        import shrinkc
        out = {{}}
        for name, inp in (("tvm", "x"), ("onnxruntime", "lx"), ("torch", "lx")):
            cm = shrinkc.load_compiled(r"{tmp_path}/" + name)
            assert cm.backend == name, cm.backend
            out[name] = cm(np.load(r"{tmp_path}/" + inp + ".npy"))
        np.savez(r"{tmp_path}/out.npz", **out)
        passes = sorted(m for m in sys.modules if m.startswith("shrinkc.passes"))
        print("PASSES-IMPORTED:", passes)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PASSES-IMPORTED: []" in res.stdout
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["tvm"], cm(x.numpy()))
    assert_close(out["tvm"], _want(g, x), depth=g)
    for backend in ("onnxruntime", "torch"):
        assert_close(out[backend], _want(lg, lx), depth=lg)


def test_keep_params_saves_weights_beside_the_library(tmp_path, reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    cm = shrinkc.compile(g, x, backend="tvm", keep_params=True)
    d = cm.save(tmp_path / "m")
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "model.so",
                                                   "params.safetensors"]
    cm2 = shrinkc.load_compiled(d)
    np.testing.assert_array_equal(cm2(x.numpy()), cm(x.numpy()))
    assert str(cm2.report()) == str(cm.report())


def test_onnx_model_with_symbolic_batch(tmp_path, reference_graphs):
    """A file with a dynamic batch (what to_onnx writes for a traced model) compiles without
    example inputs (nominal batch 1) and with them; a symbolic dim other than the batch
    needs example inputs."""
    _, x, g = reference_graphs("lenet_300_100")
    path = shrinkc.to_onnx(g, tmp_path / "m.onnx")
    import onnx

    m = onnx.load(str(path))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x4 = torch.randn(4, *x.shape[1:])
    want = np.concatenate([_want(g, x4[i:i + 1]) for i in range(4)])
    for examples in (x4, None):
        cm = shrinkc.compile(path, examples, backend="torch")
        assert cm.inputs[0][1].shape == (4 if examples is not None else 1, *x.shape[1:])
        assert_close(cm(x4).numpy(), want, depth=g)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(m, str(path))
    with pytest.raises(btvm.StaticShapeError) as e:
        shrinkc.compile(path, backend="torch")
    assert "input 'x' dim 2 (height) is not static" in str(e.value)
    assert "example_inputs" in str(e.value)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_compile_at_batch_4_runs_at_any_batch(backend, reference_graphs, tmp_path):
    """A graph traced at batch 1, compiled with a batch-4 example: cost and error at batch 4,
    and the compiled model (and the one loaded back) takes any batch."""
    model, x, g = reference_graphs("vit")
    x4 = torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(4))
    cm = shrinkc.compile(g, x4, backend=backend)
    r = cm.report()
    assert cm.inputs[0][1].shape == tuple(x4.shape) and cm.batch_inputs == {"x"}
    assert r.macs == 4 * shrinkc.ir.cost.graph_cost(g).total.macs  # at the example's batch
    assert r.batch.startswith("any") and "batch      any" in str(r)
    cm2 = shrinkc.load_compiled(cm.save(tmp_path / backend))
    for n in (4, 3):
        xb = torch.randn(n, *x.shape[1:], generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = model(xb)
        assert_close(cm(xb), want, depth=g)
        assert_close(cm2(xb), want, depth=g)
    with pytest.raises(CompileError, match="dim 0 is the batch: any size"):
        cm(torch.randn(4, 1, *x.shape[2:]))


def test_tvm_compiles_at_the_example_batch(reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    x3 = torch.randn(3, *x.shape[1:])
    cm = shrinkc.compile(g, x3, backend="tvm")
    assert cm.inputs[0][1].shape == tuple(x3.shape) and not cm.batch_inputs
    assert_close(cm(x3).numpy(), _want(g, x3), depth=g)
    with pytest.raises(CompileError, match=r"expects f32\[3,1,28,28\].*TVM compiles static"):
        cm(x)


# ---------------------------------------------------------------------------- backend=None
def test_default_backend_is_onnxruntime_with_the_reason(reference_graphs):
    _, x, g = reference_graphs("lenet5")
    cm = shrinkc.compile(g, x)
    r = cm.report()
    assert cm.backend == "onnxruntime"
    assert "no target, tuning budget or covering tuning database" in r.reason
    assert "no tuning database at" in r.reason
    assert "only built and timed when tuning is asked" in r.reason
    assert f"backend    onnxruntime: {r.reason}" in str(r)
    assert_close(cm(x).numpy(), _want(g, x), depth=g)


def test_a_target_picks_tvm(reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    cm = shrinkc.compile(g, x, target="host")
    assert cm.backend == "tvm"
    assert cm.report().reason == "a target was given (host)"


def test_a_tuning_budget_picks_tvm(reference_graphs):
    g = reference_graphs("lenet_300_100")[2]
    backend, reason, _ = _choose_backend(g, None, 64, None, {})
    assert (backend, reason) == ("tvm", "a tuning budget was given (tune_trials=64)")
    backend, reason, _ = _choose_backend(g, None, 0, None, {}, "5m")
    assert (backend, reason) == ("tvm", "a tuning budget was given (tune_budget=5m)")
    _, reason, _ = _choose_backend(g, None, 8, None, {}, "1m30s")
    assert reason == "a tuning budget was given (tune_trials=8, tune_budget=1m30s)"


def _fake_timer(medians, calls):
    """A ``time_backends`` that runs every candidate once and reports fixed medians (the
    tuned TVM module against the default schedules: tuned faster unless ``medians`` says)."""
    table = {"tuned": 1.0, "default": 2.0, **medians}

    def time_backends(runs, **_):
        for name, fn in runs.items():
            calls.append((name, fn()))
        return {name: table[name] for name in runs}, 7
    return time_backends


def test_a_covering_tuning_database_picks_tvm(tmp_path, monkeypatch, reference_graphs):
    """An empty database covers nothing (the real coverage check runs); one that covers
    every workload makes TVM the choice."""
    _, x, g = reference_graphs("lenet_300_100")
    for f in ("database_workload.json", "database_tuning_record.json"):
        (tmp_path / f).write_text("")
    covered, total = btvm.database_coverage(btvm.lower(g), btvm.resolve_target(None), tmp_path)
    assert covered == 0 and total > 0
    cm = shrinkc.compile(g, x, tuning_db=tmp_path)
    assert cm.backend == "onnxruntime"
    assert f"covers 0/{total} workloads" in cm.report().reason
    monkeypatch.setattr(btvm, "database_coverage", lambda lowered, target, db: (total, total))
    calls = []
    monkeypatch.setattr(shrinkc.compiler, "time_backends",
                        _fake_timer({"tvm": 1.25, "onnxruntime": 2.5}, calls))
    cm = shrinkc.compile(g, x, tuning_db=tmp_path)
    assert cm.backend == "tvm"
    assert cm.report().reason.endswith(f"tvm was a candidate because the tuning database "
                                       f"{tmp_path} covers all {total} workloads of the model)")
    assert cm.report().tuning["db"] == str(tmp_path)
    assert_close(cm(x).numpy(), _want(g, x), depth=g)


@pytest.mark.parametrize("medians, pick", [({"tvm": 1.25, "onnxruntime": 2.5}, "tvm"),
                                           ({"tvm": 3.0, "onnxruntime": 0.75}, "onnxruntime")])
def test_a_covering_database_makes_the_choice_by_measurement(medians, pick, tmp_path,
                                                             monkeypatch, reference_graphs):
    """Tuned TVM and onnxruntime are both built and run on the example inputs; the faster
    (by the timer's medians, faked here: no clock in the test) is kept, and the report names
    both medians."""
    _, x, g = reference_graphs("lenet_300_100")
    for f in ("database_workload.json", "database_tuning_record.json"):
        (tmp_path / f).write_text("")
    monkeypatch.setattr(btvm, "database_coverage", lambda lowered, target, db: (3, 3))
    calls = []
    monkeypatch.setattr(shrinkc.compiler, "time_backends", _fake_timer(medians, calls))
    cm = shrinkc.compile(g, x, tuning_db=tmp_path)
    r = cm.report()
    other = "onnxruntime" if pick == "tvm" else "tvm"
    assert cm.backend == pick and r.measured_ms == medians
    assert r.reason.startswith(
        f"measured on the example inputs, {pick} is faster: {pick} {medians[pick]:.3f} ms, "
        f"{other} {medians[other]:.3f} ms (medians of 7 round-robin runs; tvm was a "
        f"candidate because the tuning database {tmp_path} covers all 3 workloads")
    assert f"backend    {pick}: measured" in str(r)
    # tuned against default schedules, then TVM against onnxruntime: every candidate ran on
    # the example inputs and agrees with the original graph
    assert [name for name, _ in calls] == ["tuned", "default", "tvm", "onnxruntime"]
    assert r.tuning["schedules"] == "tuned" and r.tuning["default_ms"] == 2.0
    for _, outs in calls:
        assert_close(outs[0], _want(g, x), depth=g)
    assert_close(cm(x).numpy(), _want(g, x), depth=g)
    assert (r.target is not None) == (pick == "tvm")


@pytest.mark.parametrize("keep", ["tuned", "default"])
def test_a_database_build_is_timed_against_the_default_schedules(keep, tmp_path, monkeypatch,
                                                                 reference_graphs):
    """With a database applied, the same module is also built with the default schedules;
    the faster on the example inputs (timer faked) is what compile returns and saves."""
    _, x, g = reference_graphs("lenet_300_100")
    for f in ("database_workload.json", "database_tuning_record.json"):
        (tmp_path / f).write_text("")
    medians = {"tuned": 1.0, "default": 0.5} if keep == "default" else {}
    calls = []
    monkeypatch.setattr(shrinkc.compiler, "time_backends", _fake_timer(medians, calls))
    built = []
    real_build = btvm.build_lowered

    def build_lowered(*a, **k):
        built.append((k.get("pipeline"), real_build(*a, **k)))
        return built[-1][1]

    monkeypatch.setattr(btvm, "build_lowered", build_lowered)
    cm = shrinkc.compile(g, x, backend="tvm", tuning_db=tmp_path)
    r = cm.report()
    assert [p is None for p, _ in built] == [False, True]  # with the database, then without
    assert [name for name, _ in calls] == ["tuned", "default"]
    assert r.tuning["schedules"] == keep and r.measured_ms == {}
    assert f"schedules={keep}" in str(r)
    assert cm._runner is built[0 if keep == "tuned" else 1][1]
    for _, outs in calls:
        assert_close(outs[0], _want(g, x), depth=g)
    assert_close(cm(x).numpy(), _want(g, x), depth=g)
    cm.save(tmp_path / "saved")
    assert_close(shrinkc.load_compiled(tmp_path / "saved")(x).numpy(), _want(g, x), depth=g)


def test_a_target_that_does_not_run_here_is_not_timed(tmp_path, monkeypatch, reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    for f in ("database_workload.json", "database_tuning_record.json"):
        (tmp_path / f).write_text("")
    monkeypatch.setattr(shrinkc.compiler, "time_backends", lambda *a, **k: pytest.fail("timed"))
    cm = shrinkc.compile(g, x, target="aarch64", tuning_db=tmp_path, check=False)
    assert "schedules" not in cm.report().tuning


def test_no_measurement_when_a_target_is_given(monkeypatch, reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    monkeypatch.setattr(shrinkc.compiler, "time_backends", lambda *a, **k: pytest.fail("timed"))
    cm = shrinkc.compile(g, x, target="host")
    assert cm.backend == "tvm" and cm.report().measured_ms == {}


def test_time_backends_gives_medians_of_round_robin_runs():
    order = []
    medians, rounds = shrinkc.compiler.time_backends(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=4, warmup=1,
        max_seconds=60.0)
    assert rounds == 4 and set(medians) == {"a", "b"}
    assert all(m >= 0 for m in medians.values())
    assert order == ["a", "b"] + ["a", "b"] * 4  # warm-ups, then one of each per round


# ---------------------------------------------------------------------------- errors
def test_unknown_target_preset(reference_graphs):
    _, x, g = reference_graphs("lenet5")
    with pytest.raises(btvm.TargetError) as e:
        shrinkc.compile(g, x, target="arm-cortex-m7")
    assert isinstance(e.value, IRError)
    assert "unknown target preset 'arm-cortex-m7'" in str(e.value) and "aarch64" in str(e.value)


def test_op_without_tvm_lowering_is_named(monkeypatch, reference_graphs):
    _, x, g = reference_graphs("vit")
    monkeypatch.delitem(btvm.LOWERINGS, "gelu")
    with pytest.raises(btvm.LoweringError) as e:
        shrinkc.compile(g, x, backend="tvm")
    assert isinstance(e.value, IRError)
    node = next(n for n in g.nodes if n.op == "gelu")
    assert f"no TVM lowering for op(s) gelu (e.g. node {node.describe()})" in str(e.value)


def test_torch_module_without_example_inputs(reference_graphs):
    model = reference_graphs("lenet5")[0]
    with pytest.raises(btvm.StaticShapeError, match="LeNet5 is a torch module: pass "
                                                    "example_inputs"):
        shrinkc.compile(model)


def test_tuning_without_the_tuning_module(monkeypatch, reference_graphs):
    _, x, g = reference_graphs("lenet5")
    monkeypatch.setattr(btvm, "tuning_module", lambda: None)
    with pytest.raises(TuningUnavailableError, match="tune_trials=8: tuning is not available"):
        shrinkc.compile(g, x, backend="tvm", tune_trials=8)


@pytest.mark.parametrize("kwargs, words", [
    ({"backend": "tensorrt"}, "unknown backend 'tensorrt'; backends: tvm, onnxruntime, torch"),
    ({"backend": "onnxruntime", "target": "host"}, "apply to the tvm backend, not onnxruntime"),
    ({"backend": "torch", "tune_trials": 4}, "apply to the tvm backend, not torch"),
    ({"tune_trials": -1}, "tune_trials must be >= 0"),
    ({"tune_budget": "soon"}, "tune_budget 'soon': expected a duration such as 90s, 5m"),
    ({"tune_budget": 0}, "tune_budget 0: a time budget must be a positive number"),
    ({"backend": "torch", "tune_budget": "5m"}, "tune_budget applies to the tvm backend"),
])
def test_bad_arguments(kwargs, words, reference_graphs):
    _, x, g = reference_graphs("lenet5")
    with pytest.raises(CompileError, match=words):
        shrinkc.compile(g, x, **kwargs)


def test_load_compiled_errors(tmp_path):
    with pytest.raises(CompileError, match="no manifest.json"):
        shrinkc.load_compiled(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CompileError, match="corrupt manifest"):
        shrinkc.load_compiled(tmp_path)


@pytest.mark.slow
def test_tuned_compile_records_and_reuses_the_database(tmp_path, reference_graphs):
    """A few MetaSchedule trials on a tiny model through compile(tune_trials=...): the report
    has the tuning, the database is applied, outputs still match; the database then decides."""
    _, x, g = reference_graphs("lenet_300_100")
    cm = shrinkc.compile(g, x, tune_trials=2, tuning_db=tmp_path)
    r = cm.report()
    # tuned TVM was measured against onnxruntime; either may be faster after 2 trials
    assert "tune_trials=2" in r.reason and set(r.measured_ms) == {"tvm", "onnxruntime"}
    assert cm.backend == min(r.measured_ms, key=r.measured_ms.get)
    assert r.tuning["new_trials"] == 2 and r.tuning["failures"] == 0
    assert r.tuning["ended_by"] == "trials" and r.tuning["first_trial_s"] > 0
    assert r.tuning["db"] == str(tmp_path) and r.times["tune_s"] > 0
    assert_close(cm(x).numpy(), _want(g, x), depth=g)
    lowered = btvm.lower(g)
    covered, total = btvm.database_coverage(lowered, btvm.resolve_target(None), tmp_path)
    assert 1 <= covered <= total
    again = shrinkc.compile(g, x, tuning_db=tmp_path)
    assert f"{tmp_path}" in again.report().reason
    assert bool(again.report().measured_ms) == (covered == total)


def test_compile_quantizes_with_calibration_from_a_file(tmp_path, reference_graphs):
    _, x, g = reference_graphs("lenet5")
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", images=images)
    cm = shrinkc.compile(g, x, passes="quantize", calibration=tmp_path / "cal.npz",
                         backend="onnxruntime")
    assert sum(n.op == "quantize" for n in cm.graph.nodes) >= 5
    from shrinkc.passes import PassError

    with pytest.raises(PassError, match="needs calibration data"):
        shrinkc.compile(g, x, passes="quantize", backend="onnxruntime")


# ============================================================================ artifacts (issue 12)
@pytest.fixture(scope="module")
def saved_tvm(tmp_path_factory, reference_graphs):
    """LeNet-300-100 compiled by TVM and saved once; tests damage copies of it."""
    _, x, g = reference_graphs("lenet_300_100")
    cm = shrinkc.compile(g, x, backend="tvm")
    return cm.save(tmp_path_factory.mktemp("artifact") / "tvm"), x, cm


@pytest.fixture
def artifact(saved_tvm, tmp_path):
    import shutil

    d = tmp_path / "art"
    shutil.copytree(saved_tvm[0], d)
    return d


def _edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    m = fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime", "torch"])
def test_manifest_records_size_and_sha256_of_every_file(backend, tmp_path, reference_graphs):
    import hashlib

    _, x, g = reference_graphs("lenet5")
    d = shrinkc.compile(g, x, backend=backend).save(tmp_path / backend)
    m = json.loads((d / "manifest.json").read_text())
    assert m["format"] == "shrinkc-compiled" and m["version"] == 2
    listed = {rec["path"] for rec in m["files"].values()}
    assert listed | {"manifest.json"} == {p.name for p in d.iterdir()}  # nothing else left
    for role, rec in m["files"].items():
        data = (d / rec["path"]).read_bytes()
        assert rec["size"] == len(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["report"]["artifact_bytes"] == sum(r["size"] for r in m["files"].values())


def test_truncated_library_is_one_clear_error_never_sigbus(artifact, saved_tvm, tmp_path):
    lib = artifact / "model.so"
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompileError, match=rf"model.so: {len(data) // 2} bytes, but the manifest "
                                           rf"says {len(data)} \(truncated or replaced"):
        shrinkc.load_compiled(artifact)
    # in a process of its own: the truncated library is never mapped (it used to SIGBUS), and
    # truncating the original after loading does not touch the loaded copy
    lib.write_bytes(data)
    np.save(tmp_path / "x.npy", saved_tvm[1].numpy())
    script = textwrap.dedent(f"""
        import numpy as np, shrinkc
        from shrinkc.compiler import CompileError
        cm = shrinkc.load_compiled(r"{artifact}")
        open(r"{lib}", "r+b").truncate(1000)
        y = cm(np.load(r"{tmp_path}/x.npy"))
        print("RAN", y.shape)
        try:
            shrinkc.load_compiled(r"{artifact}")
        except CompileError as e:
            print("ERROR", e)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "RAN (1, 10)" in res.stdout
    assert "ERROR" in res.stdout and "1000 bytes, but the manifest says" in res.stdout


def test_bit_flipped_library_is_one_clear_error(artifact):
    lib = artifact / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 3] ^= 0x10
    lib.write_bytes(bytes(data))
    with pytest.raises(CompileError, match=r"model.so: SHA-256 differs from the manifest's \(the "
                                           r"file was altered after saving; files.library\)"):
        shrinkc.load_compiled(artifact)


@pytest.mark.parametrize("path, words", [
    ("../outside/model.so", "is not a file name inside"),
    ("/etc/passwd", "is not a file name inside"),
    ("sub/../../model.so", "is not a file name inside"),
    ("manifest.json", "is not a file name inside"),
    ("link.so", "leads outside"),
])
def test_paths_outside_the_artifact_are_refused(artifact, tmp_path, path, words):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.so").write_bytes((artifact / "model.so").read_bytes())
    (artifact / "link.so").symlink_to(outside / "model.so")

    def point(m):
        m["files"]["library"]["path"] = path
        return m

    _edit_manifest(artifact, point)
    with pytest.raises(CompileError, match=rf"files.library {path!r} {words}"):
        shrinkc.load_compiled(artifact)


@pytest.mark.parametrize("edit, words", [
    (lambda m: [m], "invalid manifest: expected a JSON object, got a JSON list"),
    (lambda m: {k: v for k, v in m.items() if k != "inputs"},
     "invalid manifest: 'inputs' must be a list, got null"),
    (lambda m: {**m, "outputs": []}, "'outputs' must be a non-empty list, got list"),
    (lambda m: {**m, "inputs": [{"name": "x", "dtype": "f99", "shape": [1]}]},
     r"inputs\[0\] must be \{name: str, dtype: one of"),
    (lambda m: {**m, "files": ["model.so"]}, "'files' must be a non-empty object, got list"),
    (lambda m: {**m, "files": {"library": "model.so"}},
     "files.library must be {path: str, size: int, sha256: 64 hex digits}"),
    (lambda m: {**m, "files": {"params": m["files"]["library"]}},
     "a tvm model lists files library; 'files' has params"),
    (lambda m: {**m, "target": None}, "a tvm model needs a 'target' object, got null"),
    (lambda m: {**m, "version": "2"}, "'version' must be an integer, got '2'"),
    (lambda m: {**m, "version": 1}, "format version 1 has no file digests"),
    (lambda m: {**m, "version": 99}, "format version 99 was written by a newer shrinkc"),
    (lambda m: {**m, "format": "other"}, "not a shrinkc compiled model"),
    (lambda m: {**m, "backend": "tensorrt"}, "unknown backend 'tensorrt'"),
])
def test_manifest_schema_errors_are_clear(artifact, edit, words):
    _edit_manifest(artifact, edit)
    with pytest.raises(CompileError, match=words.replace("{", r"\{").replace("}", r"\}")
                       if "\\" not in words else words):
        shrinkc.load_compiled(artifact)


def test_missing_listed_file(artifact):
    (artifact / "model.so").unlink()
    with pytest.raises(CompileError, match=r"model.so: no such file \(listed as files.library"):
        shrinkc.load_compiled(artifact)


def test_save_is_atomic(saved_tvm, tmp_path, monkeypatch):
    """A save that fails leaves nothing; a save into a path under a file fails before any
    work; saving again replaces the artifact."""
    _, x, cm = saved_tvm
    (tmp_path / "file").write_text("x")
    with pytest.raises(IRError, match="file is a file, not a folder"):
        cm.save(tmp_path / "file" / "out")

    def fail(directory):
        (directory / "model.so").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cm._runner, "save", fail)
    with pytest.raises(CompileError, match="No space left on device"):
        cm.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(CompileError):
        cm.save(tmp_path / "old")
    assert list((tmp_path / "old").iterdir()) == []
    monkeypatch.undo()
    d = cm.save(tmp_path / "old")
    np.testing.assert_array_equal(shrinkc.load_compiled(d)(x.numpy()), cm(x.numpy()))


def test_progress_hook_hears_every_stage(reference_graphs):
    _, x, g = reference_graphs("lenet_300_100")
    stages: list[str] = []
    shrinkc.compile(g, x, passes="dce", backend="tvm", progress=stages.append)
    assert stages == ["frontend", "passes", "importing tvm", "lower", "relax passes",
                      "codegen", "link", "check"]
    stages.clear()
    shrinkc.compile(g, x, progress=stages.append)  # picks a backend
    assert stages[0] == "frontend" and "choosing a backend" in stages and stages[-1] == "check"
