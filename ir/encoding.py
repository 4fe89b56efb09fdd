"""How a constant is stored: sparse, codebook-coded, … (dense when ``Value.encoding`` is None).

The dense ``Value.data`` is always the constant's value: passes, the interpreter and every
backend read it. An encoding says how the constant is *stored* and what that costs, and
states an invariant on the data that the verifier checks, so a pass that breaks it (e.g.
fine-tuning that revives pruned weights, or an update that leaves the codebook) is caught.
Encodings are parameters only; the stored form is derived from the data (the sparsity
pattern is ``data != 0``, the codebook the distinct values), so nothing extra is saved.

Text form: ``%w: f32[64,3,3,3] = const #digest as codebook(bits=4)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from .graph import IRError, Value

ENCODINGS: dict[str, type[Encoding]] = {}


def register_encoding(cls: type[Encoding]) -> type[Encoding]:
    ENCODINGS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Encoding:
    """A storage format for a constant."""

    name: ClassVar[str] = ""

    def check(self, data: np.ndarray) -> str | None:
        """Why ``data`` cannot be stored this way, or None."""
        return None

    def nbytes(self, value: Value) -> int:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"


@register_encoding
@dataclass(frozen=True)
class Sparse(Encoding):
    """Compressed sparse rows over dim 0: non-zero values + column indices of
    ``index_bits`` + one 32-bit row pointer per row."""

    name: ClassVar[str] = "sparse"
    index_bits: int = 32

    def __post_init__(self) -> None:
        if self.index_bits not in (4, 8, 16, 32):
            raise IRError(f"sparse: index_bits must be 4, 8, 16 or 32, got {self.index_bits}")

    def nbytes(self, value: Value) -> int:
        nnz = int(np.count_nonzero(value.data))
        rows = value.shape[0] if value.shape else 1
        return nnz * value.type.itemsize + math.ceil(nnz * self.index_bits / 8) + (rows + 1) * 4


@register_encoding
@dataclass(frozen=True)
class Codebook(Encoding):
    """Weight sharing: each element is a ``bits``-bit index into a table of at most
    ``2**bits`` distinct values (k-means clusters, as in Deep Compression)."""

    name: ClassVar[str] = "codebook"
    bits: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise IRError(f"codebook: bits must be in 1..16, got {self.bits}")

    def check(self, data: np.ndarray) -> str | None:
        k = len(np.unique(data))
        return None if k <= 2 ** self.bits else (f"has {k} distinct values, more than "
                                                 f"2**{self.bits} = {2 ** self.bits}")

    def nbytes(self, value: Value) -> int:
        return math.ceil(value.type.numel * self.bits / 8) + 2 ** self.bits * value.type.itemsize


def make_encoding(name: str, params: dict[str, Any]) -> Encoding:
    cls = ENCODINGS.get(name)
    if cls is None:
        raise IRError(f"unknown encoding {name!r} (known: {', '.join(sorted(ENCODINGS))})")
    try:
        return cls(**params)
    except TypeError as e:
        raise IRError(f"encoding {name}: {e}") from None
