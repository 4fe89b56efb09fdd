"""How a constant is stored: pruned (``sparse``), weight-shared (``codebook``), or both.

The dense ``Value.data`` is always the constant's value: passes, the interpreter and every
backend read it. An encoding says how the constant is *stored* and what that costs, and
states an invariant on the data that the verifier and every data change
(``Graph.replace_constants``, ``passes.rewrite.replace_data``) check, so a change that breaks it — fine-tuning that revives pruned weights, an update
that leaves the codebook — is caught and named.

* ``Sparse(mask, index_bits)``: only the positions where ``mask`` is true may be non-zero;
  the others hold +0.0 (the mask is kept, so a kept weight may be exactly zero and a
  revived one is still caught). Stored as the paper's CSR with relative indices: the non-zeros in row-major
  order, each with its distance from the previous one in ``index_bits`` bits; a distance
  larger than ``2**index_bits`` inserts a filler entry (Han et al., Deep Compression).
* ``Codebook(bits)``: at most ``2**bits`` distinct values (k-means clusters); stored as a
  ``bits``-bit index per element plus the table. The table is the distinct values
  themselves (``split_codebook``), so nothing beyond the data is needed to rebuild it.
* ``Sparse(mask, index_bits, codebook=Codebook(bits))``: the sparse pattern, then a
  codebook over the kept values — the Deep Compression pipeline's stacked form.

Text form (``ir/text.py``)::

    %w: f32[300,784] = const #digest as sparse(index_bits=5, nnz=21168) then codebook(bits=5)

``nnz`` is the mask's count; the mask is the data's non-zeros (``nonzero``: -0.0 counts as
a value) unless the text names it (``mask=#digest``, its bits saved beside the weights),
which it does only when a kept value is +0.0. The compressed file format is ``ir/compress.py``.
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
        """The scalar parameters written in the text form."""
        return asdict(self)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"


def _bits_view(a: np.ndarray) -> np.ndarray:
    """The elements' bit patterns (so -0.0 and 0.0, or two NaNs, stay distinct)."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.itemsize in (1, 2, 4, 8) else a


def nonzero(data: np.ndarray) -> np.ndarray:
    """Where ``data`` is not +0: by bit pattern, so -0.0 counts as a value (a pruned position
    holds +0.0, which is what the stored form gives back)."""
    return _bits_view(np.asarray(data)) != 0


def split_codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids, indices)`` with ``centroids[indices] == values`` bit for bit.

    The centroids are the distinct values (by bit pattern) in increasing order, so the
    split is a function of the values alone; indices are int64 of ``values``' shape."""
    values = np.asarray(values)
    bits = _bits_view(values).reshape(-1)
    uniq, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
    table = values.reshape(-1)[first]
    order = np.lexsort((uniq, table.astype(np.float64)))  # by value; ties (0.0, -0.0) by bits
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return table[order], rank[inverse].reshape(values.shape).astype(np.int64)


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
        k = len(np.unique(_bits_view(data)))
        return None if k <= 2 ** self.bits else (f"has {k} distinct values, more than "
                                                 f"2**{self.bits} = {2 ** self.bits}")

    def table_size(self, values: np.ndarray) -> int:
        """Entries of the table ``values`` needs (its distinct values)."""
        return len(np.unique(_bits_view(values)))

    def nbytes(self, value: Value) -> int:
        return (math.ceil(value.type.numel * self.bits / 8)
                + self.table_size(value.data) * value.type.itemsize)


