"""timm models (optional extra ``pip install -e '.[timm]'``): ``model=timm model.arch=<name>``.

``timm.create_model(arch, pretrained=..., num_classes=..., in_chans=..., **options)``, the
number of classes and input channels from the dataset. Models whose constructor takes
``img_size`` (ViT, DeiT, Swin, ...) are built for the dataset's image size. Small inputs
(``image_size <= 64``) get the stride-1 stem of the torchvision models when the first conv
downsamples and is not a patch embedding (kernel = stride): its stride becomes 1 and a max-pool
right after it is removed (:func:`~prune_cli.models.torchvision_models.adapt_input`; the stem
keeps its weights). The model name is ``timm-<arch>``.

``pretrained`` (default ``false``: random init) ``true`` loads timm's pretrained weights, those
of ``arch``'s default tag or of the tag in the name (``model.arch=resnet18.a1_in1k``), through
timm's own loader, which adapts them: the classifier for another number of classes keeps its
fresh initialisation, and the stem's weights for another number of input channels are summed or
repeated over the channels. Both are logged and recorded for ``metrics.json`` ``warnings``
(:mod:`.library_weights`). timm looks for the file where its pretrained config says: on the
Hugging Face Hub (``hf_hub_id``; most weights), in the Hugging Face cache (``HF_HUB_CACHE``, or
``HF_HOME/hub``; with ``HF_HUB_OFFLINE=1`` it does not try the network); by URL, in
``torch.hub.get_dir()/checkpoints`` (``TORCH_HOME``); or a local ``file``. Without network and
without the file, the run stops with one line saying where timm looked. ``checkpoint_path`` is
refused: ``pretrained=PATH`` loads a file without executing code.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from types import ModuleType
from typing import Any

from torch import nn

from prune_cli.errors import CheckpointError, ConfigError, one_line
from prune_cli.models.base import InputSizeError, unknown_options
from prune_cli.models.library_weights import (
    DOWNLOAD_FAILURES,
    LOCAL_FILE_HINT,
    hf_cache_folder,
    loads_weights,
    set_weights_record,
    torch_hub_file,
    weights_warnings,
)
from prune_cli.models.names import source_model_name
from prune_cli.models.torchvision_models import adapt_input

log = logging.getLogger("prune_cli")

#: ``create_model`` arguments set here, never by a config option, and why.
FIXED_OPTIONS: dict[str, str] = {
    "pretrained_cfg": "pick timm's weights with pretrained=true and a tag in model.arch "
    "(e.g. resnet18.a1_in1k)",
    "pretrained_cfg_overlay": "pick timm's weights with pretrained=true and a tag in model.arch "
    "(e.g. resnet18.a1_in1k)",
    "checkpoint_path": "pass pretrained=PATH, which loads without executing code",
    "cache_dir": "timm uses its caches (HF_HUB_CACHE or HF_HOME, TORCH_HOME)",
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
    return sorted((names | {"pretrained"}) - set(FIXED_OPTIONS))


def _pretrained_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            f"model {name!r}: pretrained takes true (timm's weights) or false, got {value!r}; "
            "for a weights file pass pretrained=PATH (the top-level key)"
        )
    return value


def build_timm(
    arch: str, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    """timm's ``arch`` adapted to the input, with random init or, with ``pretrained=True``,
    timm's pretrained weights (module docstring)."""
    timm = import_timm()
    name = source_model_name("timm", arch)
    for key in sorted(options):
        if key in FIXED_OPTIONS:
            raise ConfigError(
                f"model {name!r}: option {key!r} is not supported ({FIXED_OPTIONS[key]})"
            )
    _check_arch(timm, arch)
    pretrained = _pretrained_flag(name, options.pop("pretrained", False)) and loads_weights()
    kwargs = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": in_channels}
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
        valid = _options_of(type(timm.create_model(arch, **{**kwargs, "pretrained": False})))
        unknown = [k for k in options if f"'{k}'" in str(exc)]
        if unknown:
            raise unknown_options(name, unknown, valid) from None
        raise ConfigError(f"model {name!r}: bad option value(s) {options}: {exc}") from None
    except (ValueError, AssertionError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if options:
            raise ConfigError(f"model {name!r}: bad option value(s) {options}: {reason}") from None
        raise InputSizeError(f"model {name!r} cannot be built for this input: {reason}") from None
    except _download_failures() as exc:
        if not pretrained:
            raise
        raise CheckpointError(
            f"model {name!r}: timm's weights are not in its cache and could not be downloaded "
            f"({one_line(exc)}); {_where_timm_looks(timm, arch)}, {LOCAL_FILE_HINT}"
        ) from None
    except RuntimeError as exc:
        if not (pretrained and "No pretrained weights exist" in str(exc)):
            raise
        raise ConfigError(
            f"model {name!r}: timm has no pretrained weights for {arch!r}; drop pretrained=true, "
            "or pick a tag with weights (timm.list_pretrained())"
        ) from None
    model = adapt_input(model, in_channels, image_size)
    if pretrained:
        _record_timm_weights(model, num_classes, in_channels)
    return model


def _download_failures() -> tuple[type[BaseException], ...]:
    """How timm's download fails without network: torch.hub's (a URL) and the Hugging Face Hub
    client's (not on the Hub and not in its cache)."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # timm then only downloads by URL
        return DOWNLOAD_FAILURES
    return (*DOWNLOAD_FAILURES, LocalEntryNotFoundError)


def _where_timm_looks(timm: ModuleType, arch: str) -> str:
    """Where timm looks for ``arch``'s weights and what to do, from its pretrained config, in
    the order timm's ``load_pretrained`` tries them: a local file, the Hugging Face Hub, a URL."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return "timm has no pretrained config for it"
    if cfg.file:
        return f"timm reads the file {cfg.file}"
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]  # (an @revision suffix)
        files = cfg.hf_hub_filename or "model.safetensors or pytorch_model.bin"
        return (
            f"timm looks for {files} of {repo} in the Hugging Face cache at "
            f"{hf_cache_folder(repo)} (HF_HUB_CACHE, or HF_HOME/hub): download it where there "
            f"is network (hf download {repo}) and copy that folder here, then set "
            "HF_HUB_OFFLINE=1 to skip the network"
        )
    if cfg.url:
        return (
            f"timm looks for {torch_hub_file(cfg.url)} (torch.hub.get_dir()/checkpoints, under "
            f"TORCH_HOME): put the file from {cfg.url} there"
        )
    return "timm's pretrained config names no file"


