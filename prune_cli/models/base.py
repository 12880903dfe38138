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


def unknown_options(model: str, unknown: Iterable[str], valid: Iterable[str]) -> ConfigError:
    """The one-line error for config options a model does not take."""
    choices = ", ".join(sorted(valid)) or "(none)"
    return ConfigError(
        f"unknown option(s) {', '.join(sorted(unknown))} for model {model!r}; "
        f"valid options: {choices}"
    )
