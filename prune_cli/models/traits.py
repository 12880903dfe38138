"""What the mechanics need to know about a model (lead's stand-in; replaced by models branch)."""

from __future__ import annotations

from torch import nn
from torchvision.models import VGG, ShuffleNetV2, SqueezeNet

from prune_cli.models.vgg import CifarVGG


def is_plain(model: nn.Module) -> bool:
    return isinstance(model, (CifarVGG, VGG, SqueezeNet))


def is_shufflenet_v2(model: nn.Module) -> bool:
    return isinstance(model, ShuffleNetV2)
