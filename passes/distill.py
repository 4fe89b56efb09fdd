"""Recovery: fine-tune a compressed graph by knowledge distillation from the original.

``recover(graph, teacher, data, epochs=…, lr=…, temperature=4, alpha=0.9)`` (also
``shrinkc.recover`` and the ``recover`` pass) trains the graph's weights so that its
outputs match the teacher's (Hinton et al. 2015), and returns a graph holding the trained
weights. It runs through the interpreter (``ir/interpreter.run`` with autograd) over the
graph's constants as torch state (``ir/trainable.GraphParams``): no backend is imported,
so a pass can call it.

* **Loss.** ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)`` per
  sample, averaged over the batch: soft targets from the teacher's logits ``t`` at
  temperature ``T`` (the ``T²`` keeps the gradient scale independent of ``T``) plus the hard
  labels ``y`` when the data has them. Label-free data (e.g. a pass context's calibration
  batches) trains on the soft targets alone. Without a teacher it is plain cross-entropy.
  The logits are output ``output`` of the graph, classes along its last axis. With
  ``loss="mse"`` the distillation term is instead the mean squared difference between
  the student's and the teacher's output (feature matching: hidden states, embeddings).
* **What trains.** The weights (``ir.ops`` roles) that the graph uses; statistics, scales,
  zero points and indices never do. Pruned (``sparse``) weights keep their zeros and shared
  (``codebook``) weights train their centroids (gradients summed per cluster), so the
  trained graph keeps every encoding — ``write_back`` checks it.
* **Batch-norm statistics.** With ``bn_stats=True`` (default) every ``batch_norm``'s
  running mean and variance are first re-estimated on ``bn_samples`` training inputs, layer
  by layer in graph order (each layer's statistics measured with the layers before it
  already re-estimated): a pass that removes channels or changes weights leaves the old
  statistics describing activations that no longer exist (ResNet-18 pruned 70%: 10% →
  13% before training, but 95.4% → 96.9% after 8 epochs, measured). During training the
  statistics stay fixed (inference batch norm, as the IR runs it), so the result does not
  depend on how a batch is split across processes.
* **Augmentation.** ``shift=n`` translates each training image by up to ``n`` whole
  pixels (border repeated), a fresh draw per step from the seed; the teacher then runs on
  every augmented batch (else once, on the data, before training). Measured on ResNet-18
  pruned 70%: see the README.
* **Optimizer.** AdamW (or SGD with momentum 0.9) with a one-cycle schedule (15% warm-up,
  cosine decay to ``lr / 1e4``) over ``epochs`` passes of the data.
* **Never worse by its own measure.** With ``keep_better`` (default) the loss on the
  training data as given (no augmentation) is measured before and after training; when
  training made it worse — it diverged — the weights it started from are returned, with a
  warning (``stats["kept_input"]``). Measured: VGG-11 on MNIST after
  ``cp-conv(energy=0.9,work_budget=3e10)``, one epoch at the default ``lr=1e-3``: training
  accuracy 36 %, test accuracy 96.2 % → 42.9 %; with the guard the loss went 0.22 → 4.9
  and the 96.2 % model came back (``lr=3e-4`` trained it: 95.7 %).
* **Any batch size.** A batch-polymorphic graph (``ir/batch.py``) runs at the batch given;
  a static-batch graph at nominal batch ``n0`` runs each batch as ``batch_size / n0``
  chunks (one backward through all of them: the same gradient, slower).
* **Deterministic** under ``seed``: the data order, the batch-norm sample and torch's RNG
  (in a forked RNG; deterministic algorithms on) follow it; two runs with the same seed,
  thread count and world size give the same weights.
* **Data-parallel** under ``torch.distributed`` (DDP, gloo on CPU): inside a process group
  (``torchrun --nproc-per-node N``, or one the caller initialised) each process reads its
  shard of every global batch — the permutation is drawn from the seed, so all agree —
  and gradients are averaged, so N processes at ``batch_size`` compute what one process
  computes at ``N × batch_size``; ``world_size=N`` outside a group starts N worker
  processes on the loopback interface itself (graph, data and teacher outputs passed as
  files: no pickle). The per-sample losses are summed and divided by the global batch, so
  an uneven last batch is weighted exactly.
* **Progress.** A tqdm bar (rank 0; by default when stderr is a terminal) with the running
  loss and accuracy (against the labels, or the teacher's top-1 without labels); per-epoch
  records go to ``history`` and the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..ir.graph import Graph, IRError, Node, Value
from ..ir.interpreter import as_tensor, run
from ..ir.trainable import GraphParams, write_back
from ..ir.types import to_torch_dtype

log = logging.getLogger(__name__)

__all__ = [
    "RecoverError",
    "RecoverResult",
    "TrainingData",
    "deterministic",
    "distill",
    "evaluate",
    "forward",
    "recalibrate_bn",
    "recover",
    "runs_any_batch",
    "torch_threads",
]

OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("kl", "mse")


class RecoverError(IRError):
    """Recovery that cannot run: no data, nothing to train, a bad option, a failed worker."""


# ============================================================================ data
@dataclass
class TrainingData:
    """Training samples as tensors along dim 0: one tensor per graph input, optional
    integer ``labels`` and optional precomputed ``teacher`` logits (filled by ``distill``)."""

    inputs: list[torch.Tensor]
    labels: torch.Tensor | None = None
    teacher: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise RecoverError("training data without inputs")
        n = len(self)
        for t in (*self.inputs, self.labels, self.teacher):
            if t is not None and t.shape[0] != n:
                raise RecoverError(f"training data: tensors disagree on the number of "
                                   f"samples ({n} vs {t.shape[0]})")

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def take(self, idx: torch.Tensor) -> TrainingData:
        return TrainingData([t[idx] for t in self.inputs],
                            None if self.labels is None else self.labels[idx],
                            None if self.teacher is None else self.teacher[idx])

    @classmethod
    def of(cls, data: Any, num_inputs: int = 1) -> TrainingData:
        """Training data from what users have at hand:

        * a ``TrainingData``;
        * ``(X, y)`` — inputs (a tensor / array, or a list of them for a graph with several
          inputs) and integer labels; ``(X, None)`` or a bare ``X`` — no labels;
        * an iterable of batches, each ``[x1, …, xk]`` (a pass context's calibration
          batches: no labels) or ``[x1, …, xk, y]`` with integer 1-D labels ``y`` (or a
          bare tensor for a one-input graph); batches of any size are concatenated.
        """
        if isinstance(data, TrainingData):
            return data
        if isinstance(data, (torch.Tensor, np.ndarray)):
            return cls([as_tensor(data)])
        if isinstance(data, tuple) and len(data) == 2 and not _is_batch_list(data, num_inputs):
            X, y = data
            xs = [as_tensor(x) for x in X] if isinstance(X, (list, tuple)) else [as_tensor(X)]
            return cls(xs, None if y is None else as_tensor(y).long())
        batches = list(data)
        if not batches:
            raise RecoverError("training data: no batches")
        cols: list[list[torch.Tensor]] = []
        labels: list[torch.Tensor] = []
        for b in batches:
            parts = [b] if isinstance(b, (torch.Tensor, np.ndarray)) else list(b)
            parts = [as_tensor(p) for p in parts]
            if len(parts) == num_inputs + 1 and _is_labels(parts[-1], parts[0]):
                labels.append(parts.pop().long())
            if len(parts) != num_inputs:
                raise RecoverError(f"training data: a batch has {len(parts)} tensors, the graph "
                                   f"takes {num_inputs} inputs (plus optional labels)")
            cols.append(parts)
        if labels and len(labels) != len(batches):
            raise RecoverError("training data: some batches have labels and some do not")
        return cls([torch.cat([c[i] for c in cols]) for i in range(num_inputs)],
                   torch.cat(labels) if labels else None)


def _is_labels(t: torch.Tensor, x: torch.Tensor) -> bool:
    return t.dim() == 1 and not t.is_floating_point() and t.shape[0] == x.shape[0]


def _is_batch_list(data: tuple, num_inputs: int) -> bool:
    """``(X, y)`` vs a tuple of two batches: two batches are sequences or tensors of the same
    rank, labels are 1-D integers (or None)."""
    X, y = data
    if y is None:
        return False
    y_t = as_tensor(y) if isinstance(y, (torch.Tensor, np.ndarray)) else None
    if y_t is not None and y_t.dim() == 1 and not y_t.is_floating_point():
        return False
    return num_inputs == 1 or isinstance(X, (list, tuple))


# ============================================================================ augmentation
def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image of ``x`` (N×C×H×W) by its whole-pixel ``shifts`` row
    ``(dx, dy)``; the border pixels are repeated into the uncovered area."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shifts[:, 0].to(x.dtype) * 2.0 / w
    theta[:, 1, 2] = shifts[:, 1].to(x.dtype) * 2.0 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def random_shift(x: torch.Tensor, max_shift: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in ``[-max_shift,
    max_shift]`` along each axis (border repeated): the augmentation of ``recover(shift=)``
    and of ``tools/train.py``."""
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=generator)
    return shift_images(x, shifts)


