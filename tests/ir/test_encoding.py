import numpy as np
import pytest

from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.encoding import (Codebook, Sparse, array_key, codebook_of, mask_of,
                                 positions_from_gaps, relative_gaps, split_codebook)
from shrinkc.ir.serialize import encoding_arrays
from shrinkc.ir.text import graph_diff, parse_graph, print_graph
from shrinkc.ir.verify import VerificationError, verify


def coded_graph():
    g = Graph("e")
    x = g.add_input(TensorType("f32", (1, 64)), "x")
    rng = np.random.default_rng(0)
    w = rng.choice(np.array([-0.5, 0.0, 0.25, 1.0], np.float32), size=(32, 64))
    wv = g.add_constant(w, "w")
    g.outputs = [g.add_node("linear", [x, wv]).output]
    return g, wv


def test_codebook_size_and_invariant():
    g, w = coded_graph()
    dense = graph_cost(g).param_bytes
    w.encoding = Codebook(bits=2)
    verify(g)
    assert w.nbytes == 32 * 64 * 2 // 8 + 4 * 4
    assert graph_cost(g).param_bytes == w.nbytes < dense / 15
    w.data = w.data + np.float32(0.001) * np.arange(64, dtype=np.float32)  # leaves the codebook
    with pytest.raises(VerificationError, match="%w stored as codebook\\(bits=2\\) has .* "
                                                "distinct values, more than 2\\*\\*2 = 4"):
        verify(g)


def test_split_codebook_is_exact_and_ordered():
    vals = np.array([[0.5, -1.0], [0.5, -0.0], [0.0, np.float32(1 / 3)]], np.float32)
    centroids, idx = split_codebook(vals)
    assert centroids[idx].tobytes() == vals.tobytes()  # -0.0 and 0.0 stay apart
    assert np.all(np.diff(centroids) >= 0) and centroids[0] == -1.0
    assert np.signbit(centroids[1:3]).tolist() == [False, True]  # 0.0, -0.0: bit order
    assert len(centroids) == 5 and idx.dtype == np.int64 and idx.shape == vals.shape


def test_sparse_keeps_its_mask_and_catches_a_revived_weight():
    g, w = coded_graph()
    w.encoding = Sparse.of(w.data, index_bits=8)
    nnz = int(np.count_nonzero(w.data))
    assert w.encoding.nnz == nnz and mask_of(w) is w.encoding.mask
    verify(g)
    # a kept weight that becomes exactly zero is fine: the mask, not the zeros, is the pattern
    kept = np.flatnonzero(w.encoding.mask)[3]
    w.data = w.data.copy()
    w.data.flat[kept] = 0.0
    verify(g)
    pruned = np.flatnonzero(~w.encoding.mask)[5]
    w.data.flat[pruned] = 0.01  # revived, while another went to zero: same count
    with pytest.raises(VerificationError, match=f"%w stored as sparse\\(index_bits=8, "
                       f"nnz={nnz}\\) has 1 non-zero value\\(s\\) at pruned positions "
                       f"\\(first at flat index {pruned}: 0.01; a pruned position holds "
                       f"\\+0.0\\)"):
        verify(g)
    with pytest.raises(ValueError, match="read-only"):
        w.encoding.mask[0, 0] = True  # masks are shared by clones: read-only


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_relative_gaps_with_fillers(bits):
    rng = np.random.default_rng(bits)
    mask = rng.random(3000) < 0.02
    mask[[0, 2999]] = [False, True]
    mask[100:700] = False  # a gap much wider than 2**bits
    gaps, filler = relative_gaps(mask, bits)
    assert gaps.min() >= 1 and gaps.max() <= 2 ** bits
    assert (np.cumsum(gaps) - 1)[-1] == 2999
    assert np.array_equal(positions_from_gaps(gaps, filler), np.flatnonzero(mask))
    assert (~filler).sum() == mask.sum()
    if bits <= 3:
        assert filler.sum() >= 600 // 2 ** bits
    # the paper's example (Han et al., Fig. 2): 3-bit gaps, non-zeros at 1, 4, 15
    m = np.zeros(16, bool)
    m[[1, 4, 15]] = True
    g, f = relative_gaps(m, 3)
    assert g.tolist() == [2, 3, 8, 3] and f.tolist() == [False, False, True, False]


