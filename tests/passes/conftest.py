"""Helpers for pass tests: IR from text, running one pipeline, comparing numerics."""

from __future__ import annotations

import pytest
import torch
from shrinkc.ir.interpreter import random_inputs, run
from shrinkc.ir.text import parse_graph
from shrinkc.passes import PassContext, PassManager


@pytest.fixture
def ir():
    """``ir(text)``: a graph from text; ``#digest`` constants get seeded random data."""

    def parse(text: str, seed: int = 0):
        return parse_graph(text, missing_weights="random", seed=seed)

    return parse


@pytest.fixture
def apply():
    """``apply(graph, pipeline, **ctx)`` -> (new graph, PassResult of the last pass); the
    input graph is left alone and verify-each is on."""

    def go(graph, pipeline: str, **ctx_kwargs):
        g = graph.clone()
        pm = PassManager(pipeline, PassContext(**ctx_kwargs))
        pm.run(g)
        return g, pm.steps[-1].result

    return go


@pytest.fixture
def assert_same_outputs():
    """``assert_same_outputs(a, b, inputs=None, atol=1e-5)``: the two graphs compute the same
    outputs (within atol + 1e-5 relative) on ``inputs`` or seeded random inputs."""

    def check(a, b, inputs=None, atol: float = 1e-5) -> None:
        xs = inputs if inputs is not None else random_inputs(a, seed=1)
        with torch.no_grad():
            ya, yb = run(a, xs), run(b, xs)
        assert len(ya) == len(yb)
        for i, (p, q) in enumerate(zip(ya, yb)):
            assert p.shape == q.shape, f"output {i}: {tuple(p.shape)} vs {tuple(q.shape)}"
            err = (p.double() - q.double()).abs().max().item()
            assert torch.allclose(p.double(), q.double(), atol=atol, rtol=1e-5), \
                f"output {i} differs by {err:.3g}"

    return check


def as_f64(graph):
    """A copy of ``graph`` computing in float64: f32 inputs and constants become f64. Runs
    both sides of an exactness check without fp32 rounding noise, which in a deep model
    (MobileNetV2) is itself about 1e-5 of the output."""
    import numpy as np
    from shrinkc.ir.graph import Graph
    from shrinkc.ir.types import TensorType

    def t64(t):
        return TensorType("f64", t.shape) if t.dtype == "f32" else t

    g = Graph(graph.name)
    vmap = {}
    for v in graph.inputs:
        vmap[id(v)] = g.add_input(t64(v.type), v.name)
    for v in graph.constants.values():
        data = v.data.astype(np.float64) if v.dtype == "f32" else v.data
        vmap[id(v)] = g.add_constant(data, v.name)
    for n in graph.nodes:
        new = g.add_node(n.op, [vmap[id(v)] for v in n.inputs], n.attrs,
                         names=[o.name for o in n.outputs])
        for o, no in zip(n.outputs, new.outputs):
            vmap[id(o)] = no
    g.outputs = [vmap[id(v)] for v in graph.outputs]
    return g


@pytest.fixture
def assert_exact():
    """``assert_exact(before, after, inputs)``: an exact pass's result, checked in float64
    (max abs difference <= 1e-5 * max(1, max |output|)), and in float32 (rel-L2 <= 1e-4)."""

    def check(before, after, inputs) -> None:
        xs = [x.double() if x.dtype == torch.float32 else x for x in inputs]
        with torch.no_grad():
            for a, b in zip(run(as_f64(after), xs), run(as_f64(before), xs)):
                assert a.shape == b.shape
                tol = 1e-5 * max(1.0, b.abs().max().item())
                assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()
            for a, b in zip(run(after, inputs), run(before, inputs)):
                rel = ((a.double() - b.double()).norm() / max(b.double().norm(), 1e-30)).item()
                assert rel <= 1e-4, rel

    return check
