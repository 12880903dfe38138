"""Model factories of a 'user's own package', for the ``model=custom`` tests."""

from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int, in_channels: int, image_size: int, width: int = 8) -> nn.Module:
    """conv-BN-ReLU x2 + global pool + linear; ``width`` is an extra option."""
    del image_size  # global pooling: any size
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


class Residual(nn.Module):
    """A class as the factory: one residual block."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        self.image_size = image_size

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        return self.fc(x.mean((2, 3)))


def needs_depth(num_classes: int, in_channels: int, depth: int) -> nn.Module:
    """Wrong signature: no ``image_size``."""
    raise AssertionError("never called")


def not_a_model(num_classes: int, in_channels: int, image_size: int) -> str:
    return "not a module"


class Gated(nn.Module):
    """A forward whose control flow depends on the input's values (a blank image is scaled
    differently): what tracing cannot record."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        del image_size
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        scale = 2.0 if bool(x.amax() > 0) else 1.0
        return self.fc(self.bn(self.conv(x * scale)).relu().mean((2, 3)))