def test_sparse_size_counts_entries_and_fillers():
    g, w = coded_graph()
    w.encoding = Sparse.of(w.data, index_bits=8)
    nnz = int(np.count_nonzero(w.data))
    assert w.nbytes == nnz * 4 + nnz  # no gap is wider than 256 here: no fillers
    w.encoding = Sparse.of(w.data, index_bits=1)
    n, fillers = w.encoding.entries()
    assert fillers > 0 and w.nbytes == n * 4 + -(-n // 8)
    verify(g)


def test_stacked_sparse_then_codebook():
    g, w = coded_graph()
    w.encoding = Sparse.of(w.data, index_bits=4, codebook=Codebook(bits=2))
    verify(g)
    assert codebook_of(w) == Codebook(bits=2)
    text = print_graph(g)
    nnz = w.encoding.nnz
    assert f"as sparse(index_bits=4, nnz={nnz}) then codebook(bits=2)" in text
    g2 = parse_graph(text, {"w": w.data})
    assert g2.constants["w"].encoding == w.encoding and graph_diff(g, g2) is None
    n, _ = w.encoding.entries()
    assert w.nbytes == -(-n * (4 + 2) // 8) + 3 * 4  # three kept values: -0.5, 0.25, 1.0
    w.data = np.where(w.encoding.mask, w.data + 0.125, 0).astype(np.float32)  # still 3 values
    verify(g)
    w.data = np.where(w.encoding.mask, w.data * np.arange(64, dtype=np.float32), 0)
    with pytest.raises(VerificationError, match="keeps values that has .* distinct values"):
        verify(g)


def test_encodings_round_trip_through_text_and_clone():
    g, w = coded_graph()
    w.encoding = Codebook(bits=2)
    text = print_graph(g)
    assert f"%w: f32[32,64] = const #{w.digest()} as codebook(bits=2)" in text
    g2 = parse_graph(text, {"w": w.data})
    assert g2.constants["w"].encoding == Codebook(bits=2) and graph_diff(g, g2) is None
    assert g.clone().constants["w"].encoding == Codebook(bits=2)


def test_a_mask_with_kept_zeros_is_named_and_saved():
    g, w = coded_graph()
    w.data[0, :3] = 0.0
    mask = w.data != 0
    mask[0, :3] = True  # three kept weights that are exactly zero
    w.encoding = Sparse(mask, index_bits=5)
    verify(g)
    text = print_graph(g)
    arrays = encoding_arrays(g)
    assert list(arrays) == [array_key("w", "mask")] == ["w@mask"]
    assert "mask=#" in text and f"nnz={mask.sum()}" in text
    g2 = parse_graph(text, {"w": w.data, **arrays})
    assert g2.constants["w"].encoding == w.encoding and graph_diff(g, g2) is None
    with pytest.raises(IRError, match="sparse mask of %w is #.* but no weights were given"):
        parse_graph(text, {"w": w.data})
    bad = arrays["w@mask"].copy()
    bad[1, 1] = not bad[1, 1]
    with pytest.raises(IRError, match="mask of %w does not match digest"):
        parse_graph(text, {"w": w.data, "w@mask": bad})
    # the graph with another mask differs, also in a structure-only comparison
    g3 = g.clone()
    g3.constants["w"].encoding = Sparse.of(w.data, index_bits=5)
    assert graph_diff(g, g3) is not None


def test_text_checks_the_pattern():
    from shrinkc.ir.graph import array_digest

    g, w = coded_graph()
    w.encoding = Sparse.of(w.data)
    nnz = w.encoding.nnz
    text = print_graph(g)
    revived = np.where(w.data == 0, np.float32(1.0), w.data)  # every pruned weight revived
    with pytest.raises(IRError, match=f"sparse: nnz={nnz} but the data has 2048 non-zeros"):
        parse_graph(text.replace(w.digest(), array_digest(revived)), {"w": revived})
    stacked = text.replace(f"nnz={nnz})", f"nnz={nnz}) then codebook(bits=1)")
    with pytest.raises(IRError, match="has 3 distinct values, more than 2\\*\\*1"):
        parse_graph(stacked, {"w": w.data})
    with pytest.raises(IRError, match="codebook cannot be followed by another encoding"):
        parse_graph(text.replace(f"sparse(index_bits=8, nnz={nnz})",
                                 "codebook(bits=2) then sparse(index_bits=2)"), {"w": w.data})


def test_bad_encodings_are_refused():
    g, w = coded_graph()
    text = print_graph(g).replace(f"#{w.digest()}", f"#{w.digest()} as zip(level=9)")
    with pytest.raises(IRError, match="unknown encoding 'zip'"):
        parse_graph(text, {"w": w.data})
    with pytest.raises(IRError, match="bits must be in 1..16"):
        Codebook(bits=0)
    with pytest.raises(IRError, match="index_bits must be in 1..16"):
        Sparse(np.ones(3, bool), index_bits=17)
