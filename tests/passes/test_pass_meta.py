"""Every registered pass follows the conventions and runs on every reference model."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest
import torch
from shrinkc.ir.interpreter import run
from shrinkc.passes import PASSES, PassContext, PassManager
from shrinkc.tools import zoo

TESTS = Path(__file__).parent
BUILTIN = sorted(n for n, c in PASSES.items() if c.__module__.startswith("shrinkc.passes."))


def test_there_are_builtin_passes():
    assert {"dce", "fold-bn", "fold-constants", "remove-identity"} <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_one_name_four_places(name):
    cls = PASSES[name]
    stem = name.replace("-", "_")
    assert cls.__module__ == f"shrinkc.passes.{stem}"
    assert cls.__name__ == "".join(p.capitalize() for p in name.split("-"))
    assert (TESTS / f"test_{stem}.py").is_file(), f"missing tests/passes/test_{stem}.py"
    assert isinstance(cls.exact, bool)
    assert cls.summary() and not cls.summary().startswith(cls.__name__ + "(")
    doc = inspect.getdoc(importlib.import_module(cls.__module__)) or ""
    assert doc.startswith(f"``{name}``"), "the module docstring starts with the pass name"
    assert ("(exact)" in doc) == cls.exact, "the module docstring says whether it is exact"
    for f in dataclasses.fields(cls):
        assert f"``{f.name}``" in doc, f"option {f.name} is not documented in the module"


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("model", list(zoo.MODELS))
def test_every_pass_runs_on_every_reference_model(model, name, reference_graphs, assert_exact):
    _, x, graph = reference_graphs(model)
    with torch.no_grad():
        want = run(graph, [x])
    g = graph.clone()
    ctx = PassContext(example_inputs=[x], calibration=[[x]])
    pm = PassManager(name, ctx, verify_each=True)
    pm.run(g)
    result = pm.steps[0].result
    assert isinstance(result.stats, dict)
    assert all(isinstance(v, (int, float)) for v in result.stats.values())
    with torch.no_grad():
        got = run(g, [x])
    assert [t.shape for t in got] == [t.shape for t in want], name
    if PASSES[name].exact:
        assert_exact(graph, g, [x])
