"""Structured-matrix benchmark: ``structured-fc`` per kind against the dense layer, and on
the small transformer's MLP layers.

Part 1 — one fully connected layer (``y = W x + b``, random weights) of 1024×1024 and
4096×4096 at batch 1 and 64, dense and as each kind with its default options: parameters,
MACs (as the backend runs it), and latency in PyTorch (``to_torch``) and onnxruntime
(``to_onnx``), every graph warmed up and then timed round-robin in one process, so load on
the machine hits all alike. Medians (p10–p90) and the speed-up over the dense layer on the
same backend.

Part 2 — the reference ViT (``tools/zoo.py``; trained on MNIST-5k by ``tools/train.py``,
cached) with every MLP layer replaced by each kind: parameters, test accuracy right after
the replacement, and after recovery (fine-tuning the replaced graph through ``to_torch``
with cross-entropy and distillation from the original; ``--recover-epochs``).

Part 3 — a ``transformers.BertModel`` from a config (4 layers × 256, MLP 256 ↔ 1024,
random weights: ``bench_quant.BERT_CONFIG``) with its MLP layers (``intermediate.dense``,
``output.dense``) replaced by each kind: parameters, and the error of the last hidden state
against the original (relative Frobenius error; mean cosine over the tokens) on held-out
random sequences, right after the replacement and after recovery by feature distillation
(``shrinkc.recover(..., loss="mse", lr=3e-4)`` on 512 unlabelled random sequences;
``--bert-epochs``, default 3).

Run on a quiet machine for numbers that mean something::

    python -m shrinkc.tools.bench_structured --threads 2 --repeat 50

``--smoke`` (small layers, 2 timed runs, 200 test images, no recovery) checks that it works.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .bench import Timing, set_threads

log = logging.getLogger(__name__)

__all__ = ["BertRow", "LayerRow", "ModelRow", "bench_bert", "bench_layers", "bench_vit", "main"]

#: Each kind with the options the benchmark uses (the pass defaults, ranks made explicit).
KINDS: dict[str, str] = {
    "lowrank": "kind=lowrank",  # rank keeping a quarter of the parameters
    "kronecker": "kind=kronecker,rank=4",
    "blockdiag": "kind=blockdiag,blocks=4",
    "monarch": "kind=monarch",  # about sqrt(n) blocks
    "circulant": "kind=circulant",
    "block_circulant": "kind=block_circulant",  # blocks of up to 256
    "toeplitz": "kind=toeplitz",
}


@dataclass
class LayerRow:
    size: int
    batch: int
    kind: str  # "dense" for the original layer
    params: int
    macs: int
    error: float  # relative Frobenius error of the fit (0 for dense)
    timings: dict[str, Timing] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = {b: {"median_ms": t.median, "p10_ms": t.percentile(10),
                            "p90_ms": t.percentile(90)} for b, t in self.timings.items()}
        return d


def _dense_graph(size: int, batch: int, seed: int):
    from ..ir import Graph, TensorType

    rng = np.random.default_rng(seed)
    g = Graph(f"fc{size}")
    x = g.add_input(TensorType("f32", (batch, size)), "x")
    w = g.add_constant((rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32),
                       "fc.weight")
    b = g.add_constant(rng.standard_normal(size).astype(np.float32) * 0.1, "fc.bias")
    g.outputs = [g.add_node("linear", [x, w, b], names="y", loc="fc").output]
    return g


def _runners(graph, x: np.ndarray, threads: int):
    from .. import to_torch
    from ..backends.onnx import OnnxRuntimeSession

    module = to_torch(graph).eval()
    xt = torch.from_numpy(x)
    sess = OnnxRuntimeSession(graph, threads)
    feeds = sess.feeds([x])

    def torch_run():
        with torch.inference_mode():
            return module(xt)

    def ort_run():
        return sess.session.run(None, feeds)

    return {"torch": torch_run, "onnxruntime": ort_run}


def bench_layers(sizes=(1024, 4096), batches=(1, 64), kinds=tuple(KINDS), *, threads: int = 1,
                 warmup: int = 5, repeat: int = 30, seed: int = 0) -> list[LayerRow]:
    from .. import optimize
    from ..passes.analyses.cost import summarize

    set_threads(threads)
    rows: list[LayerRow] = []
    runners: list[tuple[Timing, Any]] = []
    for size in sizes:
        for batch in batches:
            dense = _dense_graph(size, batch, seed)
            x = np.random.default_rng(seed + 1).standard_normal((batch, size)).astype(np.float32)
            graphs = [("dense", dense, 0.0)]
            for kind in kinds:
                artifacts: dict[str, Any] = {}
                g = optimize(dense, f"structured-fc({KINDS[kind]})", artifacts=artifacts)
                report = artifacts.get("structured-fc") or []
                if not report:
                    log.warning("%s: structured-fc(%s) replaced nothing", size, kind)
                    continue
                graphs.append((kind, g, report[0]["error"]))
            for kind, g, err in graphs:
                s = summarize(g)
                row = LayerRow(size, batch, kind, s.params, s.macs, err)
                for backend, fn in _runners(g, x, threads).items():
                    for _ in range(max(warmup, 1)):
                        fn()
                    row.timings[backend] = Timing()
                    runners.append((row.timings[backend], fn))
                rows.append(row)
                log.info("%d x %d, batch %d, %s: %d params", size, size, batch, kind, s.params)
    for _ in range(repeat):  # round-robin over every row and backend
        for timing, fn in runners:
            t0 = time.perf_counter()
            fn()
            timing.runs_ms.append((time.perf_counter() - t0) * 1e3)
    return rows


# ------------------------------------------------------------------------------ the ViT
@dataclass
class ModelRow:
    kind: str  # "original" for the trained model
    params: int
    mlp_params: int  # parameters of the MLP layers (replaced or not)
    error: float  # the worst layer's relative fit error
    accuracy: float
    accuracy_recovered: float | None = None
    recover_s: float | None = None


def _accuracy(graph, X: torch.Tensor, y: torch.Tensor) -> float:
    from .. import to_torch

    module = to_torch(graph).eval()
    n = graph.inputs[0].shape[0]
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(X) - len(X) % n, n):
            correct += int((module(X[i:i + n]).argmax(1) == y[i:i + n]).sum())
    return correct / max(len(X) - len(X) % n, 1)


def _finetune(graph, teacher: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, *,
              epochs: int, batch: int, lr: float, seed: int):
    """Cross-entropy + distillation (T=4) fine-tuning of ``graph`` through ``to_torch`` at
    the graph's own batch, then the weights written back."""
    import torch.nn.functional as F

    from .. import to_torch, write_back

    module = to_torch(graph).train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = graph.inputs[0].shape[0]
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X) - len(X) % n, n):
            idx = order[i:i + n]
            xb, yb = X[idx], y[idx]
            with torch.no_grad():
                t = teacher(xb)
            s = module(xb)
            kd = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
            loss = 0.5 * F.cross_entropy(s, yb) + 0.5 * 16 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
    return write_back(graph, module.eval())