# ============================================================================ running
def runs_any_batch(graph: Graph) -> bool:
    """Whether the interpreter runs ``graph`` at any batch (batch-polymorphic, ir/batch.py)."""
    try:
        from ..ir import batch as ir_batch
    except ImportError:  # pragma: no cover - the IR before batch-polymorphic graphs
        return False
    return ir_batch.is_polymorphic(graph)


def _nominal(graph: Graph) -> int:
    return int(graph.inputs[0].shape[0]) if graph.inputs and graph.inputs[0].type.rank else 1


def forward(graph: Graph, inputs: Sequence[torch.Tensor],
            params: Mapping[str, torch.Tensor] | None = None,
            hook: Callable[[Node, list], None] | None = None) -> list[torch.Tensor]:
    """``interpreter.run`` at the batch of ``inputs`` (dim 0): directly for a
    batch-polymorphic graph or at its nominal batch, else in chunks of the nominal batch,
    concatenated (gradients flow through all of them)."""
    n = int(inputs[0].shape[0])
    n0 = _nominal(graph)
    if n == n0 or runs_any_batch(graph):
        return run(graph, list(inputs), params=params, hook=hook)
    if n % n0:
        raise RecoverError(f"graph {graph.name} is static-batch at batch {n0}: it cannot run a "
                           f"batch of {n} (use a batch size that is a multiple of {n0})")
    parts = [run(graph, [t[i:i + n0] for t in inputs], params=params, hook=hook)
             for i in range(0, n, n0)]
    return [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]


