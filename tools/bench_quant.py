"""int8 benchmark: shrinkc's ``quantize`` against fp32 and onnxruntime's own quantizers, on
the same trained models, the same calibration images and the same runtime (onnxruntime).

**Vision** (default ResNet-18, MobileNetV2, VGG-11, trained on MNIST-5k by ``tools/train.py``
and cached): trace at batch 1 and ``fold-bn`` (the fp32 row). Then

- ``shrinkc <calibrator>``: ``quantize(calibration=…)`` for each calibrator (minmax,
  percentile — at ``ORT_PERCENTILE``, quantize_static's p —, entropy, mse), u8
  activations, i8 per-channel weights, int32 biases; ``equalize,…`` rows for the models in
  ``--equalize-models`` (cross-layer equalization first), ``…,bias-correct`` rows with
  ``--bias-correct``;
- ``ORT <method>``: ``onnxruntime.quantization.quantize_static`` on the ONNX export of the
  same fp32 graph: QDQ, U8 activations, S8 per-channel weights, the same calibration images,
  each of ``--ort-methods`` (MinMax, Entropy, Percentile);

each calibrated ``--calib-seeds`` times (default 4) on disjoint sets of ``--calib-images``
training images (``calibration_subsets``; the same sets for shrinkc and onnxruntime). Per
row: top-1 accuracy on the 1,000 MNIST-5k test images (every row run by onnxruntime) as
the mean and min–max over the sets, top-1 agreement with the fp32 model's predictions (a
far less noisy fidelity measure: 0.1 pt of accuracy is one image, and most changed
predictions do not cross a label), the logit SQNR against fp32 (pooled over images and
sets; continuous, so the least noisy of the three), the ONNX file size, and onnxruntime
latency at batch 1 of the first set's model (see *Latency* below). The goal lines under the
table compare the means, each difference with a 95 % paired bootstrap interval
(``paired_interval``: test images and calibration sets resampled, the same draw for both
rows; ``sqnr_interval`` the same for the logit SQNR, shown beside the accuracy verdicts;
``latency_ratio``: timed rounds resampled), and a goal missed on the means says whether
the miss is within that noise (the interval reaches the goal) — it is still not called met.

**Transformers** (``--transformers vit,bert``: the zoo ViT, trained and cached, and a
``transformers.BertModel`` from ``BERT_CONFIG`` with random weights and 100 random padded
sequences): shrinkc ``quantize(activations=dynamic)`` per channel and per tensor (and with
``quantize-weights`` after it, which makes the embedding tables int8 too, as
``quantize_dynamic`` does; and for the ViT with ``dynamic_conv=true``, its patch conv as
ConvInteger like ``quantize_dynamic``'s) against ``quantize_dynamic`` (S8 weights; per
tensor, its default, and per channel): cosine with fp32 (mean over the samples, of the
logits / of all of BERT's outputs), accuracy (ViT) and onnxruntime latency; the goal lines
compare per tensor with per tensor and per channel with per channel.

**Latency**: model by model, its rows are warmed up, then timed together in rounds
(``bench.time_in_blocks``). In each round every row runs one block — a ``--pause`` (0.3 s),
one untimed run, then its timed runs — and the row order rotates by one per round. The
number of rounds is a multiple of the model's row count (``bench.balanced_rounds``: at
least ``--repeat`` runs per row, at most ``--block`` per block), so every row is first
equally often and no row always follows the same one. Per row: median and p10–p90 of all
its runs; the ratios (vs fp32, the goal lines) are of medians over the same rounds. Every
session has the same thread-pool setting: no spinning (``OnnxRuntimeSession``'s default),
or with ``--spinning`` onnxruntime's own default, busy-waiting workers (the pause before
each block lets them sleep before the next row runs).

Accuracy numbers need no quiet machine. Latency does::

    python -m shrinkc.tools.bench_quant --threads 2 --repeat 50

At 2 threads without spinning a run of the 0.1 ms ViT waits for the pool's second thread at
each parallel section (round-robin in a fixed order its median moved with the order of the
rows); ``--threads 1`` times the graphs alone (see the README's ViT paragraph).

``--smoke`` (2 timed runs, no pause, 100 test images, 32 calibration images, one
calibration set, one calibrator and one ORT method) checks that it works. Temporary files
(the ORT models) live in one temporary directory per part, removed when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench import Timing, balanced_rounds, machine_info, set_threads, speedup, time_in_blocks

log = logging.getLogger(__name__)

__all__ = ["QuantRow", "bench_transformers", "bench_vision", "latency_ratio", "main", "markdown",
           "paired_interval", "sqnr_interval"]

CALIBRATORS = ("minmax", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


@dataclass
class QuantRow:
    model: str
    variant: str
    accuracy: float  # mean over the calibration subsets (vision); nan without labels
    size_bytes: int
    seconds: float  # time to quantize (calibration included), mean over the subsets
    cosine: float | None = None  # transformers: mean cosine of the logits with fp32
    #: vision, one per calibration subset: top-1 test accuracy, and top-1 agreement with the
    #: fp32 model's predictions on the same test images (far less noisy than accuracy: every
    #: changed prediction counts, not only the ones that cross the label)
    accuracies: list[float] = field(default_factory=list)
    agreements: list[float] = field(default_factory=list)
    #: vision, one per calibration subset, one entry per test image: whether the top-1 is the
    #: label, and whether it is the fp32 model's (what the paired intervals resample)
    correct: list[np.ndarray] = field(default_factory=list, repr=False)
    agree: list[np.ndarray] = field(default_factory=list, repr=False)
    #: vision, one per calibration subset, one entry per test image: the squared error of
    #: the logits against fp32's (``sq_ref``: fp32's squared logits), for the logit SQNR —
    #: a continuous fidelity measure, far less noisy than counting changed predictions
    sq_err: list[np.ndarray] = field(default_factory=list, repr=False)
    sq_ref: np.ndarray | None = field(default=None, repr=False)
    timing: Timing = field(default_factory=Timing)
    #: timed runs per block, one block per round in timing order (the same for every row of a
    #: model: run ``k`` of each is from the same round)
    blocks: list[int] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        return float(np.mean(self.agreements)) if self.agreements else None

    @property
    def sqnr(self) -> float | None:
        """Logit SQNR against fp32 in dB, pooled over the test images and calibration sets:
        ``10 log10(sum |z|^2 / sum |z - z_q|^2)``."""
        if not self.sq_err or self.sq_ref is None:
            return None
        err = float(np.sum([e.sum() for e in self.sq_err]))
        sig = float(self.sq_ref.sum()) * len(self.sq_err)
        return float("inf") if err == 0 else 10 * float(np.log10(sig / err))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("correct", "agree", "sq_err", "sq_ref"):
            d.pop(k)
        d["agreement"] = self.agreement
        d["sqnr_db"] = self.sqnr
        d["timing"] = ({"median_ms": self.timing.median, "p10_ms": self.timing.percentile(10),
                        "p90_ms": self.timing.percentile(90), "runs_ms": self.timing.runs_ms}
                       if self.timing.runs_ms else None)
        return d


class _Reader:
    """onnxruntime's CalibrationDataReader over our calibration images."""

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def _session(model: bytes | str, threads: int, spinning: bool):
    from ..backends.onnx import OnnxRuntimeSession

    return OnnxRuntimeSession(model, threads, spinning=spinning)


