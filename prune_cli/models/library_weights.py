"""A library's pretrained weights in an adapted model: torchvision's ``model.weights`` and timm's
``model.pretrained``.

The weights are for the library's own head (1,000 ImageNet classes) and stem (3 channels, a
downsampling stem for ImageNet resolutions); prune-cli sets ``num_classes`` from the dataset and
adapts the stem to the input. Layers whose shapes then differ from the weights' (the classifier
for another class count, an adapted stem) keep their fresh initialisation. That is never silent:
it is logged, and recorded on the model (:func:`set_weights_record`), where the pipeline reads it
as ``metrics.json`` warnings (:func:`weights_warnings`).

Where the libraries look for the files (the one-line error of a run without network names it):

- torchvision, and timm weights given by URL: ``torch.hub.get_dir()/checkpoints/<file name of
  the URL>`` (:func:`torch_hub_file`; ``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``);
- timm weights on the Hugging Face Hub: the Hugging Face cache (:func:`hf_cache_folder`;
  ``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``).

:func:`without_library_weights` tells the model builders that only the architecture is wanted
(:func:`prune_cli.models.build_skeleton`; a portable checkpoint rebuilt to load its own
weights): no file is then read or downloaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import logging
import os
import urllib.error
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError

log = logging.getLogger("prune_cli")

#: How a download fails without network (name resolution, refused or reset connection, timeout,
#: an HTTP error page, a cut transfer).
DOWNLOAD_FAILURES: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
)

_SKIP_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_weights", default=False)
#: The attribute of a model holding its weights record (:func:`set_weights_record`).
_RECORD_ATTRIBUTE = "_prune_cli_library_weights"


@contextlib.contextmanager
def without_library_weights() -> Iterator[None]:
    """While active, model builders build the architecture that library weights ask for
    (``weights=`` still chooses GoogLeNet's input transform) without reading the weights: for
    shapes only, or for a caller that loads its own trained weights into it."""
    token = _SKIP_WEIGHTS.set(True)
    try:
        yield
    finally:
        _SKIP_WEIGHTS.reset(token)


def loads_weights() -> bool:
    """Should a builder load the library weights it was asked for (outside
    :func:`without_library_weights`)?"""
    return not _SKIP_WEIGHTS.get()


# ----------------------------------------------------------------------------- where
def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` looks for (and downloads) ``url``:
    ``torch.hub.get_dir()/checkpoints/<file name of the URL>``, as it computes it (honouring
    ``TORCH_HOME`` at the time of the call)."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def hf_cache_folder(repo_id: str) -> Path:
    """The folder of Hugging Face Hub model ``repo_id`` in the Hugging Face cache
    (``huggingface_hub.constants.HF_HUB_CACHE``: ``$HF_HUB_CACHE``, or ``$HF_HOME/hub``)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


#: The alternative every "weights not found" error ends with.
LOCAL_FILE_HINT = "or pass pretrained=PATH (a local weights file) instead"


# ----------------------------------------------------------------------------- loading
def replaced_layers(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    replaceable: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """``{role: {"layer", "keys", "reason"}}`` for each layer of ``replaceable`` (module name ->
    role, e.g. ``{"fc": "classifier", "conv1": "stem"}``) whose tensors in ``state`` (a weights
    file) do not fit the model's (``own``): these keep the model's own values."""
    replaced: dict[str, dict[str, Any]] = {}
    for layer, role in replaceable.items():
        prefix = f"{layer}."
        keys = sorted({k for k in [*own, *state] if k.startswith(prefix)})
        reason = None
        # The weight's shapes tell most (out x in channels), so they are the reason given.
        for k in sorted(keys, key=lambda k: ("weight" not in k.rsplit(".", 1)[-1], k)):
            if k not in own or k not in state:
                where = "model" if k in own else "file"
                reason = f"{k} only in the {where}"
            elif own[k].shape != state[k].shape:
                shapes = f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                reason = f"{k} is {shapes}"
            if reason:
                break
        if reason:
            replaced[role] = {
                "layer": layer,
                "keys": [k for k in keys if k in own],
                "reason": reason,
            }
    return replaced


def load_library_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    replaceable: Mapping[str, str],
    source: str,
    name: str,
) -> dict[str, Any]:
    """Load a library's weights ``state`` into ``model``, except the layers of ``replaceable``
    that do not fit (:func:`replaced_layers`), which keep their fresh initialisation; returns
    ``{"tensors_loaded", "tensors_in_model", "replaced"}``. Any other difference (a missing or
    unexpected key, another shape) raises a one-line :class:`ConfigError` naming ``source`` (the
    weights) and ``name`` (the model).

    The load is the model's own ``load_state_dict``, so modules that upgrade old files while
    loading (BatchNorm without ``num_batches_tracked``, MNASNet's versioned stem) still do.
    """
    own = model.state_dict()
    replaced = replaced_layers(state, own, replaceable)
    prefixes = tuple(f"{layer['layer']}." for layer in replaced.values())
    kept = {k for layer in replaced.values() for k in layer["keys"]}
    rest = with_metadata(state, {k: v for k, v in state.items() if not k.startswith(prefixes)})
    wrong = [k for k, v in rest.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        shapes = f"{tuple(rest[k].shape)} in the weights, {tuple(own[k].shape)} in the model"
        raise ConfigError(
            f"{source} does not fit model {name!r} with these options and input: "
            f"{len(wrong)} shape mismatches (e.g. {k}: {shapes})"
        )
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in kept]
    if missing or result.unexpected_keys:
        detail = [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
        if result.unexpected_keys:
            unexpected = result.unexpected_keys
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ConfigError(f"{source} does not fit model {name!r}: " + "; ".join(detail))
    loaded = len(own) - len(kept)
    log.info("%s loaded into %s: %d of %d tensors", source, name, loaded, len(own))
    for role, layer in replaced.items():
        log.info(
            "%s: %s %s kept at its fresh initialisation: %s",
            source,
            role,
            layer["layer"],
            layer["reason"],
        )
    return {"tensors_loaded": loaded, "tensors_in_model": len(own), "replaced": replaced}


def with_metadata(original: Mapping[str, Any], state: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """``state`` (e.g. ``original`` with keys renamed or left out) as an ordered dict carrying
    ``original``'s ``_metadata``: the module versions the file was saved with, which
    ``load_state_dict`` passes to the modules (MNASNet refuses a state without them)."""
    out: OrderedDict[str, Any] = OrderedDict(state)
    metadata = getattr(original, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


# ----------------------------------------------------------------------------- the record
def set_weights_record(model: nn.Module, record: Mapping[str, Any]) -> None:
    """Attach what was loaded into ``model`` from a library: ``option`` (the config option, e.g.
    ``model.weights=ResNet18_Weights.IMAGENET1K_V1``), ``replaced`` (:func:`replaced_layers`:
    layers kept at their fresh initialisation), and ``adapted`` (``{role: {"layer",
    "reason"}}``: layers whose weights the library transformed, e.g. timm's stem for another
    number of input channels), among others."""
    object.__setattr__(model, _RECORD_ATTRIBUTE, dict(record))


def weights_record(model: nn.Module) -> dict[str, Any] | None:
    """The record of :func:`set_weights_record`, or None for a model without library weights."""
    record = getattr(model, _RECORD_ATTRIBUTE, None)
    return dict(record) if record is not None else None


def weights_warnings(model: nn.Module) -> list[str]:
    """One line per layer of ``model`` that did not get the library weights asked for (kept at
    its fresh initialisation, or transformed by the library): what ``metrics.json`` lists under
    ``warnings``. Empty for a model built without library weights."""
    record = weights_record(model)
    if record is None:
        return []
    option = record["option"]
    lines = [
        f"{option}: {role} {layer['layer']} kept at its fresh initialisation ({layer['reason']})"
        for role, layer in record.get("replaced", {}).items()
    ]
    lines += [
        f"{option}: {role} {layer['layer']} {layer['reason']}"
        for role, layer in record.get("adapted", {}).items()
    ]
    return lines
