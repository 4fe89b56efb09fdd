"""Train reference models on the bundled datasets, with a safetensors weight cache.

``train("lenet5")`` builds :func:`shrinkc.tools.zoo.get_model` ``("lenet5")``, trains it
on MNIST-5k (4,000 train images) with AdamW and a one-cycle learning-rate schedule,
measures accuracy on the 1,000 test images, and stores the weights as safetensors (never
pickle) under a key hashed from everything that determines them: model name and keyword
arguments, dataset and image form, epochs, batch size, learning rate, augmentation, seed.
A second call with the same arguments loads the file instead of training
(``metrics.cached``).

Each model has a :data:`RECIPES` entry (epochs, learning rate, random shifts of one
pixel, and for the big conv nets a narrow ``width``) that reaches at least 95% test
accuracy on MNIST-5k. Measured on this project's 2-core CPU machine (torch 2.13, one
training thread, seed 0), MNIST-5k in its native 1×28×28 form:

=================  =======================  =========  ========  ==========
model              recipe                   params     test acc  train time
=================  =======================  =========  ========  ==========
lenet_300_100      8 epochs, lr 3e-3          266,610  96.8%        4.5 s
lenet5             10 epochs, lr 3e-3          61,706  98.4%         15 s
vgg11_bn           width 0.25, 3 epochs       611,834  97.2%         20 s
vit                15 epochs, lr 3e-3         138,890  96.2%         57 s
resnet18           width 0.25, 3 epochs       701,178  98.0%         82 s
resnet_bottleneck  width 0.25, 4 epochs       509,306  97.3%        189 s
densenet           3 epochs, lr 2e-3          102,298  96.4%        215 s
mobilenet_v2       4 epochs, lr 5e-3        2,236,106  96.1%        264 s
=================  =======================  =========  ========  ==========

Times vary by ±30% with other jobs on the machine; with torch's default two threads
and other jobs running, training was 2-5× slower (see ``num_threads``). One epoch of
LeNet-300-100 reaches 88.9% in 0.5 s.
In the CIFAR-shaped form (``channels=3, size=32``: MNIST padded to 32×32, repeated over
three channels) the same recipes give LeNet-300-100 96.7% (13 s), LeNet-5 98.3% (19 s),
VGG-11 96.6% (47 s), ResNet-18 97.9% (93 s). MobileNetV2 at ``width=0.5`` learns more
slowly (94.9% after 6 epochs), so its recipe keeps ``width=1``.

Weights live in ``cache_dir`` if given, else ``$SHRINKC_CACHE_DIR/weights``, else
``platformdirs.user_cache_dir("shrinkc")/weights``. Training is deterministic: the
seed drives initialisation, shuffling and dropout (in a forked RNG, so the caller's
global RNG is untouched), deterministic algorithms are enforced while training, and
training runs on one thread by default; two runs give bit-identical weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

# one augmentation, one seeding and one thread rule for training and recovery
from shrinkc.passes.distill import deterministic, random_shift, torch_threads
from shrinkc.tools import data, zoo

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "Recipe",
    "TrainMetrics",
    "evaluate",
    "random_shift",
    "train",
    "weights_dir",
]

logger = logging.getLogger(__name__)

#: Bumped when the training procedure changes, so old cache entries are not reused.
CACHE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """Default hyper-parameters for one model; ``train`` arguments override each field."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    #: random shifts of up to this many pixels (0: no augmentation)
    shift: int = 0
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)


#: Used for a model that has no entry in :data:`RECIPES`.
DEFAULT_RECIPE = Recipe(epochs=5, lr=1e-3)

