"""benchkit: the shared measurement and report pieces (no timing asserted)."""

from __future__ import annotations

import json

import numpy as np
import torch

from shrinkc.tools import benchkit as bk
from shrinkc.tools.bench import Timing


def _entry(name, ms, **kw):
    e = bk.Entry(name, **kw)
    for b, v in ms.items():
        e.latency[b] = Timing(list(v))
    return e


def test_ratios_use_the_fastest_backend():
    ref = _entry("ref", {"torch": [4.0, 4.0, 4.0]}, accuracy=0.9, params=100, macs=1000,
                 onnx_bytes=400, shrkz_bytes=500)
    e = _entry("e", {"torch": [2.0, 3.0, 2.5], "onnxruntime": [1.0, 1.0, 5.0]}, accuracy=0.88,
               params=10, macs=250, onnx_bytes=100, shrkz_bytes=40)
    assert e.best() == ("onnxruntime", 1.0) and e.size == 40
    r = bk.ratios(e, ref)
    assert r == {"params": 10.0, "macs": 4.0, "size": 10.0, "speedup": 4.0,
                 "accuracy_delta": r["accuracy_delta"]}
    assert abs(r["accuracy_delta"] - (-2.0)) < 1e-9
    assert bk.ratios(bk.Entry("none"), ref)["speedup"] is None


def test_accuracy_in_batches_or_one_static_batch_at_a_time():
    X = torch.arange(7, dtype=torch.float32).reshape(7, 1)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 1])
    calls = []

    def predict(xb):
        calls.append(len(xb))
        return np.stack([(xb[:, 0] % 2 == 0).float().numpy(), (xb[:, 0] % 2).numpy()], 1)

    assert bk.accuracy(predict, X, y) == 6 / 7 and calls == [7]
    calls.clear()
    assert bk.accuracy(predict, X, y, batch=3) == 6 / 7 and calls == [3, 3, 3]  # last padded


def test_latency_pool_times_round_robin_in_a_rotating_order():
    order = []
    pool = bk.LatencyPool(warmup=2)
    ta = pool.add(lambda: order.append("a"))
    tb = pool.add(lambda: order.append("b"))
    assert order == ["a", "a", "b", "b"]  # warm-up when added
    order.clear()
    pool.run(3)
    assert order == ["a", "b", "b", "a", "a", "b"]  # each first in turn
    assert len(ta.runs_ms) == len(tb.runs_ms) == 3


def test_reports_hold_every_entry():
    ref = _entry("ref", {"torch": [2.0]}, kind="reference", accuracy=0.9, params=10, macs=10,
                 onnx_bytes=10)
    e = _entry("e", {"torch": [1.0]}, accuracy=0.9, params=5, macs=5, onnx_bytes=5)
    missing = bk.Entry("later", status="not available: unknown pass 'x'")
    text = bk.render_terminal([ref, e, missing], {"ref": ref}, ["torch"], baseline=ref)
    assert "2.00×" in text and "not available: unknown pass 'x'" in text
    md = bk.markdown([ref, e, missing], {"ref": ref}, ["torch"], baseline=ref, notes=["n"])
    assert md.count("\n| ") == 3 and md.startswith("| model |") and md.rstrip().endswith("n")
    data = json.loads(bk.to_json([ref, e, missing], threads=1, repeat=1, warmup=0))
    assert [d["name"] for d in data["entries"]] == ["ref", "e", "later"]
    assert data["entries"][1]["latency"]["torch"]["runs_ms"] == [1.0]
