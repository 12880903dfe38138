"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016): ``wrn16_4``, ``wrn16_8``, ``wrn28_10``,
``wrn40_4`` (``wrn<depth>_<widen factor>``).

The architecture of the soft-sharing source (Savarese & Maire, ICLR 2019; docs/methods.md §9.2),
whose parameter counts it reproduces exactly (WRN-28-10: 36,479,194 for 10 classes). Depth = 6n + 4:
a 3x3 stem conv (``in_channels`` -> 16), three stages of n pre-activation blocks of widths 16k, 32k
and 64k (the first block of stages 2 and 3 has stride 2), then BN + ReLU, global
average pooling and a linear classifier. A block is BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3
added to the shortcut; where the width or stride changes, the shortcut is a 1x1 conv applied to
the pre-activated input (as in the authors' code), elsewhere the identity. All convs are
bias-free.

Stages are named ``layer1..layer3`` and a block's convs ``conv1``/``conv2``, as in the CIFAR
ResNets, so the soft-sharing plan is the same rule on both. Initialisation: convs Kaiming-normal
(fan-out, ReLU gain), BN gamma 1 and beta 0, the linear bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.models.base import MODELS, init_conv_bn

BASE_WIDTHS = (16, 32, 64)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()  # not in-place: hooks that record BN outputs must see them intact
        self.dropout = dropout
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        # A projection shortcut sees the pre-activated input (the whole block is then a function
        # of BN-ReLU(x)); the identity shortcut carries x itself.
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + identity


class WideResNet(nn.Module):
    """WRN-depth-k for small images; see the module docstring for the exact definition."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"Wide ResNet widen factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        blocks_per_stage = (depth - 4) // 6
        widths = [w * widen_factor for w in BASE_WIDTHS]
        self.conv1 = nn.Conv2d(in_channels, BASE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        in_planes = BASE_WIDTHS[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_conv_bn(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(depth: int, widen_factor: int) -> None:
    def factory(
        num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0
    ) -> WideResNet:
        del image_size  # fully convolutional: the architecture does not depend on it
        return WideResNet(depth, widen_factor, num_classes, in_channels, float(dropout))

    name = f"wrn{depth}_{widen_factor}"
    factory.__name__ = name
    factory.__doc__ = f"Wide ResNet-{depth}-{widen_factor} ({(depth - 4) // 6} blocks per stage)."
    MODELS.register(name)(factory)


for _depth, _width in ((16, 4), (16, 8), (28, 10), (40, 4)):
    _register(_depth, _width)