class _Student(torch.nn.Module):
    """The graph as a module: ``forward(*inputs)`` runs the interpreter over ``params``."""

    def __init__(self, graph: Graph, params: GraphParams, output: int):
        super().__init__()
        self.params = params
        self._graph = graph
        self._output = output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return forward(self._graph, inputs, self.params.tensors())[self._output]


def _teacher_fn(teacher: Any, output: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    if isinstance(teacher, Graph):
        return lambda xs: forward(teacher, xs)[output]
    if isinstance(teacher, torch.nn.Module):
        teacher.eval()

    def call(xs: list[torch.Tensor]) -> torch.Tensor:
        out = teacher(*xs)
        return out[output] if isinstance(out, (tuple, list)) else out

    return call


@torch.no_grad()
def _teacher_logits(teacher: Any, data: TrainingData, output: int,
                    chunk: int = 256) -> torch.Tensor:
    fn = _teacher_fn(teacher, output)
    outs = [fn([t[i:i + chunk] for t in data.inputs]).detach().float()
            for i in range(0, len(data), chunk)]
    return torch.cat(outs)


@torch.no_grad()
def evaluate(graph: Graph, X: Any, y: Any, batch_size: int = 250, output: int = 0,
             params: Mapping[str, torch.Tensor] | None = None) -> float:
    """Top-1 accuracy of ``graph`` (through the interpreter; constants overridden by
    ``params``) on inputs ``X`` and integer labels ``y``."""
    data = TrainingData.of((X, y), len(graph.inputs))
    correct = 0
    for i in range(0, len(data), batch_size):
        part = data.take(torch.arange(i, min(i + batch_size, len(data))))
        logits = forward(graph, part.inputs, params)[output]
        correct += int((logits.argmax(-1) == part.labels).sum())
    return correct / max(len(data), 1)


# ============================================================================ distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owned: bool = False  # this call initialised the process group (and destroys it)

    def all_sum(self, *ts: torch.Tensor) -> None:
        if self.world > 1:
            for t in ts:
                torch.distributed.all_reduce(t)


def _process_group(world_size: int | None) -> _Dist | None:
    """The process group to train in: an initialised one, or one from torchrun's environment;
    None when ``world_size`` asks for processes this call must start itself."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world_size not in (None, world):
            raise RecoverError(f"world_size={world_size}, but this process is in a process "
                               f"group of {world}")
        return _Dist(dist.get_rank(), world)
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world > 1 and "RANK" in os.environ and world_size in (None, env_world):
        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=env_world)
        return _Dist(dist.get_rank(), env_world, owned=True)
    if world_size is None or world_size == 1:
        return _Dist()
    return None


# ============================================================================ the result
@dataclass
class RecoverResult:
    """What ``distill`` did: the trained graph, per-epoch records, counters."""

    graph: Graph
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Config:
    epochs: int
    lr: float
    temperature: float
    alpha: float
    batch_size: int
    optimizer: str
    weight_decay: float
    bn_stats: bool
    bn_samples: int
    seed: int
    output: int
    threads: int | None
    shift: int = 0
    loss: str = "kl"
    keep_better: bool = True

    def check(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.bn_samples < 1:
            raise RecoverError(f"need epochs >= 0, batch_size >= 1 and bn_samples >= 1, got "
                               f"{self.epochs}, {self.batch_size}, {self.bn_samples}")
        if not (self.lr > 0 and self.temperature > 0 and 0.0 <= self.alpha <= 1.0):
            raise RecoverError(f"need lr > 0, temperature > 0 and 0 <= alpha <= 1, got "
                               f"{self.lr}, {self.temperature}, {self.alpha}")
        if self.shift < 0:
            raise RecoverError(f"need shift >= 0, got {self.shift}")
        if self.loss not in LOSSES:
            raise RecoverError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise RecoverError(f"unknown optimizer {self.optimizer!r}; known: "
                               f"{', '.join(OPTIMIZERS)}")


# ============================================================================ entry points
def recover(graph: Graph, teacher: Any, data: Any, *, epochs: int = 2, lr: float = 1e-3,
            temperature: float = 4.0, alpha: float = 0.9, batch_size: int = 64,
            optimizer: str = "adamw", weight_decay: float = 0.0, bn_stats: bool = True,
            bn_samples: int = 512, shift: int = 0, seed: int = 0, output: int = 0,
            loss: str = "kl", world_size: int | None = None, threads: int | None = 1,
            keep_better: bool = True, eval_data: Any = None, progress: bool | None = None,
            history: list[dict[str, Any]] | None = None) -> Graph:
    """Fine-tune ``graph`` by distillation from ``teacher``; returns a new graph with the
    trained weights (``graph`` is unchanged). See the module docstring.

    - ``teacher``: the original — an IR ``Graph``, an ``nn.Module`` or a callable on the
      input tensors returning logits; ``None`` trains on the labels alone.
    - ``data``: ``(X, y)``, ``X`` alone (label-free), an iterable of input batches, … (see
      ``TrainingData.of``). ``alpha``: weight of the distillation term (``1 − alpha`` on the
      labels; label-free data uses the soft targets only).
    - ``batch_size``: per process; ``world_size``: processes (see the module docstring).
    - ``shift``: augmentation — each training image (4-D inputs) translated by up to this
      many whole pixels, a fresh draw per step (from the seed); the teacher then runs on
      every augmented batch instead of once on the data.
    - ``threads``: torch's intra-op threads while training (restored after; ``None`` keeps
      the current count). 1 by default, as ``tools/train.py``: the result does not depend on
      the core count, and on a loaded machine two OpenMP threads per process ran a small
      convolution 200× slower than one (measured: 22 ms against 0.12 ms).
    - ``loss``: the distillation term — ``"kl"`` (Hinton: the softened class distributions;
      for logits) or ``"mse"`` (feature matching: the mean squared difference between the
      student's and the teacher's output, per sample; for hidden states, embeddings or
      regression outputs, where classes along the last axis mean nothing).
    - ``keep_better``: measure the loss on ``data`` as given (no augmentation) before and
      after training, and when training made it worse (it diverged: a learning rate too
      high for the graph) return the weights it started from, with a warning and
      ``stats["kept_input"] = 1``; False returns the trained weights regardless.
    - ``eval_data``: ``(X, y)`` whose accuracy is measured before training and after each
      epoch (records in ``history``, a list the per-epoch dicts are appended to).
    """
    result = distill(graph, teacher, data, epochs=epochs, lr=lr, temperature=temperature,
                     alpha=alpha, batch_size=batch_size, optimizer=optimizer,
                     weight_decay=weight_decay, bn_stats=bn_stats, bn_samples=bn_samples,
                     shift=shift, seed=seed, output=output, loss=loss, world_size=world_size,
                     threads=threads, keep_better=keep_better,
                     eval_data=eval_data, progress=progress)
    if history is not None:
        history.extend(result.history)
    return result.graph


def distill(graph: Graph, teacher: Any, data: Any, *, inplace: bool = False,
            **options: Any) -> RecoverResult:
    """``recover`` returning the :class:`RecoverResult` (history and counters); with
    ``inplace`` the trained weights go into ``graph`` itself."""
    eval_data = options.pop("eval_data", None)
    progress = options.pop("progress", None)
    world_size = options.pop("world_size", None)
    cfg = _Config(**options)
    cfg.check()
    if not graph.outputs:
        raise RecoverError(f"graph {graph.name} has no outputs to train")
    if not 0 <= cfg.output < len(graph.outputs):
        raise RecoverError(f"output={cfg.output}, but graph {graph.name} has "
                           f"{len(graph.outputs)} outputs")
    train_data = TrainingData.of(data, len(graph.inputs))
    if teacher is None and train_data.labels is None and train_data.teacher is None:
        raise RecoverError("recovery needs a teacher or labelled data (got neither)")
    evals = TrainingData.of(eval_data, len(graph.inputs)) if eval_data is not None else None
    if evals is not None and evals.labels is None:
        raise RecoverError("eval_data needs labels: (X, y)")
    t0 = time.perf_counter()
    with deterministic(cfg.seed), torch_threads(cfg.threads):
        online = None  # the teacher runs on every (augmented) batch
        if train_data.teacher is None and teacher is not None and cfg.alpha > 0:
            if cfg.shift:
                online = teacher
            else:
                train_data = TrainingData(train_data.inputs, train_data.labels,
                                          _teacher_logits(teacher, train_data, cfg.output))
        group = _process_group(world_size)
        if group is None:
            result = _spawn(graph, train_data, evals, cfg, int(world_size or 1), online)
        else:
            try:
                result = _train(graph, train_data, evals, cfg, group,
                                sys.stderr.isatty() if progress is None else progress, online)
            finally:
                if group.owned:
                    torch.distributed.destroy_process_group()
    result.stats["seconds"] = round(time.perf_counter() - t0, 3)
    if inplace:
        graph.replace_constants({graph.constants[n]: v.data
                                 for n, v in result.graph.constants.items()})
        result.graph = graph
    return result


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed a forked RNG and enforce deterministic algorithms; restore both afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (``None``: leave it)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ============================================================================ training
def _trainable(graph: Graph) -> Callable[[Value], bool]:
    """Weights the graph uses (DDP requires every parameter to get a gradient)."""
    return lambda v: bool(v.uses)


def _shard(idx: torch.Tensor, d: _Dist) -> torch.Tensor:
    return idx[d.rank::d.world]


@torch.no_grad()
def recalibrate_bn(graph: Graph, params: GraphParams, data: TrainingData, *,
                   samples: int = 512, batch_size: int = 128, seed: int = 0,
                   dist: _Dist | None = None) -> dict[str, int]:
    """Re-estimate the running mean / variance of every ``batch_norm`` in ``params`` from
    ``samples`` inputs of ``data`` (a seeded sample; each process its shard, the sums
    all-reduced), in one pass through the graph node by node over all the sample's batches:
    a batch norm's statistics are measured on its input with every batch norm before it
    already re-estimated (inference semantics, exact, any batch split). A statistic
    constant that is shared, or used for anything else, is left alone (counted). Returns
    counters."""
    from ..ir import ops

    dist = dist or _Dist()
    attrs = params.attr_of()
    stats = {"bn_recalibrated": 0, "bn_skipped_shared": 0}
    order = torch.from_numpy(np.random.default_rng([seed, 7]).permutation(len(data)))
    mine = _shard(order[:min(samples, len(data))], dist)
    step = batch_size if runs_any_batch(graph) else _nominal(graph)
    const = params.tensors()
    envs: list[dict[int, torch.Tensor]] = []
    for i in range(0, len(mine), step):
        part = data.take(mine[i:i + step])
        envs.append({id(v): t.to(to_torch_dtype(v.dtype)) for v, t in zip(graph.inputs,
                                                                           part.inputs)})
    last_use = {}
    for k, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[id(v)] = k
    keep = {id(v) for v in graph.outputs}
    for k, node in enumerate(graph.nodes):
        if node.op == "batch_norm":
            mean_v, var_v = node.inputs[3], node.inputs[4]
            if not (mean_v.is_constant and var_v.is_constant and len(mean_v.uses) == 1
                    and len(var_v.uses) == 1 and mean_v is not var_v):
                stats["bn_skipped_shared"] += 1
            else:
                c = int(mean_v.shape[0])
                sums = torch.zeros(3, c, dtype=torch.float64)  # sum x, sum x^2, count
                for env in envs:
                    x = env[id(node.inputs[0])].double()
                    dims = [d for d in range(x.dim()) if d != 1]
                    sums[0] += x.sum(dims)
                    sums[1] += (x * x).sum(dims)
                    sums[2] += x.numel() / c
                dist.all_sum(sums)
                if float(sums[2, 0]) > 0:
                    mean = sums[0] / sums[2]
                    var = (sums[1] / sums[2] - mean * mean).clamp_min(0.0)
                    for v, val in ((mean_v, mean), (var_v, var)):
                        buf = getattr(params, attrs[v.name])
                        buf.copy_(val.to(buf.dtype))
                        const[v.name] = buf
                    stats["bn_recalibrated"] += 1
        ref = ops.get(node.op).ref
        for env in envs:
            args = [const[v.name] if v.is_constant else env[id(v)] for v in node.inputs]
            try:
                out = ref(*args, **node.attrs)
            except Exception as e:
                raise RecoverError(f"node {node.describe()}: {node.op} failed while "
                                   f"re-estimating batch-norm statistics: {e}") from e
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            for o, t in zip(node.outputs, outs):
                env[id(o)] = t
            for v in node.inputs:
                if last_use.get(id(v)) == k and id(v) not in keep and not v.is_constant:
                    env.pop(id(v), None)
    return stats


def _loss_sum(s: torch.Tensor, part: TrainingData, cfg: _Config) -> torch.Tensor:
    """Sum over the samples of ``part`` of the per-sample loss (positions of a sample
    averaged)."""
    n = s.shape[0]
    s2 = s.reshape(n, -1, s.shape[-1]) if s.dim() > 1 else s.reshape(n, 1, 1)
    total = s.new_zeros(())
    alpha = cfg.alpha if part.labels is not None else 1.0
    if part.teacher is None:
        alpha = 0.0
    if alpha > 0:
        t2 = part.teacher.reshape(s2.shape)
        if cfg.loss == "mse":
            total = total + alpha * (s2 - t2).pow(2).reshape(n, -1).mean(-1).sum()
        else:
            T = cfg.temperature
            kd = F.kl_div(F.log_softmax(s2 / T, -1), F.log_softmax(t2 / T, -1),
                          log_target=True, reduction="none").sum(-1).mean(-1)
            total = total + alpha * T * T * kd.sum()
    if alpha < 1:
        labels = part.labels.reshape(n, -1)
        ce = F.cross_entropy(s2.reshape(-1, s2.shape[-1]), labels.reshape(-1),
                             reduction="none").reshape(n, -1).mean(-1)
        total = total + (1 - alpha) * ce.sum()
    return total


@torch.no_grad()
def _data_loss(student: torch.nn.Module, data: TrainingData, cfg: _Config, dist: _Dist,
               teacher_fn) -> float:
    """The mean loss of ``student`` over ``data`` as given (no augmentation; an online
    teacher run on it): this process's shard, summed over the processes."""
    student.eval()
    idx = _shard(torch.arange(len(data)), dist)
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(0, len(idx), cfg.batch_size):
        part = data.take(idx[i:i + cfg.batch_size])
        if teacher_fn is not None and cfg.alpha > 0:
            part = TrainingData(part.inputs, part.labels,
                                teacher_fn(part.inputs).detach().float())
        s = student(*part.inputs)
        total += torch.tensor([float(_loss_sum(s, part, cfg)), len(part)], dtype=torch.float64)
    dist.all_sum(total)
    return float(total[0] / max(float(total[1]), 1.0))


