"""``make demo``: a reference model through the whole pipeline, with the before/after table.

Train (or load from the cache) a reference model on MNIST-5k, trace it into the IR, run a
pass pipeline with per-pass stats, compile the result for a backend, and measure both
sides the same way: parameters, MACs, size, test accuracy and batch-1 latency (medians).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

DEFAULT_PIPELINE = "fold-bn,remove-identity,fold-constants,dce"


def _median_ms(fn, x, repeat: int = 50, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _accuracy(fn, X: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    correct = 0
    for i in range(0, len(X), batch):
        out = fn(X[i:i + batch])
        out = torch.as_tensor(np.asarray(out)) if not isinstance(out, torch.Tensor) else out
        correct += int((out.argmax(-1) == y[i:i + batch]).sum())
    return correct / len(X)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shrinkc-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", help="zoo model (default: resnet18)")
    p.add_argument("--passes", default=DEFAULT_PIPELINE, help=f"default: {DEFAULT_PIPELINE}")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tvm"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)

    import shrinkc
    from shrinkc.ir.cost import graph_cost
    from shrinkc.tools import data
    from shrinkc.tools.cmd_inspect import inspect_table
    from shrinkc.tools.table import human, human_bytes, render
    from shrinkc.tools.train import train

    torch.set_num_threads(args.threads)
    print(f"[1/5] reference model {args.model} on MNIST-5k (trained once, then cached)")
    model, metrics = train(args.model, "mnist")
    how = "loaded from cache" if metrics.cached else f"trained in {metrics.seconds:.0f} s"
    print(f"      {how}: test accuracy {metrics.test_accuracy:.2%}")
    X, y = data.mnist("test")
    x1 = X[:1]

    print("[2/5] trace (torch.export -> shrinkc IR)")
    g = shrinkc.trace(model, (x1,), name=args.model)
    print(inspect_table(g))

    print(f"\n[3/5] optimize: {args.passes}")
    from shrinkc.passes.instruments import NumericDiff, Stats, TimePasses, stdout_writer

    g2 = shrinkc.optimize(g, args.passes, example_inputs=[x1],
                          instruments=[Stats(write=stdout_writer), NumericDiff(write=stdout_writer),
                                       TimePasses(write=stdout_writer)])

    with torch.no_grad():  # the original, measured before another runtime shares the cores
        before_acc = _accuracy(model, X, y, 250)
        before_ms = _median_ms(model, x1)

    print(f"\n[4/5] compile for {args.backend}")
    t = time.perf_counter()
    cm = shrinkc.compile(g2, [x1], backend=args.backend)
    print(f"      compiled in {time.perf_counter() - t:.1f} s")

    print("\n[5/5] measure (same test set, batch 1 latency: median of 50 runs)")
    with torch.no_grad():
        after_acc = _accuracy(lambda xb: cm(xb) if xb.shape[0] == 1 else
                              torch.cat([torch.as_tensor(np.asarray(cm(xb[i:i + 1])))
                                         for i in range(xb.shape[0])]), X, y, 50)
        after_ms = _median_ms(cm, x1)
    c0, c1 = graph_cost(g), graph_cost(g2)
    rows = [
        ["params", f"{c0.params:,}", f"{c1.params:,}", f"{c0.params / max(c1.params, 1):.2f}x"],
        ["MACs", human(c0.total.macs), human(c1.total.macs),
         f"{c0.total.macs / max(c1.total.macs, 1):.2f}x"],
        ["size", human_bytes(c0.param_bytes), human_bytes(c1.param_bytes),
         f"{c0.param_bytes / max(c1.param_bytes, 1):.2f}x"],
        ["nodes", len(g.nodes), len(g2.nodes), ""],
        ["test accuracy", f"{before_acc:.2%}", f"{after_acc:.2%}",
         f"{(after_acc - before_acc) * 100:+.2f} pt"],
        ["latency (batch 1)", f"{before_ms:.3f} ms", f"{after_ms:.3f} ms",
         f"{before_ms / after_ms:.2f}x"],
    ]
    print(render(["", "before (PyTorch eager)", f"after ({args.backend})", "ratio"], rows,
                 align="lrrr"))
    print(f"\nthreads: {args.threads}; this machine is noisy — latency ratios are indicative.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
