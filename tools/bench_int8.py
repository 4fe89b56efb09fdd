"""int8 on TVM vs fp32 on TVM (both untuned), for a small conv-heavy model.

    python -m shrinkc.tools.bench_int8 [--repeat 30] [--channels 64] [--size 32]

``make_qdq(graph, calibration)`` turns a float graph into the QDQ graph the TVM backend's
int8 lowering (``backends/tvm_int8.py``) matches: activations before each conv2d / linear /
matmul quantized with min/max (u8 by default, asymmetric), weights symmetric int8 per output
channel (or per tensor), biases int32 at ``sx*sw`` (or kept f32), and optionally each op's
output quantized too. It stands in for the quantization pass (a later issue) in tests and
here. The benchmark builds the float graph (fp32), the QDQ graph lowered as float Q/DQ
arithmetic (``int8=False``, what a QDQ graph costs without integer kernels) and the QDQ
graph with integer compute, and reports medians of ``repeat`` runs each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..ir.graph import Graph, Node, Value
from ..ir.interpreter import run

_WEIGHT_OPS = ("conv2d", "linear", "matmul")


def _affine(lo: float, hi: float, dtype: str) -> tuple[np.float32, np.integer]:
    """(scale, zero point) mapping [lo, hi] (widened to hold 0) onto ``dtype``'s range."""
    qmin, qmax = {"u8": (0, 255), "i8": (-128, 127)}[dtype]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32(max(hi - lo, 1e-8) / (qmax - qmin))
    zp = int(np.clip(round(qmin - lo / float(scale)), qmin, qmax))
    return scale, {"u8": np.uint8, "i8": np.int8}[dtype](zp)


def _qdq(g: Graph, v: Value, scale, zp, dtype: str, after: Node | None, before: Node | None,
         name: str) -> Value:
    s = g.add_constant(np.asarray(scale, np.float32), f"{name}.scale")
    z = g.add_constant(np.asarray(zp), f"{name}.zero_point")
    kw = {"after": after} if after is not None else {"before": before}
    q = g.add_node("quantize", [v, s, z], {"dtype": dtype}, names=f"{name}.q", **kw).output
    return g.add_node("dequantize", [q, s, z], {}, names=f"{name}.dq", after=q.producer).output


def make_qdq(graph: Graph, calibration: Sequence, *, act_dtype: str = "u8",
             per_channel: bool = True, int_bias: bool = True,
             quantize_outputs: bool = True, overrides: Mapping[str, dict] | None = None
             ) -> Graph:
    """A QDQ copy of ``graph`` (unchanged): every conv2d / linear / matmul with a constant f32
    weight gets quantized activations and weights (see the module docstring). Activation
    ranges are the min / max over ``calibration`` (the graph's input lists). ``overrides``
    maps a node's loc to options (``act_dtype``, ``per_channel``, ``int_bias``,
    ``quantize_outputs``) that differ from the defaults for that node."""
    defaults = {"act_dtype": act_dtype, "per_channel": per_channel, "int_bias": int_bias,
                "quantize_outputs": quantize_outputs}
    g = graph.clone()
    targets = [n for n in g.nodes if n.op in _WEIGHT_OPS and n.inputs[1].is_constant
               and n.inputs[1].type.is_float]
    ranges: dict[str, tuple[float, float]] = {}
    for inputs in calibration:
        _, cap = run(g, inputs, capture=True)
        named = dict(cap)
        named.update({v.name: torch.as_tensor(np.asarray(x))
                      for v, x in zip(g.inputs, inputs)})
        for n in targets:
            for v in (n.inputs[0], n.outputs[0]):
                t = named[v.name].float()
                lo, hi = ranges.get(v.name, (np.inf, -np.inf))
                ranges[v.name] = (min(lo, float(t.min())), max(hi, float(t.max())))
    for i, n in enumerate(targets):
        base = (n.meta.get("loc") or f"{n.op}{i}").replace(" ", "_")
        x, w = n.inputs[0], n.inputs[1]
        o = {**defaults, **(overrides or {}).get(base, {})}
        act_dtype, per_channel, int_bias = o["act_dtype"], o["per_channel"], o["int_bias"]
        if x.producer is not None and x.producer.op == "dequantize" and x.name not in ranges:
            # already quantized: the output of an earlier conv / linear (quantize_outputs)
            sx = np.float32(np.asarray(x.producer.inputs[1].data))
        else:
            sx, zx = _affine(*ranges[x.name], act_dtype)
            g.set_input(n, 0, _qdq(g, x, sx, zx, act_dtype, None, n, f"{base}.x"))
        wf = np.asarray(w.data, np.float64)
        axis = wf.ndim - 1 if n.op == "matmul" else 0
        if per_channel:
            red = tuple(a for a in range(wf.ndim) if a != axis)
            sw = np.maximum(np.abs(wf).max(axis=red), 1e-8) / 127.0
            shape = [1] * wf.ndim
            shape[axis] = -1
            wq = np.clip(np.round(wf / sw.reshape(shape)), -127, 127).astype(np.int8)
        else:
            sw = np.float64(max(np.abs(wf).max(), 1e-8) / 127.0)
            wq = np.clip(np.round(wf / sw), -127, 127).astype(np.int8)
        sw32 = np.asarray(sw, np.float32)
        wq_v = g.add_constant(wq, f"{base}.weight_q")
        sw_v = g.add_constant(sw32, f"{base}.weight_scale")
        zw_v = g.add_constant(np.zeros(sw32.shape, np.int8), f"{base}.weight_zero_point")
        wd = g.add_node("dequantize", [wq_v, sw_v, zw_v],
                        {"axis": axis if per_channel else None}, names=f"{base}.weight_dq",
                        before=n).output
        g.set_input(n, 1, wd)
        if len(n.inputs) > 2 and int_bias and n.inputs[2].is_constant:
            b = np.asarray(n.inputs[2].data, np.float64)
            sb = (np.float32(sx) * np.broadcast_to(sw32, b.shape)).astype(np.float32)
            bq = np.round(b / sb).astype(np.int32)
            bd = g.add_node("dequantize", [g.add_constant(bq, f"{base}.bias_q"),
                                           g.add_constant(sb, f"{base}.bias_scale"),
                                           g.add_constant(np.zeros(b.shape, np.int32),
                                                          f"{base}.bias_zero_point")],
                            {"axis": 0}, names=f"{base}.bias_dq", before=n).output
            g.set_input(n, 2, bd)
        if o["quantize_outputs"]:
            y = n.outputs[0]
            sy, zy = _affine(*ranges[y.name], act_dtype)
            yd = _qdq(g, y, sy, zy, act_dtype, n, None, f"{base}.y")
            q_node = yd.producer.inputs[0].producer
            g.replace_all_uses(y, yd, exclude=[q_node])
    g.dce()
    return g


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
    from ..backends import tvm_int8

    g = conv_model(channels, size, layers)
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal((1, channels, size, size)).astype(np.float32)]
             for _ in range(2)]
    q = make_qdq(g, calib)
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
    step = float(next(v.data for k, v in q.constants.items()
                      if k == f"conv{layers - 1}.y.scale"))
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
