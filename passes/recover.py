"""``recover``: fine-tune the graph by distillation from the pipeline's input graph. Lossy
(it changes weights to win back accuracy a lossy pass lost).

A pipeline step for ``passes/distill.py`` (``shrinkc.recover``): it trains the graph's
weights through the interpreter — no backend — with Hinton distillation from the teacher,
the hard labels when the training data has them, and keeps every encoding (pruned weights
stay pruned, shared weights keep their codebook). Typical use, a recipe in one pipeline::

    shrinkc.optimize(g, "prune-channels(ratio=0.7),recover(epochs=8, lr=3e-3),fold-bn",
                     training=(X, y), calibration=batches)

* **Data.** ``ctx.training`` (``optimize(..., training=(X, y))``: labelled; ``X`` alone
  or batches: label-free); else the context's calibration batches, label-free (the student
  matches the teacher on them). Neither: the pass fails saying how to give data.
* **Teacher.** ``ctx.teacher`` if given (a graph or an ``nn.Module``), else the graph the
  pipeline started from (``ctx.original``, kept by the PassManager because this pass sets
  ``needs_original``) — so every ``recover`` of a recipe distils from the uncompressed
  model, not from the previous step.
* **Options.** ``epochs``, ``lr``, ``temperature``, ``alpha`` (weight of the distillation
  term; ``1 − alpha`` on the labels), ``batch_size`` (per process), ``optimizer`` (adamw |
  sgd), ``weight_decay``, ``bn_stats`` (re-estimate batch-norm statistics first),
  ``bn_samples``, ``shift`` (augmentation: images translated by up to that many pixels, the
  teacher run on each batch), ``world_size`` (data-parallel processes; under ``torchrun``
  the process group is used as it is), ``threads`` (torch threads while training, 1 by default so that
  the result does not depend on the core count; none = as set), ``loss`` (``kl``: the
  softened logits; ``mse``: the outputs matched as features — hidden states, embeddings),
  ``keep_better`` (default true: when training makes the loss on the training data worse —
  it diverged — the pass keeps the weights it started from and warns).
  The seed is drawn from the context's (per pass text, as for every pass).

Stats: ``epochs``, ``steps``, ``samples``, ``labels`` (1 if labelled), ``distilled`` (1 if
a teacher was used), ``parameters`` (trained elements), ``bn_recalibrated``,
``bn_skipped_shared``, ``shift``, ``loss_first_epoch``, ``loss_last_epoch``,
``loss_before`` / ``loss_after`` / ``kept_input`` (``keep_better``), ``train_accuracy``
(against the labels, or agreement with the teacher), ``world_size``, ``seconds``. The
per-epoch records are ``ctx.artifacts["recover"]`` (a list, one entry per ``recover`` run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..ir.graph import Graph
from .base import Pass, PassContext, PassError, PassResult, option
from .distill import RecoverError, distill
from .registry import register_pass


@register_pass("recover")
@dataclass
class Recover(Pass):
    """Fine-tune by distillation from the pipeline's input graph; masks and codebooks kept.

    Data: ctx.training, or the calibration batches (label-free)."""

    exact = False
    needs_original = True

    epochs: int = option(2, ge=0, help="passes over the training data")
    lr: float = option(1e-3, gt=0, help="peak learning rate (one-cycle schedule)")
    temperature: float = option(4.0, gt=0, help="softmax temperature of the soft targets")
    alpha: float = option(0.9, ge=0, le=1,
                          help="weight of the distillation term (1 - alpha on the labels)")
    batch_size: int = option(64, ge=1, help="samples per step and process")
    optimizer: Literal["adamw", "sgd"] = option("adamw", help="adamw or sgd (momentum 0.9)")
    weight_decay: float = option(0.0, ge=0, help="decoupled weight decay")
    bn_stats: bool = option(True, help="re-estimate batch-norm statistics before training")
    bn_samples: int = option(512, ge=1, help="inputs for the batch-norm statistics")
    shift: int = option(0, ge=0, help="augmentation: random image shifts of up to this many "
                                      "pixels (the teacher runs on each batch)")
    world_size: int | None = option(None, ge=1, help="data-parallel processes (gloo on "
                                                     "loopback); none: 1, or torchrun's")
    threads: int | None = option(1, ge=1, help="torch threads while training (none: as set)")
    loss: Literal["kl", "mse"] = option("kl", help="distillation term: kl (softened logits) "
                                        "or mse (outputs matched as features)")
    keep_better: bool = option(True, help="if training makes the loss on the training data "
                                          "worse (diverged), keep the starting weights")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = ctx.training if ctx.training is not None else ctx.calibration
        if data is None:
            raise PassError("no training data: give optimize(..., training=(X, y)) (or X "
                            "alone, or batches; shrinkc opt --training zoo-data:NAME|FILE.npz), "
                            "or calibration batches (--calibration) for label-free "
                            "distillation")
        teacher = ctx.teacher if ctx.teacher is not None else ctx.original
        if teacher is None:
            raise PassError("no teacher: ctx.teacher is unset and the PassManager kept no "
                            "input graph")
        try:
            result = distill(graph, teacher, data, inplace=True, epochs=self.epochs,
                             lr=self.lr, temperature=self.temperature, alpha=self.alpha,
                             batch_size=self.batch_size, optimizer=self.optimizer,
                             weight_decay=self.weight_decay, bn_stats=self.bn_stats,
                             bn_samples=self.bn_samples, shift=self.shift,
                             seed=int(ctx.rng.integers(2 ** 31)),
                             output=0, loss=self.loss,
                             world_size=self.world_size, threads=self.threads,
                             keep_better=self.keep_better)
        except RecoverError as e:
            raise PassError(str(e)) from None
        ctx.artifacts.setdefault(self.name, []).append(result.history)
        changed = bool(self.epochs) or bool(result.stats.get("bn_recalibrated"))
        return PassResult(changed, result.stats)
