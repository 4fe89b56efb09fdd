"""Helpers for pass tests: IR from text, running one pipeline, comparing numerics (with the
suite's policy in tests/conftest.py)."""

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
def assert_same_outputs(assert_exact, assert_close):
    """``assert_same_outputs(a, b, inputs=None, bitwise=False)``: the two graphs compute the
    same outputs on ``inputs`` (or seeded random inputs) — in float64 under the suite's
    policy (tests/conftest.py), or bit for bit in float32 with ``bitwise=True`` (for
    rewrites that call the very same torch reference)."""

    def check(a, b, inputs=None, bitwise: bool = False) -> None:
        xs = inputs if inputs is not None else random_inputs(a, seed=1)
        if bitwise:
            with torch.no_grad():
                assert_close(run(b, xs), run(a, xs), tol=0.0)
        else:
            assert_exact(a, b, xs)

    return check
