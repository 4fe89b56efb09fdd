"""Saving and loading graphs: the text form in ``NAME.shrk`` and the constants in
``NAME.safetensors`` beside it (never pickle), or everything in one compressed
``NAME.shrkz`` (``ir/compress.py``). Writes are atomic (``ir/files.py``): a failed save
leaves no file behind (the .shrk and its .safetensors are written as a pair), and the
files get the permissions of any other new file. An encoding's array that the data does
not imply (a sparse mask with a kept zero) is saved under ``NAME@mask`` (``encoding.array_key``) and digest-checked like
the constants.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import atomic_write_group, make_dirs
from .graph import Graph, IRError
from .text import parse_graph, print_graph


def encoding_arrays(graph: Graph) -> dict[str, np.ndarray]:
    """The arrays the text form names by digest besides the constants (sparse masks that
    are not ``data != 0``), keyed as the parser looks them up."""
    from .encoding import Sparse, array_key

    out = {}
    for name, v in graph.constants.items():
        if isinstance(v.encoding, Sparse) and not v.encoding.mask_is_implied(v.data):
            out[array_key(name, "mask")] = np.ascontiguousarray(v.encoding.mask)
    return out


def weights_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix(".safetensors")


def save(graph: Graph, path: str | os.PathLike, compress: bool | None = None) -> Path:
    """Write ``path`` (text IR) and its ``.safetensors`` weights, or with ``compress`` (the
    default for a ``.shrkz`` path) one compressed file (``ir/compress.py``: CSR, Huffman,
    checksums). Returns the path written."""
    from safetensors.numpy import save_file

    from .compress import SUFFIX, save_compressed

    path = Path(path)
    if compress is None:
        compress = path.suffix == SUFFIX
    if compress:
        return save_compressed(graph, path)
    if path.suffix != ".shrk":
        raise IRError(f"{path}: a saved graph's file name ends in .shrk ({SUFFIX} when "
                      f"compressed)")
    tensors, meta = {}, {"format": "shrinkc", "graph": graph.name}
    for name, v in graph.constants.items():
        arr = np.ascontiguousarray(v.data)
        if v.dtype == "bf16":  # safetensors' numpy API has no bfloat16: store the bits
            arr = arr.view(np.uint16)
            meta[f"bf16:{name}"] = "1"
        tensors[name] = arr
    for name, arr in encoding_arrays(graph).items():
        if name in tensors:
            raise IRError(f"cannot save: constant %{name} has the name of an encoding array")
        tensors[name] = arr
    text = print_graph(graph)
    make_dirs(path.parent, "save: folder")
    # the two files as a pair: both or neither (ir/files.py)
    atomic_write_group([(weights_path(path), lambda tmp: save_file(tensors, tmp, metadata=meta)),
                        (path, lambda tmp: Path(tmp).write_text(text))], what="save")
    return path


def load(path: str | os.PathLike) -> Graph:
    """Read a graph saved by ``save`` (checks every constant against its digest), from a
    ``.shrk`` + ``.safetensors`` pair or a compressed ``.shrkz``."""
    from safetensors import safe_open

    from .compress import MAGIC, load_compressed

    path = Path(path)
    if not path.is_file():
        raise IRError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(5) == MAGIC[:5]:
            return load_compressed(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise IRError(f"{path}: cannot read IR text: {e}") from None
    wpath = weights_path(path)
    weights: dict[str, np.ndarray] = {}
    if wpath.exists():
        try:
            with safe_open(str(wpath), framework="numpy") as f:
                meta = f.metadata() or {}
                for k in f.keys():
                    arr = f.get_tensor(k)
                    if meta.get(f"bf16:{k}"):
                        import ml_dtypes

                        arr = arr.view(ml_dtypes.bfloat16)
                    weights[k] = arr
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise IRError(f"{wpath}: corrupt or unreadable weights file: {e}") from None
    try:
        return parse_graph(text, weights)
    except IRError as e:
        raise IRError(f"{path}: {e}") from None