def relative_gaps(mask: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's relative indexing of ``mask``'s true positions (row-major).

    Returns ``(gaps, filler)``: one entry per stored element, ``gaps[i]`` in
    ``1..2**index_bits`` the distance from the previous stored element (the first from
    position -1), and ``filler[i]`` true for the zero entries inserted where a distance
    exceeds ``2**index_bits``."""
    pos = np.flatnonzero(np.asarray(mask).reshape(-1)).astype(np.int64)
    step = 1 << index_bits
    d = np.diff(pos, prepend=-1)
    extra = (d - 1) // step  # fillers before each element
    n = len(pos) + int(extra.sum())
    gaps = np.full(n, step, dtype=np.int64)
    filler = np.ones(n, dtype=bool)
    real = np.cumsum(extra + 1) - 1  # where each real element lands
    gaps[real] = d - extra * step
    filler[real] = False
    return gaps, filler


def positions_from_gaps(gaps: np.ndarray, filler: np.ndarray) -> np.ndarray:
    """Inverse of ``relative_gaps``: the flat positions of the real (non-filler) entries."""
    return (np.cumsum(np.asarray(gaps, dtype=np.int64)) - 1)[~np.asarray(filler, dtype=bool)]


@register_encoding
@dataclass(frozen=True, eq=False)
class Sparse(Encoding):
    """Pruned weights: only the positions in ``mask`` may be non-zero. Stored as CSR with
    ``index_bits``-bit relative indices (filler entries where a gap is wider), the kept
    values dense or, with ``codebook``, as codebook indices."""

    name: ClassVar[str] = "sparse"
    mask: np.ndarray
    index_bits: int = 8
    codebook: Codebook | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.index_bits, int) or not 1 <= self.index_bits <= 16:
            raise IRError(f"sparse: index_bits must be in 1..16, got {self.index_bits}")
        if self.codebook is not None and not isinstance(self.codebook, Codebook):
            raise IRError(f"sparse: values are stored dense or by a codebook, not "
                          f"{self.codebook}")
        m = np.array(self.mask, dtype=bool, copy=True)
        m.flags.writeable = False  # shared by clones and snapshots
        object.__setattr__(self, "mask", m)

    @classmethod
    def of(cls, data: np.ndarray, index_bits: int = 8, codebook: Codebook | None = None
           ) -> Sparse:
        """The encoding whose mask is ``data``'s non-zeros."""
        return cls(nonzero(data), index_bits, codebook)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.mask))

    def mask_is_implied(self, data: np.ndarray) -> bool:
        """Whether the mask is exactly ``nonzero(data)`` (then the text need not name it)."""
        return bool(np.array_equal(self.mask, nonzero(data)))

    def check(self, data: np.ndarray) -> str | None:
        data = np.asarray(data)
        if data.shape != self.mask.shape:
            return f"has shape {list(data.shape)} but its mask {list(self.mask.shape)}"
        revived = np.flatnonzero(nonzero(data) & ~self.mask)
        if len(revived):
            return (f"has {len(revived)} non-zero value(s) at pruned positions (first at "
                    f"flat index {int(revived[0])}: {str(data.reshape(-1)[revived[0]])}; a pruned "
                    f"position holds +0.0)")
        if self.codebook is not None:
            reason = self.codebook.check(data[self.mask])
            if reason:
                return f"keeps values that {reason}"
        return None

    def entries(self) -> tuple[int, int]:
        """(stored entries, of which fillers) in the relative-index format."""
        gaps, filler = relative_gaps(self.mask, self.index_bits)
        return len(gaps), int(filler.sum())

    def nbytes(self, value: Value) -> int:
        n, fillers = self.entries()
        if self.codebook is None:
            return math.ceil(n * self.index_bits / 8) + n * value.type.itemsize
        k = self.codebook.table_size(value.data[self.mask])
        width = max(self.codebook.bits, math.ceil(math.log2(k + 1)) if fillers else 0)
        return math.ceil(n * (self.index_bits + width) / 8) + k * value.type.itemsize

    def params(self) -> dict[str, Any]:
        return {"index_bits": self.index_bits, "nnz": self.nnz}

    def __str__(self) -> str:
        text = super().__str__()
        return text + (f" then {self.codebook}" if self.codebook is not None else "")

    def __repr__(self) -> str:
        return (f"Sparse(index_bits={self.index_bits}, nnz={self.nnz} of {self.mask.size}"
                + (f", codebook={self.codebook!r})" if self.codebook is not None else ")"))

    def __eq__(self, other: object) -> bool:
        return (type(other) is Sparse and self.index_bits == other.index_bits
                and self.codebook == other.codebook and self.mask.shape == other.mask.shape
                and bool(np.array_equal(self.mask, other.mask)))

    __hash__ = object.__hash__


def array_key(constant: str, field: str) -> str:
    """Where an encoding's array (a sparse ``mask``) is kept beside the weights."""
    return f"{constant}@{field}"


def mask_of(value: Value) -> np.ndarray | None:
    """The positions that may be non-zero (None: not pruned)."""
    return value.encoding.mask if isinstance(value.encoding, Sparse) else None


def codebook_of(value: Value) -> Codebook | None:
    """The codebook of a shared constant, on its own or over its kept values."""
    enc = value.encoding
    if isinstance(enc, Sparse):
        return enc.codebook
    return enc if isinstance(enc, Codebook) else None


def make_encoding(name: str, params: dict[str, Any], data: np.ndarray | None = None,
                  inner: Encoding | None = None) -> Encoding:
    """An encoding from its text form: ``name``, its parameters and (``then``) the encoding
    of its kept values. A sparse encoding without a ``mask`` array takes ``data != 0`` and
    checks ``nnz`` against it."""
    cls = ENCODINGS.get(name)
    if cls is None:
        raise IRError(f"unknown encoding {name!r} (known: {', '.join(sorted(ENCODINGS))})")
    params = dict(params)
    if cls is Sparse:
        nnz = params.pop("nnz", None)
        implied = "mask" not in params
        if implied:
            if data is None:
                raise IRError("sparse: needs the constant's data or a mask")
            params["mask"] = nonzero(data)
        if inner is not None:
            params["codebook"] = inner
        try:
            enc = Sparse(**params)
        except TypeError as e:
            raise IRError(f"encoding {name}: {e}") from None
        if nnz is not None and nnz != enc.nnz:
            raise IRError(f"sparse: nnz={nnz} but the {'data' if implied else 'mask'} has "
                          f"{enc.nnz} non-zeros")
        return enc
    if inner is not None:
        raise IRError(f"{name} cannot be followed by another encoding (only sparse can: "
                      f"'sparse(...) then codebook(...)')")
    try:
        return cls(**params)
    except TypeError as e:
        raise IRError(f"encoding {name}: {e}") from None
