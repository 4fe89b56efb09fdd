"""What NaN-keeping costs in TVM: one op, the lowering shrinkc uses against Relax's own op
(which drops NaN), built for this host and timed round-robin in one process.

    python -m shrinkc.tools.bench_nan                  # relu, hardtanh, max_pool2d; 1x64x56x56
    python -m shrinkc.tools.bench_nan --quick          # a smoke run: few repeats, small input

Prints one line per op: median µs (p10–p90) of each form and the ratio. Timings on a shared
machine mean little: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _forms(op: str, shape: tuple[int, ...]):
    """(shrinkc's lowering, Relax's plain op) as Lowered modules for ``op`` on ``shape``."""
    from ..backends import tvm as btvm
    from ..ir.graph import Graph
    from ..ir.types import TensorType

    btvm.import_tvm()
    from tvm import relax

    attrs = {"hardtanh": {"min_val": 0.0, "max_val": 6.0},
             "max_pool2d": {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}}.get(op, {})
    g = Graph(op)
    x = g.add_input(TensorType("f32", shape), "x")
    g.outputs = [g.add_node(op, [x], attrs).outputs[0]]
    ours = btvm.lower(g)

    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            if op == "relu":
                y = relax.op.nn.relu(v)
            elif op == "hardtanh":
                y = relax.op.clip(v, 0.0, 6.0)
            else:
                y = relax.op.nn.max_pool2d(v, pool_size=[3, 3], strides=[2, 2],
                                           padding=[1, 1, 1, 1], layout="NCHW")
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    plain = btvm.Lowered(bb.get(), {}, ours.inputs, ours.outputs)
    return ours, plain


def _time(run, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_nan",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default="relu,hardtanh,max_pool2d")
    p.add_argument("--shape", default="1,64,56,56")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="smoke run: 1x8x16x16, 5 repeats")
    args = p.parse_args(argv)
    shape = (1, 8, 16, 16) if args.quick else tuple(int(d) for d in args.shape.split(","))
    repeat = 5 if args.quick else args.repeat
    from ..backends import tvm as btvm

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    print(f"| op | shape | NaN-keeping µs | Relax op µs | ratio | same numbers |")
    print("|---|---|---:|---:|---:|---|")
    for op in args.ops.split(","):
        mods = [btvm.build_lowered(m, None) for m in _forms(op, shape)]
        tensors = [m.to_device([x]) for m in mods]
        outs = [m.run([x])[0] for m in mods]
        times: list[list[float]] = [[], []]
        for _ in range(3):  # warm-up
            for m, t in zip(mods, tensors):
                m.run_device(t)
        for _ in range(max(1, repeat // 10)):  # interleaved blocks of 10
            for i, (m, t) in enumerate(zip(mods, tensors)):
                times[i] += _time(lambda m=m, t=t: m.run_device(t), 10)

        def fmt(ts: list[float]) -> str:
            q = np.percentile(ts, [10, 90])
            return f"{statistics.median(ts):.1f} ({q[0]:.1f}–{q[1]:.1f})"

        ratio = statistics.median(times[0]) / statistics.median(times[1])
        print(f"| {op} | {'x'.join(map(str, shape))} | {fmt(times[0])} | {fmt(times[1])} | "
              f"{ratio:.2f}x | {np.array_equal(outs[0], outs[1])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
