"""Writing output files safely: checks before the work, atomic writes, ordinary permissions.

Every file shrinkc writes (``.shrk`` + ``.safetensors``, ``.onnx``, compiled artifacts,
tables, dumps) goes through here, so that

* an output location is checked *before* the (possibly long) work that produces it:
  ``check_output_file`` / ``check_output_dir`` raise ``OutputPathError`` naming the path
  and what is wrong (an existing directory, a folder that does not exist, a path under a
  file, a folder that is not writable);
* a write is atomic: a temporary file in the same folder, renamed into place
  (``atomic_write``); files that belong together (a ``.shrk`` and its ``.safetensors``) are
  written as a group (``atomic_write_group``): all or none, nothing left behind on failure;
* a written file gets the permissions any other file would (``0o666`` minus the umask),
  not the ``0o600`` of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import IRError

__all__ = ["OutputPathError", "atomic_write", "atomic_write_bytes", "atomic_write_group",
           "atomic_write_text", "check_output_dir", "check_output_file", "file_digest",
           "file_mode", "make_dirs"]

Writer = Callable[[str], None]  # writes the file at the given (temporary) path


class OutputPathError(IRError):
    """An output location that cannot be written (or a write that failed), naming the path."""


def _umask() -> int:
    try:  # Linux: the umask without changing it (threads may be creating files meanwhile)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    return 0o666 & ~_umask()


def _describe(err: OSError) -> str:
    return err.strerror or type(err).__name__


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise ``OutputPathError`` unless a file can be created or replaced at ``path``.

    ``what`` names the option or role (``-o``, ``--dump-dir``) in the message."""
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{what} {p}: is an existing directory, not a file")
    _check_parent(p, what)
    return p


def _check_parent(p: Path, what: str) -> None:
    parent = p.parent if str(p.parent) else Path(".")
    for anc in (parent, *parent.parents):
        if anc.exists() and not anc.is_dir():
            raise OutputPathError(f"{what} {p}: {anc} is a file, not a folder")
    if not parent.is_dir():
        raise OutputPathError(f"{what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {p}: folder {parent} is not writable")


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Raise ``OutputPathError`` unless ``path`` is a writable directory or can be created
    (its nearest existing ancestor is a writable directory)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise OutputPathError(f"{what} {p}: is an existing file, not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {p}: directory is not writable")
        return p
    for anc in p.parents:
        if anc.exists():
            if not anc.is_dir():
                raise OutputPathError(f"{what} {p}: {anc} is a file, not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise OutputPathError(f"{what} {p}: cannot create it: folder {anc} is not "
                                      f"writable")
            break
    return p


def make_dirs(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``mkdir -p path``, with ``OutputPathError`` naming the path on failure."""
    p = Path(path)
    check_output_dir(p, what)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"{what} {p}: cannot create it: {_describe(e)}") from None
    return p


def _temp_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def _remove(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write_group(items: Sequence[tuple[str | os.PathLike, Writer]],
                       what: str = "output") -> list[Path]:
    """Write several files all or none: each ``write(tmp)`` fills a temporary file beside
    its target, then all are renamed into place. On failure nothing new is left behind
    (targets that did not exist before are removed again). Errors from the file system are
    ``OutputPathError`` naming the file; errors of a writer propagate unchanged."""
    paths = [Path(p) for p, _ in items]
    for p in paths:
        check_output_file(p, what)
    tmps: list[str] = []
    placed: list[Path] = []
    existed = {p: p.exists() for p in paths}
    try:
        for p, (_, write) in zip(paths, items):
            try:
                tmps.append(_temp_beside(p))
            except OSError as e:
                raise OutputPathError(f"{what} {p}: cannot write: {_describe(e)}") from None
            write(tmps[-1])
            os.chmod(tmps[-1], file_mode())  # a writer may have made the file anew (safetensors)
        for p, tmp in zip(paths, tmps):
            try:
                os.replace(tmp, p)
            except OSError as e:
                raise OutputPathError(f"{what} {p}: cannot write: {_describe(e)}") from None
            placed.append(p)
    except BaseException:
        for tmp in tmps:
            _remove(tmp)
        for p in placed:  # all or none: a new file of the group goes again
            if not existed[p]:
                _remove(p)
        raise
    return paths


def atomic_write(path: str | os.PathLike, write: Writer, what: str = "output") -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it into place."""
    return atomic_write_group([(path, write)], what)[0]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "output") -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), what)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), what)


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
