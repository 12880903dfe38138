"""Models: the registry, the library and user-model sources, and :func:`build_model`.

Registered names: CIFAR ResNets ``resnet20/32/56/110`` (:mod:`.cifar_resnet`), Wide ResNets
``wrn16_4``, ``wrn16_8``, ``wrn28_10``, ``wrn40_4`` (:mod:`.wide_resnet`), CIFAR VGG with BN
``vgg11/16/19`` (:mod:`.vgg`), and torchvision's ``resnet18``, ``resnet50``, ``mobilenet_v2``,
``mobilenet_v3_small``, ``mobilenet_v3_large``, ``shufflenet_v2_x0_5``, ``shufflenet_v2_x1_0``,
``squeezenet1_1``, ``efficientnet_b0`` and ``mnasnet1_0`` adapted to the input
(:mod:`.torchvision_models`). Each name has ``configs/model/<name>.yaml``.

Beyond the registry (:mod:`.names` explains the names):

- ``torchvision-<arch>``: any torchvision classification model (:mod:`.torchvision_models`,
  ``configs/model/torchvision.yaml``);
- ``timm-<arch>``: any timm model, with the optional ``timm`` extra (:mod:`.timm_models`);
- ``custom-<pkg.module.factory>``: a user's factory (:mod:`.custom`).

torchvision's and timm's models take the libraries' pretrained weights (``weights=``,
``pretrained=true``); :mod:`.library_weights` loads them and records what did not fit, which
:func:`weights_warnings` reports.

What the mechanics need to know about a model's architecture is in :mod:`.traits`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch import nn

from prune_cli.errors import ConfigError

# Imported for their side effect: each module registers its factories in MODELS.
from prune_cli.models import cifar_resnet, torchvision_models, vgg, wide_resnet  # noqa: F401
from prune_cli.models.base import MODELS, InputSizeError, ModelFactory, unknown_options
from prune_cli.models.custom import build_custom
from prune_cli.models.library_weights import weights_warnings, without_library_weights
from prune_cli.models.names import (
    SOURCE_KEYS,
    model_overrides,
    source_model_name,
    split_model_name,
)
from prune_cli.models.timm_models import build_timm
from prune_cli.models.torchvision_models import (
    build_torchvision,
    torchvision_archs,
    torchvision_options,
)

__all__ = [
    "MODELS",
    "SOURCE_KEYS",
    "ModelFactory",
    "build_model",
    "build_skeleton",
    "fits",
    "min_image_size",
    "model_overrides",
    "source_model_name",
    "split_model_name",
    "torchvision_archs",
    "torchvision_options",
    "weights_warnings",
    "without_library_weights",
]

_SOURCE_BUILDERS = {"torchvision": build_torchvision, "timm": build_timm, "custom": build_custom}


def build_model(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **kwargs: object
) -> nn.Module:
    """Build model ``name`` for inputs ``(N, in_channels, image_size, image_size)``.

    ``name`` is a registered name or ``<source>-<spec>`` (:mod:`.names`). ``kwargs`` are the
    model's options (the extra keys of its config file; for a source model the config's own
    ``arch`` / ``_target_`` key may be among them and must agree with the name). The model is
    checked with one forward pass of a ``(2, in_channels, image_size, image_size)`` batch of
    zeros in eval mode without gradients; it is returned in the mode it was built in (train).

    Raises:
        ConfigError: unknown name, an option the model does not take, a non-positive size, or a
            model that does not fit the input (the message names the smallest size that does).
    """
    _check_sizes(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    shape = (2, in_channels, image_size, image_size)
    try:
        model = _construct(name, num_classes, in_channels, image_size, dict(kwargs))
    except InputSizeError as exc:
        raise InputSizeError(f"{exc}{_fit_hint(name, image_size, in_channels, kwargs)}") from None
    reason = _forward_failure(model, shape)
    if reason is not None:
        raise InputSizeError(
            f"model {name!r} does not fit input shape {shape}: {reason}"
            + _fit_hint(name, image_size, in_channels, kwargs)
        )
    return model


def _construct(
    name: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict[str, object]
) -> nn.Module:
    """The model, not yet checked with a forward pass."""
    parts = split_model_name(name)
    if parts is not None:
        source, spec = parts
        given = kwargs.pop(SOURCE_KEYS[source], spec)
        if str(given) != spec:
            raise ConfigError(
                f"model {name!r}: model.{SOURCE_KEYS[source]}={given!r} disagrees with the name"
            )
        return _SOURCE_BUILDERS[source](spec, num_classes, in_channels, image_size, **kwargs)
    if name not in MODELS:
        sources = ", ".join(
            f"model={s} model.{k}={'PKG.MODULE.FACTORY' if s == 'custom' else 'NAME'}"
            for s, k in SOURCE_KEYS.items()
        )
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(MODELS.names())}; or {sources}"
        )
    factory = MODELS.get(name)
    _check_options(name, factory, kwargs)
    try:
        return factory(num_classes, in_channels, image_size, **kwargs)
    except (TypeError, ValueError) as exc:
        if not kwargs:  # option names are validated, so without options this is a bug
            raise
        reason = " ".join(str(exc).split())
        raise ConfigError(f"model {name!r}: bad option value(s) {kwargs}: {reason}") from exc


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


def _forward_failure(model: nn.Module, shape: tuple[int, ...]) -> str | None:
    """Why a zero batch of ``shape`` does not go through ``model`` in eval mode, or ``None``.

    ``AssertionError``: ViT-style models assert their input size in ``forward``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except (RuntimeError, AssertionError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__  # one line
    finally:
        model.train(was_training)
    return None


def _fit_hint(name: str, image_size: int, in_channels: int, options: dict[str, object]) -> str:
    """``"; smallest image_size that fits: N"`` (and the next one above ``image_size``), or
    ``""`` when none up to ``max(256, 2 * image_size)`` does. Not for a user's factory, which
    the search would call many times."""
    parts = split_model_name(name)
    if parts is not None and parts[0] == "custom":
        return ""
    limit = max(256, 2 * image_size)
    hint = ""
    try:
        smallest = min_image_size(name, at_most=limit, in_channels=in_channels, **options)
        hint = f"; smallest image_size that fits: {smallest}"
        if smallest < image_size:
            above = min_image_size(
                name, at_least=image_size + 1, at_most=limit, in_channels=in_channels, **options
            )
            hint += f", next above {image_size}: {above}"
    except Exception:  # the hint is a courtesy; the error it decorates is the news
        pass
    return hint


# ----------------------------------------------------------------------------- input sizes
@contextlib.contextmanager
def _state_on_meta() -> Iterator[None]:
    """Create every parameter and buffer registered meanwhile on the meta device (shapes only).

    Written by hand (accelerate's ``init_empty_weights`` does the same) because
    ``with torch.device("meta")`` also puts the tensors a constructor computes with on the meta
    device, and some read them back (RegNet's width schedule calls ``.tolist()``). Not
    thread-safe: it patches ``nn.Module`` while it is active.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_on_meta(
        module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter = parameter_on_meta  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def build_skeleton(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **kwargs: object
) -> nn.Module:
    """Model ``name`` as :func:`build_model` builds it, with every parameter and buffer on the
    meta device: the architecture (modules, shapes, parameter counts) without memory or
    initialisation cost, e.g. for inspecting ``regnet_y_128gf``; library weights
    (``weights``, timm's ``pretrained``) are not read. Not checked with a forward."""
    _check_sizes(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    with _state_on_meta(), without_library_weights():
        return _construct(name, num_classes, in_channels, image_size, dict(kwargs))


def fits(
    name: str, image_size: int, *, in_channels: int = 3, num_classes: int = 10, **options: object
) -> bool:
    """Does model ``name`` (with ``options``) build for ``image_size`` and map a batch of it to
    ``(N, num_classes)`` logits? Checked on the meta device (:func:`build_skeleton`): no weights,
    no arithmetic. Unknown names and bad options raise :class:`ConfigError` as
    :func:`build_model` does."""
    shape = (2, in_channels, image_size, image_size)
    try:
        model = build_skeleton(
            name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options
        )
    except InputSizeError:
        return False
    try:
        with torch.device("meta"), torch.no_grad():
            out = model.eval()(torch.zeros(shape))
    except (RuntimeError, AssertionError, ValueError, IndexError):
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape) == (2, num_classes)


def min_image_size(
    name: str,
    *,
    at_least: int = 1,
    at_most: int = 1024,
    in_channels: int = 3,
    num_classes: int = 10,
    **options: object,
) -> int:
    """The smallest image size in ``[at_least, at_most]`` that model ``name`` fits (:func:`fits`).

    E.g. ``min_image_size("torchvision-vit_h_14", at_least=32)`` is 42 (patch size 14) and
    ``min_image_size("torchvision-maxvit_t")`` is 221. Fitting is not monotone in the size
    (Inception-v3 takes 32 px with its small-input stem, but not 65-74 px, where the stem is
    torchvision's), so sizes are tried in order.

    Raises:
        ConfigError: no size in the range fits (or :func:`fits` raised it).
    """
    for size in range(max(1, at_least), at_most + 1):
        if fits(name, size, in_channels=in_channels, num_classes=num_classes, **options):
            return size
    raise ConfigError(f"model {name!r} fits no image size in [{at_least}, {at_most}]")
