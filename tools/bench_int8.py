"""int8 on TVM vs fp32 on TVM (both untuned), for a small conv-heavy model.

    python -m shrinkc.tools.bench_int8 [--repeat 30] [--channels 64] [--size 32]

The QDQ graph comes from the ``quantize`` pass (min/max calibration on two random batches:
u8 activations, i8 per-channel weights, int32 biases; each conv's output quantized before
its ReLU, which the quantize absorbs). The benchmark builds the float graph (fp32), the QDQ
graph lowered as float Q/DQ arithmetic (``int8=False``, what a QDQ graph costs without
integer kernels) and the QDQ graph with integer compute, and reports medians of ``repeat``
runs each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from ..ir.graph import Graph
from ..ir.interpreter import run
from ..passes import optimize


# ---------------------------------------------------------------------------- benchmark
def conv_model(channels: int = 64, size: int = 32, layers: int = 3, seed: int = 0) -> Graph:
    """``layers`` 3×3 convs (``channels`` channels, padding 1, bias, ReLU) on a 1×C×size×size
    input: the conv-heavy model of the benchmark."""
    rng = np.random.default_rng(seed)
    g = Graph("convs")
    v = g.add_input(_tt("f32", (1, channels, size, size)), "x")
    for i in range(layers):
        w = g.add_constant((rng.standard_normal((channels, channels, 3, 3)) * 0.05
                            ).astype(np.float32), f"conv{i}.weight")
        b = g.add_constant((rng.standard_normal(channels) * 0.1).astype(np.float32),
                           f"conv{i}.bias")
        v = g.add_node("conv2d", [v, w, b], {"padding": (1, 1)}, loc=f"conv{i}").output
        v = g.add_node("relu", [v], loc=f"relu{i}").output
    g.outputs = [v]
    return g


def _tt(dtype: str, shape):
    from ..ir.types import TensorType

    return TensorType(dtype, tuple(shape))


def _median_ms(module, x: np.ndarray, warmup: int, repeat: int) -> float:
    dev = module.to_device([x])
    for _ in range(warmup):
        module.run_device(dev)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        module.run_device(dev).numpy()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(channels: int = 64, size: int = 32, layers: int = 3, warmup: int = 5,
          repeat: int = 30, target=None) -> dict[str, float]:
    """Medians (ms) of TVM fp32, TVM QDQ-as-float and TVM int8 on ``conv_model``; and the
    int8 module's largest error in output quantization steps vs the interpreter."""
    from ..backends import tvm as btvm
    from ..backends.tvm import int8 as tvm_int8

    g = conv_model(channels, size, layers)
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal((1, channels, size, size)).astype(np.float32)]
             for _ in range(2)]
    q = optimize(g, "quantize", calibration=calib)
    x = calib[0][0]
    res: dict[str, float] = {}
    mods = {}
    for name, graph, int8 in (("fp32", g, False), ("qdq_float", q, False), ("int8", q, True)):
        lowered = btvm.lower(graph, int8=int8)
        if int8:
            res["int8_ops"] = len(tvm_int8.integer_ops(lowered.mod))
        mods[name] = btvm.build_lowered(lowered, target, name=name)
        res[name + "_ms"] = _median_ms(mods[name], x, warmup, repeat)
    ref = run(q, [x])[0].numpy()
    out = mods["int8"].run([x])[0]
    last = [n for n in q.nodes if n.op == "conv2d"][-1]
    step = float(last.outputs[0].uses[0].inputs[1].data)  # its output quantize
    res["max_err_steps"] = float(np.abs(out - ref).max() / step)
    res["speedup_int8_vs_fp32"] = res["fp32_ms"] / res["int8_ms"]
    res["speedup_int8_vs_qdq_float"] = res["qdq_float_ms"] / res["int8_ms"]
    return res


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    a = ap.parse_args(argv)
    res = bench(a.channels, a.size, a.layers, a.warmup, a.repeat)
    print(f"model: {a.layers}× conv3x3 {a.channels}ch {a.size}×{a.size}, batch 1, "
          f"TVM untuned, medians of {a.repeat}")
    for k, v in res.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
    main()