def bench_vit(kinds=tuple(KINDS), *, recover_epochs: int = 2, test_images: int | None = None,
              seed: int = 0, batch: int = 50) -> list[ModelRow]:
    from .. import optimize, trace
    from ..passes.analyses.cost import summarize
    from . import data, train

    model, metrics = train.train("vit")
    log.info("vit: trained (%.1f%%%s)", 100 * metrics.test_accuracy,
             ", cached" if metrics.cached else "")
    Xte, yte = data.load("mnist", "test")
    if test_images is not None:
        Xte, yte = Xte[:test_images], yte[:test_images]
    Xtr, ytr = data.load("mnist", "train")
    x = Xte[:batch].clone()
    graph = trace(model, (x,), name="vit")
    mlp = "blocks.*.fc*"  # the MLP of each encoder block (tools/zoo.py EncoderBlock)
    mlp_params = sum(n.inputs[1].type.numel for n in graph.nodes
                     if n.op == "linear" and fnmatch.fnmatchcase(n.loc or "", mlp))
    rows = [ModelRow("original", summarize(graph).params, mlp_params, 0.0,
                     _accuracy(graph, Xte, yte))]
    for kind in kinds:
        artifacts: dict[str, Any] = {}
        g = optimize(graph, f"structured-fc({KINDS[kind]},min_features=32,include='{mlp}')",
                     artifacts=artifacts)
        report = artifacts.get("structured-fc") or []
        if not report:
            log.warning("vit: structured-fc(%s) replaced nothing", kind)
            continue
        replaced = sum(e["params_after"] for e in report)
        row = ModelRow(kind, summarize(g).params, replaced, max(e["error"] for e in report),
                       _accuracy(g, Xte, yte))
        if recover_epochs:
            t0 = time.perf_counter()
            g2 = _finetune(g, model, Xtr, ytr, epochs=recover_epochs, batch=batch, lr=1e-3,
                           seed=seed)
            row.recover_s = time.perf_counter() - t0
            row.accuracy_recovered = _accuracy(g2, Xte, yte)
        rows.append(row)
        log.info("vit %s: %d params, %.1f%% -> %s", kind, row.params, 100 * row.accuracy,
                 f"{100 * row.accuracy_recovered:.1f}%" if row.accuracy_recovered else "-")
    return rows


