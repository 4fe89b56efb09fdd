"""passes/base.py: the pass layer's base, imported by every pass (not the manager)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import shrinkc.passes as passes
from shrinkc.passes import base, manager, registry

PASSES_DIR = Path(passes.__file__).parent
NOT_PASSES = {"__init__.py", "base.py", "registry.py", "manager.py", "instruments.py"}


@pytest.mark.parametrize("name", ["Pass", "PassResult", "PassError", "PipelineError",
                                  "option"])
def test_registry_reexports_base(name):
    assert getattr(registry, name) is getattr(base, name)
    assert getattr(passes, name) is getattr(base, name)


def test_manager_reexports_pass_context():
    assert manager.PassContext is base.PassContext is passes.PassContext


def _relative_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module or "" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1}


@pytest.mark.parametrize("path", sorted(p.name for p in PASSES_DIR.glob("*.py")
                                        if p.name not in NOT_PASSES))
def test_pass_modules_import_base_not_manager(path):
    mods = _relative_imports(PASSES_DIR / path)
    assert "manager" not in mods, f"{path} imports the manager"


def test_base_imports_neither_registry_nor_manager():
    assert not _relative_imports(PASSES_DIR / "base.py") & {"registry", "manager"}


def test_pass_error_names_node():
    err = base.PassError("groups=2 not supported", node="conv3 (layer2.0.conv1)")
    assert str(err) == "node conv3 (layer2.0.conv1): groups=2 not supported"
