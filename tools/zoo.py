"""Reference models: small, configurable PyTorch definitions of common architectures.

torchvision and timm do not run with the CPU torch used here, so shrinkc defines the
models its passes and tests are written against. Every factory has the same four knobs:

- ``in_channels``: image channels (1 for MNIST, 3 for CIFAR / ImageNet);
- ``num_classes``: size of the output logits;
- ``width``: a channel multiplier; ``1.0`` gives the reference widths (ResNet base 64,
  VGG 64..512, LeNet-300-100 hidden 300/100, ...), ``0.25`` a narrow, fast model;
- ``input_size``: the square input side the model is built for. Models that flatten a
  spatial map into a ``Linear`` (LeNet, VGG) or have one token per patch (ViT) need it;
  the others use it to pick a CIFAR stem (no early downsampling) or an ImageNet stem.

Every model is built only from ops the IR supports (conv2d, linear, matmul, batch_norm,
layer_norm, relu, relu6, gelu, add, mul, cat, split, reshape, flatten, transpose,
max/avg/adaptive_avg pooling, mean, softmax, dropout), has no data-dependent control flow,
and exports with ``torch.export.export(model.eval(), (x,))`` without decompositions.

    >>> model = get_model("resnet18", width=0.25)
    >>> model(torch.zeros(default_input_shape("resnet18"))).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DATASET_INPUTS",
    "MODELS",
    "default_dataset",
    "default_input_shape",
    "densenet",
    "get_model",
    "lenet5",
    "lenet_300_100",
    "mobilenet_v2",
    "num_parameters",
    "resnet18",
    "resnet_bottleneck",
    "vgg11_bn",
    "vit",
]

Stem = Literal["auto", "cifar", "imagenet"]

#: Per-image input ``(channels, size)`` for each dataset name the helpers accept.
DATASET_INPUTS: dict[str, tuple[int, int]] = {
    "mnist": (1, 28),
    "digits": (1, 8),
    "cifar": (3, 32),
    "tiny": (3, 64),
    "imagenet": (3, 224),
}


# --------------------------------------------------------------------------- helpers


def _scale(channels: int, width: float, divisor: int = 1) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (never below ``divisor``).

    Rounding never goes down by more than 10%, as in MobileNet's ``make_divisible``.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    value = channels * width
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _resolve_stem(stem: Stem, input_size: int) -> Literal["cifar", "imagenet"]:
    """Pick the stem: ``auto`` keeps full resolution for inputs below 128 pixels."""
    if stem == "auto":
        return "imagenet" if input_size >= 128 else "cifar"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    return stem


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """A bias-free ``kernel``×``kernel`` conv with "same" padding followed by batch norm."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


def _init_weights(model: nn.Module) -> nn.Module:
    """He (fan-in) init for convs, zero conv biases; linears and norms keep torch defaults.

    Fan-in keeps the activation scale roughly constant through the network in eval mode
    with fresh batch-norm statistics, so an untrained model still maps different inputs
    to different logits (torchvision's fan-out init makes MobileNetV2's signal vanish).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


# --------------------------------------------------------------------------- LeNet


class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100: flatten, then three ``Linear`` layers."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet_300_100(
    in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: int = 28
) -> LeNet300100:
    """LeNet-300-100 (784-300-100-10 at the defaults: 266,610 parameters)."""
    hidden = (_scale(300, width), _scale(100, width))
    return LeNet300100(in_channels * input_size * input_size, num_classes, hidden)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling: (conv5x5-relu-pool) ×2, then 3 ``Linear``.

    The first conv is padded by 2, so a 28×28 input reaches the second conv at 14×14
    and the classifier at 16×5×5 = 400 features, as in the classic 32×32 LeNet-5.
    """

    def __init__(
        self, in_channels: int, num_classes: int, input_size: int, widths: Sequence[int]
    ) -> None:
        super().__init__()
        c1, c2, f1, f2 = widths
        side = (input_size // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"lenet5 needs input_size >= 12, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * side * side, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet5(
    in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: int = 28
) -> LeNet5:
    """LeNet-5 (6 and 16 conv channels, 120 and 84 hidden units at ``width=1``)."""
    widths = [_scale(c, width) for c in (6, 16, 120, 84)]
    return LeNet5(in_channels, num_classes, input_size, widths)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3×3 conv-bn layers with an identity (or 1×1 conv-bn projection) shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, out_ch, 3)
        self.downsample = _projection(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as in ResNet v1.5), 1×1 expand ×4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_ch, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, out_ch, 1)
        self.downsample = _projection(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """The 1×1 conv-bn shortcut when the shape changes, else ``None`` (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))


class ResNet(nn.Module):
    """A ResNet: stem, four stages of residual blocks, global average pool, ``Linear``.

    The ``cifar`` stem is one 3×3 stride-1 conv (no max pool); the ``imagenet`` stem is
    a 7×7 stride-2 conv followed by a 3×3 stride-2 max pool.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        in_channels: int,
        num_classes: int,
        base: int,
        stem: Literal["cifar", "imagenet"],
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {list(layers)}")
        kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
        self.conv1, self.bn1 = _conv_bn(in_channels, base, kernel, stride)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        in_ch = base
        stages = []
        for i, n in enumerate(layers):
            planes = base * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, planes, stride=2 if i > 0 and j == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    input_size: int = 32,
    stem: Stem = "auto",
) -> ResNet:
    """ResNet-18: BasicBlocks ``[2, 2, 2, 2]``, base width ``64 * width``.

    ``stem="auto"`` uses the CIFAR stem below 128 pixels and the ImageNet stem above.
    """
    return ResNet(
        BasicBlock, [2, 2, 2, 2], in_channels, num_classes, _scale(64, width),
        _resolve_stem(stem, input_size),
    )  # fmt: skip