@dataclass
class BertRow:
    kind: str  # "original" for the model as it is
    params: int
    mlp_params: int
    fit_error: float  # the worst layer's relative fit error
    rel_error: float  # ||h - h0|| / ||h0|| of the last hidden state, held-out sequences
    cosine: float  # mean cosine of h and h0 over the (unpadded) tokens
    rel_error_recovered: float | None = None
    cosine_recovered: float | None = None
    recover_s: float | None = None


def _bert_data(n: int, seed: int):
    from .bench_quant import BERT_CONFIG, BERT_SEQ

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, BERT_CONFIG["vocab_size"], (n, BERT_SEQ), generator=gen)
    lengths = torch.randint(BERT_SEQ // 2, BERT_SEQ + 1, (n,), generator=gen)
    mask = (torch.arange(BERT_SEQ)[None, :] < lengths[:, None]).long()
    return ids, mask


def _hidden(graph, ids: torch.Tensor, mask: torch.Tensor, batch: int = 8) -> torch.Tensor:
    from .. import to_torch

    module = to_torch(graph).eval()
    with torch.inference_mode():
        return torch.cat([module(ids[i:i + batch], mask[i:i + batch])[0]
                          for i in range(0, len(ids), batch)])


def _errors(h: torch.Tensor, h0: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    keep = mask.bool()
    a, b = h[keep].double(), h0[keep].double()
    rel = float((a - b).norm() / b.norm())
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
    return rel, cos


def bench_bert(kinds=tuple(KINDS), *, recover_epochs: int = 2, train_sequences: int = 512,
               test_sequences: int = 64, lr: float = 3e-4, seed: int = 0) -> list[BertRow]:
    """Part 3 (see the module docstring)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from .. import optimize, recover, trace
    from ..passes.analyses.cost import summarize
    from .bench_quant import BERT_CONFIG

    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**BERT_CONFIG)).eval()
    ids, mask = _bert_data(train_sequences + test_sequences, seed + 1)
    tr, te = slice(0, train_sequences), slice(train_sequences, None)
    graph = trace(model, (ids[:8],), kwargs={"attention_mask": mask[:8]}, name="bert")
    include, exclude = "encoder.layer.*", "*attention*"  # intermediate.dense, output.dense
    mlp = [n for n in graph.nodes if n.op in ("linear", "matmul")
           and fnmatch.fnmatchcase(n.loc or "", include)
           and not fnmatch.fnmatchcase(n.loc or "", exclude)]
    mlp_params = sum(v.type.numel for n in mlp for v in n.inputs[1:] if v.is_constant)
    h0 = _hidden(graph, ids[te], mask[te])
    rows = [BertRow("original", summarize(graph).params, mlp_params, 0.0, 0.0, 1.0)]
    batches = [[ids[tr][i:i + 32], mask[tr][i:i + 32]] for i in range(0, train_sequences, 32)]
    for kind in kinds:
        artifacts: dict[str, Any] = {}
        g = optimize(graph, f"structured-fc({KINDS[kind]},include='{include}',"
                            f"exclude='{exclude}')", artifacts=artifacts)
        report = artifacts.get("structured-fc") or []
        if not report:
            log.warning("bert: structured-fc(%s) replaced nothing", kind)
            continue
        replaced = sum(e["params_after"] for e in report)
        rel, cos = _errors(_hidden(g, ids[te], mask[te]), h0, mask[te])
        row = BertRow(kind, summarize(g).params, replaced, max(e["error"] for e in report),
                      rel, cos)
        if recover_epochs:
            t0 = time.perf_counter()
            g2 = recover(g, graph, batches, epochs=recover_epochs, lr=lr, loss="mse",
                         batch_size=32, bn_stats=False, seed=seed, threads=None)
            row.recover_s = time.perf_counter() - t0
            row.rel_error_recovered, row.cosine_recovered = _errors(
                _hidden(g2, ids[te], mask[te]), h0, mask[te])
        rows.append(row)
        log.info("bert %s: %d params, rel. error %.3f -> %s", kind, row.params, rel,
                 f"{row.rel_error_recovered:.3f}" if row.rel_error_recovered is not None
                 else "-")
    return rows


# ------------------------------------------------------------------------------ report
def markdown_layers(rows: list[LayerRow], *, threads: int, repeat: int) -> str:
    from .table import human

    dense = {(r.size, r.batch): r for r in rows if r.kind == "dense"}
    lines = [f"structured-fc, one layer (y = Wx + b), {threads} thread(s), {repeat} timed runs "
             f"each, round-robin; speed-up = dense median / structured median, same backend", "",
             "| size | batch | kind | params | MACs | fit error | PyTorch ms | onnxruntime ms | "
             "PyTorch speed-up | onnxruntime speed-up |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = dense[(r.size, r.batch)]
        sp = {b: d.timings[b].median / r.timings[b].median for b in r.timings}
        lines.append(f"| {r.size} | {r.batch} | {r.kind} | {human(r.params)} | {human(r.macs)} "
                     f"| {r.error:.3f} | {r.timings['torch'].fmt()} | "
                     f"{r.timings['onnxruntime'].fmt()} | {sp['torch']:.2f}× | "
                     f"{sp['onnxruntime']:.2f}× |")
    return "\n".join(lines)


def markdown_vit(rows: list[ModelRow]) -> str:
    from .table import human

    base = rows[0]
    lines = ["ViT (MNIST-5k) with its MLP layers replaced; accuracy on the test images, "
             "before and after fine-tuning (CE + distillation from the original)", "",
             "| kind | params | MLP params | worst fit error | test acc | after recovery |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        rec = f"{100 * r.accuracy_recovered:.1f}%" if r.accuracy_recovered is not None else "-"
        lines.append(f"| {r.kind} | {human(r.params)} ({base.params / r.params:.2f}×) | "
                     f"{human(r.mlp_params)} | {r.error:.3f} | {100 * r.accuracy:.1f}% | {rec} |")
    return "\n".join(lines)


def markdown_bert(rows: list[BertRow]) -> str:
    from .table import human

    base = rows[0]

    def pair(a, b):
        return "-" if a is None else f"{a:.3f} / {b:.4f}"

    lines = ["BertModel (4 × 256, random weights) with its MLP layers replaced; last hidden state "
             "against the original on held-out random sequences (relative error / mean cosine), "
             "before and after recovery (feature distillation, loss=mse)", "",
             "| kind | params | MLP params | worst fit error | error / cosine | after recovery |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.kind} | {human(r.params)} ({base.params / r.params:.2f}×) | "
                     f"{human(r.mlp_params)} | {r.fit_error:.3f} | {pair(r.rel_error, r.cosine)} | "
                     f"{pair(r.rel_error_recovered, r.cosine_recovered)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .bench import machine_info

    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_structured",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,4096")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--recover-epochs", type=int, default=2)
    p.add_argument("--no-vit", action="store_true", help="skip the ViT part")
    p.add_argument("--no-layers", action="store_true", help="skip the one-layer part")
    p.add_argument("--no-bert", action="store_true", help="skip the BertModel part")
    p.add_argument("--bert-epochs", type=int, default=3, help="BERT recovery epochs")
    p.add_argument("--smoke", action="store_true",
                   help="256-wide layers, 2 timed runs, 200 test images, no recovery")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("shrinkc.passes").setLevel(logging.WARNING)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    warmup, repeat = (1, 2) if args.smoke else (args.warmup, args.repeat)
    sizes = (256,) if args.smoke else tuple(int(s) for s in args.sizes.split(","))
    print(machine_info(args.threads))
    layers = []
    if not args.no_layers:
        layers = bench_layers(sizes, tuple(int(b) for b in args.batches.split(",")), kinds,
                              threads=args.threads, warmup=warmup, repeat=repeat)
        print()
        print(markdown_layers(layers, threads=args.threads, repeat=repeat))
    vit = []
    if not args.no_vit:
        vit = bench_vit(kinds, recover_epochs=0 if args.smoke else args.recover_epochs,
                        test_images=200 if args.smoke else None)
        print()
        print(markdown_vit(vit))
    bert = []
    if not args.no_bert:
        bert = bench_bert(kinds, recover_epochs=0 if args.smoke else args.bert_epochs,
                          train_sequences=64 if args.smoke else 512,
                          test_sequences=16 if args.smoke else 64)
        print()
        print(markdown_bert(bert))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"layers": [r.as_dict() for r in layers],
                       "vit": [asdict(r) for r in vit], "bert": [asdict(r) for r in bert]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