def _image_feeds(sess_inputs: list[str], X: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{sess_inputs[0]: X[i:i + 1]} for i in range(len(X))]


def _logits(sess, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Every output of every sample, flattened: one row per sample (the logits for a
    classifier)."""
    rows = []
    for f in feeds:
        outs = sess.session.run(None, f)
        rows.append(np.concatenate([np.asarray(o, np.float64).ravel() for o in outs]))
    return np.stack(rows)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-300)))


def _trained_graph(name: str, X: torch.Tensor, trained: bool = True):
    from .. import optimize, trace
    from . import train, zoo

    if trained:
        model, metrics = train.train(name)
        log.info("%s: trained (%.1f%% test accuracy%s)", name, 100 * metrics.test_accuracy,
                 ", cached" if metrics.cached else "")
    else:  # random weights: for checking that the benchmark runs
        torch.manual_seed(0)
        recipe = train.RECIPES.get(name, train.DEFAULT_RECIPE)
        model = zoo.get_model(name, dataset="mnist", **dict(recipe.model_kwargs)).eval()
    graph = trace(model, (X[:1].clone(),), name=name)
    return optimize(graph, "fold-bn")


def _add(rows: list[QuantRow], sessions: list, row: QuantRow, sess, feeds, y, ref=None
         ) -> np.ndarray:
    logits = _logits(sess, feeds)
    row.accuracy = _accuracy(logits, y) if y is not None else float("nan")
    if ref is not None:
        row.cosine = _cosine(logits, ref)
    rows.append(row)
    sessions.append((row, sess, feeds[0]))
    log.info("%-14s %-26s acc %.2f%%%s  %s  %.1fs", row.model, row.variant,
             100 * row.accuracy, "" if row.cosine is None else f"  cos {row.cosine:.6f}",
             f"{row.size_bytes / 1024:.0f} KiB", row.seconds)
    return logits


def _subset_result(row: QuantRow, subset: int, sess, feeds, y, ref: np.ndarray,
                   seconds: float) -> None:
    """Accuracy, fp32 agreement and logit error of one calibration subset's model (``ref``:
    fp32's logits), into ``row``."""
    logits = _logits(sess, feeds)
    pred = logits.argmax(1)
    row.correct.append(pred == y)
    row.agree.append(pred == ref.argmax(1))
    row.sq_err.append(((logits - ref) ** 2).sum(axis=1))
    row.sq_ref = (ref ** 2).sum(axis=1)
    row.accuracies.append(float(row.correct[-1].mean()))
    row.agreements.append(float(row.agree[-1].mean()))
    row.accuracy = float(np.mean(row.accuracies))
    row.seconds += (seconds - row.seconds) / len(row.accuracies)  # running mean
    log.info("%-14s %-28s subset %d  acc %.2f%%  agree %.2f%%  %.1fs", row.model, row.variant,
             subset, 100 * row.accuracies[-1], 100 * row.agreements[-1], seconds)


#: The percentile of the ``shrinkc percentile`` rows: quantize_static's default (its
#: ``Percentile`` calibrator), so that cell compares the calibrators at one setting (the
#: pass's own default is the issue's 99.99).
ORT_PERCENTILE = 99.999


def calibration_subsets(calib_images: int, subsets: int) -> list[np.ndarray]:
    """``subsets`` disjoint sets of ``calib_images`` training images: consecutive slices of
    one seeded permutation of the training split (the first is the sample a single-subset
    run has always used)."""
    from . import data

    X = data.calibration_batches("mnist", n=calib_images * subsets,
                                 batch_size=calib_images * subsets)[0].numpy()
    return [X[i * calib_images:(i + 1) * calib_images] for i in range(subsets)]


def bench_vision(models=("resnet18", "mobilenet_v2", "vgg11_bn"), *,
                 calibrators=CALIBRATORS, ort_methods=ORT_METHODS,
                 equalize_models=("mobilenet_v2",), bias_correct: bool = False,
                 calib_images: int = 256, calib_subsets: int = 1,
                 test_images: int | None = None, threads: int = 1,
                 spinning: bool = False, trained: bool = True
                 ) -> tuple[list[QuantRow], list]:
    """Rows (fp32, shrinkc per calibrator, ORT per method) per model, and their sessions.

    Every quantized row is calibrated ``calib_subsets`` times, on disjoint calibration sets
    (the same sets for shrinkc and onnxruntime): its accuracy is the mean over them, with
    each set's accuracy and fp32 agreement kept. The session timed is the first set's."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .. import optimize
    from ..backends.onnx import export_model
    from ..passes.analyses.calibration import load_calibration
    from . import data

    X, y = data.load("mnist", "test")
    if test_images:
        X, y = X[:test_images], y[:test_images]
    Xn, yn = X.numpy(), y.numpy()
    subsets = calibration_subsets(calib_images, calib_subsets)
    rows: list[QuantRow] = []
    sessions: list = []
    with tempfile.TemporaryDirectory(prefix="shrinkc-bench-quant-") as tmpdir:
        tmp = Path(tmpdir)
        for name in models:
            g = _trained_graph(name, X, trained)
            fp32 = export_model(g).SerializeToString()
            feeds = _image_feeds([g.inputs[0].name], Xn)
            ref = _add(rows, sessions, QuantRow(name, "fp32", 0.0, len(fp32), 0.0),
                       _session(fp32, threads, spinning), feeds, yn)
            fp32_pred = ref.argmax(1)
            rows[-1].correct, rows[-1].agree = [fp32_pred == yn], [np.ones(len(yn), bool)]

            def opt(c: str) -> str:
                return (f"quantize(calibration={c},percentile={ORT_PERCENTILE})"
                        if c == "percentile" else f"quantize(calibration={c})")

            pipelines = [(f"shrinkc {c}", opt(c)) for c in calibrators]
            if name in equalize_models:
                pipelines += [(f"shrinkc equalize+{c}", f"equalize,{opt(c)}")
                              for c in calibrators]
            if bias_correct:
                pipelines += [(f"shrinkc {c}+bias-correct", f"{opt(c)},bias-correct")
                              for c in calibrators]
            labels = [label for label, _ in pipelines] + [f"ORT {m}" for m in ort_methods]
            by_label = {label: QuantRow(name, label, 0.0, 0, 0.0) for label in labels}
            src = tmp / f"{name}.onnx"
            src.write_bytes(fp32)
            for i, calib_np in enumerate(subsets):
                calib = load_calibration({g.inputs[0].name: calib_np}, g)  # batches of 32
                made: list[tuple[QuantRow, bytes, float]] = []
                for label, pipeline in pipelines:
                    t0 = time.perf_counter()
                    q = optimize(g, pipeline, calibration=calib)
                    made.append((by_label[label], export_model(q).SerializeToString(),
                                 time.perf_counter() - t0))
                for method in ort_methods:
                    out = tmp / f"{name}-{method}.onnx"
                    t0 = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):  # its calibrators print
                        quantize_static(str(src), str(out),
                                        _Reader(g.inputs[0].name, calib_np),
                                        quant_format=QuantFormat.QDQ,
                                        activation_type=QuantType.QUInt8,
                                        weight_type=QuantType.QInt8, per_channel=True,
                                        calibrate_method=getattr(CalibrationMethod, method))
                    made.append((by_label[f"ORT {method}"], out.read_bytes(),
                                 time.perf_counter() - t0))
                for row, model, seconds in made:
                    sess = _session(model, threads, spinning)
                    _subset_result(row, i, sess, feeds, yn, ref, seconds)
                    if i == 0:  # the first subset's model is the one timed
                        row.size_bytes = len(model)
                        rows.append(row)
                        sessions.append((row, sess, feeds[0]))
    return rows, sessions


#: The BERT of the transformer rows: ``transformers.BertModel`` from this config, random
#: weights (seeded), sequences of ``BERT_SEQ`` random token ids with a padding mask.
BERT_CONFIG = {"vocab_size": 8000, "hidden_size": 256, "num_hidden_layers": 4,
               "num_attention_heads": 4, "intermediate_size": 1024,
               "max_position_embeddings": 128}
BERT_SEQ = 64


def _bert(samples: int):
    """(graph, feeds by input name) for the BERT rows."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from .. import trace

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT_CONFIG)).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, BERT_CONFIG["vocab_size"], (samples, BERT_SEQ), generator=gen)
    lengths = torch.randint(BERT_SEQ // 2, BERT_SEQ + 1, (samples,), generator=gen)
    mask = (torch.arange(BERT_SEQ)[None, :] < lengths[:, None]).long()
    g = trace(model, (ids[:1],), kwargs={"attention_mask": mask[:1]}, name="bert")
    names = [v.name for v in g.inputs]
    feeds = [dict(zip(names, (ids[i:i + 1].numpy(), mask[i:i + 1].numpy())))
             for i in range(samples)]
    return g, feeds


#: The dynamic rows: per channel (the pass's default), per tensor (quantize_dynamic's
#: default: the same onnxruntime kernels with one weight scale, the like-for-like for
#: latency), with ``quantize-weights`` after it, which makes the embedding tables int8
#: too, as quantize_dynamic does, and (models with a conv: the ViT's patch embedding) with
#: ``dynamic_conv``, quantize_dynamic's ConvInteger form of the conv.
DYNAMIC_PIPELINES = (
    ("shrinkc dynamic", "quantize(activations=dynamic)"),
    ("shrinkc dynamic per-tensor", "quantize(activations=dynamic,per_channel=false)"),
    ("shrinkc dynamic+weights", "quantize(activations=dynamic),quantize-weights"),
    ("shrinkc dynamic+conv", "quantize(activations=dynamic,dynamic_conv=true)"),
)


def bench_transformers(names=("vit", "bert"), *, test_images: int | None = None,
                       threads: int = 1, spinning: bool = False, trained: bool = True
                       ) -> tuple[list[QuantRow], list]:
    """fp32, shrinkc dynamic and ``quantize_dynamic`` (per tensor, per channel) per model:
    the zoo ViT (MNIST, trained: accuracy and logit cosine) and a BERT from a config (random
    weights: cosine of all its outputs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .. import optimize
    from ..backends.onnx import export_model
    from . import data

    X, y = data.load("mnist", "test")
    if test_images:
        X, y = X[:test_images], y[:test_images]
    rows: list[QuantRow] = []
    sessions: list = []
    with tempfile.TemporaryDirectory(prefix="shrinkc-bench-quant-") as tmpdir:
        tmp = Path(tmpdir)
        for name in names:
            if name == "bert":
                g, feeds = _bert(min(len(X), 100))
                labels = None
            else:
                g = _trained_graph(name, X, trained)
                feeds, labels = _image_feeds([g.inputs[0].name], X.numpy()), y.numpy()
            fp32 = export_model(g).SerializeToString()
            ref_sess = _session(fp32, threads, spinning)
            ref = _logits(ref_sess, feeds)
            _add(rows, sessions, QuantRow(name, "fp32", 0.0, len(fp32), 0.0), ref_sess,
                 feeds, labels, ref)
            for label, pipeline in DYNAMIC_PIPELINES:
                if "dynamic_conv" in pipeline and not any(n.op == "conv2d" for n in g.nodes):
                    continue  # the same graph as "shrinkc dynamic"
                t0 = time.perf_counter()
                q = optimize(g, pipeline)
                model = export_model(q).SerializeToString()
                _add(rows, sessions, QuantRow(name, label, 0.0, len(model),
                                              time.perf_counter() - t0),
                     _session(model, threads, spinning), feeds, labels, ref)
            src = tmp / f"{name}.onnx"
            src.write_bytes(fp32)
            for per_channel in (False, True):
                out = tmp / f"{name}-dyn-{per_channel}.onnx"
                t0 = time.perf_counter()
                quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8,
                                 per_channel=per_channel)
                label = "ORT quantize_dynamic" + (" per-channel" if per_channel else "")
                model = out.read_bytes()
                _add(rows, sessions, QuantRow(name, label, 0.0, len(model),
                                              time.perf_counter() - t0),
                     _session(model, threads, spinning), feeds, labels, ref)
    return rows, sessions


def time_rows(sessions: list, warmup: int, repeat: int, *, block: int = 10,
              pause: float = 0.3) -> None:
    """onnxruntime latency at batch 1 (each row's first sample): model by model, its rows
    warmed up, then timed in blocks whose order rotates, every row first equally often
    (``balanced_rounds``, ``time_in_blocks``; see the module docstring). Sets each row's
    ``timing`` and ``blocks``."""
    models: dict[str, list] = {}
    for entry in sessions:
        models.setdefault(entry[0].model, []).append(entry)
    for group in models.values():
        runners = []
        for row, sess, feed in group:
            def run(sess=sess, feed=feed) -> Any:
                return sess.session.run(None, feed)

            for _ in range(max(warmup, 1)):
                run()
            runners.append(run)
        rounds = balanced_rounds(repeat, len(group), block)
        for (row, _, _), timing in zip(group, time_in_blocks(runners, rounds, pause=pause)):
            row.timing, row.blocks = timing, list(rounds)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _acc_cell(r: QuantRow) -> str:
    if np.isnan(r.accuracy):
        return "-"
    if len(r.accuracies) > 1:
        return f"{_pct(r.accuracy)} ({100 * min(r.accuracies):.1f}–{100 * max(r.accuracies):.1f})"
    return _pct(r.accuracy)


def timing_note(rows: list[QuantRow], *, pause: float, spinning: bool) -> str:
    """How the latencies were timed: per model, its rounds × runs per block."""
    per_model: dict[str, tuple[int, list[int]]] = {}
    for r in rows:
        if r.blocks:
            n, blocks = per_model.get(r.model, (0, r.blocks))
            per_model[r.model] = (n + 1, blocks)
    if not per_model:
        return "Latency not timed."
    plans = "; ".join(
        f"{m} {n} rows, {len(b)} blocks × {b[0]} run{'s' if b[0] > 1 else ''}"
        if len(set(b)) == 1 else f"{m} {n} rows, {len(b)} blocks of {'/'.join(map(str, b))} runs"
        for m, (n, b) in per_model.items())
    return (f"Latency (ORT ms: median, p10–p90): each model's rows timed together in rounds; "
            f"in each round every row runs one block ({pause:g} s pause, 1 untimed run, then "
            f"the timed runs), the row order rotated by one per round, so every row is first "
            f"equally often ({plans}); ratios from medians over the same blocks. onnxruntime "
            f"sessions {'with' if spinning else 'without'} thread spinning, every row alike.")


def markdown(rows: list[QuantRow], *, threads: int, calib_images: int,
             calib_subsets: int = 1, pause: float = 0.3, spinning: bool = False) -> str:
    base = {r.model: r for r in rows if r.variant == "fp32"}
    acc_head = (f"test acc (mean; min–max of {calib_subsets} calibration sets)"
                if calib_subsets > 1 else "test acc")
    lines = [(f"int8 in onnxruntime, batch 1, {threads} thread(s); {calib_subsets} disjoint "
              f"set(s) of {calib_images} calibration images; {machine_info(threads)}"), "",
             timing_note(rows, pause=pause, spinning=spinning), "",
             (f"| model | variant | {acc_head} | Δ vs fp32 | agreement with fp32 | "
              "logit SQNR vs fp32 | cosine vs fp32 | ONNX size | ORT ms | vs fp32 |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base[r.model]
        t = r.timing.fmt() if r.timing.runs_ms else "-"
        cos = "-" if r.cosine is None else f"{r.cosine:.6f}"
        dacc = "-" if np.isnan(r.accuracy) else f"{100 * (r.accuracy - b.accuracy):+.2f} pt"
        agree = "-" if r.agreement is None else _pct(r.agreement)
        sq = "-" if r.sqnr is None else f"{r.sqnr:.2f} dB"
        lines.append(f"| {r.model} | {r.variant} | {_acc_cell(r)} | {dacc} | {agree} | {sq} | "
                     f"{cos} | {r.size_bytes / 1024:.0f} KiB | {t} | "
                     f"{speedup(b.timing, r.timing)} |")
    goals = goal_lines(rows)
    if goals:
        lines += ["", "Goals (issue #15; accuracies are means over the calibration sets):", ""]
        lines += [f"- {g}" for g in goals]
    return "\n".join(lines)


#: shrinkc calibrator -> the quantize_static method it is compared with
ORT_COUNTERPART = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}

#: Bootstrap replicates of the intervals in the goal lines (seeded: a rerun prints the same)
BOOTSTRAP = 2000
LEVEL = 0.95


def _pt(v: float) -> float:
    return round(100 * v, 2)  # 0.1 pt is one of 1,000 test images; no float residue


def paired_interval(a: list[np.ndarray], b: list[np.ndarray], *, reps: int = BOOTSTRAP,
                    level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """The difference of two rows' mean per-image outcomes (1: top-1 correct, or: agrees with
    fp32), paired, and its bootstrap interval: ``(difference, lo, hi)``.

    ``a`` and ``b`` hold one 0/1 array over the same test images per calibration set, set
    ``i`` of both calibrated on the same images (``b`` may have one array, e.g. fp32's, paired
    with every set). Each replicate resamples the calibration sets and the test images with
    replacement, the same draw for both rows, so the interval holds both sources of noise:
    which images are tested (0.1 pt is one of 1,000) and which were used to calibrate."""
    A = np.stack([np.asarray(x, np.float64) for x in a])
    B = np.stack([np.asarray(x, np.float64) for x in b])
    if len(B) == 1:
        B = np.broadcast_to(B, A.shape)
    if A.shape != B.shape:
        raise ValueError(f"unpaired outcomes: {A.shape} vs {B.shape}")
    D = A - B  # sets × images
    sets, images = D.shape
    boot = np.empty(reps)
    for start, w, c in _replicates(sets, images, reps, seed):
        boot[start:start + len(w)] = ((w @ D) * c).sum(axis=1) / (sets * images)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(D.mean()), float(lo), float(hi)


def _replicates(sets: int, images: int, reps: int, seed: int):
    """Bootstrap weights, 250 replicates at a time (bounded memory): ``(start, w, c)`` with
    ``w`` (replicates × sets) and ``c`` (replicates × images) multinomial counts — the
    calibration sets and the test images resampled with replacement."""
    rng = np.random.default_rng(seed)
    for start in range(0, reps, 250):
        n = min(250, reps - start)
        w = rng.multinomial(sets, np.full(sets, 1.0 / sets), size=n)
        c = rng.multinomial(images, np.full(images, 1.0 / images), size=n)
        yield start, w, c


def sqnr_interval(a: list[np.ndarray], b: list[np.ndarray], *, reps: int = BOOTSTRAP,
                  level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """Row ``a``'s logit SQNR minus row ``b``'s in dB, and its paired bootstrap interval:
    ``(difference, lo, hi)``. ``a`` and ``b`` hold one array of per-image squared logit
    errors (against the same fp32 logits) per calibration set, set ``i`` of both calibrated
    on the same images; both SQNRs have the same signal, so the difference is
    ``10 log10(sum err_b / sum err_a)``, each replicate with the same resampled sets and
    images for both (as ``paired_interval``)."""
    A = np.stack([np.asarray(x, np.float64) for x in a])
    B = np.stack([np.asarray(x, np.float64) for x in b])
    if A.shape != B.shape:
        raise ValueError(f"unpaired errors: {A.shape} vs {B.shape}")

    def db(ea, eb):
        with np.errstate(divide="ignore"):
            return 10 * np.log10(np.maximum(eb, 1e-300) / np.maximum(ea, 1e-300))

    sets, images = A.shape
    boot = np.empty(reps)
    for start, w, c in _replicates(sets, images, reps, seed):
        boot[start:start + len(w)] = db(((w @ A) * c).sum(axis=1), ((w @ B) * c).sum(axis=1))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(db(A.sum(), B.sum())), float(lo), float(hi)


def latency_ratio(a: Timing, b: Timing, blocks: Sequence[int] | None = None, *,
                  reps: int = BOOTSTRAP, level: float = LEVEL, seed: int = 0
                  ) -> tuple[float, float, float]:
    """``a``'s median latency over ``b``'s and a bootstrap interval: ``(ratio, lo, hi)``.

    Both were timed in the same rounds, ``blocks[r]`` runs each in round ``r`` (default: one
    run per round, run ``k`` of both from round ``k``): each replicate resamples whole
    rounds, the same for both (the same load on a shared machine, and the runs of one block
    are not independent)."""
    x, y = np.asarray(a.runs_ms), np.asarray(b.runs_ms)
    if blocks is None:
        n = min(len(x), len(y))
        x, y, blocks = x[:n], y[:n], [1] * n
    if not len(x) == len(y) == sum(blocks):
        raise ValueError(f"{len(x)} and {len(y)} runs, not the {sum(blocks)} of the blocks")
    picks = np.random.default_rng(seed).integers(0, len(blocks), size=(reps, len(blocks)))
    if len(set(blocks)) == 1:  # equal blocks: one gather
        k = blocks[0]
        idx = (picks[:, :, None] * k + np.arange(k)).reshape(reps, -1)
        boot = np.median(x[idx], axis=1) / np.median(y[idx], axis=1)
    else:
        starts = np.concatenate([[0], np.cumsum(blocks)[:-1]])
        runs = [np.arange(s, s + k) for s, k in zip(starts, blocks, strict=True)]
        boot = np.empty(reps)
        for j, p in enumerate(picks):
            i = np.concatenate([runs[r] for r in p])
            boot[j] = np.median(x[i]) / np.median(y[i])
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(np.median(x) / np.median(y)), float(lo), float(hi)


def _diff(a: QuantRow, b: QuantRow, what: str) -> tuple[float, tuple[float, float] | None]:
    """Accuracy (``correct``) or fp32-agreement (``agree``) difference of two rows in pt, with
    the paired interval when both rows kept their per-image outcomes."""
    mean = (a.accuracy - b.accuracy) if what == "correct" else \
        ((a.agreement or 0.0) - (b.agreement or 0.0))
    xa, xb = getattr(a, what), getattr(b, what)
    if not xa or not xb or (len(xb) != 1 and len(xb) != len(xa)):
        return _pt(mean), None
    _, lo, hi = paired_interval(xa, xb)
    return _pt(mean), (_pt(lo), _pt(hi))


def _sqnr(a: QuantRow, b: QuantRow) -> str:
    """``; logit SQNR +x.xx dB [lo, hi]``: a's logit SQNR minus b's with its paired interval,
    or "" when the rows kept no paired logit errors."""
    if not a.sq_err or len(a.sq_err) != len(b.sq_err):
        return ""
    d, lo, hi = sqnr_interval(a.sq_err, b.sq_err)
    return f"; logit SQNR {d:+.2f} dB [{lo:+.2f}, {hi:+.2f}]"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _verdict(cells: list[tuple[float, tuple[float, float] | None]], floor: float = 0.0) -> str:
    """``met`` when every difference is at least ``floor``; otherwise whether each shortfall
    is within noise (its interval reaches ``floor``) or not."""
    short = [(d, ci) for d, ci in cells if d < floor]
    if not short:
        return "met"
    if all(ci is not None and ci[1] >= floor for _, ci in short):
        goal = f"{floor:+g} pt" if floor else "0"
        return (f"NOT met on the means, within noise (every {LEVEL:.0%} interval of a "
                f"shortfall reaches {goal})")
    return "NOT met"


def goal_lines(rows: list[QuantRow]) -> list[str]:
    """The issue's goals, checked on the rows' means: within 1 % of fp32, at least as
    accurate as quantize_static calibrator for calibrator, equalize no worse, and for the
    transformers at least as close to fp32 at no more latency. Each difference comes with
    its paired bootstrap interval in brackets (``paired_interval``, ``latency_ratio``), and a
    goal missed on the means says whether the miss is within that noise."""
    out: list[str] = []
    by = {(r.model, r.variant): r for r in rows}
    models = list(dict.fromkeys(r.model for r in rows))
    for m in models:
        fp = by[(m, "fp32")]
        ours = [r for r in rows if r.model == m and r.variant.startswith("shrinkc ")
                and r.accuracies]
        if not ours:
            continue
        worst = min(ours, key=lambda r: r.accuracy)
        d, ci = _diff(worst, fp, "correct")
        out.append(f"{m}: within 1 % of fp32: {_verdict([(d, ci)], -1.0)} (lowest shrinkc "
                   f"row {worst.variant}, {d:+.2f} pt{_ci(ci)})")
        cells = []
        for c, method in ORT_COUNTERPART.items():
            a, b = by.get((m, f"shrinkc {c}")), by.get((m, f"ORT {method}"))
            if a is None or b is None:
                continue
            cells.append((c, method, _diff(a, b, "correct"), _diff(a, b, "agree"), _sqnr(a, b)))
        if cells:
            text = "; ".join(f"{c} vs {method} {da:+.2f} pt{_ci(ca)} (agreement {dg:+.2f} pt"
                             f"{_ci(cg)}{sq})" for c, method, (da, ca), (dg, cg), sq in cells)
            out.append(f"{m}: at least as accurate as quantize_static: "
                       f"{_verdict([x for _, _, x, _, _ in cells])} ({text})")
        eq = [(r.variant.split("+", 1)[1], r) for r in ours
              if r.variant.startswith("shrinkc equalize+")]
        if eq:
            diffs = [(c, _diff(r, by[(m, f"shrinkc {c}")], "correct"),
                      _diff(r, by[(m, f"shrinkc {c}")], "agree"), _sqnr(r, by[(m, f"shrinkc {c}")]))
                     for c, r in eq if (m, f"shrinkc {c}") in by]
            out.append(f"{m}: equalize no worse than without: "
                       f"{_verdict([x for _, x, _, _ in diffs])} (" + "; ".join(
                           f"{c} {d:+.2f} pt{_ci(ci)} (agreement {dg:+.2f} pt{_ci(cg)}{sq})"
                           for c, (d, ci), (dg, cg), sq in diffs) + ")")
    if any(r.correct for r in rows):
        out.append(f"(brackets: {LEVEL:.0%} paired bootstrap intervals over test images and "
                   f"calibration sets, {BOOTSTRAP} replicates; latency: over timed rounds. "
                   f"The verdicts are on accuracy; agreement with fp32 and the logit SQNR "
                   f"against fp32 are the less noisy fidelity measures beside it)")
    for m in models:
        for ours_v, theirs_v in (("shrinkc dynamic per-tensor", "ORT quantize_dynamic"),
                                 ("shrinkc dynamic", "ORT quantize_dynamic per-channel")):
            a, b = by.get((m, ours_v)), by.get((m, theirs_v))
            if a is None or b is None or a.cosine is None or b.cosine is None:
                continue
            closer = a.cosine >= b.cosine
            if a.timing.runs_ms and b.timing.runs_ms:
                ratio, lo, hi = latency_ratio(a.timing, b.timing,
                                              a.blocks if a.blocks == b.blocks else None)
                fast = (f"latency {a.timing.median:.2f} vs {b.timing.median:.2f} ms "
                        f"({ratio:.2f}× [{lo:.2f}, {hi:.2f}])")
                if closer and ratio <= 1.0:
                    verdict = "met"
                elif closer and lo <= 1.0:
                    verdict = (f"NOT met on the medians, within noise (the {LEVEL:.0%} "
                               f"interval of the latency ratio reaches 1)")
                else:
                    verdict = "NOT met"
            else:
                fast, verdict = "latency not timed", "met" if closer else "NOT met"
            out.append(f"{m}: {ours_v} vs {theirs_v}: at least as close at no more latency: "
                       f"{verdict} (cosine {a.cosine:.6f} vs {b.cosine:.6f}; {fast})")
    return out


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.bench_quant",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,vgg11_bn",
                   help="vision models (comma-separated; empty: none)")
    p.add_argument("--calibrators", default=",".join(CALIBRATORS))
    p.add_argument("--ort-methods", default=",".join(ORT_METHODS))
    p.add_argument("--equalize-models", default="mobilenet_v2",
                   help="models that also get equalize,quantize rows")
    p.add_argument("--bias-correct", action="store_true", help="add quantize,bias-correct rows")
    p.add_argument("--transformers", default="vit,bert",
                   help="dynamic-quantization models: vit (the zoo's, trained), bert (from a "
                        "config)")
    p.add_argument("--calib-images", type=int, metavar="N",
                   help="calibration images (default 256; 32 with --smoke)")
    p.add_argument("--calib-seeds", type=int, metavar="N",
                   help="disjoint calibration sets per quantized row, the same for shrinkc and "
                        "onnxruntime; accuracies are their mean (default 4; 1 with --smoke)")
    p.add_argument("--test-images", type=int, metavar="N", help="default: all 1,000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30,
                   help="timed runs per row, at least (rounded up to whole rounds of blocks)")
    p.add_argument("--block", type=int, default=10, help="timed runs per block, at most")
    p.add_argument("--pause", type=float, metavar="S",
                   help="seconds before each block (default 0.3; 0 with --smoke)")
    p.add_argument("--spinning", action="store_true",
                   help="every onnxruntime session with spinning pool threads (onnxruntime's "
                        "default; without: the threads sleep between runs)")
    p.add_argument("--smoke", action="store_true",
                   help="2 timed runs, no pause, 100 test images, 32 calibration images, "
                        "minmax only")
    p.add_argument("--untrained", action="store_true", help="random weights (no training)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    a = p.parse_args(argv)
    # onnxruntime's quantizers log every tensor at INFO on the root logger: keep it at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    logging.getLogger("shrinkc.tools.train").setLevel(logging.INFO)
    calibrators, ort_methods = _split(a.calibrators), _split(a.ort_methods)
    warmup, repeat, calib_images, test_images = a.warmup, a.repeat, a.calib_images, a.test_images
    pause = a.pause
    if a.smoke:
        warmup, repeat = 1, 2
        pause = 0.0 if pause is None else pause
        calib_images = calib_images or 32
        test_images = test_images or 100
        calibrators, ort_methods = calibrators[:1], ort_methods[:1]
    calib_images = calib_images or 256
    calib_subsets = a.calib_seeds or (1 if a.smoke else 4)
    if calib_subsets < 1:
        p.error("--calib-seeds must be >= 1")
    if repeat < 1 or a.block < 1:
        p.error("--repeat and --block must be >= 1")
    pause = 0.3 if pause is None else pause
    if pause < 0:
        p.error("--pause must be >= 0")
    set_threads(a.threads)
    rows, sessions = bench_vision(_split(a.models), calibrators=calibrators,
                                  ort_methods=ort_methods,
                                  equalize_models=_split(a.equalize_models),
                                  bias_correct=a.bias_correct, calib_images=calib_images,
                                  calib_subsets=calib_subsets,
                                  test_images=test_images, threads=a.threads,
                                  spinning=a.spinning, trained=not a.untrained)
    trows, tsessions = bench_transformers(_split(a.transformers), test_images=test_images,
                                          threads=a.threads, spinning=a.spinning,
                                          trained=not a.untrained)
    time_rows(sessions + tsessions, warmup, repeat, block=a.block, pause=pause)
    print(markdown(rows + trows, threads=a.threads, calib_images=calib_images,
                   calib_subsets=calib_subsets, pause=pause, spinning=a.spinning))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([r.as_dict() for r in rows + trows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