def resnet_bottleneck(
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    input_size: int = 32,
    stem: Stem = "auto",
    layers: Sequence[int] = (1, 1, 1, 1),
) -> ResNet:
    """A Bottleneck ResNet; ``layers=(3, 4, 6, 3)`` with ``width=1`` is ResNet-50."""
    return ResNet(
        Bottleneck, layers, in_channels, num_classes, _scale(64, width),
        _resolve_stem(stem, input_size),
    )  # fmt: skip


# --------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """VGG with batch norm: conv-bn-relu stages and max pools, flatten, 3-layer classifier.

    A max pool that would shrink the map below 1×1 (e.g. the fifth pool at 28×28) is
    left out, so the same configuration builds for MNIST, CIFAR and ImageNet sizes.
    """

    def __init__(
        self,
        config: Sequence[int | str],
        in_channels: int,
        num_classes: int,
        input_size: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, side = in_channels, input_size
        for item in config:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    side //= 2
            else:
                layers += [*_conv_bn(in_ch, int(item), 3), nn.ReLU()]
                in_ch = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11_bn(
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    input_size: int = 32,
    dropout: float = 0.5,
) -> VGG:
    """VGG-11 with batch norm; classifier hidden size ``512 * width`` (CIFAR-style)."""
    config = [c if c == "M" else _scale(int(c), width) for c in _VGG11]
    return VGG(config, in_channels, num_classes, input_size, _scale(512, width), dropout)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """Expand 1×1 (ReLU6), depthwise 3×3 (ReLU6), linear 1×1 projection; residual if the
    shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(in_ch, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, out_ch, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2: a stem conv, 17 inverted residual blocks, a 1×1 head conv, ``Linear``."""

    # expand ratio t, output channels c, repeats n, first stride s
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: float,
        stem: Literal["cifar", "imagenet"],
        dropout: float,
    ) -> None:
        super().__init__()
        stem_ch = _scale(32, width, 8)
        last_ch = _scale(1280, max(1.0, width), 8)
        # The CIFAR variant keeps full resolution in the stem and the second stage.
        first_strides = {0: 1, 1: 1} if stem == "cifar" else {0: 2}
        layers: list[nn.Module] = [*_conv_bn(in_channels, stem_ch, 3, first_strides[0]), nn.ReLU6()]
        in_ch = stem_ch
        for i, (t, c, n, s) in enumerate(self.SETTINGS):
            out_ch = _scale(c, width, 8)
            for j in range(n):
                stride = first_strides.get(i + 1, s) if j == 0 else 1
                layers.append(InvertedResidual(in_ch, out_ch, stride, t))
                in_ch = out_ch
        layers += [*_conv_bn(in_ch, last_ch, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_ch, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v2(
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    input_size: int = 32,
    stem: Stem = "auto",
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 with width multiplier ``width`` (channels rounded to multiples of 8)."""
    return MobileNetV2(in_channels, num_classes, width, _resolve_stem(stem, input_size), dropout)


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """DenseNet-BC layer: bn-relu-conv1×1 (4k) then bn-relu-conv3×3 (k), concatenated."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """bn-relu-conv1×1 (compressing channels) then a 2×2 average pool."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC: stem, dense blocks joined by transitions, bn-relu, pool, ``Linear``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        growth: int,
        blocks: Sequence[int],
        compression: float,
        stem: Literal["cifar", "imagenet"],
    ) -> None:
        super().__init__()
        ch = 2 * growth
        if stem == "cifar":
            stem_layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)]
        else:
            stem_layers = [*_conv_bn(in_channels, ch, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        layers = stem_layers
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(ch, growth))
                ch += growth
            if i < len(blocks) - 1:
                out_ch = max(1, int(ch * compression))
                layers.append(Transition(ch, out_ch))
                ch = out_ch
        layers += [nn.BatchNorm2d(ch), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def densenet(
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    input_size: int = 32,
    stem: Stem = "auto",
    blocks: Sequence[int] = (4, 4, 4),
    growth: int = 12,
    compression: float = 0.5,
) -> DenseNet:
    """A small DenseNet-BC: growth rate ``growth * width``, ``blocks`` layers per block."""
    return DenseNet(
        in_channels, num_classes, _scale(growth, width), blocks, compression,
        _resolve_stem(stem, input_size),
    )  # fmt: skip


# --------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention written out: one qkv ``Linear``, split, per-head matmuls."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q = q.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = k.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        v = v.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` (GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Vision transformer: patch-embedding conv, learned positional embedding, encoder
    blocks, final LayerNorm, mean over tokens (no class token), ``Linear`` head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        grid = input_size // patch_size
        if grid < 1:
            raise ValueError(f"patch_size {patch_size} is larger than input_size {input_size}")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.patch_embed(x), 2).transpose(1, 2)  # B, N, C
        x = self.blocks(x + self.pos_embed)
        x = self.norm(x).mean(dim=1)
        return self.head(x)


def vit(
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    input_size: int = 32,
    patch_size: int | None = None,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
) -> ViT:
    """A small ViT; embedding size ``dim * width`` rounded to a multiple of ``heads``.

    ``patch_size=None`` gives a 4×4 grid of patches up to 64 pixels (patches of 7 at
    28×28, 8 at 32×32) and 16-pixel patches above (14×14 tokens at 224×224). A remainder
    at the border is dropped.
    """
    if patch_size is None:
        patch_size = max(1, min(16, input_size // 4))
    embed = _scale(dim, width, heads)
    return ViT(in_channels, num_classes, input_size, patch_size, embed, depth, heads, mlp_ratio)


# --------------------------------------------------------------------------- registry

#: Every reference model by name. Each factory takes
#: ``in_channels, num_classes, width, input_size`` (plus model-specific keywords).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet_300_100": lenet_300_100,
    "lenet5": lenet5,
    "resnet18": resnet18,
    "resnet_bottleneck": resnet_bottleneck,
    "vgg11_bn": vgg11_bn,
    "mobilenet_v2": mobilenet_v2,
    "densenet": densenet,
    "vit": vit,
}

_MNIST_NATIVE = frozenset({"lenet_300_100", "lenet5"})


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASET_INPUTS:
        known = ", ".join(sorted(DATASET_INPUTS))
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {known}")


def default_dataset(name: str) -> str:
    """The dataset a model is shaped for by default: ``mnist`` for LeNets, else ``cifar``."""
    _check_name(name)
    return "mnist" if name in _MNIST_NATIVE else "cifar"


def default_input_shape(
    name: str, dataset: str | None = None, batch_size: int = 1
) -> tuple[int, int, int, int]:
    """A sensible NCHW input shape for model ``name``.

    ``dataset`` is one of :data:`DATASET_INPUTS` (``mnist``, ``cifar``, ...); ``None``
    means the model's default (``resnet18`` → ``(1, 3, 32, 32)``, ``lenet5`` →
    ``(1, 1, 28, 28)``). A model built with ``get_model(name, dataset=dataset)`` accepts it.
    """
    dataset = default_dataset(name) if dataset is None else dataset
    _check_dataset(dataset)
    channels, size = DATASET_INPUTS[dataset]
    return (batch_size, channels, size, size)


def get_model(name: str, dataset: str | None = None, **kwargs: object) -> nn.Module:
    """Build reference model ``name`` from :data:`MODELS`.

    ``dataset`` (e.g. ``"mnist"``) fills in ``in_channels`` and ``input_size`` to match
    :func:`default_input_shape`; explicit keyword arguments win. Raises ``ValueError``
    listing the known models for an unknown name.
    """
    _check_name(name)
    if dataset is not None:
        _check_dataset(dataset)
        channels, size = DATASET_INPUTS[dataset]
        kwargs = {"in_channels": channels, "input_size": size, **kwargs}
    return MODELS[name](**kwargs)


def num_parameters(model: nn.Module) -> int:
    """The number of parameters (buffers such as batch-norm statistics not included)."""
    return sum(p.numel() for p in model.parameters())
