"""``shrinkc bench --recipes …``: compression recipes on trained reference models, each with
recovery, against the original in PyTorch eager, in onnxruntime fp32 and as onnxruntime's own
``quantize_static`` int8 — accuracy, size, cost and latency measured in one run.

A recipe is one pipeline (pass text you can paste into ``shrinkc opt``) whose ``recover``
steps distil from the original on the training set (``passes/recover.py``), e.g.
``prune-channels(ratio=0.7),recover(epochs=8, lr=0.003),fold-bn,remove-identity,dce,
quantize``. :data:`RECIPES` names them; a recipe whose passes are not registered (yet) is
listed as not available, with the reason, never faked.

For each model (default ResNet-18, trained on MNIST-5k by ``tools/train.py`` and cached):

1. **References**: the original ``nn.Module`` in PyTorch eager; its traced graph in
   onnxruntime (fp32); onnxruntime's ``quantize_static`` of the same ONNX file (QDQ, int8
   per-channel weights and int8 activations, MinMax on the calibration images; what a user
   would pick instead of shrinkc).
2. **Recipes**: each pipeline runs on the traced graph with the training images (4,000;
   labels for the hard-label term) and 256 calibration images; then the result is measured:
   test accuracy on the 1,000 test images through onnxruntime (what is deployed; QDQ graphs
   with its integer kernels), parameters and MACs (the op table's cost model), bytes on
   disk (the ONNX file and shrinkc's compressed ``.shrkz``: Deep Compression's storage
   shows only in the latter), and the time the pipeline took.
3. **Latency** at batch 1 on each backend asked for (``torch``: ``to_torch`` of the graph,
   eager for the original; ``onnxruntime``; ``tvm``: untuned, for this host), every runner
   warmed up and then all timed round-robin in one process (``tools/benchkit.py``):
   medians (p10–p90 in the JSON). Speed-up = reference median ÷ the recipe's fastest
   backend median, against each reference; compression = original ÷ recipe.

Outputs: a terminal table; ``report.md``, ``report.json`` (every number and timed run, the
machine, the canonical pipelines, the recovery histories) and two PNG plots (accuracy vs
speed-up over onnxruntime int8, accuracy vs bytes on disk; one point per recipe) in
``--output``. The goal line checks the issue's target on each recipe: ≥ 10× fewer parameters,
≥ 4× fewer MACs, ≤ 1 point accuracy drop, ≥ 1.5× faster than ``quantize_static`` int8.

Timings on a shared machine mean little: run the full command on a quiet one::

    shrinkc bench zoo:resnet18 --recipes all --threads 1 --repeat 100 -o bench-report

``--quick`` (one recovery epoch on 1,000 images, 200 test images, 5 timed rounds, no TVM)
checks that everything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import benchkit as bk

log = logging.getLogger(__name__)

__all__ = ["DEMO_RECIPE", "GOAL", "RECIPES", "Recipe", "goal_met", "main", "recipe_passes",
           "report", "run_recipes"]

_TAIL = "fold-bn,remove-identity,dce"  # exact clean-up after the lossy steps


@dataclass(frozen=True)
class Recipe:
    """A named pipeline and what it is for."""

    pipeline: str
    about: str


#: Gradual channel pruning to a tenth of the parameters: two rounds, global threshold
#: (narrow layers keep more channels), each followed by recovery with shifted images.
_GRADUAL = ("prune-channels(target_params=0.3, scope=global),"
            "recover(epochs=4, lr=0.003, shift=1),"
            "prune-channels(target_params=0.32, scope=global),"
            "recover(epochs=8, lr=0.003, shift=1)")
_QAT = "quantize,fake-quantize,recover(epochs=1, lr=0.0003),fold-fake-quantize"

#: The named recipes (tuned on ResNet-18 w0.25 / MNIST-5k; any CNN of the zoo runs them).
RECIPES: dict[str, Recipe] = {
    "fold": Recipe(_TAIL, "exact clean-up: batch norm folded, identities removed"),
    "tucker": Recipe(f"tucker-conv(energy=0.8),recover(epochs=4, lr=0.001),{_TAIL}",
                     "Tucker-2 of every 3×3 conv (80% energy per mode)"),
    "cp": Recipe(f"cp-conv(ratio=0.3),recover(epochs=4, lr=0.001),{_TAIL}",
                 "CP of every conv (30% of its parameters)"),
    "svd": Recipe(f"svd-linear(ratio=0.5),recover(epochs=2, lr=0.001),{_TAIL}",
                  "truncated SVD of the linear and 1×1 layers (half their parameters)"),
    "prune-30": Recipe(f"prune-channels(ratio=0.3),recover(epochs=4, lr=0.002),{_TAIL}",
                       "30% of the channels of every group (l1)"),
    "prune-50": Recipe(f"prune-channels(ratio=0.5),recover(epochs=6, lr=0.003),{_TAIL}",
                       "50% of the channels (l1)"),
    "prune-70": Recipe(f"prune-channels(ratio=0.7),recover(epochs=8, lr=0.003),{_TAIL}",
                       "70% of the channels (l1)"),
    "prune-gradual": Recipe(f"{_GRADUAL},{_TAIL}",
                            "channels pruned to 9.5% of the parameters in two global rounds, "
                            "each recovered (shifted images)"),
    "structured-fc": Recipe(f"structured-fc(kind=lowrank),recover(epochs=2, lr=0.001),{_TAIL}",
                            "structured matrices for the fully connected layers"),
    "int8": Recipe(f"{_TAIL},{_QAT}",
                   "shrinkc int8 (QDQ, calibrated min/max, per-channel weights), recovered "
                   "through fake quantization (straight-through gradients)"),
    "deep-compression": Recipe(
        "prune-weights(sparsity=0.8),recover(epochs=4, lr=0.001),share-weights,"
        "recover(epochs=2, lr=0.0003),remove-identity,dce",
        "Deep Compression: 80% magnitude pruning, k-means sharing (8-bit conv, 5-bit fc), "
        "Huffman storage (.shrkz)"),
    "prune-70+int8": Recipe(
        f"prune-channels(ratio=0.7),recover(epochs=8, lr=0.003),{_TAIL},quantize",
        "70% of the channels, recovery, then int8"),
    "prune-gradual+int8": Recipe(f"{_GRADUAL},{_TAIL},quantize",
                                 "gradual pruning (as prune-gradual), then int8"),
    "prune-50+tucker+int8": Recipe(
        "prune-channels(ratio=0.5),recover(epochs=6, lr=0.003),tucker-conv(energy=0.9),"
        f"recover(epochs=3, lr=0.001),{_TAIL},quantize",
        "50% of the channels, recovery, Tucker-2, recovery, then int8"),
}

#: What ``make demo`` runs: the best combined recipe of the benchmark (tools/demo.py).
DEMO_RECIPE = "prune-gradual+int8"

#: The issue's target for a combined recipe (criteria, not measurements).
GOAL = {"params": 10.0, "macs": 4.0, "accuracy_drop_pt": 1.0, "speedup_vs_ort_int8": 1.5}

#: Reference entry names.
EAGER, ORT_FP32, ORT_INT8 = "original (PyTorch eager)", "original (onnxruntime fp32)", \
    "original (onnxruntime quantize_static int8)"


def _short(err: Exception) -> str:
    """The first clause of a pipeline error (``unknown pass 'x'``)."""
    return str(err).splitlines()[0].split(" in pipeline ")[0]


def goal_met(entry: bk.Entry, original: bk.Entry, ort_int8: bk.Entry) -> dict[str, Any]:
    """Each criterion of :data:`GOAL` for ``entry`` (ratios against the original; the speed
    against onnxruntime's int8), and whether all hold."""
    r = bk.ratios(entry, original)
    speed = bk.ratios(entry, ort_int8)["speedup"]
    checks = {
        "params": r["params"] is not None and r["params"] >= GOAL["params"],
        "macs": r["macs"] is not None and r["macs"] >= GOAL["macs"],
        "accuracy": (r["accuracy_delta"] is not None
                     and r["accuracy_delta"] >= -GOAL["accuracy_drop_pt"]),
        "speed": speed is not None and speed >= GOAL["speedup_vs_ort_int8"]}
    return {**checks, "all": all(checks.values()), "speedup_vs_ort_int8": speed, **r}


def recipe_passes(pipeline: str, quick: bool = False):
    """The pipeline's pass objects; in quick mode with short recovery and CP budgets."""
    from ..passes.registry import parse_pipeline

    passes = parse_pipeline(pipeline)
    if not quick:
        return passes
    out = []
    for p in passes:
        names = {f.name for f in dataclasses.fields(p)}
        changes = {}
        if p.name == "recover":
            changes["epochs"] = min(p.epochs, 1)
        if "work_budget" in names:  # cp-conv: a tenth of the ALS work, reproducibly
            changes["work_budget"] = p.work_budget / 10
        if "time_budget" in names and p.time_budget is not None:
            changes["time_budget"] = min(p.time_budget, 0.5)
        out.append(dataclasses.replace(p, **changes) if changes else p)
    return out


def _measure_graph(entry: bk.Entry, graph, x, X, y, backends, threads, target, pool,
                   accuracy_on: str = "onnxruntime") -> None:
    entry.params, entry.macs = bk.cost_of(graph)
    entry.onnx_bytes, entry.shrkz_bytes = bk.storage_bytes(graph)
    runners = {}
    for b in backends:
        try:
            if b == "torch":
                runners[b] = bk.torch_graph(graph, x)
            elif b == "onnxruntime":
                runners[b] = bk.ort_graph(graph, x, threads)
            elif b == "tvm":
                runners[b] = bk.tvm_graph(graph, x, target)
        except Exception as e:  # a backend that cannot take this graph: say so in the row
            entry.extra[f"{b}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log.warning("%s on %s: %s", entry.name, b, entry.extra[f"{b}_error"])
    acc_b = accuracy_on if accuracy_on in runners else next(iter(runners), None)
    if acc_b is not None:
        _, predict, batch = runners[acc_b]
        entry.accuracy = bk.accuracy(predict, X, y, batch)
        entry.extra["accuracy_backend"] = acc_b
    for b, (run, _, _) in runners.items():
        entry.latency[b] = pool.add(run)


def run_recipes(recipes: list[str], models: list[str] = ("resnet18",), *,
                backends: list[str] = ("torch", "onnxruntime", "tvm"), threads: int = 1,
                repeat: int = 50, warmup: int = 5, quick: bool = False, seed: int = 0,
                target: Any = None, trained: bool = True, train_images: int | None = None,
                test_images: int | None = None, progress=None) -> dict[str, list[bk.Entry]]:
    """Entries per model: the three references, then one per recipe (see the module doc)."""
    from .. import optimize, trace
    from . import data, train, zoo

    say = progress or (lambda msg: None)
    bk.set_threads(threads)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    out: dict[str, list[bk.Entry]] = {}
    pool = bk.LatencyPool(warmup)
    for name in models:
        if trained:
            model, metrics = train.train(name)
            say(f"{name}: reference model, {100 * metrics.test_accuracy:.1f}% at training"
                + (" (cached)" if metrics.cached else f" (trained in {metrics.seconds:.0f} s)"))
        else:
            torch.manual_seed(seed)
            recipe = train.RECIPES.get(name, train.DEFAULT_RECIPE)
            model = zoo.get_model(name, dataset="mnist", **dict(recipe.model_kwargs)).eval()
        Xtr, ytr = data.load("mnist", "train")
        Xte, yte = data.load("mnist", "test")
        perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(seed))
        n_train = train_images or (1000 if quick else len(Xtr))
        Xtr, ytr = Xtr[perm[:n_train]], ytr[perm[:n_train]]
        if test_images or quick:
            tperm = torch.randperm(len(Xte), generator=torch.Generator().manual_seed(seed))
            keep = tperm[:test_images or 200]
            Xte, yte = Xte[keep], yte[keep]
        x = Xte[:1].clone()
        graph = trace(model, (x,), name=name)
        from ..passes.distill import runs_any_batch

        cal_bs = 32 if runs_any_batch(graph) else graph.inputs[0].shape[0]
        calib = data.calibration_batches("mnist", n=256, batch_size=cal_bs, seed=seed)
        entries: list[bk.Entry] = []

        eager = bk.Entry(EAGER, kind="reference", label="original (eager)")
        eager.params, eager.macs = bk.cost_of(graph)
        eager.onnx_bytes, eager.shrkz_bytes = bk.storage_bytes(graph)
        run, predict, _ = bk.torch_eager(model, x)
        eager.accuracy = bk.accuracy(predict, Xte, yte)
        eager.latency["torch"] = pool.add(run)
        entries.append(eager)

        fp32 = bk.Entry(ORT_FP32, kind="reference", label="original (ORT fp32)")
        _measure_graph(fp32, graph, x, Xte, yte, ["onnxruntime"], threads, target, pool)
        entries.append(fp32)

        q = bk.Entry(ORT_INT8, kind="reference", label="ORT int8",
                     pipeline="onnxruntime.quantization.quantize_static(QDQ, QInt8/QInt8, "
                              "per_channel, MinMax)")
        try:
            qbytes = bk.ort_quantize_static(graph, [c[0] if isinstance(c, (list, tuple))
                                                    else c for c in calib])
            q.params, q.macs, q.onnx_bytes = eager.params, eager.macs, len(qbytes)
            run, predict, batch = bk.ort_model(qbytes, x, threads)
            q.accuracy = bk.accuracy(predict, Xte, yte, batch)
            q.latency["onnxruntime"] = pool.add(run)
        except Exception as e:
            q.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        entries.append(q)
        say(f"{name}: references ready (eager {100 * eager.accuracy:.2f}%, "
            f"onnxruntime int8 {100 * (q.accuracy or 0):.2f}%)")

        for rname in recipes:
            rec = RECIPES[rname]
            e = bk.Entry(rname, pipeline=rec.pipeline, extra={"about": rec.about})
            entries.append(e)
            try:
                passes = recipe_passes(rec.pipeline, quick)
            except Exception as err:  # a pass that does not exist (yet)
                e.status = "not available: " + _short(err)
                say(f"{name} {rname}: {e.status}")
                continue
            e.pipeline = ",".join(p.spec() for p in passes)
            t0 = time.perf_counter()
            artifacts: dict[str, Any] = {}
            try:
                g = optimize(graph, passes, example_inputs=[x], calibration=calib,
                             training=(Xtr, ytr), seed=seed, artifacts=artifacts)
            except Exception as err:
                e.status = f"failed: {str(err).splitlines()[0][:300]}"
                say(f"{name} {rname}: {e.status}")
                continue
            e.seconds = round(time.perf_counter() - t0, 2)
            if "recover" in artifacts:
                e.extra["recovery"] = artifacts["recover"]
            _measure_graph(e, g, x, Xte, yte, backends, threads, target, pool)
            say(f"{name} {rname}: {100 * (e.accuracy or 0):.2f}%, {e.params:,} params, "
                f"{e.macs:,} MACs ({e.seconds:.0f} s)")
        out[name] = entries
    say(f"timing {sum(len(e.latency) for es in out.values() for e in es)} runners "
        f"round-robin, {repeat} rounds")
    pool.run(repeat, progress=say)
    return out


def report(results: dict[str, list[bk.Entry]], backends: list[str], *, threads: int,
           repeat: int, warmup: int, quick: bool, output: Path | None) -> str:
    """The terminal text; with ``output``, also report.md, report.json and the plots."""
    from .bench import machine_info

    text, md = [], ["# shrinkc compression recipes", "",
                    f"Machine: {machine_info(threads)}. Batch 1, medians of {repeat} timed "
                    f"rounds after {warmup} warm-up runs, every runner round-robin in one "
                    f"process{'; --quick run' if quick else ''}.", ""]
    goals: dict[str, Any] = {}
    if output is not None:
        from ..ir.files import make_dirs

        make_dirs(output, "-o")
    for model, entries in results.items():
        byname = {e.name: e for e in entries}
        orig, fp32, int8 = byname[EAGER], byname[ORT_FP32], byname[ORT_INT8]
        refs = {"eager": orig, "ORT fp32": fp32}
        if int8.ok:
            refs["ORT int8"] = int8
        shown = [e for e in entries]
        text.append(f"== {model} ==")
        text.append(bk.render_terminal(shown, refs, backends, baseline=orig))
        met = {}
        for e in entries:
            if e.kind == "recipe" and e.ok and int8.ok and e.latency:
                met[e.name] = goal_met(e, orig, int8)
        goals[model] = met
        passing = [k for k, v in met.items() if v["all"]]
        goal_line = (f"goal (≥{GOAL['params']:g}× params, ≥{GOAL['macs']:g}× MACs, ≤"
                     f"{GOAL['accuracy_drop_pt']:g} pt drop, ≥{GOAL['speedup_vs_ort_int8']:g}× "
                     f"vs onnxruntime int8): "
                     + (", ".join(passing) if passing else "met by no recipe in this run"))
        text.append(goal_line)
        notes = [
            "Accuracy on the test images through onnxruntime (the original: eager); Δ in "
            "points against the original. Size: the smaller of the ONNX file and the `.shrkz` "
            "storage; ×: original ÷ recipe. Speed-ups: reference median ÷ the recipe's fastest "
            "backend (`best`).", "", goal_line, "", "Pipelines:", ""]
        notes += [f"- `{e.name}`: " + (f"`{e.pipeline}`" if e.pipeline else "")
                  + ("" if e.ok else f" — {e.status}") for e in entries if e.kind == "recipe"]
        md += [f"## {model}", "", bk.markdown(shown, refs, backends, baseline=orig,
                                              notes=notes)]
        if output is not None and int8.ok:
            bk.plot(entries, orig, int8, output / f"{model}_accuracy_vs_speedup.png",
                    output / f"{model}_accuracy_vs_size.png",
                    title=f"{model}, MNIST-5k: {machine_info(threads)}")
        elif output is not None:
            bk.plot(entries, orig, fp32, output / f"{model}_accuracy_vs_speedup.png",
                    output / f"{model}_accuracy_vs_size.png", title=model)
    if output is not None:
        from ..ir.files import atomic_write_text

        atomic_write_text(output / "report.md", "\n".join(md), "-o")
        atomic_write_text(output / "report.json", bk.to_json(
            [e for es in results.values() for e in es], threads=threads, repeat=repeat,
            warmup=warmup, quick=quick, backends=list(backends), goal=GOAL,
            goals=goals, models={m: [e.name for e in es] for m, es in results.items()}), "-o")
        text.append(f"wrote {output}/report.md, report.json and the plots")
    return "\n".join(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", metavar="LIST",
                   help=f"comma-separated recipes, or 'all': {', '.join(RECIPES)}")
    p.add_argument("--quick", action="store_true",
                   help="one recovery epoch on 1,000 images, 200 test images, 5 timed rounds, "
                        "no TVM: checks that it runs")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")


def list_recipes() -> str:
    """Every recipe, what it is, its pipeline, and whether its passes exist."""
    from ..passes.registry import parse_pipeline

    lines = []
    for k, r in RECIPES.items():
        try:
            parse_pipeline(r.pipeline)
            state = ""
        except Exception as e:
            state = f"  [not available: {_short(e)}]"
        lines.append(f"{k:<22} {r.about}{state}\n{'':<22} {r.pipeline}")
    return "\n".join(lines)


def run_cli(args: argparse.Namespace, models: list[str], backends: list[str]) -> int:
    """``shrinkc bench --recipes`` (arguments parsed by ``cmd_bench``)."""
    if args.list_recipes:
        print(list_recipes())
        return 0
    names = list(RECIPES) if args.recipes.strip() == "all" else [
        r.strip() for r in args.recipes.split(",") if r.strip()]
    quick = args.quick
    repeat = 5 if quick and args.repeat == 30 else args.repeat
    warmup = 2 if quick and args.warmup == 5 else args.warmup
    if quick and args.backends is None:
        backends = [b for b in backends if b != "tvm"]
    import json

    from ..ir.files import check_output_dir

    threads = args.threads or 1
    output = check_output_dir(args.output or "shrinkc-bench", "-o")
    target = args.target
    if target and target.strip().startswith("{"):
        target = json.loads(target)
    results = run_recipes(names, models or ["resnet18"], backends=backends, threads=threads,
                          repeat=repeat, warmup=warmup, quick=quick, target=target,
                          trained=not args.untrained,
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(report(results, backends, threads=threads, repeat=repeat, warmup=warmup,
                 quick=quick, output=output))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
