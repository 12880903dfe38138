"""CIFAR VGG with batch norm, as used by network slimming: ``vgg11``, ``vgg16``, ``vgg19``.

Follows Eric-mingjie/network-slimming ``models/vgg.py``: ``feature`` is a Sequential of
conv3x3 (padding 1, **no bias**) + BN + ReLU per number of the configuration and MaxPool2d(2) at
each ``"M"``; the classifier is a single ``Linear(last_width, num_classes)``. The original
averages the final 2x2 map with ``AvgPool2d(2)`` (32 px input); we use ``AdaptiveAvgPool2d(1)``,
which is identical at 32 px and also accepts 48 px (FER) or larger inputs.

Initialisation (as in the source): conv weights N(0, sqrt(2 / (k*k*C_out))), BN gamma = 0.5 and
beta = 0 (the L1 penalty of slimming acts on gamma), linear weights N(0, 0.01) and bias 0.

Parameters for 10 / 100 classes: VGG-19 20,035,018 / 20,081,188.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prune_cli.models.base import MODELS

VggConfig = list[int | str]

CONFIGS: dict[str, VggConfig] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
    ],
}


class CifarVGG(nn.Module):
    """VGG for small images; ``cfg`` lists conv widths and ``"M"`` (2x2 max-pool) in order.

    A pruned network is built by passing the reduced ``cfg`` (channels kept per conv).
    """

    def __init__(self, cfg: VggConfig, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.feature = _make_layers(cfg, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_width = next(v for v in reversed(cfg) if v != "M")
        self.classifier = nn.Linear(int(last_width), num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.feature(x))
        return self.classifier(torch.flatten(x, 1))


def _make_layers(cfg: VggConfig, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        width = int(v)
        # Not in-place ReLU: forward hooks that record BN outputs must not see them overwritten.
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        in_channels = width
    return nn.Sequential(*layers)


def _register(name: str) -> None:
    def factory(num_classes: int, in_channels: int, image_size: int) -> CifarVGG:
        del image_size  # global pooling before the classifier: any size with >= 1 px after pools
        return CifarVGG(list(CONFIGS[name]), num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR {name.upper()} with BN (network-slimming configuration)."
    MODELS.register(name)(factory)


for _name in CONFIGS:
    _register(_name)