#: The recipe per model name in :data:`shrinkc.tools.zoo.MODELS`.
RECIPES: dict[str, Recipe] = {
    "lenet_300_100": Recipe(epochs=8, lr=3e-3, shift=1),
    "lenet5": Recipe(epochs=10, lr=3e-3, shift=1),
    "resnet18": Recipe(epochs=3, lr=2e-3, shift=1, model_kwargs={"width": 0.25}),
    "resnet_bottleneck": Recipe(epochs=4, lr=3e-3, shift=1, model_kwargs={"width": 0.25}),
    "vgg11_bn": Recipe(epochs=3, lr=1e-3, shift=1, model_kwargs={"width": 0.25}),
    "mobilenet_v2": Recipe(epochs=4, lr=5e-3, shift=1),
    "densenet": Recipe(epochs=3, lr=2e-3, shift=1),
    "vit": Recipe(epochs=15, lr=3e-3, shift=1),
}


@dataclass
class TrainMetrics:
    """What ``train`` measured; ``cached`` says the weights were loaded, not trained."""

    model: str
    dataset: str
    test_accuracy: float
    train_accuracy: float | None  # running accuracy over the last epoch (None: 0 epochs)
    train_loss: float | None  # mean loss over the last epoch (None: 0 epochs)
    epochs: int
    seconds: float  # wall-clock training time of the run that produced the weights
    cpu_seconds: float  # CPU time of that run (all threads)
    key: str
    cached: bool = False
    cache_path: str | None = None
    history: list[float] = field(default_factory=list)  # test accuracy after each epoch


