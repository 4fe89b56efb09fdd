"""Shared fixtures: the reference models in small configurations (traced once per worker),
and the suite's one way of comparing outputs (``assert_close`` / ``assert_exact``).

How outputs are compared, and why (one policy for the whole suite):

* **Same arithmetic, checked in float64.** An exact pass, a frontend, the interpreter and
  ``to_torch`` compute what the original computes, up to the order of operations. Their
  float32 results differ in the last bits from one CPU to another (AVX2 and AVX-512 kernels
  of oneDNN/MKL sum in different orders; MobileNetV2's output moves by ~1e-4 between a Zen 3
  and a Cascade Lake), so a float32 comparison at 1e-5 passes on one machine and fails on
  the next. Run both sides in double instead (``as_f64(graph)``, ``f64_model(module)``):
  rounding is then ~1e-16 per op, so ``F64_TOL`` = 1e-9 of the output's scale holds on any
  CPU, and every real bug (a wrong channel, a dropped bias, a swapped operand) is many
  orders of magnitude above it.
* **Different kernels in float32** (onnxruntime, TVM, or anything that cannot run in
  double): float32 rounds at 2**-24 per op and the error accumulates with the number of
  layers, so the bound is ``F32_TOL_PER_LAYER`` (64 float32 ulps) per layer of depth, times
  the output's scale (its largest magnitude). ``depth`` is the number of layers with
  multiply-accumulates (conv, linear, matmul) on the longest path, bounded above by
  ``depth_of(graph)``; pass the graph or module itself.
* Non-finite values must be in the same places on both sides; integer outputs are equal.
* ``tol=`` overrides the policy for a reason stated at the call (a quantization step, a
  lossy pass's error bound).

Fixtures ``assert_close``, ``assert_exact``, ``assert_matches_model`` and ``f64`` hand these to
tests; module-level helpers import them with ``from suite import …`` (see below).
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from shrinkc.tools import zoo

# Test modules use the policy outside fixtures too (``from suite import assert_close``): pytest's
# importlib mode gives a conftest no stable module name, so this one registers itself as one.
sys.modules["suite"] = sys.modules[__name__]

#: float64 agreement for the same arithmetic in another order (see the module docstring).
F64_TOL = 1e-9
#: float32 agreement per layer of depth between different kernels: 64 ulps of 2**-23.
F32_TOL_PER_LAYER = 64 * 2.0 ** -23

# Small but structurally complete configurations: every block type is still there.
SMALL_CONFIGS: dict[str, dict] = {
    "lenet_300_100": {},
    "lenet5": {},
    "resnet18": {"width": 0.25},
    "resnet_bottleneck": {"width": 0.25},
    "vgg11_bn": {"width": 0.25},
    "mobilenet_v2": {"width": 0.5},
    "densenet": {"width": 0.5, "blocks": (2, 2, 2)},
    "vit": {"dim": 32, "depth": 2, "heads": 4},
}


def make_reference(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A reference model (eval mode, seeded weights, BN statistics made non-trivial) and an
    example input at its default shape."""
    torch.manual_seed(seed)
    model = zoo.get_model(name, **SMALL_CONFIGS[name]).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():  # fresh BNs have mean 0 / var 1: make folding non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    x = torch.randn(*zoo.default_input_shape(name), generator=g)
    return model, x


#: Even smaller configurations (ONNX round trips, where size does not matter).
TINY_CONFIGS: dict[str, dict] = {
    "lenet_300_100": {"width": 0.25}, "lenet5": {}, "resnet18": {"width": 0.125},
    "resnet_bottleneck": {"width": 0.125}, "vgg11_bn": {"width": 0.125},
    "mobilenet_v2": {"width": 0.25}, "densenet": {"blocks": (2, 2), "growth": 4},
    "vit": {"dim": 16, "depth": 2, "heads": 2},
}


