"""CIFAR ResNets (He et al., CVPR 2016, Section 4.2): ``resnet20``, ``resnet32``, ``resnet44``,
``resnet56``, ``resnet110`` (the depths of the paper's Table 6 up to 110).

Architecture (depth = 6n + 2): a 3x3 stem conv (``in_channels`` -> 16) + BN + ReLU, three stages of
n basic blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2), global
average pooling and one linear classifier. A basic block is conv3x3-BN-ReLU-conv3x3-BN, plus the
shortcut, then ReLU. All convs are bias-free.

Shortcut on the two downsampling blocks (``shortcut`` option):

- ``"B"`` (default): 1x1 stride-2 conv + BN projection, stored as ``block.downsample =
  Sequential(conv, bn)`` like torchvision. This is the model of the dynamic-filter source
  repository (heehehe/pruning-decorrelation, ``ResNet_CIFAR``), whose ResNet-56 has 855,770
  parameters for 10 classes, and channel-removal tools can follow a conv shortcut (a
  zero-padding shortcut ties a block's output channels to fixed positions of its input).
- ``"A"``: the parameter-free shortcut of the original CIFAR experiments: subsample by the stride
  and zero-pad the new channels (ResNet-56: 853,018 parameters for 10 classes).

Initialisation follows the source repository: convs Kaiming-normal (fan-out, ReLU gain), BN
gamma = 1 and beta = 0, the linear layer PyTorch's default.

The network is fully convolutional up to the global pooling, so ``image_size`` does not change the
architecture; it is accepted because every model factory takes it.

Checkpoints of other implementations load with ``pretrained=PATH`` through :data:`KEY_MAP`: the
widely used pretrained CIFAR ResNets of akamaster/pytorch_resnet_cifar10 (option A, saved from
``DataParallel``: the ``module.`` prefix is stripped by the loader) name the classifier
``linear`` and an option-B projection ``shortcut.0`` / ``shortcut.1`` (as kuangliu/pytorch-cifar
does); chenyaofo/pytorch-cifar-models uses this module's names already.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.errors import unknown_choice
from prune_cli.models.base import MODELS, KeyMap, init_conv_bn, register_key_map

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)
DEPTHS = (20, 32, 44, 56, 110)

#: Other implementations' checkpoint keys onto this module's (module docstring).
KEY_MAP = KeyMap(
    sources="akamaster/pytorch_resnet_cifar10, kuangliu/pytorch-cifar",
    rules=(
        (r"^linear\.", "fc."),
        (r"\.shortcut\.(\d+)\.", r".downsample.\1."),
    ),
    hints=(
        (
            "missing",
            r"\.downsample\.",
            "the file has no shortcut projections: a zero-padding (option-A) checkpoint needs "
            "model.shortcut=A",
        ),
        (
            "unexpected",
            r"\.(downsample|shortcut)\.\d",
            "the file has shortcut projections: a projection (option-B) checkpoint needs "
            "model.shortcut=B",
        ),
        ("missing", r"^layer\d\.\d+\.", "the file has fewer blocks: check the model's depth"),
        ("unexpected", r"^layer\d\.\d+\.", "the file has more blocks: check the model's depth"),
    ),
)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` with ``out - in`` zero channels split around it."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        pad = out_planes - in_planes
        # Even split as in the reference CIFAR implementations (16 -> 32 pads 8 before, 8 after).
        self.pad_front = pad // 2
        self.pad_back = pad - pad // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Not in-place: forward hooks that record BN outputs must not see them overwritten.
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = _make_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_shortcut(in_planes: int, planes: int, stride: int, shortcut: str) -> nn.Module:
    if shortcut == "A":
        return ZeroPadShortcut(in_planes, planes, stride)
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; see the module docstring for the exact definition."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "B"
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in SHORTCUTS:
            raise unknown_choice("shortcut", shortcut, SHORTCUTS)
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU()
        in_planes = STAGE_WIDTHS[0]
        stages = []
        for i, planes in enumerate(STAGE_WIDTHS):
            first_stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                stride = first_stride if j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _normalise_shortcut(shortcut: object) -> str:
    value = shortcut.upper() if isinstance(shortcut, str) else shortcut
    if value not in SHORTCUTS:
        raise unknown_choice("shortcut", shortcut, SHORTCUTS)
    return str(value)


def _register(depth: int) -> None:
    def factory(
        num_classes: int, in_channels: int, image_size: int, shortcut: str = "B"
    ) -> CifarResNet:
        del image_size  # fully convolutional: the architecture does not depend on it
        return CifarResNet(depth, num_classes, in_channels, _normalise_shortcut(shortcut))

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} ({(depth - 2) // 6} blocks per stage)."
    MODELS.register(f"resnet{depth}")(factory)


for _depth in DEPTHS:
    _register(_depth)
register_key_map((f"resnet{depth}" for depth in DEPTHS), KEY_MAP)
