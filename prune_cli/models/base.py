"""The model registry shared by every architecture module.

A model factory is called as ``factory(num_classes, in_channels, image_size, **options)`` and
returns a plain ``nn.Module`` mapping a batch ``(N, in_channels, image_size, image_size)`` to
logits ``(N, num_classes)``. ``num_classes``, ``in_channels`` and ``image_size`` come from the
dataset; ``options`` are the extra keys of ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


class InputSizeError(ConfigError):
    """A model that cannot take the dataset's input size (raised before or by its forward)."""


def init_conv_bn(model: nn.Module, zero_linear_bias: bool = False) -> None:
    """The CIFAR-model initialisation: convs Kaiming-normal (fan-out, ReLU gain), BN gamma 1 and
    beta 0; linear layers PyTorch's default, with a zero bias if ``zero_linear_bias``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and zero_linear_bias and m.bias is not None:
            nn.init.zeros_(m.bias)


def unknown_options(model: str, unknown: Iterable[str], valid: Iterable[str]) -> ConfigError:
    """The one-line error for config options a model does not take."""
    choices = ", ".join(sorted(valid)) or "(none)"
    return ConfigError(
        f"unknown option(s) {', '.join(sorted(unknown))} for model {model!r}; "
        f"valid options: {choices}"
    )