def _augment(part: TrainingData, glob_n: int, positions: torch.Tensor, cfg: _Config,
             epoch: int, step: int, teacher_fn) -> TrainingData:
    """``part`` with its images shifted (draws for the whole global batch from the seed, so
    every split of it across processes sees the same ones) and, with an online teacher, the
    teacher's logits on them."""
    inputs = part.inputs
    if cfg.shift:
        gen = torch.Generator().manual_seed(
            int(np.random.default_rng([cfg.seed, epoch, step, 11]).integers(2 ** 62)))
        shifts = torch.randint(-cfg.shift, cfg.shift + 1, (glob_n, 2), generator=gen)
        inputs = [shift_images(t, shifts[positions]) if t.dim() == 4 and t.is_floating_point()
                  else t for t in inputs]
    logits = part.teacher
    if teacher_fn is not None:
        with torch.no_grad():
            logits = teacher_fn(inputs).detach().float()
    return TrainingData(inputs, part.labels, logits)


def _train(graph: Graph, data: TrainingData, evals: TrainingData | None, cfg: _Config,
           dist: _Dist, show: bool, teacher: Any = None) -> RecoverResult:
    from tqdm.auto import tqdm

    g = graph.clone(share_data=True)  # GraphParams copies; write_back sets new arrays
    params = GraphParams(g, trainable=_trainable(g))
    trainable = list(params.trainable_parameters())
    if not trainable and cfg.epochs:
        raise RecoverError(f"graph {g.name} has no float weights to train (its weights are "
                           f"quantized or it has none); recover before quantizing")
    stats: dict[str, int | float] = {"samples": len(data), "world_size": dist.world,
                                     "labels": int(data.labels is not None),
                                     "distilled": int((data.teacher is not None
                                                       or teacher is not None)
                                                      and cfg.alpha > 0),
                                     "shift": cfg.shift,
                                     "parameters": sum(p.numel() for p in trainable)}
    history: list[dict[str, Any]] = []
    if cfg.bn_stats:
        stats.update(recalibrate_bn(g, params, data, samples=cfg.bn_samples, seed=cfg.seed,
                                    dist=dist))
    student = _Student(g, params, cfg.output)
    model: torch.nn.Module = student
    if dist.world > 1 and trainable:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student)
    global_batch = cfg.batch_size * dist.world
    steps_per_epoch = math.ceil(len(data) / global_batch)
    total = cfg.epochs * steps_per_epoch
    opt: torch.optim.Optimizer | None = None
    sched = None
    if total and trainable:
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(trainable, lr=cfg.lr, momentum=0.9,
                                  weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                    pct_start=0.15)
    if evals is not None:
        acc = evaluate(g, evals.inputs, evals.labels, output=cfg.output,
                       params=params.tensors())
        history.append({"epoch": 0, "eval_accuracy": acc})
        stats["eval_accuracy_before"] = acc
    teacher_fn = _teacher_fn(teacher, cfg.output) if teacher is not None else None
    guard = cfg.keep_better and opt is not None
    if guard:
        start = [p.detach().clone() for p in trainable]
        stats["loss_before"] = round(_data_loss(student, data, cfg, dist, teacher_fn), 6)
    first_loss = None
    with tqdm(total=total, desc=f"recover {g.name}", disable=not show or dist.rank != 0,
              leave=False) as bar:
        for epoch in range(cfg.epochs):
            t_epoch = time.perf_counter()
            order = torch.from_numpy(
                np.random.default_rng([cfg.seed, epoch]).permutation(len(data)))
            loss_sum = torch.zeros(2, dtype=torch.float64)  # loss sum, samples
            hits = torch.zeros(1, dtype=torch.float64)
            student.train()
            for step in range(steps_per_epoch):
                glob = order[step * global_batch:(step + 1) * global_batch]
                positions = _shard(torch.arange(len(glob)), dist)
                weight = 1.0
                if len(positions) == 0:  # fewer samples than processes in the last batch
                    positions, weight = torch.arange(1), 0.0
                idx = glob[positions]
                part = data.take(idx)
                if cfg.shift or teacher_fn is not None:
                    part = _augment(part, len(glob), positions, cfg, epoch, step, teacher_fn)
                s = model(*part.inputs)
                lsum = _loss_sum(s, part, cfg)
                loss = lsum * (weight * dist.world / len(glob))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    ref = part.labels if part.labels is not None else part.teacher.argmax(-1)
                    hits += weight * float((s.argmax(-1) == ref).float().reshape(len(idx), -1)
                                           .mean(-1).sum())
                    loss_sum += torch.tensor([weight * float(lsum), weight * len(idx)],
                                             dtype=torch.float64)
                bar.update()
                if step % 4 == 0 or step == steps_per_epoch - 1:
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}",
                                    loss=f"{float(loss_sum[0] / max(loss_sum[1], 1)):.4f}",
                                    acc=f"{float(hits[0] / max(loss_sum[1], 1)):.4f}")
            dist.all_sum(loss_sum, hits)
            rec: dict[str, Any] = {
                "epoch": epoch + 1, "loss": float(loss_sum[0] / loss_sum[1]),
                "accuracy": float(hits[0] / loss_sum[1]),
                "seconds": round(time.perf_counter() - t_epoch, 3)}
            if first_loss is None:
                first_loss = rec["loss"]
            if evals is not None:
                rec["eval_accuracy"] = evaluate(g, evals.inputs, evals.labels,
                                                output=cfg.output, params=params.tensors())
            history.append(rec)
            if dist.rank == 0:
                log.info("recover %s: epoch %d/%d loss %.4f %s %.4f%s", g.name, epoch + 1,
                         cfg.epochs, rec["loss"],
                         "accuracy" if data.labels is not None else "agreement",
                         rec["accuracy"],
                         f" eval {rec['eval_accuracy']:.4f}" if "eval_accuracy" in rec else "")
    if guard:
        stats["loss_after"] = round(_data_loss(student, data, cfg, dist, teacher_fn), 6)
        stats["kept_input"] = int(stats["loss_after"] > stats["loss_before"])
        if stats["kept_input"]:
            with torch.no_grad():
                for p, p0 in zip(trainable, start):
                    p.copy_(p0)
            if dist.rank == 0:
                log.warning("recover %s: training made the loss on the training data worse "
                            "(%.4g -> %.4g; lr=%g may be too high for this graph): keeping the "
                            "weights it started from (keep_better=false keeps the trained "
                            "ones)", g.name, stats["loss_before"], stats["loss_after"], cfg.lr)
            if evals is not None:
                history[-1]["eval_accuracy"] = stats["eval_accuracy_before"]
    stats["epochs"] = cfg.epochs
    stats["steps"] = total
    if history and "loss" in history[-1]:
        stats["loss_first_epoch"] = round(first_loss, 6)
        stats["loss_last_epoch"] = round(history[-1]["loss"], 6)
        stats["train_accuracy"] = round(history[-1]["accuracy"], 6)
    if evals is not None:
        stats["eval_accuracy_after"] = history[-1]["eval_accuracy"]
    out = write_back(g, params, inplace=True)
    return RecoverResult(out, history, stats)


