"""Shared fixtures: the reference models in small configurations, traced once per worker."""

from __future__ import annotations

import pytest
import torch

from shrinkc.tools import zoo

# Small but structurally complete configurations: every block type is still there.
SMALL_CONFIGS: dict[str, dict] = {
    "lenet_300_100": {},
    "lenet5": {},
    "resnet18": {"width": 0.25},
    "resnet_bottleneck": {"width": 0.25},
    "vgg11_bn": {"width": 0.25},
    "mobilenet_v2": {"width": 0.5},
    "densenet": {"width": 0.5, "blocks": (2, 2, 2)},
    "vit": {"dim": 32, "depth": 2, "heads": 4},
}


def make_reference(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A reference model (eval mode, seeded weights, BN statistics made non-trivial) and an
    example input at its default shape."""
    torch.manual_seed(seed)
    model = zoo.get_model(name, **SMALL_CONFIGS[name]).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():  # fresh BNs have mean 0 / var 1: make folding non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    x = torch.randn(*zoo.default_input_shape(name), generator=g)
    return model, x


#: Even smaller configurations (ONNX round trips, where size does not matter).
TINY_CONFIGS: dict[str, dict] = {
    "lenet_300_100": {"width": 0.25}, "lenet5": {}, "resnet18": {"width": 0.125},
    "resnet_bottleneck": {"width": 0.125}, "vgg11_bn": {"width": 0.125},
    "mobilenet_v2": {"width": 0.25}, "densenet": {"blocks": (2, 2), "growth": 4},
    "vit": {"dim": 16, "depth": 2, "heads": 2},
}


def make_tiny(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A ``TINY_CONFIGS`` reference model with non-trivial batch-norm statistics, and an
    input."""
    torch.manual_seed(0)
    model = zoo.get_model(name, **TINY_CONFIGS[name]).eval()
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.weight.data = torch.rand(c, generator=gen) + 0.5
            mod.bias.data = torch.randn(c, generator=gen) * 0.1
            mod.running_mean = torch.randn(c, generator=gen) * 0.1
            mod.running_var = torch.rand(c, generator=gen) + 0.5
    return model, torch.randn(*zoo.default_input_shape(name), generator=gen)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``tiny_name`` runs once per reference model."""
    if "tiny_name" in metafunc.fixturenames:
        metafunc.parametrize("tiny_name", list(TINY_CONFIGS))


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(name) -> (module, input)``: see ``make_tiny``."""
    return make_tiny


@pytest.fixture(scope="session")
def reference_names() -> list[str]:
    assert set(SMALL_CONFIGS) == set(zoo.MODELS), "add new zoo models to SMALL_CONFIGS"
    return list(SMALL_CONFIGS)


@pytest.fixture(scope="session")
def reference_graphs():
    """name -> (model, example input, traced graph), traced once per test worker."""
    from shrinkc import trace

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, x = make_reference(name)
            cache[name] = (model, x, trace(model, (x,), name=name))
        return cache[name]

    return get
