"""Torch definitions of optc's reference models (needs torch).

* :class:`DigitsCNN`, :class:`DigitsMLP` — trained on scikit-learn's 8x8 digits
  (see :mod:`optc.models.digits`); both take ``N x 1 x 8 x 8`` inputs and return 10 logits.
* :func:`resnet18` — ResNet-18 equivalent to torchvision's ``resnet18`` (BasicBlock,
  ``[2, 2, 2, 2]``, 3x224x224 input; 11,689,512 parameters at 1000 classes). Used with
  random weights for latency work.
* :class:`MobileNetLike` — MobileNetV2-style network (inverted residuals, depthwise 3x3
  convolutions, ReLU6), width 0.75 by default: about 2.6M parameters, 3x224x224 input.
* :func:`tiny_resnet` — a small residual CNN on 3x32x32 for fast tests.

:func:`seeded` builds any of them with deterministic random weights and, optionally, batch
norm statistics calibrated on random data so the activations of a randomly initialised deep
network stay well scaled (useful when comparing backends numerically).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

__all__ = [
    "DigitsCNN",
    "DigitsMLP",
    "BasicBlock",
    "ResNet",
    "resnet18",
    "InvertedResidual",
    "MobileNetLike",
    "tiny_resnet",
    "count_params",
    "seeded",
    "calibrate_batchnorm",
]

M = TypeVar("M", bound=nn.Module)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 digits: 3 conv-BN-ReLU blocks (16, 32, 64 channels), one 2x2
    max-pool, global average pool, Linear(64, 10). About 23k parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 16),
            *_conv_bn_relu(16, 32),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            *_conv_bn_relu(32, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    """MLP 64 -> 256 -> 128 -> 10 with BatchNorm1d + ReLU; flattens ``N x 1 x 8 x 8`` input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------
# ResNet (torchvision-equivalent layout and initialisation)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with BasicBlocks, same module names and shapes as torchvision's ``ResNet``."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 1000,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = stem
        self.num_stages = len(layers)
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))  # layer1..layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) for 3x224x224 input, as torchvision builds it."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes)


# --------------------------------------------------------------------------------------
# MobileNetV2-style


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, with a residual
    Add when the stride is 1 and the channel count is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetLike(nn.Module):
    """MobileNetV2 layout (t, c, n, s table of the paper) at ``width_mult`` (default 0.75:
    ~2.6M parameters at 1000 classes) for 3x224x224 input."""

    SETTINGS = (
        # expand t, channels c, repeats n, first stride s
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 0.75, last_channel: int = 1280
    ) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult))
        layers: list[nn.Module] = [
            nn.Conv2d(3, cin, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
        ]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [
            nn.Conv2d(cin, self.last_channel, 1, bias=False),
            nn.BatchNorm2d(self.last_channel),
            nn.ReLU6(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():  # torchvision's MobileNetV2 initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------
# tiny residual CNN


def tiny_resnet(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> ResNet:
    """A small residual CNN for fast tests (3x32x32 input by default): a 3x3 stem, then two
    stages of one BasicBlock each (``width`` and ``2 * width`` channels; the second has a
    strided 1x1 projection shortcut), global average pool and a Linear head. Every block
    ends in a residual ``Add``."""
    model = ResNet((1, 1), num_classes=num_classes, widths=(width, 2 * width), in_channels=in_channels)
    # 32x32 inputs: replace the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) with a 3x3 conv.
    model.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# --------------------------------------------------------------------------------------
# helpers


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, input_shape: tuple[int, ...], *, batches: int = 2, seed: int = 0
) -> nn.Module:
    """Set every BatchNorm's running statistics to those of random normal inputs.

    A randomly initialised network in eval mode normalises with mean 0 / variance 1, so its
    activations grow or vanish layer by layer; after this they are roughly unit-scaled, as
    in a trained network. Returns ``model`` in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(batches):
        model(torch.randn(*input_shape, generator=gen))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def seeded(
    factory: Callable[..., M],
    *args: object,
    seed: int = 0,
    calibrate: tuple[int, ...] | None = None,
    **kwargs: object,
) -> M:
    """``factory(*args, **kwargs)`` with weights drawn from ``torch.manual_seed(seed)``
    (the global RNG state is restored afterwards), in eval mode. With ``calibrate`` (an
    input shape, e.g. ``(4, 3, 224, 224)``) batch norm statistics are set by
    :func:`calibrate_batchnorm`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(*args, **kwargs)
    if calibrate is not None:
        calibrate_batchnorm(model, calibrate, seed=seed)
    return model.eval()
