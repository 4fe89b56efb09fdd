"""``make demo``: train a reference CNN, compress it with the best combined recipe, recover,
compile it for this host, and print the before/after table.

1. Train (or load from the cache) ResNet-18 (width 0.25) on MNIST-5k (``tools/train.py``).
2. Trace it into the IR.
3. Compress and recover in one pipeline: the recipe ``bench_recipes.DEMO_RECIPE`` (channel
   pruning, distillation from the original on the 4,000 training images, batch norm folded,
   int8 — see ``shrinkc bench --list-recipes``), with per-pass stats and the recovery's
   progress.
4. ``shrinkc.compile`` the result for this host (the backend it picks, and why).
5. The references a user would otherwise deploy: the original in onnxruntime (fp32) and
   onnxruntime's own ``quantize_static`` int8 of it.
6. Measure everything the same way in one process (``tools/benchkit.py``): test accuracy on
   the 1,000 test images, parameters, MACs, bytes on disk, batch-1 latency (every model
   warmed up, then timed round-robin: medians), and print the table with the ratios of the
   compressed model against the original in PyTorch eager, in onnxruntime fp32, and as
   onnxruntime int8.

``--recipe NAME`` or ``--passes PIPELINE`` choose another compression, ``--quick`` a short
recovery (a smoke run; its accuracy means nothing).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from shrinkc.tools.bench_recipes import DEMO_RECIPE, RECIPES

    p = argparse.ArgumentParser(prog="shrinkc-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", help="zoo model (default: resnet18)")
    p.add_argument("--recipe", default=DEMO_RECIPE, choices=sorted(RECIPES),
                   help=f"a named recipe (default: {DEMO_RECIPE})")
    p.add_argument("--passes", help="a pipeline instead of the recipe")
    p.add_argument("--backend", default=None, choices=["onnxruntime", "torch", "tvm"],
                   help="default: what shrinkc.compile picks for this host")
    p.add_argument("--repeat", type=int, default=200, help="timed rounds (default 200)")
    p.add_argument("--quick", action="store_true",
                   help="one recovery epoch on 1,000 images, 20 timed rounds (a smoke run)")
    args = p.parse_args(argv)

    import shrinkc
    from shrinkc.passes.instruments import Stats, stdout_writer
    from shrinkc.tools import benchkit as bk
    from shrinkc.tools import data
    from shrinkc.tools.bench import machine_info
    from shrinkc.tools.bench_recipes import recipe_passes
    from shrinkc.tools.cmd_inspect import inspect_table
    from shrinkc.tools.table import human, human_bytes, render
    from shrinkc.tools.train import train

    t_start = time.perf_counter()
    print(f"[1/6] reference model {args.model} on MNIST-5k (trained once, then cached)")
    model, metrics = train(args.model, "mnist")
    how = "loaded from cache" if metrics.cached else f"trained in {metrics.seconds:.0f} s"
    print(f"      {how}: test accuracy {metrics.test_accuracy:.2%}")
    Xtr, ytr = data.load("mnist", "train")
    X, y = data.load("mnist", "test")
    if args.quick:
        keep = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(0))[:1000]
        Xtr, ytr = Xtr[keep], ytr[keep]
    x1 = X[:1].clone()

    print("\n[2/6] trace (torch.export -> shrinkc IR)")
    g = shrinkc.trace(model, (x1,), name=args.model)
    print(inspect_table(g))

    pipeline = args.passes or RECIPES[args.recipe].pipeline
    passes = recipe_passes(pipeline, args.quick)
    print(f"\n[3/6] compress and recover: {args.passes and 'your pipeline' or args.recipe}\n"
          f"      {pipeline}")
    from shrinkc.passes.distill import runs_any_batch

    cal_bs = 32 if runs_any_batch(g) else g.inputs[0].shape[0]
    calib = data.calibration_batches("mnist", n=256, batch_size=cal_bs)
    t = time.perf_counter()
    g2 = shrinkc.optimize(g, passes, example_inputs=[x1], calibration=calib,
                          training=(Xtr, ytr), instruments=[Stats(write=stdout_writer)])
    print(f"      done in {time.perf_counter() - t:.0f} s")

    print("\n[4/6] compile for this host")
    t = time.perf_counter()
    cm = shrinkc.compile(g2, [x1], backend=args.backend, check=True)
    report = cm.report()
    print(f"      {report.backend}: {report.reason} ({time.perf_counter() - t:.1f} s)")
    threads = report.threads or torch.get_num_threads()

    print("\n[5/6] references: the original in onnxruntime fp32, and onnxruntime's "
          "quantize_static int8 of it")
    bk.set_threads(threads)
    qbytes = bk.ort_quantize_static(g, [c[0] if isinstance(c, (list, tuple)) else c
                                        for c in calib])

    repeat = 20 if args.quick else args.repeat
    print(f"\n[6/6] measure: test accuracy (1,000 images), size, MACs; batch-1 latency "
          f"(medians of {repeat} rounds, all round-robin in this process, {threads} threads)")
    pool = bk.LatencyPool(warmup=10)
    cols = {}
    run, predict, _ = bk.torch_eager(model, x1)
    cols["original (PyTorch eager)"] = (bk.accuracy(predict, X, y), g, pool.add(run), None)
    run, predict, batch = bk.ort_graph(g, x1, threads)
    cols["original (onnxruntime fp32)"] = (bk.accuracy(predict, X, y, batch), g, pool.add(run),
                                           None)
    run, predict, batch = bk.ort_model(qbytes, x1, threads)
    cols["onnxruntime int8 (quantize_static)"] = (bk.accuracy(predict, X, y, batch), g,
                                                  pool.add(run), len(qbytes))
    arrays = [x1.numpy()]
    cm_batch = None if getattr(cm, "batch_inputs", None) else 1  # any batch, or static

    def cm_predict(xb):
        if cm_batch is None:
            return cm.run_numpy([xb.numpy()])[0]
        return torch.cat([torch.from_numpy(cm.run_numpy([xb[i:i + 1].numpy()])[0])
                          for i in range(len(xb))]).numpy()

    cols[f"shrinkc ({cm.backend})"] = (bk.accuracy(cm_predict, X, y, cm_batch), g2,
                                       pool.add(lambda: cm.run_numpy(arrays)), None)
    pool.run(repeat)

    def facts(acc, graph, timing, nbytes):
        params, macs = bk.cost_of(graph)
        onnx_b, shrkz_b = bk.storage_bytes(graph)
        return {"acc": acc, "params": params, "macs": macs,
                "size": nbytes or min(onnx_b, shrkz_b), "ms": timing.median}

    f = {k: facts(*v) for k, v in cols.items()}
    names = list(f)
    ours = f[names[-1]]
    rows = []
    for label, key, fmt in (("test accuracy", "acc", lambda v: f"{v:.2%}"),
                            ("params", "params", lambda v: f"{v:,}"),
                            ("MACs", "macs", human),
                            ("size on disk", "size", human_bytes),
                            ("latency (batch 1)", "ms", lambda v: f"{v:.3f} ms")):
        row = [label] + [fmt(f[n][key]) for n in names]
        for n in names[:3]:
            if key == "acc":
                row.append(f"{100 * (ours['acc'] - f[n]['acc']):+.2f} pt")
            else:
                row.append(f"{f[n][key] / ours[key]:.2f}x" if ours[key] else "-")
        rows.append(row)
    heads = [""] + names + ["vs eager", "vs ORT fp32", "vs ORT int8"]
    print()
    print(render(heads, rows, align="l" + "r" * (len(heads) - 1)))
    print(f"\nratios: reference ÷ shrinkc (> 1: shrinkc smaller / faster); accuracy: shrinkc − "
          f"reference.\nsize: the ONNX file or .shrkz, the smaller; the int8 reference's ONNX "
          f"file.\n{machine_info(threads)}; the whole demo took "
          f"{time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