def _record_timm_weights(model: nn.Module, num_classes: int, in_channels: int) -> None:
    """Record on ``model`` what timm did not load as is (timm adapts the weights itself): the
    classifier for another number of classes (fresh init) and the stem for another number of
    input channels (the weights summed or repeated over the channels)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    source = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file") or "timm"
    replaced: dict[str, dict[str, Any]] = {}
    classifiers = _names(cfg.get("classifier"))
    if classifiers and cfg.get("num_classes") not in (None, num_classes):
        replaced["classifier"] = {
            "layer": ", ".join(classifiers),
            "keys": sorted(
                k for k in model.state_dict() if k.startswith(tuple(f"{c}." for c in classifiers))
            ),
            "reason": f"the weights are for {cfg['num_classes']} classes, the model has "
            f"{num_classes}",
        }
    adapted: dict[str, dict[str, Any]] = {}
    stems = _names(cfg.get("first_conv"))
    weights_channels = (cfg.get("input_size") or (3,))[0]
    if stems and in_channels != weights_channels:
        adapted["stem"] = {
            "layer": ", ".join(stems),
            "reason": f"weights adapted by timm from {weights_channels} to {in_channels} input "
            "channels (summed or repeated over the channels)",
        }
    set_weights_record(
        model,
        {
            "option": f"model.pretrained=true ({source})",
            "weights": source,
            "replaced": replaced,
            "adapted": adapted,
        },
    )
    for line in weights_warnings(model):
        log.info("%s", line)


def _names(value: object) -> list[str]:
    """timm's ``classifier`` / ``first_conv`` config entries: one name or several."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]  # type: ignore[union-attr]
