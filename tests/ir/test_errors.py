"""ir/errors.py: IRError in a module of its own; the op table does not import the graph."""

from __future__ import annotations

import ast
from pathlib import Path

import shrinkc.ir as ir
from shrinkc.ir import errors, graph, ops

OPS_DIR = Path(ops.__file__).parent


def test_irerror_reexported():
    assert graph.IRError is errors.IRError is ir.IRError


def test_op_table_does_not_import_graph():
    for path in OPS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                assert "graph" not in (node.module or "").split("."), f"{path.name} imports graph"


def test_graph_imports_ops_at_top_level():
    tree = ast.parse(Path(graph.__file__).read_text())
    lazy = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
            for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and n.module in (None, "ops")
            and any(a.name == "ops" for a in n.names)]
    assert not lazy, "graph.py imports the op table lazily"
