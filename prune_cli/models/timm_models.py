"""timm models (optional extra ``pip install -e '.[timm]'``): ``model=timm model.arch=<name>``.

``timm.create_model(arch, pretrained=False, num_classes=..., in_chans=..., **options)``: random
init, nothing downloaded, the number of classes and input channels from the dataset. Models
whose constructor takes ``img_size`` (ViT, DeiT, Swin, ...) are built for the dataset's image
size. Small inputs (``image_size <= 64``) get the stride-1 stem of the torchvision models when
the first conv downsamples and is not a patch embedding (kernel = stride): its stride becomes 1
and a max-pool right after it is removed
(:func:`~prune_cli.models.torchvision_models.adapt_input`). The model name is ``timm-<arch>``.
"""

from __future__ import annotations

import difflib
import inspect
from types import ModuleType

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.models.base import InputSizeError, unknown_options
from prune_cli.models.names import source_model_name
from prune_cli.models.torchvision_models import adapt_input

#: ``create_model`` arguments set here, never by a config option, and why.
FIXED_OPTIONS: dict[str, str] = {
    "pretrained": "nothing is downloaded; pass pretrained=PATH (a local weights file)",
    "pretrained_cfg": "nothing is downloaded",
    "pretrained_cfg_overlay": "nothing is downloaded",
    "checkpoint_path": "pass pretrained=PATH, which loads without executing code",
    "cache_dir": "nothing is downloaded",
    "num_classes": "it comes from the dataset",
    "in_chans": "it comes from the dataset",
    "img_size": "it comes from the dataset",
}


def import_timm() -> ModuleType:
    """timm, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model=timm needs the timm package: pip install -e '.[timm]' (or pip install timm)"
        ) from None
    return timm


def _check_arch(timm: ModuleType, arch: str) -> None:
    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "e.g. resnet18d, efficientnet_b0"
    raise ConfigError(
        f"unknown timm model {arch!r}; {hint} (timm.list_models() lists all {len(names)})"
    )


def _options_of(model_class: type) -> list[str]:
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(model_class.__init__).parameters.items()
    names = {n for n, p in params if n != "self" and p.kind in keyword}
    return sorted(names - set(FIXED_OPTIONS))


def build_timm(
    arch: str, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    """timm's ``arch`` with random init, adapted to the input (module docstring)."""
    timm = import_timm()
    name = source_model_name("timm", arch)
    for key in sorted(options):
        if key in FIXED_OPTIONS:
            raise ConfigError(
                f"model {name!r}: option {key!r} is not supported ({FIXED_OPTIONS[key]})"
            )
    _check_arch(timm, arch)
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:
        try:
            model = timm.create_model(arch, img_size=image_size, **kwargs, **options)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            model = timm.create_model(arch, **kwargs, **options)
    except TypeError as exc:
        if not options:
            raise
        valid = _options_of(type(timm.create_model(arch, **kwargs)))
        unknown = [k for k in options if f"'{k}'" in str(exc)]
        if unknown:
            raise unknown_options(name, unknown, valid) from None
        raise ConfigError(f"model {name!r}: bad option value(s) {options}: {exc}") from None
    except (ValueError, AssertionError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if options:
            raise ConfigError(f"model {name!r}: bad option value(s) {options}: {reason}") from None
        raise InputSizeError(f"model {name!r} cannot be built for this input: {reason}") from None
    return adapt_input(model, in_channels, image_size)