def make_tiny(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A ``TINY_CONFIGS`` reference model with non-trivial batch-norm statistics, and an
    input."""
    torch.manual_seed(0)
    model = zoo.get_model(name, **TINY_CONFIGS[name]).eval()
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.weight.data = torch.rand(c, generator=gen) + 0.5
            mod.bias.data = torch.randn(c, generator=gen) * 0.1
            mod.running_mean = torch.randn(c, generator=gen) * 0.1
            mod.running_var = torch.rand(c, generator=gen) + 0.5
    return model, torch.randn(*zoo.default_input_shape(name), generator=gen)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``tiny_name`` runs once per reference model."""
    if "tiny_name" in metafunc.fixturenames:
        metafunc.parametrize("tiny_name", list(TINY_CONFIGS))


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(name) -> (module, input)``: see ``make_tiny``."""
    return make_tiny


def _drop_handlers_on_closed_streams() -> None:
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in list(getattr(logger, "handlers", ())):
            if (isinstance(h, logging.StreamHandler)
                    and getattr(getattr(h, "stream", None), "closed", False)):
                logger.removeHandler(h)


@pytest.fixture(autouse=True)
def _no_logging_to_closed_streams():
    """A handler left bound to an earlier test's captured stderr (``capsys`` closes it) makes
    every later record print "--- Logging error ---" and a traceback to the current stderr,
    which a test reading its stderr then sees (the CLI's own handler, for one, stays on the
    root logger after ``main()``; which test runs after which depends on the xdist split)."""
    _drop_handlers_on_closed_streams()
    yield
    _drop_handlers_on_closed_streams()


@pytest.fixture(scope="session")
def reference_graphs():
    """name -> (model, example input, traced graph), traced once per test worker."""
    from shrinkc import trace

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, x = make_reference(name)
            cache[name] = (model, x, trace(model, (x,), name=name))
        return cache[name]

    return get


# ================================================================ comparing outputs
def _arrays(x: Any) -> list[np.ndarray]:
    if isinstance(x, (torch.Tensor, np.ndarray)) or np.isscalar(x):
        x = [x]
    out = []
    for a in x:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu()
            a = a.float() if a.dtype == torch.bfloat16 else a
            a = a.numpy()
        out.append(np.asarray(a))
    return out


def depth_of(x: Any) -> int:
    """Layers with multiply-accumulates in a graph (conv, linear, matmul, …) or an
    ``nn.Module`` (conv and linear modules, ``MultiheadAttention``); at least 1."""
    if isinstance(x, int):
        return max(1, x)
    if isinstance(x, torch.nn.Module):
        kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.MultiheadAttention)
        return max(1, sum(isinstance(m, kinds) for m in x.modules()))
    from shrinkc.ir import ops

    n = 0
    for node in x.nodes:
        opdef = ops.get(node.op)
        if opdef.macs([v.type for v in node.inputs], [o.type for o in node.outputs],
                      node.attrs) > 0:
            n += 1
    return max(1, n)


def assert_close(got: Any, want: Any, *, depth: Any = 1, tol: float | None = None,
                 msg: str = "") -> None:
    """``got`` equals ``want`` (tensors, arrays, or sequences of them) under the suite's
    policy: float64 on both sides ⇒ ``F64_TOL`` of the output's scale; otherwise
    ``F32_TOL_PER_LAYER × depth`` (``depth`` an int, an IR graph or an nn.Module); integers
    exactly; ``tol`` (relative to the scale) overrides, with the reason at the call."""
    gots, wants = _arrays(got), _arrays(want)
    where = f"{msg}: " if msg else ""
    assert len(gots) == len(wants), f"{where}{len(gots)} outputs, expected {len(wants)}"
    for i, (g, w) in enumerate(zip(gots, wants)):
        name = f"{where}output {i}"
        assert g.shape == w.shape, f"{name}: shape {g.shape}, expected {w.shape}"
        if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(g.dtype, np.floating)):
            if tol is None:
                assert np.array_equal(g, w), f"{name}: integer outputs differ"
                continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        nan_g, nan_w = np.isnan(g64), np.isnan(w64)
        assert np.array_equal(nan_g, nan_w), f"{name}: NaN in different places"
        inf_g, inf_w = np.isinf(g64), np.isinf(w64)
        assert np.array_equal(inf_g, inf_w) and np.array_equal(g64[inf_g], w64[inf_w]), \
            f"{name}: infinities differ"
        fin = np.isfinite(w64)
        if not fin.any():
            continue
        if tol is None:
            double = g.dtype == np.float64 and w.dtype == np.float64
            tol_ = F64_TOL if double else F32_TOL_PER_LAYER * depth_of(depth)
        else:
            tol_ = tol
        scale = float(np.abs(w64[fin]).max()) or 1.0
        diff = np.abs(g64[fin] - w64[fin])
        err = float(diff.max())
        if err > tol_ * scale:
            rel = float(np.linalg.norm(g64[fin] - w64[fin]) / max(np.linalg.norm(w64[fin]), 1e-300))
            k = int(diff.argmax())
            raise AssertionError(
                f"{name}: max |got - want| = {err:.3g} > {tol_:.2g} x scale {scale:.4g} "
                f"(rel-L2 {rel:.3g}; at flat index {k}: {g64[fin][k]!r} vs {w64[fin][k]!r})")


def as_f64(graph):
    """A copy of ``graph`` computing in float64: f32 inputs and constants become f64 (node
    attributes, names and locs kept). Other dtypes (ints, quantized values) stay."""
    from shrinkc.ir.graph import Graph
    from shrinkc.ir.types import TensorType

    def t64(t):
        return TensorType("f64", t.shape) if t.dtype == "f32" else t

    g = Graph(graph.name)
    g.meta = dict(graph.meta)
    vmap = {}
    for v in graph.inputs:
        nv = g.add_input(t64(v.type), v.name)
        nv.meta = dict(v.meta)
        vmap[id(v)] = nv
    for v in graph.constants.values():
        data = v.data.astype(np.float64) if v.dtype == "f32" else v.data
        vmap[id(v)] = g.add_constant(data, v.name)
    for n in graph.nodes:
        new = g.add_node(n.op, [vmap[id(v)] for v in n.inputs], n.attrs,
                         names=[o.name for o in n.outputs], meta=n.meta)
        for o, no in zip(n.outputs, new.outputs):
            vmap[id(o)] = no
    g.outputs = [vmap[id(v)] for v in graph.outputs]
    return g


def f64_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` (the original is left alone)."""
    return copy.deepcopy(model).double()


def f64_inputs(inputs: Sequence[Any]) -> list:
    """Float32 tensors/arrays of ``inputs`` as float64 torch tensors; others unchanged."""
    out = []
    for x in inputs:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        out.append(t.double() if t.dtype == torch.float32 else t)
    return out


def assert_graph_matches_model(graph, model: torch.nn.Module, inputs: Sequence[Any],
                               msg: str = "") -> None:
    """The graph (run by the interpreter) computes what ``model`` computes, in float64."""
    from shrinkc.ir.interpreter import run

    xs = f64_inputs(inputs)
    with torch.no_grad():
        want = f64_model(model)(*xs)
        got = run(as_f64(graph), xs)
    assert_close(got, want, msg=msg)


def assert_exact_graphs(before, after, inputs: Sequence[Any], msg: str = "") -> None:
    """An exact rewrite: ``after`` computes what ``before`` computes, both run in float64.

    When ``after`` holds only float64 constants (the pass ran on ``as_f64(before)``), they
    agree to ``F64_TOL``. When the pass stored new float32 weights (fold-bn computes in
    float64 and rounds to the weight's dtype), that rounding — 2**-24 per weight, the same
    on every CPU — bounds the difference: ``F32_TOL_PER_LAYER`` per layer of depth. The
    float32 graphs must also agree to that bound."""
    from shrinkc.ir.interpreter import run

    xs = f64_inputs(inputs)
    stored_f32 = any(v.dtype == "f32" for v in after.constants.values())
    tol = F32_TOL_PER_LAYER * depth_of(before) if stored_f32 else F64_TOL
    with torch.no_grad():
        assert_close(run(as_f64(after), xs), run(as_f64(before), xs), tol=tol, msg=msg)
        assert_close(run(after, inputs), run(before, inputs), depth=before, msg=msg)


@pytest.fixture(scope="session", name="assert_close")
def _assert_close_fixture():
    """``assert_close(got, want, depth=1, tol=None, msg="")``: see ``assert_close``."""
    return assert_close


@pytest.fixture(scope="session", name="assert_exact")
def _assert_exact_fixture():
    """``assert_exact(before, after, inputs)``: an exact rewrite, checked in float64."""
    return assert_exact_graphs


@pytest.fixture(scope="session", name="assert_matches_model")
def _assert_matches_model_fixture():
    """``assert_matches_model(graph, model, inputs)``: interpreter vs eager, in float64."""
    return assert_graph_matches_model


@pytest.fixture(scope="session", name="f64")
def _f64_fixture():
    """``f64.graph(g)``, ``f64.model(m)``, ``f64.inputs(xs)``: float64 copies."""

    class F64:
        graph = staticmethod(as_f64)
        model = staticmethod(f64_model)
        inputs = staticmethod(f64_inputs)

    return F64
