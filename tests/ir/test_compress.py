"""The .shrkz format: CSR with relative indices + canonical Huffman, checksummed sections."""

import heapq
import zlib

import ml_dtypes
import numpy as np
import pytest

from shrinkc import load, optimize, save
from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.compress import (MAGIC, code_lengths, compressed_bytes, encode_constant,
                                 huffman_decode, huffman_encode, huffman_table,
                                 load_compressed_bytes,
                                 read_sections, storage_report)
from shrinkc.ir.encoding import Codebook, Sparse
from shrinkc.ir.text import graph_diff
from suite import SMALL_CONFIGS


def assert_bit_equal(a: Graph, b: Graph) -> None:
    assert graph_diff(a, b) is None
    for name, v in a.constants.items():
        w = b.constants[name]
        assert w.data.dtype == v.data.dtype and w.data.tobytes() == v.data.tobytes(), name
        assert w.encoding == v.encoding, name


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
@pytest.mark.parametrize("pipeline", ["", "prune-weights(sparsity=0.8),share-weights(bits=4)"])
def test_round_trip_is_bit_exact_on_every_reference_model(name, pipeline, reference_graphs,
                                                          tmp_path):
    g = reference_graphs(name)[2]
    if pipeline:
        g = optimize(g, pipeline)
    p = save(g, tmp_path / f"{name}.shrkz", compress=True)
    assert p.suffix == ".shrkz" and p.read_bytes()[:8] == MAGIC
    assert_bit_equal(g, load(p))


def _mixed_graph():
    """Every encoding: dense, sparse (with a kept zero and -0.0), codebook, stacked, with a
    gap wider than the index width, in several dtypes."""
    g = Graph("mixed")
    x = g.add_input(TensorType("f32", (1, 64)), "x")
    rng = np.random.default_rng(0)
    w = np.where(rng.random((16, 64)) < 0.1, rng.standard_normal((16, 64)), 0).astype(np.float32)
    w[3, 10:60] = 0.0  # a gap of 50 > 2**3
    w[0, 1] = -0.0  # a kept -0.0: a value, by its bits
    mask = Sparse.of(w).mask.copy()
    mask[0, 0], w[0, 0] = True, 0.0  # a kept +0.0
    ws = g.add_constant(w, "sparse_raw")
    ws.encoding = Sparse(mask, index_bits=3)
    levels = np.array([-0.5, 0.125, 0.75], np.float32)
    c = levels[rng.integers(0, 3, (16, 16))]
    wc = g.add_constant(c, "codebook")
    wc.encoding = Codebook(bits=2)
    s = np.where(rng.random((8, 16)) < 0.2, levels[rng.integers(0, 3, (8, 16))], 0)
    s = s.astype(np.float32)
    wsc = g.add_constant(s, "stacked")
    wsc.encoding = Sparse.of(s, index_bits=2, codebook=Codebook(bits=2))
    half = g.add_constant(np.where(rng.random(8) < 0.5, rng.standard_normal(8), 0)
                          .astype(np.float16), "half")
    half.encoding = Sparse.of(half.data, index_bits=1)
    bf = g.add_constant(levels[rng.integers(0, 3, 8)].astype(ml_dtypes.bfloat16), "bf")
    bf.encoding = Codebook(bits=2)
    ints = g.add_constant(np.arange(8, dtype=np.int64) - 3, "ints")
    empty = g.add_constant(np.zeros((4, 4), np.float32), "empty")
    empty.encoding = Sparse.of(empty.data)
    y = g.add_node("linear", [x, ws]).output
    y = g.add_node("linear", [y, wc]).output
    y = g.add_node("linear", [y, wsc]).output
    y = g.add_node("add", [y, g.add_node("cast", [half], {"dtype": "f32"}).output]).output
    y = g.add_node("add", [y, g.add_node("cast", [bf], {"dtype": "f32"}).output]).output
    y = g.add_node("add", [y, g.add_node("cast", [ints], {"dtype": "f32"}).output]).output
    g.outputs = [y, g.add_node("relu", [empty]).output]
    return g


def test_every_encoding_round_trips_exactly(tmp_path):
    g = _mixed_graph()
    g2 = load(save(g, tmp_path / "m.shrkz"))
    assert_bit_equal(g, g2)
    assert np.signbit(g2.constants["sparse_raw"].data[0, 1])
    assert g2.constants["sparse_raw"].encoding.mask[0, :2].all()


def test_csr_gaps_wider_than_the_index_insert_fillers():
    g = _mixed_graph()
    v = g.constants["sparse_raw"]
    payload, meta = encode_constant(v).payload()
    n, fillers = v.encoding.entries()
    assert fillers >= 50 // 8 and meta["entries"] == n == v.encoding.nnz + fillers
    assert meta["streams"]["kept_zeros"]["count"] == 1  # the kept +0.0 (-0.0 has bits)
    gaps = meta["streams"]["gaps"]
    lengths, _ = huffman_table(payload[gaps["offset"]:gaps["offset"] + gaps["length"]])
    assert max(lengths) <= 2 ** 3 - 1  # gaps 1..8 stored as 0..7


