"""Compressed storage (``.shrkz``): Deep Compression's CSR + Huffman coding, checksummed.

Storage only: loading gives back the dense graph (``Value.data``) with its encodings, and
every backend runs that dense graph. What the format saves is bytes on disk and on the
wire; a sparse-aware runtime could also skip the pruned multiply-accumulates
(``storage_report`` says how many), which no backend here does.

Each constant is stored by its encoding (Han et al., ICLR 2016):

* none: its raw little-endian bytes;
* ``sparse``: CSR with relative indices — the kept values in row-major order, each with
  its distance from the previous one, ``1..2**index_bits``; a wider gap inserts a filler
  entry (``encoding.relative_gaps``). The gaps are Huffman-coded, the values raw (a filler
  is +0.0; kept values that are +0.0 are listed apart, so the mask comes back exactly);
* ``codebook``: the table of distinct values raw, one Huffman-coded index per element;
* ``sparse`` then ``codebook``: Huffman-coded gaps, the table, and Huffman-coded indices
  of the kept values, with one extra symbol for the fillers.

Huffman codes are canonical (``bitarray.util.canonical_huffman``, decoded in C by
``canonical_decode``); each coded stream starts with its code table: the code length of
every symbol, 4 bits each (``huffman_table``), from which both sides build the same
canonical code.

File layout (little-endian)::

    b"SHRKZ\\x00\\x01\\n"            magic, format version 1
    u32 H, H bytes, u32 CRC-32     header: zlib-compressed JSON with every section's
                                   offset, length, CRC-32 and how to decode it
    sections, back to back         "graph": the text IR (zlib); "const:NAME" per constant

No pickle; nothing is executed. ``load_compressed`` checks the magic, every CRC-32 and
every length, then the text form's digests of each decoded constant (and mask), so a
corrupt or truncated file is one IRError naming the section, never a different model.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .encoding import Codebook, Sparse, _bits_view, array_key, positions_from_gaps, \
    relative_gaps, split_codebook
from .graph import Graph, IRError, Value
from .types import to_numpy_dtype

MAGIC = b"SHRKZ\x00\x01\n"
VERSION = 1
SUFFIX = ".shrkz"


# ============================================================================ Huffman
def _canonical(lengths: dict[int, int]) -> tuple[dict, list[int], list[int]]:
    """The canonical code for ``symbol -> code length`` (symbols of one length in increasing
    order, as DEFLATE): ``(code dict for bitarray.encode, count, symbol)``."""
    from bitarray.util import int2ba

    order = sorted(lengths, key=lambda sym: (lengths[sym], sym))
    top = max(lengths.values())
    count = [0] * (top + 1)
    for sym in order:
        count[lengths[sym]] += 1
    code, value, prev = {}, 0, lengths[order[0]]
    for sym in order:
        value <<= lengths[sym] - prev
        prev = lengths[sym]
        code[sym] = int2ba(value, length=prev, endian="big")
        value += 1
    return code, count, order


def _pack_table(lengths: dict[int, int]) -> bytes:
    """A canonical code as its code lengths: u8 mode, u32 alphabet size A (largest symbol
    + 1), then the length of every symbol 0..A-1 (0: unused) in 4 bits (mode 1) or 8 bits
    (mode 2) — or, when fewer bytes, u32 S and S pairs (u32 symbol, u8 length) (mode 3)."""
    alphabet = max(lengths) + 1
    if max(lengths.values()) <= 15:
        nib = np.zeros(alphabet + alphabet % 2, np.uint8)
        for sym, ln in lengths.items():
            nib[sym] = ln
        dense = struct.pack("<BI", 1, alphabet) + (nib[0::2] << 4 | nib[1::2]).tobytes()
    else:
        arr = np.zeros(alphabet, np.uint8)
        for sym, ln in lengths.items():
            arr[sym] = ln
        dense = struct.pack("<BI", 2, alphabet) + arr.tobytes()
    syms = sorted(lengths)
    pairs = struct.pack("<BI", 3, len(syms)) + b"".join(
        struct.pack("<IB", sym, lengths[sym]) for sym in syms)
    return dense if len(dense) <= len(pairs) else pairs


def huffman_table(data: bytes) -> tuple[dict[int, int], int]:
    """``(symbol -> code length, table bytes)`` of a stream written by ``huffman_encode``."""
    mode, n = struct.unpack_from("<BI", data, 0)
    if mode == 1:
        raw = np.frombuffer(data, np.uint8, (n + 1) // 2, 5)
        lens = np.stack([raw >> 4, raw & 15], 1).reshape(-1)[:n]
        end = 5 + (n + 1) // 2
    elif mode == 2:
        lens, end = np.frombuffer(data, np.uint8, n, 5), 5 + n
    elif mode == 3:
        pairs = np.frombuffer(data, np.dtype([("s", "<u4"), ("l", "u1")]), n, 5)
        out = {int(a): int(b) for a, b in zip(pairs["s"], pairs["l"])}
        return out, 5 + 5 * n
    else:
        raise ValueError(f"bad code table mode {mode}")
    return {int(sym): int(ln) for sym, ln in enumerate(lens) if ln}, end


def huffman_encode(symbols: np.ndarray) -> tuple[bytes, dict]:
    """Canonical Huffman coding of non-negative integer ``symbols``: (code table + bits,
    meta ``{"n": symbols, "bits": stream bits, "table": table bytes}``). The code lengths
    are ``bitarray.util.canonical_huffman``'s (optimal); the table stores only them."""
    from bitarray import bitarray
    from bitarray.util import canonical_huffman

    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0:
        return b"", {"n": 0, "bits": 0, "table": 0}
    uniq, freq = np.unique(symbols, return_counts=True)
    optimal, _, _ = canonical_huffman(dict(zip(uniq.tolist(), freq.tolist())))
    lengths = {int(sym): len(c) for sym, c in optimal.items()}
    code, _, _ = _canonical(lengths)
    bits = bitarray(endian="big")
    bits.encode(code, symbols.tolist())
    table = _pack_table(lengths)
    return table + bits.tobytes(), {"n": int(symbols.size), "bits": len(bits),
                                    "table": len(table)}


