"""Architecture knowledge next to the models (prune_cli.models.traits)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_cli.models import MODELS, build_skeleton
from prune_cli.models.traits import (
    has_skip_connections,
    is_cifar_resnet,
    is_plain,
    is_shufflenet_v2,
    stem_and_classifier,
)
from prune_cli.sharing import is_cifar_resnet as sharing_is_cifar_resnet
from prune_cli.sharing import is_shufflenet as sharing_is_shufflenet

PLAIN = {"vgg11", "vgg16", "vgg19", "squeezenet1_1"}


def _skeleton(name: str, image_size: int = 32) -> nn.Module:
    return build_skeleton(name, num_classes=10, in_channels=3, image_size=image_size)


@pytest.mark.parametrize("name", MODELS.names())
def test_registered_models(name: str) -> None:
    model = _skeleton(name)
    assert is_plain(model) == (name in PLAIN)
    # The class table and the traced structure agree.
    assert has_skip_connections(model) == (name not in PLAIN)
    assert is_shufflenet_v2(model) == name.startswith("shufflenet")
    cifar_resnets = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
    assert is_cifar_resnet(model) == (name in cifar_resnets or name.startswith("wrn"))
    assert sharing_is_shufflenet(model) == is_shufflenet_v2(model)
    assert sharing_is_cifar_resnet(model) == is_cifar_resnet(model)


@pytest.mark.parametrize(
    ("arch", "plain"),
    [
        ("alexnet", True),
        ("vgg11_bn", True),
        ("squeezenet1_0", True),
        ("googlenet", True),  # parallel branches, each ending in a conv: no skip
        ("densenet121", False),  # the input is concatenated to the new features
        ("inception_v3", False),  # reduction blocks concatenate a bare max-pool branch
        ("regnet_y_400mf", False),
        ("shufflenet_v2_x2_0", False),
        ("convnext_tiny", False),
        ("swin_t", False),
        ("vit_b_32", False),
    ],
)
def test_torchvision_families(arch: str, plain: bool) -> None:
    model = _skeleton(f"torchvision-{arch}")
    assert is_plain(model) == plain
    assert has_skip_connections(model) == (not plain)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c(self.b(torch.relu(self.a(x)))))
        return self.fc(x.view(x.size(0), x.size(1), -1).mean(-1))  # size arithmetic: no skip


class Residual(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = x + self.b(torch.relu(x))
        return self.fc(x.mean((2, 3)))


class Dense(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = torch.cat([x, self.b(x)], 1)
        return self.fc(x[:, :4].mean((2, 3)))


class Parallel(Chain):
    """Two convs of one input, concatenated: SqueezeNet's fire module, no skip."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        y = torch.cat([self.b(x), self.c(x)], 1)
        return self.fc(y[:, :4].mean((2, 3)))


class Gated(Chain):
    """Squeeze-and-excitation: the input times a function of itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = x * torch.sigmoid(self.b(x)).mean((2, 3), keepdim=True)
        return self.fc(x.mean((2, 3)))


class DataDependent(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # torch.fx cannot trace this
            x = -x
        return super().forward(x)


@pytest.mark.parametrize(
    ("cls", "skip"),
    [(Chain, False), (Residual, True), (Dense, True), (Parallel, False), (Gated, True)],
)
def test_structure_of_unknown_models(cls: type[nn.Module], skip: bool) -> None:
    model = cls()
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
    assert has_skip_connections(model) is skip
    assert is_plain(model) is (not skip)


class Scale(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


class FunctionalConv(nn.Module):
    """A conv of its own (weight held here, F.conv2d in forward), like a template-bank conv."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.kernel, padding=1)


def test_reparameterised_and_custom_convs_are_layers() -> None:
    model = Parallel()
    torch.nn.utils.parametrize.register_parametrization(model.b, "weight", Scale())
    assert has_skip_connections(model) is False
    model.c = FunctionalConv()
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)
    assert has_skip_connections(model) is False
    residual = Residual()
    residual.b = FunctionalConv()
    assert has_skip_connections(residual) is True


def test_untraceable_model_is_not_reported_plain() -> None:
    model = DataDependent()
    assert has_skip_connections(model) is None and not is_plain(model)


def test_stem_and_classifier() -> None:
    assert stem_and_classifier(_skeleton("resnet18"), 10) == {"conv1": "stem", "fc": "classifier"}
    squeeze = stem_and_classifier(_skeleton("squeezenet1_1"), 10)
    assert squeeze == {"features.0": "stem", "classifier.1": "classifier"}  # a conv classifier
    vit = stem_and_classifier(_skeleton("torchvision-vit_b_32"), 10)
    assert vit == {"conv_proj": "stem", "heads.head": "classifier"}
    assert stem_and_classifier(Chain(), 10) == {"a": "stem", "fc": "classifier"}
    assert stem_and_classifier(Chain(), 7) == {"a": "stem"}  # no layer with 7 outputs
