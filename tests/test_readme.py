"""README.md: every ```python block runs as pasted — in order, in one namespace (as a reader
pasting them into one session), in an empty folder.

A block preceded by ``<!-- readme-test: slow -->`` (it trains or tunes) runs only in the
slow suite; ``<!-- readme-test: skip: REASON -->`` marks a fragment that is not a program
(the inside of a pass module), with the reason. Nothing else is exempt.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
_MARK = re.compile(r"<!--\s*readme-test:\s*(?P<what>slow|skip)(?::\s*(?P<why>.*?))?\s*-->")


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, mark: "" / "slow" / "skip", code) of each python block."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m["lang"]:
            i += 1 if not m else _skip_block(lines, i)
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not _FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        if m["lang"] != "python":
            continue
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        mark = _MARK.search(prev)
        if mark and mark["what"] == "skip" and not mark["why"]:
            raise AssertionError(f"README.md:{start + 1}: readme-test: skip needs a reason")
        out.append((start + 1, mark["what"] if mark else "", textwrap.dedent("\n".join(body))))
    return out


def _skip_block(lines: list[str], i: int) -> int:
    """Lines to skip past a fence without a language (its closing fence included)."""
    j = i + 1
    while j < len(lines) and not _FENCE.match(lines[j]):
        j += 1
    return j + 1 - i


def _run(blocks, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path / "cache"))  # no user database
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    for line, _, code in blocks:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102
        except Exception as e:
            raise AssertionError(f"the python block at README.md:{line} fails: "
                                 f"{type(e).__name__}: {e}") from e


def test_the_readme_has_python_blocks_and_marks_are_explained():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    assert sum(mark == "" for _, mark, _ in blocks) >= 4  # most of them run by default


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = [b for b in python_blocks(README.read_text()) if b[1] == ""]
    _run(blocks, tmp_path, monkeypatch)


@pytest.mark.slow
def test_readme_python_blocks_run_with_the_slow_ones(tmp_path, monkeypatch, capsys):
    blocks = [b for b in python_blocks(README.read_text()) if b[1] != "skip"]
    _run(blocks, tmp_path, monkeypatch)


def test_block_extraction():
    text = textwrap.dedent("""
        ```sh
        shrinkc opt
        ```
        ```python
        a = 1
        ```
        <!-- readme-test: slow -->
        ```python
        b = 2
        ```
        1. a list item
           ```python
           c = 3
           ```
        ```
        not python
        ```
    """)
    assert python_blocks(text) == [(5, "", "a = 1"), (9, "slow", "b = 2"), (13, "", "c = 3")]