def huffman_decode(data: bytes, meta: dict) -> np.ndarray:
    """Inverse of ``huffman_encode`` (int64 symbols); ValueError on a malformed stream."""
    from bitarray import bitarray
    from bitarray.util import canonical_decode

    n, nbits = int(meta["n"]), int(meta["bits"])
    if n == 0:
        return np.zeros(0, np.int64)
    lengths, start = huffman_table(data)
    if not lengths or min(lengths.values()) < 1:
        raise ValueError("empty code table")
    _, count, symbol = _canonical(lengths)
    if start != int(meta["table"]) or len(data) - start != math.ceil(nbits / 8):
        raise ValueError(f"{len(data) - start} bytes for a {nbits}-bit stream")
    bits = bitarray(endian="big")
    bits.frombytes(data[start:])
    del bits[nbits:]
    out = np.fromiter(canonical_decode(bits, count, symbol), np.int64)
    if out.size != n:
        raise ValueError(f"decoded {out.size} symbols, expected {n}")
    return out


def code_lengths(symbols: np.ndarray) -> dict[int, int]:
    """Code length per symbol of the canonical Huffman code ``huffman_encode`` uses."""
    data, _ = huffman_encode(symbols)
    return huffman_table(data)[0]


# ============================================================================ arrays
def _raw(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    a = _bits_view(a.view(np.uint8) if a.dtype == np.bool_ else a)  # bf16 too, by its bits
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def _from_raw(buf: bytes, dtype: str, count: int) -> np.ndarray:
    npdt = np.dtype(to_numpy_dtype(dtype))
    if len(buf) != count * npdt.itemsize:
        raise ValueError(f"{len(buf)} bytes for {count} {dtype} values")
    if npdt == np.bool_:
        return np.frombuffer(buf, np.uint8).astype(bool)
    raw = np.frombuffer(buf, np.dtype(f"<u{npdt.itemsize}")).astype(f"=u{npdt.itemsize}")
    return raw.view(npdt).copy()


class _Section:
    """A section being written: named byte streams and the metadata to read them."""

    def __init__(self, name: str, kind: str, **meta):
        self.name, self.kind, self.meta = name, kind, meta
        self.streams: list[tuple[str, bytes, dict]] = []

    def add(self, stream: str, data: bytes, **meta) -> None:
        self.streams.append((stream, data, meta))

    def payload(self) -> tuple[bytes, dict]:
        out, streams, offset = [], {}, 0
        for name, data, meta in self.streams:
            streams[name] = {"offset": offset, "length": len(data), **meta}
            out.append(data)
            offset += len(data)
        return b"".join(out), {"kind": self.kind, **self.meta, "streams": streams}


def encode_constant(v: Value) -> _Section:
    """The section that stores constant ``v`` by its encoding."""
    enc = v.encoding
    sec = _Section(f"const:{v.name}", "raw", dtype=v.dtype, shape=list(v.shape))
    data = v.data
    if isinstance(enc, Sparse):
        gaps, filler = relative_gaps(enc.mask, enc.index_bits)
        g_bytes, g_meta = huffman_encode(gaps - 1)
        kept = data[enc.mask]
        if enc.codebook is None:
            sec.kind = "csr"
            values = np.zeros(len(gaps), data.dtype)
            values[~filler] = kept
            zero = _bits_view(values) == 0
            kept_zeros = np.flatnonzero(zero & ~filler).astype(np.uint32)
            sec.meta.update(index_bits=enc.index_bits, entries=len(gaps))
            sec.add("gaps", g_bytes, huffman=g_meta)
            sec.add("values", _raw(values))
            sec.add("kept_zeros", _raw(kept_zeros), count=len(kept_zeros))
        else:
            sec.kind = "csr-codebook"
            table, idx = split_codebook(kept)
            symbols = np.full(len(gaps), len(table), np.int64)  # the filler symbol: k
            symbols[~filler] = idx
            i_bytes, i_meta = huffman_encode(symbols)
            sec.meta.update(index_bits=enc.index_bits, bits=enc.codebook.bits,
                            entries=len(gaps), k=len(table))
            sec.add("gaps", g_bytes, huffman=g_meta)
            sec.add("table", _raw(table))
            sec.add("indices", i_bytes, huffman=i_meta)
    elif isinstance(enc, Codebook):
        sec.kind = "codebook"
        table, idx = split_codebook(data)
        i_bytes, i_meta = huffman_encode(idx)
        sec.meta.update(bits=enc.bits, k=len(table))
        sec.add("table", _raw(table))
        sec.add("indices", i_bytes, huffman=i_meta)
    else:
        sec.add("data", _raw(data))
    return sec


def decode_constant(meta: dict, payload: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """``(data, mask or None)`` from a constant's section; ValueError if malformed."""
    dtype, shape = meta["dtype"], tuple(int(d) for d in meta["shape"])
    numel = math.prod(shape)
    streams = meta["streams"]

    def stream(name: str) -> tuple[bytes, dict]:
        s = streams[name]
        start, length = int(s["offset"]), int(s["length"])
        if start < 0 or length < 0 or start + length > len(payload):
            raise ValueError(f"stream {name} lies outside the section")
        return payload[start:start + length], s

    kind = meta["kind"]
    if kind == "raw":
        return _from_raw(stream("data")[0], dtype, numel).reshape(shape), None
    if kind == "codebook":
        k = int(meta["k"])
        table = _from_raw(stream("table")[0], dtype, k)
        ib, im = stream("indices")
        idx = huffman_decode(ib, im["huffman"])
        if idx.size != numel or (idx.size and (idx.min() < 0 or idx.max() >= k)):
            raise ValueError("codebook indices out of range")
        return table[idx].reshape(shape), None
    if kind not in ("csr", "csr-codebook"):
        raise ValueError(f"unknown section kind {kind!r}")
    entries, step = int(meta["entries"]), 1 << int(meta["index_bits"])
    gb, gm = stream("gaps")
    gaps = huffman_decode(gb, gm["huffman"]) + 1
    if gaps.size != entries or (entries and (gaps.min() < 1 or gaps.max() > step)):
        raise ValueError("gaps out of range")
    if kind == "csr":
        values = _from_raw(stream("values")[0], dtype, entries)
        kb, km = stream("kept_zeros")
        kept_zeros = _from_raw(kb, "i32", int(km["count"])).view(np.uint32)
        filler = _bits_view(values) == 0
        if kept_zeros.size and kept_zeros.max() >= entries:
            raise ValueError("kept-zero entries out of range")
        filler[kept_zeros] = False
    else:
        k = int(meta["k"])
        table = _from_raw(stream("table")[0], dtype, k)
        ib, im = stream("indices")
        symbols = huffman_decode(ib, im["huffman"])
        if symbols.size != entries or (entries and (symbols.min() < 0 or symbols.max() > k)):
            raise ValueError("codebook indices out of range")
        filler = symbols == k
        values = np.zeros(entries, table.dtype)
        values[~filler] = table[symbols[~filler]]
    pos = positions_from_gaps(gaps, filler)
    if pos.size and pos[-1] >= numel:
        raise ValueError("positions beyond the tensor")
    data = np.zeros(numel, np.dtype(to_numpy_dtype(dtype)))
    mask = np.zeros(numel, bool)
    data[pos] = values[~filler]
    mask[pos] = True
    return data.reshape(shape), mask.reshape(shape)


# ============================================================================ files
def compressed_bytes(graph: Graph) -> bytes:
    """The ``.shrkz`` bytes of ``graph``."""
    from .text import print_graph

    sections = [("graph", zlib.compress(print_graph(graph).encode(), 9), {"kind": "text-zlib"})]
    for v in graph.constants.values():
        payload, meta = encode_constant(v).payload()
        sections.append((f"const:{v.name}", payload, meta))
    index, offset = [], 0
    for name, payload, meta in sections:
        index.append({"name": name, "offset": offset, "length": len(payload),
                      "crc32": zlib.crc32(payload), **meta})
        offset += len(payload)
    header = zlib.compress(json.dumps({"format": "shrkz", "version": VERSION,
                                       "graph": graph.name, "sections": index},
                                      separators=(",", ":")).encode(), 9)
    return b"".join([MAGIC, struct.pack("<I", len(header)), header,
                     struct.pack("<I", zlib.crc32(header))] + [p for _, p, _ in sections])


def save_compressed(graph: Graph, path: str | Path) -> Path:
    """Write ``graph`` as one ``.shrkz`` file (atomically). Returns the path."""
    from .files import atomic_write_bytes, make_dirs

    path = Path(path)
    if path.suffix != SUFFIX:
        raise IRError(f"{path}: a compressed graph's file name ends in {SUFFIX}")
    data = compressed_bytes(graph)
    make_dirs(path.parent, "save: folder")
    atomic_write_bytes(path, data, "save")
    return path


def _fail(path, section: str, why: str):
    raise IRError(f"{path}: section '{section}' {why}")


def read_sections(data: bytes, path: str = "<bytes>") -> tuple[dict, dict[str, bytes]]:
    """The header and the checked payload of every section (CRC-32 and lengths)."""
    if len(data) < len(MAGIC) + 4:
        _fail(path, "header", "is truncated (the file is too short)")
    if data[:5] != MAGIC[:5]:
        raise IRError(f"{path}: not a shrinkc compressed file (bad magic)")
    if data[:len(MAGIC)] != MAGIC:
        raise IRError(f"{path}: unsupported .shrkz version {data[5:7].hex()} (this shrinkc "
                      f"reads version {VERSION})")
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if start + hlen + 4 > len(data):
        _fail(path, "header", f"is truncated ({hlen} bytes announced, "
              f"{max(0, len(data) - start - 4)} present)")
    header_bytes = data[start:start + hlen]
    (crc,) = struct.unpack_from("<I", data, start + hlen)
    if zlib.crc32(header_bytes) != crc:
        _fail(path, "header", "is corrupt (CRC-32 mismatch)")
    try:
        header = json.loads(zlib.decompress(header_bytes))
        sections = header["sections"]
    except (zlib.error, ValueError, KeyError, TypeError) as e:
        _fail(path, "header", f"is malformed: {e}")
    base = start + hlen + 4
    out: dict[str, bytes] = {}
    end = base
    for s in sections:
        name = s["name"]
        lo, n = base + int(s["offset"]), int(s["length"])
        if lo + n > len(data):
            _fail(path, name, f"is truncated ({n} bytes at offset {lo}, the file has "
                  f"{len(data)})")
        payload = data[lo:lo + n]
        if zlib.crc32(payload) != int(s["crc32"]):
            _fail(path, name, "is corrupt (CRC-32 mismatch)")
        out[name] = payload
        end = max(end, lo + n)
    if end != len(data):
        raise IRError(f"{path}: {len(data) - end} unexpected bytes after the last section")
    return header, out


def load_compressed_bytes(data: bytes, path: str = "<bytes>") -> Graph:
    from .text import parse_graph

    header, payloads = read_sections(data, path)
    metas = {s["name"]: s for s in header["sections"]}
    if "graph" not in payloads:
        _fail(path, "graph", "is missing")
    try:
        text = zlib.decompress(payloads["graph"]).decode()
    except (zlib.error, UnicodeDecodeError) as e:
        _fail(path, "graph", f"cannot be decompressed: {e}")
    weights: dict[str, np.ndarray] = {}
    for name, payload in payloads.items():
        if not name.startswith("const:"):
            continue
        cname = name[len("const:"):]
        try:
            arr, mask = decode_constant(metas[name], payload)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            _fail(path, name, f"cannot be decoded: {e}")
        weights[cname] = arr
        if mask is not None:
            weights[array_key(cname, "mask")] = mask
    try:
        g = parse_graph(text, weights)
    except IRError as e:
        raise IRError(f"{path}: section 'graph': {e}") from None
    for cname, v in g.constants.items():
        w = weights.get(cname)  # small constants are inline in the text: the same bits
        if w is None or w.tobytes() != np.ascontiguousarray(v.data).tobytes():
            _fail(path, f"const:{cname}", "is missing" if w is None else
                  "decodes to other values than the text's inline constant")
        m = weights.get(array_key(cname, "mask"))  # a sparse mask the text does not name
        if isinstance(v.encoding, Sparse) and m is not None and not np.array_equal(
                m, v.encoding.mask):
            _fail(path, f"const:{cname}", "decodes to another sparsity pattern than the text")
    return g


def load_compressed(path: str | Path) -> Graph:
    """Read a ``.shrkz`` file written by ``save_compressed`` (bit for bit the same graph)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IRError(f"{path}: cannot read: {e}") from None
    return load_compressed_bytes(data, str(path))


# ============================================================================ report
@dataclass
class StorageRow:
    """Bytes of one constant at each stage of the pipeline."""

    name: str
    encoding: str
    dense: int  # its dense bytes (numel x itemsize)
    pruned: int  # CSR with fixed-width relative indices and raw values (if sparse)
    shared: int  # plus fixed-width codebook indices and the table (if shared)
    huffman: int  # the bytes of its section in the file (Huffman-coded gaps and indices)


@dataclass
class StorageReport:
    """Deep Compression's bytes per stage: dense → pruned (CSR) → shared → Huffman."""

    rows: list[StorageRow] = field(default_factory=list)
    file_bytes: int = 0  # the whole .shrkz (header and text IR included)
    macs: int = 0  # multiply-accumulates of the dense graph (what the backends run)
    sparse_macs: int = 0  # those a sparse-aware runtime would do (pruned weights skipped)

    def total(self, stage: str) -> int:
        return sum(getattr(r, stage) for r in self.rows)

    def text(self) -> str:
        from math import isfinite

        dense = self.total("dense")
        lines = [f"{'stage':<28}{'bytes':>14}{'ratio':>10}"]
        for label, stage in (("dense", "dense"), ("pruned (CSR, relative idx)", "pruned"),
                             ("shared (codebook indices)", "shared"),
                             ("Huffman-coded", "huffman")):
            b = self.total(stage)
            r = dense / b if b else float("inf")
            lines.append(f"{label:<28}{b:>14,}{(f'{r:.1f}x' if isfinite(r) else '-'):>10}")
        r = dense / self.file_bytes if self.file_bytes else 0.0
        lines.append(f"{'.shrkz file (with IR text)':<28}{self.file_bytes:>14,}{r:>9.1f}x")
        frac = self.sparse_macs / self.macs if self.macs else 1.0
        lines.append(
            f"storage only: the backends run the dense graph ({self.macs:,} MACs); a "
            f"sparse-aware runtime would do {self.sparse_macs:,} ({frac:.1%}) and read the "
            f"{self.total('huffman'):,} coded bytes instead of {dense:,}.")
        return "\n".join(lines)


def _stage_bytes(v: Value) -> tuple[int, int]:
    """(pruned, shared) fixed-width bytes of constant ``v``."""
    enc = v.encoding
    dense = v.type.nbytes
    if isinstance(enc, Sparse):
        n, _ = enc.entries()
        pruned = math.ceil(n * (enc.index_bits + 8 * v.type.itemsize) / 8)
        return pruned, (v.nbytes if enc.codebook is not None else pruned)
    if isinstance(enc, Codebook):
        return dense, v.nbytes
    return dense, dense


def storage_report(graph: Graph) -> StorageReport:
    """Bytes per stage for every constant, the ``.shrkz`` size, and the MACs a sparse-aware
    runtime would skip."""
    from .cost import node_macs

    rep = StorageReport()
    for v in graph.constants.values():
        payload, _ = encode_constant(v).payload()
        pruned, shared = _stage_bytes(v)
        rep.rows.append(StorageRow(v.name, str(v.encoding) if v.encoding else "dense",
                                   v.type.nbytes, pruned, shared, len(payload)))
    rep.file_bytes = len(compressed_bytes(graph))
    for node in graph.nodes:
        m = node_macs(node)
        rep.macs += m
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if m and w is not None and isinstance(w.encoding, Sparse) and w.type.numel:
            rep.sparse_macs += round(m * w.encoding.nnz / w.type.numel)
        else:
            rep.sparse_macs += m
    return rep


__all__ = ["MAGIC", "SUFFIX", "StorageReport", "StorageRow", "code_lengths",
           "compressed_bytes", "decode_constant", "encode_constant", "huffman_decode",
           "huffman_encode", "huffman_table", "load_compressed", "save_compressed",
           "storage_report"]
