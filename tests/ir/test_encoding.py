import numpy as np
import pytest

from shrinkc.ir import Graph, IRError, TensorType
from shrinkc.ir.cost import graph_cost
from shrinkc.ir.encoding import Codebook, Sparse
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


def test_sparse_size_counts_nonzeros():
    g, w = coded_graph()
    w.encoding = Sparse(index_bits=8)
    nnz = int(np.count_nonzero(w.data))
    assert w.nbytes == nnz * 4 + nnz + 33 * 4
    verify(g)


def test_encodings_round_trip_through_text_and_clone():
    g, w = coded_graph()
    w.encoding = Codebook(bits=2)
    text = print_graph(g)
    assert f"%w: f32[32,64] = const #{w.digest()} as codebook(bits=2)" in text
    g2 = parse_graph(text, {"w": w.data})
    assert g2.constants["w"].encoding == Codebook(bits=2) and graph_diff(g, g2) is None
    assert g.clone().constants["w"].encoding == Codebook(bits=2)


def test_bad_encodings_are_refused():
    g, w = coded_graph()
    text = print_graph(g).replace(f"#{w.digest()}", f"#{w.digest()} as zip(level=9)")
    with pytest.raises(IRError, match="unknown encoding 'zip'"):
        parse_graph(text, {"w": w.data})
    with pytest.raises(IRError, match="bits must be in 1..16"):
        Codebook(bits=0)
    with pytest.raises(IRError, match="index_bits must be"):
        Sparse(index_bits=7)