def _optimal_cost(freqs: list[int]) -> int:
    """Total bits of an optimal prefix code (Huffman's merge, written out)."""
    if len(freqs) == 1:
        return freqs[0]
    heap = list(freqs)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def test_huffman_code_is_optimal_on_known_frequencies():
    # CLRS's example: a:45 b:13 c:12 d:16 e:9 f:5 -> 224 bits, a gets 1 bit, f and e 4
    freq = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    symbols = np.repeat(list(freq), list(freq.values()))
    lengths = code_lengths(symbols)
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    data, meta = huffman_encode(np.random.default_rng(0).permutation(symbols))
    assert meta["bits"] == 224 and len(data) - meta["table"] == 28
    rng = np.random.default_rng(1)
    for _ in range(20):
        f = rng.integers(1, 1000, rng.integers(1, 40)).tolist()
        s = np.repeat(np.arange(len(f)), f)
        data, meta = huffman_encode(rng.permutation(s))
        assert meta["bits"] == _optimal_cost(f)
        lens = code_lengths(s)
        assert sum(2.0 ** -ln for ln in lens.values()) <= 1.0  # Kraft
        assert np.array_equal(np.sort(huffman_decode(data, meta)), s)


def test_huffman_round_trip_and_single_symbol():
    s = np.array([7] * 10)
    data, meta = huffman_encode(s)
    assert meta["bits"] == 10 and np.array_equal(huffman_decode(data, meta), s)
    data, meta = huffman_encode(np.zeros(0, np.int64))
    assert data == b"" and huffman_decode(data, meta).size == 0


def _sections(blob: bytes) -> dict:
    header, _ = read_sections(blob)
    start = len(MAGIC) + 4 + int.from_bytes(blob[8:12], "little") + 4
    return {s["name"]: (start + s["offset"], s["length"]) for s in header["sections"]}


@pytest.mark.parametrize("section", ["graph", "const:sparse_raw", "const:codebook",
                                     "const:stacked", "const:ints"])
def test_a_corrupt_section_is_named(section, tmp_path):
    blob = bytearray(compressed_bytes(_mixed_graph()))
    offset, length = _sections(bytes(blob))[section]
    blob[offset + length // 2] ^= 0x40
    p = tmp_path / "c.shrkz"
    p.write_bytes(bytes(blob))
    with pytest.raises(IRError, match=f"c.shrkz: section '{section}' is corrupt \\(CRC-32"):
        load(p)


def test_truncated_and_foreign_files(tmp_path):
    blob = compressed_bytes(_mixed_graph())
    secs = _sections(blob)
    last = max((k for k in secs if secs[k][1]), key=lambda k: secs[k][0])  # non-empty
    p = tmp_path / "t.shrkz"
    p.write_bytes(blob[:-3])
    with pytest.raises(IRError, match=f"t.shrkz: section '{last}' is truncated"):
        load(p)
    p.write_bytes(blob[:20])
    with pytest.raises(IRError, match="t.shrkz: section 'header' is truncated"):
        load(p)
    p.write_bytes(blob + b"xx")
    with pytest.raises(IRError, match="2 unexpected bytes after the last section"):
        load(p)
    head = bytearray(blob)
    head[14] ^= 1  # inside the header
    p.write_bytes(bytes(head))
    with pytest.raises(IRError, match="section 'header' is corrupt"):
        load(p)
    p.write_bytes(b"SHRKZ\x00\x09\n" + blob[8:])
    with pytest.raises(IRError, match="unsupported .shrkz version"):
        load(p)


def _forge(blob: bytes, g: Graph, name: str) -> bytes:
    """``blob`` with constant ``name``'s section re-encoded from other data, every length
    and CRC-32 made consistent."""
    import json
    import struct

    header, payloads = read_sections(blob)
    other = g.clone()
    other.constants[name].data = other.constants[name].data * 2
    payloads[f"const:{name}"] = encode_constant(other.constants[name]).payload()[0]
    off = 0
    for s in header["sections"]:
        s["offset"], s["length"] = off, len(payloads[s["name"]])
        s["crc32"] = zlib.crc32(payloads[s["name"]])
        off += s["length"]
    hb = zlib.compress(json.dumps(header).encode())
    return (MAGIC + struct.pack("<I", len(hb)) + hb + struct.pack("<I", zlib.crc32(hb))
            + b"".join(payloads[s["name"]] for s in header["sections"]))


def test_a_consistent_but_wrong_section_is_caught():
    """A section rewritten with valid CRCs but other data: the text's digest catches it (and
    for a small constant, inline in the text, the comparison with the inline values)."""
    g = _mixed_graph()
    blob = compressed_bytes(g)
    with pytest.raises(IRError, match="section 'graph': line .*%codebook do not match digest"):
        load_compressed_bytes(_forge(blob, g, "codebook"))
    with pytest.raises(IRError, match="section 'const:ints' decodes to other values than the "
                                      "text's inline constant"):
        load_compressed_bytes(_forge(blob, g, "ints"))


def test_save_names_and_report(tmp_path):
    g = _mixed_graph()
    with pytest.raises(IRError, match="ends in .shrkz"):
        save(g, tmp_path / "m.shrk", compress=True)
    rep = storage_report(g)
    assert rep.total("dense") == sum(v.type.nbytes for v in g.constants.values())
    assert rep.total("huffman") < rep.total("dense")
    assert rep.file_bytes == len(compressed_bytes(g))
    text = rep.text()
    assert "storage only: the backends run the dense graph" in text
    assert rep.sparse_macs < rep.macs
