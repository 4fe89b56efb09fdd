"""ir/files.py: output paths checked before the work, atomic (grouped) writes, and the
permissions every new file gets."""

from __future__ import annotations

import os
import stat

import pytest

from shrinkc.ir.files import (OutputPathError, atomic_write_group, atomic_write_text,
                              check_output_dir, check_output_file, file_digest, file_mode)
from shrinkc.ir.serialize import save


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.mark.parametrize("rel, words", [
    ("dir", "is an existing directory, not a file"),
    ("nope/out.shrk", "folder {t}/nope does not exist"),
    ("file/out.shrk", "{t}/file is a file, not a folder"),
    ("file/deeper/out.shrk", "{t}/file is a file, not a folder"),
])
def test_check_output_file(tree, rel, words):
    with pytest.raises(OutputPathError, match=words.format(t=tree)):
        check_output_file(tree / rel, "-o")
    assert check_output_file(tree / "new.shrk") == tree / "new.shrk"
    assert check_output_file(tree / "file") == tree / "file"  # replaced atomically


@pytest.mark.parametrize("rel, words", [
    ("file", "is an existing file, not a directory"),
    ("file/sub", "{t}/file is a file, not a folder"),
])
def test_check_output_dir(tree, rel, words):
    with pytest.raises(OutputPathError, match=words.format(t=tree)):
        check_output_dir(tree / rel, "--dump-dir")
    assert check_output_dir(tree / "dir") == tree / "dir"
    assert check_output_dir(tree / "new" / "deeper") == tree / "new" / "deeper"


def test_written_files_get_the_umask_mode_not_mkstemps(tree, reference_graphs):
    """``.shrk`` / ``.safetensors`` used to be 0600 (mkstemp); now as any new file."""
    old = os.umask(0o022)
    try:
        assert file_mode() == 0o644
        g = reference_graphs("lenet5")[2]
        shrk = save(g, tree / "m.shrk")
        plain = tree / "plain.txt"
        plain.write_text("x")
        from shrinkc import to_onnx

        onnx_mode = _mode(to_onnx(g, tree / "m.onnx"))
        assert _mode(shrk) == _mode(shrk.with_suffix(".safetensors")) == onnx_mode == 0o644
        assert _mode(plain) == 0o644
        os.umask(0o027)
        assert _mode(atomic_write_text(tree / "t.txt", "hi")) == 0o640
    finally:
        os.umask(old)


def test_a_group_is_written_all_or_none(tree):
    def boom(tmp):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write_group([(tree / "a.bin", lambda t: open(t, "wb").write(b"a")),
                            (tree / "b.bin", boom)])
    assert sorted(p.name for p in tree.iterdir()) == ["dir", "file"]  # no temp files either
    # the second target cannot be replaced (a directory): the first, new, is removed again
    with pytest.raises(OutputPathError, match="is an existing directory"):
        atomic_write_group([(tree / "a.bin", lambda t: open(t, "wb").write(b"a")),
                            (tree / "dir", lambda t: open(t, "wb").write(b"b"))])
    assert sorted(p.name for p in tree.iterdir()) == ["dir", "file"]
    atomic_write_group([(tree / "a.bin", lambda t: open(t, "wb").write(b"a")),
                        (tree / "file", lambda t: open(t, "wb").write(b"new"))])
    assert (tree / "a.bin").read_bytes() == b"a" and (tree / "file").read_bytes() == b"new"


def test_save_into_an_existing_directory_leaves_no_weights(tree, reference_graphs):
    """The case of issue 12: ``save(g, "dir.shrk")`` with dir.shrk a directory."""
    (tree / "d.shrk").mkdir()
    with pytest.raises(OutputPathError, match="d.shrk: is an existing directory"):
        save(reference_graphs("lenet5")[2], tree / "d.shrk")
    assert not (tree / "d.safetensors").exists()


def test_file_digest(tree):
    import hashlib

    data = os.urandom(3 << 20)
    (tree / "blob").write_bytes(data)
    assert file_digest(tree / "blob") == (len(data), hashlib.sha256(data).hexdigest())
