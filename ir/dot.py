"""A picture of a graph: Graphviz DOT text, and what a pass changed.

``to_dot(graph)`` gives one box per node (op, output types, loc), an ellipse per graph
input and output, and an edge per use; constants are not drawn (a node's label counts its
weight operands). ``diff_dot(before, after)`` draws ``after`` with what the pass changed
highlighted: added nodes green, changed ones (op, attributes, operands, a constant's
value or an output type) orange, and the removed ones of ``before`` dashed red. Nodes are
matched by the name of their first output, which passes keep.
``render(dot, path)`` turns the text into SVG / PNG / PDF with Graphviz's ``dot`` program,
which is not a Python package: install it from the system packages (``apt install
graphviz``). The DOT text needs nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .errors import IRError
from .graph import Graph, Node
from .text import format_attr

__all__ = ["RENDER_FORMATS", "check_target", "diff_dot", "render", "to_dot"]

ADDED, CHANGED, REMOVED = "#b7e4b0", "#ffd38a", "#f4b6b6"
_BASE = "#f2f2f2"
_IO = "#d6e6f5"
RENDER_FORMATS = ("svg", "png", "pdf")


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_id(name: str) -> str:
    return _q(f"n:{name}")


def _label(n: Node) -> str:
    lines = [n.op, ", ".join(str(o.type) for o in n.outputs)]
    weights = sum(v.is_constant for v in n.inputs)
    if weights:
        lines[0] += f"  (+{weights} const)"
    if n.loc:
        lines.append(n.loc)
    return "\n".join(lines)


def _signature(n: Node) -> tuple:
    """What makes a node the same one after a pass (keyed by its first output's name): op,
    attributes, output types, and per operand its type, and for a constant its value. An
    operand that now comes from elsewhere (a consumer rewired past a removed node) is not
    a change of the node; the edges show it."""
    operands = tuple((v.digest() if v.is_constant else None, str(v.type)) for v in n.inputs)
    return (n.op, tuple(sorted((k, format_attr(a)) for k, a in n.attrs.items())), operands,
            tuple(str(o.type) for o in n.outputs))


def _edges(g: Graph, nodes: Iterable[Node], style: str = "") -> list[str]:
    inputs = {id(v) for v in g.inputs}
    lines = []
    for n in nodes:
        for v in n.inputs:
            if v.producer is not None:
                src = _node_id(v.producer.name)
            elif id(v) in inputs:
                src = _q(f"in:{v.name}")
            else:
                continue  # a constant
            lines.append(f"  {src} -> {_node_id(n.name)}{style};")
    return lines


def to_dot(graph: Graph, *, fill: dict[str, str] | None = None,
           removed: Iterable[Node] = (), title: str | None = None,
           legend: dict[str, str] | None = None) -> str:
    """DOT text of ``graph``. ``fill`` colours nodes by name; ``removed`` nodes (of an
    earlier graph) are drawn dashed, with edges from whatever of theirs is still there."""
    fill = fill or {}
    out = [f"digraph {_q(graph.name)} {{",
           "  rankdir=TB;",
           f"  label={_q(title or graph.name)}; labelloc=t; fontname=Helvetica;",
           f'  node [shape=box, style="rounded,filled", fillcolor="{_BASE}", '
           'fontname=Helvetica, fontsize=10];',
           "  edge [color=\"#555555\", arrowsize=0.6];"]
    for v in graph.inputs:
        out.append(f"  {_q('in:' + v.name)} [label={_q('%' + v.name + chr(10) + str(v.type))}, "
                   f'shape=ellipse, fillcolor="{_IO}"];')
    for n in graph.nodes:
        color = fill.get(n.name)
        extra = f', fillcolor="{color}", penwidth=2' if color else ""
        tooltip = "; ".join(f"{k}={format_attr(a)}" for k, a in n.attrs.items()) or n.op
        out.append(f"  {_node_id(n.name)} [label={_q(_label(n))}, tooltip={_q(tooltip)}"
                   f"{extra}];")
    removed = list(removed)
    present = {n.name for n in graph.nodes}
    for n in removed:
        out.append(f"  {_node_id(n.name)} [label={_q('removed: ' + _label(n))}, "
                   f'style="rounded,dashed,filled", fillcolor="{REMOVED}", color="#b03030"];')
    out += _edges(graph, graph.nodes)
    names = {v.name for v in graph.inputs} | present | {n.name for n in removed}
    for n in removed:  # edges from what is still there (or removed too) into removed nodes
        for v in n.inputs:
            src = v.producer.name if v.producer is not None else None
            if src in names:
                out.append(f"  {_node_id(src)} -> {_node_id(n.name)} [style=dashed];")
            elif v.producer is None and v.name in names and not v.is_constant:
                out.append(f"  {_q('in:' + v.name)} -> {_node_id(n.name)} [style=dashed];")
    for i, v in enumerate(graph.outputs):
        oid = _q(f"out:{i}")
        out.append(f"  {oid} [label={_q('return %' + v.name)}, shape=ellipse, "
                   f'fillcolor="{_IO}"];')
        src = _node_id(v.producer.name) if v.producer is not None else _q(f"in:{v.name}")
        if v.producer is not None or any(v is x for x in graph.inputs):
            out.append(f"  {src} -> {oid};")
    if legend:
        rows = "".join(f'<TR><TD BGCOLOR="{c}">{k}</TD></TR>' for k, c in legend.items())
        out.append(f'  legend [shape=plaintext, fillcolor=none, label=<<TABLE BORDER="0" '
                   f'CELLBORDER="1" CELLSPACING="0">{rows}</TABLE>>];')
    out.append("}")
    return "\n".join(out) + "\n"


def diff_dot(before: Graph, after: Graph, title: str | None = None) -> tuple[str, dict]:
    """DOT text of ``after`` with what changed since ``before`` highlighted, and the counts
    (``{"added": [...], "changed": [...], "removed": [...]}`` node names)."""
    old = {n.name: _signature(n) for n in before.nodes}
    fill, counts = {}, {"added": [], "changed": [], "removed": []}
    for n in after.nodes:
        if n.name not in old:
            fill[n.name] = ADDED
            counts["added"].append(n.name)
        elif old[n.name] != _signature(n):
            fill[n.name] = CHANGED
            counts["changed"].append(n.name)
    names = {n.name for n in after.nodes}
    removed = [n for n in before.nodes if n.name not in names]
    counts["removed"] = [n.name for n in removed]
    summary = ", ".join(f"{len(v)} {k}" for k, v in counts.items())
    head = f"{title or after.name}: {summary}"
    return to_dot(after, fill=fill, removed=removed, title=head,
                  legend={"added": ADDED, "changed": CHANGED, "removed": REMOVED}), counts


def check_target(path: str | os.PathLike, what: str = "--dot") -> Path:
    """Raise ``IRError`` now (before any work) unless ``render`` can write ``path``."""
    from .files import check_output_file

    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("dot", "gv") + RENDER_FORMATS:
        raise IRError(f"{what} {p}: a graph picture is .dot, .gv, or rendered as "
                      f"{', '.join('.' + f for f in RENDER_FORMATS)}")
    if fmt in RENDER_FORMATS and shutil.which("dot") is None:
        raise IRError(f"{what} {p}: rendering .{fmt} needs Graphviz's 'dot' program, which is "
                      f"not on PATH (install the system package 'graphviz'), or write a .dot "
                      f"file")
    check_output_file(p, what)
    return p


def render(dot: str, path: str | os.PathLike) -> Path:
    """Write ``dot`` to ``path``: as is for ``.dot`` / ``.gv``, else rendered by Graphviz's
    ``dot`` program in the format the suffix names (``RENDER_FORMATS``); atomically."""
    from .files import atomic_write, atomic_write_text

    p = check_target(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt in ("dot", "gv"):
        return atomic_write_text(p, dot, "--dot")
    exe = shutil.which("dot")

    def run(tmp: str) -> None:
        res = subprocess.run([exe, f"-T{fmt}", "-o", tmp], input=dot.encode(),
                             capture_output=True, timeout=300)
        if res.returncode != 0:
            msg = res.stderr.decode(errors="replace").strip().splitlines()
            raise IRError(f"{p}: Graphviz failed: {msg[-1] if msg else res.returncode}")

    return atomic_write(p, run, "--dot")
