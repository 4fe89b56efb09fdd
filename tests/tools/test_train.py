"""Training helper: reaches a stated accuracy, caches as safetensors, is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from shrinkc.tools import data, train, zoo


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def one_epoch(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, torch.nn.Module, train.TrainMetrics]:
    cache = tmp_path_factory.mktemp("weights")
    model, metrics = train.train("lenet_300_100", epochs=1, cache_dir=cache, progress=False)
    return cache, model, metrics


def test_one_epoch_reaches_stated_accuracy(one_epoch) -> None:
    _, model, metrics = one_epoch
    # Measured: 0.889 test accuracy after 1 epoch (MNIST-5k, seed 0, 0.5 s).
    assert metrics.test_accuracy >= 0.85
    assert not metrics.cached and metrics.epochs == 1 and len(metrics.history) == 1
    assert not model.training
    X, y = data.mnist("test")
    assert train.evaluate(model, X, y) == metrics.test_accuracy


def test_second_call_hits_cache(one_epoch) -> None:
    cache, model, metrics = one_epoch
    files = list(cache.glob("*.safetensors"))
    assert [f.name for f in files] == [f"lenet_300_100-mnist-{metrics.key}.safetensors"]
    model2, metrics2 = train.train("lenet_300_100", epochs=1, cache_dir=cache, progress=False)
    assert metrics2.cached and metrics2.cache_path == str(files[0])
    assert metrics2.key == metrics.key and metrics2.test_accuracy == metrics.test_accuracy
    assert metrics2.seconds == metrics.seconds  # the original run's time, not a new one
    assert _state_equal(model, model2)
    X, y = data.mnist("test")
    assert train.evaluate(model2, X, y) == metrics.test_accuracy


def test_cache_file_is_safetensors_with_config(one_epoch) -> None:
    cache, _, metrics = one_epoch
    path = cache / f"lenet_300_100-mnist-{metrics.key}.safetensors"
    assert path.read_bytes()[8:9] == b"{"  # safetensors: u64 header size, JSON header
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    config = json.loads(meta["shrinkc.config"])
    assert config["model"] == "lenet_300_100" and config["epochs"] == 1 and config["seed"] == 0


def test_key_changes_with_every_setting(one_epoch) -> None:
    cache, _, metrics = one_epoch
    # epochs=0 trains nothing, so these calls are cheap; each must miss the cache.
    keys = {metrics.key}
    for kwargs in (
        {"epochs": 0},
        {"epochs": 0, "seed": 1},
        {"epochs": 0, "lr": 1e-4},
        {"epochs": 0, "model_kwargs": {"width": 0.5}},
        {"epochs": 0, "channels": 3, "size": 32},
        {"epochs": 0, "dataset": "digits"},
    ):
        _, m = train.train("lenet_300_100", cache_dir=cache, progress=False, **kwargs)
        assert not m.cached
        keys.add(m.key)
    assert len(keys) == 7


def test_deterministic_and_global_state_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    kw = {"epochs": 1, "progress": False}  # the recipe's random shifts included
    a, ma = train.train("lenet_300_100", cache_dir=tmp_path / "a", **kw)
    b, mb = train.train("lenet_300_100", cache_dir=tmp_path / "b", **kw)
    assert not ma.cached and not mb.cached
    assert _state_equal(a, b) and ma.test_accuracy == mb.test_accuracy
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.are_deterministic_algorithms_enabled() is False
    assert torch.get_num_threads() == threads


def test_use_cache_false_writes_nothing(tmp_path: Path) -> None:
    _, m = train.train("lenet_300_100", epochs=0, cache_dir=tmp_path, use_cache=False)
    assert m.cache_path is None and not any(tmp_path.iterdir())


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path))
    assert train.weights_dir() == tmp_path / "weights"
    assert train.weights_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SHRINKC_CACHE_DIR")
    assert train.weights_dir().name == "weights" and "shrinkc" in str(train.weights_dir())


def test_cifar_form_builds_matching_model(tmp_path: Path) -> None:
    model, m = train.train(
        "resnet18", epochs=0, channels=3, size=32, model_kwargs={"width": 0.125},
        cache_dir=tmp_path, progress=False,
    )  # fmt: skip
    assert model.conv1.in_channels == 3 and model.fc.out_features == 10
    assert 0.0 <= m.test_accuracy <= 0.3  # untrained: about chance


def test_random_shift_moves_whole_pixels() -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    g = torch.Generator().manual_seed(0)
    out = train.random_shift(x, 2, generator=g)
    pos = out.flatten(1).argmax(dim=1)
    rows, cols = pos // 9, pos % 9
    assert out.sum() == 64  # one pixel moved, nothing blurred
    assert rows.min() == cols.min() == 2 and rows.max() == cols.max() == 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'alexnet'.*lenet5"):
        train.train("alexnet")
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist"):
        train.train("lenet5", dataset="cifar10")


def test_every_model_has_a_recipe() -> None:
    assert set(train.RECIPES) == set(zoo.MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_recipe_reaches_95_percent(name: str, tmp_path: Path) -> None:
    _, metrics = train.train(name, cache_dir=tmp_path, progress=False)
    assert metrics.test_accuracy >= 0.95, metrics