def weights_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The weight cache folder: ``cache_dir``, ``$SHRINKC_CACHE_DIR/weights`` or the
    platform cache (``platformdirs.user_cache_dir("shrinkc")/weights``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("SHRINKC_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("shrinkc")
    return Path(root) / "weights"


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy of ``model`` on ``(X, y)``, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            int((model(xb).argmax(dim=1) == yb).sum()) for xb, yb in data.batches(X, y, batch_size)
        )
    finally:
        model.train(was_training)
    return correct / len(y)




def _cache_key(config: Mapping[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def train(
    model_name: str,
    dataset: str = "mnist",
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    shift: int | None = None,
    seed: int = 0,
    channels: int | None = None,
    size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: bool | None = None,
    num_threads: int | None = 1,
) -> tuple[nn.Module, TrainMetrics]:
    """Train reference model ``model_name`` on ``dataset`` (or load it from the cache).

    ``epochs``, ``batch_size``, ``lr``, ``weight_decay`` and ``shift`` (random
    translation of up to that many pixels, see :func:`random_shift`) default to the
    model's :data:`RECIPES` entry; ``model_kwargs`` are merged over the recipe's (e.g.
    ``{"width": 0.5}``). ``channels`` / ``size`` select the image form (default: the
    dataset's native form; ``channels=3, size=32`` for CIFAR-shaped inputs) and the model
    is built for it. ``use_cache=False`` neither reads nor writes the cache. ``progress``
    shows a tqdm bar (default: only when stderr is a terminal). ``num_threads`` is torch's
    intra-op thread count while training (restored afterwards; ``None`` keeps the current
    one): 1 by default, which makes the result independent of the core count and avoids
    OpenMP threads spinning against each other on a loaded machine (measured 4× slower
    with 2 threads than with 1 while other jobs were running).

    Returns the model in eval mode and its :class:`TrainMetrics`.
    """
    if model_name not in zoo.MODELS:
        raise ValueError(f"unknown model {model_name!r}; known models: {', '.join(zoo.MODELS)}")
    info = data.DATASETS.get(dataset)
    if info is None:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(data.DATASETS)}")
    recipe = RECIPES.get(model_name, DEFAULT_RECIPE)
    epochs = recipe.epochs if epochs is None else epochs
    batch_size = recipe.batch_size if batch_size is None else batch_size
    lr = recipe.lr if lr is None else lr
    weight_decay = recipe.weight_decay if weight_decay is None else weight_decay
    shift = recipe.shift if shift is None else shift
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    image = {"channels": channels or info.channels, "size": size or info.size}
    kwargs = {
        "in_channels": image["channels"],
        "input_size": image["size"],
        "num_classes": info.num_classes,
        **recipe.model_kwargs,
        **(model_kwargs or {}),
    }
    config = {
        "version": CACHE_VERSION,
        "model": model_name,
        "model_kwargs": kwargs,
        "dataset": dataset,
        "image": image,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "shift": shift,
        "optimizer": "adamw+onecycle",
        "seed": seed,
    }
    key = _cache_key(config)
    path = weights_dir(cache_dir) / f"{model_name}-{dataset}-{key}.safetensors"

    with deterministic(seed):
        model = zoo.get_model(model_name, **kwargs)
    if use_cache and path.is_file():
        model.load_state_dict(load_file(path))
        with safe_open(path, framework="pt") as f:
            metrics = TrainMetrics(**json.loads(f.metadata()["shrinkc.metrics"]))
        metrics.cached, metrics.cache_path = True, str(path)
        logger.info(
            "loaded %s from %s (test accuracy %.4f)", model_name, path, metrics.test_accuracy
        )
        return model.eval(), metrics

    X, y = data.load(dataset, "train", channels=image["channels"], size=image["size"])
    X_test, y_test = data.load(dataset, "test", channels=image["channels"], size=image["size"])
    show = sys.stderr.isatty() if progress is None else progress
    start, cpu_start = time.perf_counter(), time.process_time()
    with deterministic(seed + 1), torch_threads(num_threads):
        fit = _fit(model, X, y, X_test, y_test, epochs, batch_size, lr, weight_decay, shift, seed,
                   desc=f"train {model_name}", progress=show)  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = TrainMetrics(
        model=model_name,
        dataset=dataset,
        test_accuracy=fit.history[-1] if fit.history else evaluate(model, X_test, y_test),
        train_accuracy=fit.train_accuracy,
        train_loss=fit.train_loss,
        epochs=epochs,
        seconds=round(seconds, 2),
        cpu_seconds=round(cpu_seconds, 2),
        key=key,
        history=fit.history,
    )
    logger.info(
        "trained %s on %s: test accuracy %.4f in %.1f s", model_name, dataset,
        metrics.test_accuracy, seconds,
    )  # fmt: skip
    if use_cache:
        _save(model, metrics, config, path)
        metrics.cache_path = str(path)
    return model.eval(), metrics


@dataclass
class _Fit:
    history: list[float] = field(default_factory=list)
    train_loss: float | None = None
    train_accuracy: float | None = None


def _fit(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    X_test: Tensor,
    y_test: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    shift: int,
    seed: int,
    desc: str,
    progress: bool,
) -> _Fit:
    """AdamW with a one-cycle schedule (15% warm-up, cosine decay); test after each epoch."""
    fit = _Fit()
    if epochs == 0:
        return fit
    steps_per_epoch = -(-len(X) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    with tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress) as bar:
        for epoch in range(epochs):
            model.train()
            loss_sum, correct = 0.0, 0
            for xb, yb in data.batches(X, y, batch_size, shuffle=True, seed=seed + epoch):
                if shift:
                    xb = random_shift(xb, shift)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(yb)
                correct += int((logits.argmax(dim=1) == yb).sum())
                bar.update()
            fit.history.append(evaluate(model, X_test, y_test))
            fit.train_loss, fit.train_accuracy = loss_sum / len(y), correct / len(y)
            bar.set_postfix(loss=f"{fit.train_loss:.3f}", test_acc=f"{fit.history[-1]:.4f}")
    return fit


def _save(model: nn.Module, metrics: TrainMetrics, config: Mapping[str, Any], path: Path) -> None:
    """Write weights + metrics + config as safetensors, atomically (temp file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    stored = {k: v for k, v in asdict(metrics).items() if k not in ("cached", "cache_path")}
    metadata = {
        "shrinkc.metrics": json.dumps(stored),
        "shrinkc.config": json.dumps(config, sort_keys=True, default=str),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, tmp, metadata=metadata)
    os.replace(tmp, path)