# ============================================================================ worker processes
_WORKER_ENV = "SHRINKC_RECOVER_DIR"
_WORKER_CMD = "from shrinkc.passes.distill import _worker_main; raise SystemExit(_worker_main())"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _save_data(path: Path, data: TrainingData) -> None:
    from safetensors.torch import save_file

    tensors = {f"input{i}": t.contiguous() for i, t in enumerate(data.inputs)}
    if data.labels is not None:
        tensors["labels"] = data.labels.contiguous()
    if data.teacher is not None:
        tensors["teacher"] = data.teacher.contiguous()
    save_file(tensors, str(path), metadata={"inputs": str(len(data.inputs))})


def _load_data(path: Path) -> TrainingData:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        k = int(f.metadata()["inputs"])
        keys = set(f.keys())
        return TrainingData([f.get_tensor(f"input{i}") for i in range(k)],
                            f.get_tensor("labels") if "labels" in keys else None,
                            f.get_tensor("teacher") if "teacher" in keys else None)


def _wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Exit codes of ``procs``; when one fails the others are stopped (they would wait for
    it in the next all-reduce until gloo's 30-minute timeout)."""
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes
            if any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.05)
    finally:  # a failed worker, or an interrupt here: stop the rest
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.wait() for p in procs]


def _spawn(graph: Graph, data: TrainingData, evals: TrainingData | None, cfg: _Config,
           world: int, teacher: Any = None) -> RecoverResult:
    """Train in ``world`` new processes on the loopback interface (rank 0's result). An
    online teacher (with ``shift``) goes to them as a saved graph."""
    if teacher is not None and not isinstance(teacher, Graph):
        raise RecoverError(f"world_size={world} with shift={cfg.shift} runs the teacher in "
                           f"each worker process: give it as an IR graph (shrinkc.trace), "
                           f"not a {type(teacher).__name__}")
    from dataclasses import asdict

    from ..ir.serialize import load, save

    threads = cfg.threads or 1
    with tempfile.TemporaryDirectory(prefix="shrinkc-recover-") as tmp:
        d = Path(tmp)
        save(graph, d / "student.shrk")
        if teacher is not None:
            save(teacher, d / "teacher.shrk")
        _save_data(d / "data.safetensors", data)
        if evals is not None:
            _save_data(d / "eval.safetensors", evals)
        (d / "config.json").write_text(json.dumps({**asdict(cfg), "threads": threads}))
        port = _free_port()
        with contextlib.ExitStack() as stack:
            procs = []
            for rank in range(world):
                env = {**os.environ, _WORKER_ENV: str(d), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")
                err = stack.enter_context(open(d / f"stderr{rank}.txt", "w"))
                procs.append(subprocess.Popen([sys.executable, "-c", _WORKER_CMD], env=env,
                                              stdout=subprocess.DEVNULL, stderr=err))
            codes = _wait_all(procs)
        if any(codes):
            rank = next(i for i, c in enumerate(codes) if c)
            tail = (d / f"stderr{rank}.txt").read_text().strip().splitlines()[-12:]
            raise RecoverError(f"recovery worker {rank} of {world} failed (exit {codes[rank]}):\n"
                               + "\n".join(tail))
        out = load(d / "result.shrk")
        report = json.loads((d / "result.json").read_text())
    # the graph as loaded from text: put its trained data into a copy of the original graph
    g = graph.clone()
    g.replace_constants({g.constants[n]: v.data for n, v in out.constants.items()})
    return RecoverResult(g, report["history"], report["stats"])


def _worker_main() -> int:
    """One process of a ``world_size=N`` run (started by ``_spawn``; reads its files)."""
    from ..ir.serialize import load, save

    d = Path(os.environ[_WORKER_ENV])
    cfg = _Config(**json.loads((d / "config.json").read_text()))
    graph = load(d / "student.shrk")
    data = _load_data(d / "data.safetensors")
    evals = _load_data(d / "eval.safetensors") if (d / "eval.safetensors").is_file() else None
    teacher = load(d / "teacher.shrk") if (d / "teacher.shrk").is_file() else None
    torch.distributed.init_process_group("gloo")
    try:
        group = _Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())
        with deterministic(cfg.seed), torch_threads(cfg.threads):
            result = _train(graph, data, evals, cfg, group, show=False, teacher=teacher)
        if group.rank == 0:
            save(result.graph, d / "result.shrk")
            (d / "result.json").write_text(json.dumps({"history": result.history,
                                                       "stats": result.stats}))
    finally:
        torch.distributed.destroy_process_group()
    return 0
