"""Model registry: config name -> factory, and :func:`build_model`.

Registered names: CIFAR ResNets ``resnet20/32/56/110`` (:mod:`.cifar_resnet`), Wide ResNets
``wrn16_4``, ``wrn16_8``, ``wrn28_10``, ``wrn40_4`` (:mod:`.wide_resnet`), CIFAR VGG with BN
``vgg11/16/19`` (:mod:`.vgg`), and torchvision's ``resnet18``, ``resnet50``, ``mobilenet_v2``,
``mobilenet_v3_small``, ``mobilenet_v3_large``, ``shufflenet_v2_x0_5``, ``shufflenet_v2_x1_0``,
``squeezenet1_1``, ``efficientnet_b0`` and ``mnasnet1_0`` adapted to the input
(:mod:`.torchvision_models`). Each name has ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from prune_cli.errors import ConfigError

# Imported for their side effect: each module registers its factories in MODELS.
from prune_cli.models import cifar_resnet, torchvision_models, vgg, wide_resnet  # noqa: F401
from prune_cli.models.base import MODELS, ModelFactory, unknown_options

__all__ = ["MODELS", "ModelFactory", "build_model"]


def build_model(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **kwargs: object
) -> nn.Module:
    """Build model ``name`` for inputs ``(N, in_channels, image_size, image_size)``.

    ``kwargs`` are the model's options (the extra keys of its config file). The model is checked
    with one forward pass of a ``(2, in_channels, image_size, image_size)`` batch of zeros in eval
    mode without gradients; it is returned in the mode it was built in (train mode).

    Raises:
        ConfigError: unknown name, an option the model does not take, a non-positive size, or a
            model that does not fit the input (e.g. its pooling shrinks the map below 1 px).
    """
    factory = MODELS.get(name)
    _check_sizes(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    _check_options(name, factory, kwargs)
    try:
        model = factory(num_classes, in_channels, image_size, **kwargs)
    except (TypeError, ValueError) as exc:
        if not kwargs:  # option names are validated, so without options this is a bug
            raise
        reason = " ".join(str(exc).split())
        raise ConfigError(f"model {name!r}: bad option value(s) {kwargs}: {reason}") from exc
    _check_forward(name, model, (2, in_channels, image_size, image_size))
    return model


def _check_sizes(name: str, **sizes: int) -> None:
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {name!r}: {key} must be a positive integer, got {value!r}")


def _check_options(name: str, factory: ModelFactory, kwargs: dict[str, object]) -> None:
    """Reject option names the factory does not declare.

    Factories taking ``**options`` (the torchvision adapters) validate the names themselves.
    """
    params = list(inspect.signature(factory).parameters.values())[3:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params]
    unknown = set(kwargs) - set(valid)
    if unknown:
        raise unknown_options(name, unknown, valid)


def _check_forward(name: str, model: nn.Module, shape: tuple[int, int, int, int]) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())  # one line: torch messages often span several
        raise ConfigError(
            f"model {name!r} does not fit input shape {tuple(shape)}: {reason}"
        ) from None
    finally:
        model.train(was_training)
