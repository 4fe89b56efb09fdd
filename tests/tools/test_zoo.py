"""Reference models: shapes, torch.export without decompositions, IR-only ops, sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkc.tools import zoo
from suite import SMALL_CONFIGS, TINY_CONFIGS, assert_close, f64_model

# The aten ops the IR accepts from torch.export (no decompositions), as export spells them.
IR_ATEN_OPS = {
    "aten.conv2d.default", "aten.linear.default", "aten.matmul.default",
    "aten.batch_norm.default", "aten.layer_norm.default", "aten.group_norm.default",
    "aten.relu.default", "aten.hardtanh.default", "aten.relu6.default", "aten.gelu.default",
    "aten.silu.default", "aten.sigmoid.default", "aten.tanh.default",
    "aten.hardswish.default", "aten.softmax.int", "aten.add.Tensor", "aten.sub.Tensor",
    "aten.mul.Tensor", "aten.div.Tensor", "aten.cat.default", "aten.split.Tensor",
    "aten.slice.Tensor", "aten.reshape.default", "aten.view.default",
    "aten.flatten.using_ints", "aten.permute.default", "aten.transpose.int",
    "aten.max_pool2d.default", "aten.avg_pool2d.default",
    "aten.adaptive_avg_pool2d.default", "aten.mean.dim", "aten.embedding.default",
    "aten.dropout.default", "<built-in function getitem>",
}  # fmt: skip

# Small widths keep the whole matrix fast on 2 cores; width=1 is covered for a few below.
SMALL = {"width": 0.25}
CASES = [(name, ds) for name in zoo.MODELS for ds in ("mnist", "cifar")]


def _build(name: str, dataset: str, **kwargs: object) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = zoo.get_model(name, dataset=dataset, **{**SMALL, **kwargs}).eval()
    _randomise_bn(model)
    x = torch.randn(zoo.default_input_shape(name, dataset, batch_size=2))
    return model, x


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial batch-norm statistics, so eval-mode BN is not an identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize(("name", "dataset"), CASES)
def test_forward_shape(name: str, dataset: str) -> None:
    model, x = _build(name, dataset)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
    # Different images give different logits (the model is not constant).
    assert not torch.allclose(y[0], y[1])


# Ops each model must keep through export (what makes it a useful compiler test case).
CHARACTERISTIC_OPS = {
    "lenet_300_100": {"aten.flatten.using_ints", "aten.linear.default", "aten.relu.default"},
    "lenet5": {"aten.conv2d.default", "aten.max_pool2d.default", "aten.linear.default"},
    "resnet18": {"aten.conv2d.default", "aten.batch_norm.default", "aten.add.Tensor",
                 "aten.adaptive_avg_pool2d.default", "aten.flatten.using_ints"},
    "resnet_bottleneck": {"aten.conv2d.default", "aten.batch_norm.default", "aten.add.Tensor"},
    "vgg11_bn": {"aten.max_pool2d.default", "aten.dropout.default", "aten.batch_norm.default"},
    "mobilenet_v2": {"aten.hardtanh.default", "aten.add.Tensor", "aten.conv2d.default"},
    "densenet": {"aten.cat.default", "aten.avg_pool2d.default"},
    "vit": {"aten.matmul.default", "aten.softmax.int", "aten.layer_norm.default",
            "aten.gelu.default", "aten.transpose.int", "aten.split.Tensor", "aten.mean.dim"},
}  # fmt: skip


def test_characteristic_ops_cover_every_model() -> None:
    assert set(CHARACTERISTIC_OPS) == set(zoo.MODELS)


@pytest.mark.parametrize(("name", "dataset"), CASES)
def test_export_matches_eager_and_uses_ir_ops(name: str, dataset: str) -> None:
    model, x = _build(name, dataset)
    ep = torch.export.export(model, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert ops <= IR_ATEN_OPS, f"ops outside the IR: {sorted(ops - IR_ATEN_OPS)}"
    assert CHARACTERISTIC_OPS[name] <= ops
    x2 = torch.randn_like(x).double()  # float64 on both sides: tests/conftest.py
    ep64 = torch.export.export(f64_model(model), (x.double(),))
    with torch.no_grad():
        assert_close(ep64.module()(x2), f64_model(model)(x2), msg=name)


def test_mobilenet_depthwise_convs_have_groups_equal_channels() -> None:
    model = zoo.mobilenet_v2(width=0.5)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17  # one per inverted residual block
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


@pytest.mark.parametrize("name", ["resnet18", "vit", "vgg11_bn"])
def test_imagenet_input(name: str) -> None:
    model = zoo.get_model(name, dataset="imagenet", width=0.125).eval()
    with torch.no_grad():
        assert model(torch.randn(zoo.default_input_shape(name, "imagenet"))).shape == (1, 10)


def test_stem_auto_follows_input_size() -> None:
    assert isinstance(zoo.resnet18(input_size=32).maxpool, nn.Identity)
    assert zoo.resnet18(input_size=32).conv1.kernel_size == (3, 3)
    big = zoo.resnet18(input_size=224)
    assert isinstance(big.maxpool, nn.MaxPool2d)
    assert (big.conv1.kernel_size, big.conv1.stride) == ((7, 7), (2, 2))
    assert zoo.resnet18(input_size=32, stem="imagenet").conv1.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="stem"):
        zoo.resnet18(stem="tiny")  # type: ignore[arg-type]


def test_lenet_300_100_parameter_count() -> None:
    # 784*300 + 300 + 300*100 + 100 + 100*10 + 10
    assert zoo.num_parameters(zoo.lenet_300_100()) == 266_610


def test_lenet5_parameter_count() -> None:
    # conv 1->6 5x5, conv 6->16 5x5, fc 400->120->84->10 (28x28 input, first conv padded)
    expected = (
        (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    )
    assert zoo.num_parameters(zoo.lenet5()) == expected == 61_706


def _resnet18_params(c: int, in_ch: int, classes: int) -> int:
    conv = lambda i, o, k: i * o * k * k
    bn = lambda ch: 2 * ch
    total = conv(in_ch, c, 3) + bn(c)  # CIFAR stem
    in_c = c
    for stage in range(4):
        out = c * 2**stage
        for block in range(2):
            total += conv(in_c, out, 3) + bn(out) + conv(out, out, 3) + bn(out)
            if in_c != out:  # 1x1 projection shortcut
                total += conv(in_c, out, 1) + bn(out)
            in_c = out
        del block
    return total + in_c * classes + classes


def test_resnet18_parameter_count() -> None:
    assert zoo.num_parameters(zoo.resnet18()) == _resnet18_params(64, 3, 10) == 11_173_962
    model = zoo.resnet18(in_channels=1, num_classes=7, width=0.25)
    assert zoo.num_parameters(model) == _resnet18_params(16, 1, 7)


def test_resnet_bottleneck_layers_and_expansion() -> None:
    model = zoo.resnet_bottleneck(width=0.25, layers=(1, 2, 1, 1))
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [len(stage) for stage in stages] == [1, 2, 1, 1]
    assert model.fc.in_features == 16 * 8 * 4  # base 16, last stage 8×base, expansion 4
    with pytest.raises(ValueError, match="4 positive"):
        zoo.resnet_bottleneck(layers=(1, 1, 1))


def test_width_scales_channels() -> None:
    assert zoo.vgg11_bn(width=0.5).classifier[0].out_features == 256
    assert zoo.vit(width=2.0).head.in_features == 128
    assert zoo.lenet_300_100(width=0.5).fc1.out_features == 150
    with pytest.raises(ValueError, match="width"):
        zoo.lenet5(width=0)


def test_vgg_skips_pools_that_would_empty_the_map() -> None:
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.features)
    assert pools(zoo.vgg11_bn(input_size=32)) == 5
    assert pools(zoo.vgg11_bn(input_size=28)) == 4  # 28 -> 14 -> 7 -> 3 -> 1
    assert zoo.vgg11_bn(input_size=28).classifier[0].in_features == 512


def test_vit_attention_matches_reference_formula() -> None:
    torch.manual_seed(0)
    attn = zoo.Attention(dim=16, heads=4).eval()
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = lambda t: t.reshape(2, 5, 4, 4).permute(0, 2, 1, 3)
    w = torch.softmax(heads(q) @ heads(k).transpose(-2, -1) / 2.0, dim=-1)  # sqrt(4) = 2
    expected = attn.proj((w @ heads(v)).permute(0, 2, 1, 3).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected)
    with pytest.raises(ValueError, match="divisible"):
        zoo.Attention(dim=10, heads=4)


def test_vit_patch_grid() -> None:
    assert zoo.vit(input_size=32).pos_embed.shape == (1, 16, 64)  # 4x4 patches of 8
    assert zoo.vit(input_size=28, in_channels=1).patch_embed.kernel_size == (7, 7)
    assert zoo.vit(input_size=224).pos_embed.shape == (1, 196, 64)  # 14x14 patches of 16
    assert zoo.vit(input_size=32, patch_size=4).pos_embed.shape == (1, 64, 64)
    assert zoo.vit(input_size=30, patch_size=4).pos_embed.shape == (1, 49, 64)  # border dropped


def test_densenet_channel_growth() -> None:
    model = zoo.densenet(blocks=(2, 2), growth=4, compression=0.5)
    # stem 8 -> +2*4 = 16 -> transition 8 -> +2*4 = 16
    assert model.fc.in_features == 16
    layer = next(m for m in model.modules() if isinstance(m, zoo.DenseLayer))
    out = layer(torch.randn(1, 8, 6, 6))
    assert out.shape == (1, 12, 6, 6)


def test_get_model_unknown_name_lists_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet1000'") as info:
        zoo.get_model("resnet1000")
    for name in zoo.MODELS:
        assert name in str(info.value)


def test_get_model_dataset_sets_input_form_and_kwargs_win() -> None:
    model = zoo.get_model("resnet18", dataset="mnist", width=0.25)
    assert model.conv1.in_channels == 1
    model = zoo.get_model("lenet_300_100", dataset="cifar")
    assert model.fc1.in_features == 3 * 32 * 32
    model = zoo.get_model("lenet_300_100", dataset="cifar", in_channels=1)
    assert model.fc1.in_features == 32 * 32
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        zoo.get_model("lenet5", dataset="svhn")


def test_default_input_shape() -> None:
    assert zoo.default_input_shape("resnet18") == (1, 3, 32, 32)
    assert zoo.default_input_shape("lenet5") == (1, 1, 28, 28)
    assert zoo.default_input_shape("lenet_300_100", "cifar", batch_size=4) == (4, 3, 32, 32)
    assert zoo.default_input_shape("vit", "imagenet") == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="unknown model"):
        zoo.default_input_shape("alexnet")


def test_every_model_has_test_configurations() -> None:
    assert set(SMALL_CONFIGS) == set(zoo.MODELS) == set(TINY_CONFIGS), \
        "add new zoo models to SMALL_CONFIGS and TINY_CONFIGS in tests/conftest.py"
