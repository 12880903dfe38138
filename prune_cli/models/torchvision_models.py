"""torchvision architectures, randomly initialised and adapted to the dataset's input.

``resnet18``, ``resnet50``, ``mobilenet_v2``, ``mobilenet_v3_small``, ``mobilenet_v3_large``,
``shufflenet_v2_x0_5``, ``shufflenet_v2_x1_0``, ``squeezenet1_1``, ``efficientnet_b0``,
``mnasnet1_0``: torchvision's definitions with ``weights=None`` (nothing is downloaded) and
``num_classes`` from the dataset. The config options in :data:`OPTIONS` are passed to the
torchvision constructor; others are rejected (torchvision would silently ignore some of them).

Adaptations, done generically on the *stem conv* (the first ``nn.Conv2d`` in module order) and
the *initial max-pool* (the first ``nn.MaxPool2d``, if it runs before the second conv):

- ``in_channels != 3``: the stem conv is replaced by one with the same hyper-parameters and the
  new number of input channels (Kaiming-normal fan-out init, torchvision's init for the stems of
  ResNet, MobileNet, EfficientNet and MNASNet).
- small inputs (``image_size <= 64``: CIFAR 32 px, FER 48 px): the stem's stride becomes 1 and the
  initial max-pool becomes ``nn.Identity``, so the last feature map keeps 2-4 px instead of 1.
  ResNet-18/50 get the usual CIFAR stem instead: conv1 = 3x3, stride 1, padding 1, no bias.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.models.base import MODELS, unknown_options

SMALL_INPUT_MAX = 64

# Registered name -> constructor keyword arguments accepted as config options.
OPTIONS: dict[str, tuple[str, ...]] = {
    "resnet18": ("zero_init_residual",),
    "resnet50": ("zero_init_residual",),
    "mobilenet_v2": ("width_mult", "dropout"),
    "mobilenet_v3_small": ("width_mult", "reduced_tail", "dropout"),
    "mobilenet_v3_large": ("width_mult", "reduced_tail", "dropout"),
    "shufflenet_v2_x0_5": (),
    "shufflenet_v2_x1_0": (),
    "squeezenet1_1": ("dropout",),
    "efficientnet_b0": ("dropout", "stochastic_depth_prob"),
    "mnasnet1_0": ("dropout",),
}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (e.g. ``"features.0.0"``) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def stem_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem conv: the first ``nn.Conv2d`` in module order, with its dotted name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d to use as the stem")


def replace_stem(
    model: nn.Module,
    in_channels: int,
    *,
    kernel_size: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> nn.Conv2d:
    """Replace the stem conv by a copy with ``in_channels`` inputs and optional new geometry.

    Hyper-parameters not given are kept; the new weight is Kaiming-normal (fan-out, ReLU gain)
    and any bias is zero.
    """
    name, old = stem_conv(model)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size if kernel_size is None else kernel_size,
        stride=old.stride if stride is None else stride,
        padding=old.padding if padding is None else padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    replace_module(model, name, new)
    return new


def remove_initial_maxpool(model: nn.Module) -> bool:
    """Replace the first MaxPool2d by Identity if it runs right after the stem (before conv #2).

    Returns whether one was removed. Module order is used as the execution order, which holds for
    the sequential stems of the torchvision models adapted here.
    """
    convs_seen = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            convs_seen += 1
            if convs_seen > 1:
                return False
        elif isinstance(module, nn.MaxPool2d):
            replace_module(model, name, nn.Identity())
            return True
    return False


def adapt_input(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """Apply the generic adaptations of the module docstring (stride-1 stem for small inputs)."""
    small = image_size <= SMALL_INPUT_MAX
    _, stem = stem_conv(model)
    if stem.in_channels != in_channels:
        stem = replace_stem(model, in_channels)
    if small:
        stem.stride = (1, 1)
        remove_initial_maxpool(model)
    return model


def adapt_resnet(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """torchvision ResNet: the CIFAR stem (3x3/1, no max-pool) for small inputs."""
    if image_size <= SMALL_INPUT_MAX:
        replace_stem(model, in_channels, kernel_size=3, stride=1, padding=1)
        remove_initial_maxpool(model)
        return model
    return adapt_input(model, in_channels, image_size)


def _register(name: str) -> None:
    constructor: Callable[..., nn.Module] = getattr(tvm, name)
    adapt = adapt_resnet if name.startswith("resnet") else adapt_input

    def factory(
        num_classes: int, in_channels: int, image_size: int, **options: object
    ) -> nn.Module:
        if "weights" in options:
            raise ConfigError(
                f"model {name!r}: option 'weights' is not supported (nothing is downloaded); "
                "train from scratch or load a checkpoint with pretrained=PATH"
            )
        unknown = set(options) - set(OPTIONS[name])
        if unknown:
            raise unknown_options(name, unknown, OPTIONS[name])
        model = constructor(weights=None, num_classes=num_classes, **options)
        return adapt(model, in_channels, image_size)

    factory.__name__ = name
    factory.__doc__ = f"torchvision {name} (weights=None), adapted to the input."
    MODELS.register(name)(factory)


for _name in OPTIONS:
    _register(_name)
