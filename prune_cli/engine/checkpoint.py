"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors on mismatch."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.distributed import is_main
from prune_cli.errors import CheckpointError
from prune_cli.models.base import KeyMap
from prune_cli.models.library_weights import replaced_layers
from prune_cli.models.names import model_overrides

log = logging.getLogger("prune_cli")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` to a temporary file, then rename it into place.

    A crash never leaves a torn checkpoint: readers see either the old file or the new one.
    In a distributed run only rank 0 writes (every rank holds the same weights).
    """
    if not is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk: name the file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or a bare state dict) safely.

    Only tensors and plain containers are unpickled (``weights_only=True``); a ``.safetensors``
    file is read with the safetensors package (which holds tensors only). A missing or
    unreadable file raises :class:`CheckpointError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device=str(map_location))
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a PyTorch checkpoint ({reason})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    return obj


def state_dict_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: ``checkpoint['model']`` or a bare state dict."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint has no model state dict (expected key 'model')")
    return state


#: Where other training code keeps the weights inside the dict it saves (Lightning and many
#: research repositories: ``state_dict``; timm/DeiT training scripts: ``model``; PyTorch's
#: tutorials: ``model_state_dict``), tried in this order.
WEIGHTS_KEYS = ("state_dict", "model", "model_state_dict")
#: Prefixes a wrapper puts on every key of the module it wraps when that is saved:
#: ``nn.DataParallel`` / ``DistributedDataParallel`` (``module.``), ``torch.compile``
#: (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def library_state(
    checkpoint: Mapping[str, Any],
    own: Mapping[str, torch.Tensor],
    key_map: KeyMap | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A weights file of another code base in the naming of a model whose state dict is ``own``.

    The weights are taken from the first of :data:`WEIGHTS_KEYS` that holds a dict (else the
    file itself); entries that are not tensors (``best_prec1``, an epoch counter) are left
    out; a wrapper prefix (:data:`WRAPPER_PREFIXES`) on *every* key that the model's keys do not
    have is stripped; ``key_map`` (the model family's declared renames) maps the rest. Returns
    the state and what was done, for ``metrics.json``.
    """
    where = next((k for k in WEIGHTS_KEYS if isinstance(checkpoint.get(k), dict)), None)
    raw = checkpoint[where] if where is not None else checkpoint
    state = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    record: dict[str, Any] = {}
    if where is not None:
        record["weights_key"] = where
    ignored = sorted(str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor))
    if where is not None:  # what the file keeps beside the weights (best_prec1, an epoch)
        ignored += sorted(str(k) for k in checkpoint if k != where)
    if ignored:
        record["ignored_entries"] = ignored
    stripped = []
    for prefix in WRAPPER_PREFIXES * 2:  # both, in either order (DDP around a compiled model)
        if (
            state
            and all(k.startswith(prefix) for k in state)
            and not any(k.startswith(prefix) for k in own)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            stripped.append(prefix)
    if stripped:
        record["prefixes_stripped"] = stripped
    metadata = _module_versions(raw, "".join(stripped))
    if key_map is not None:
        modules = {k.rpartition(".")[0] for k in own}

        def fits(key: str) -> bool:
            return key in own or key.rpartition(".")[0] in modules

        renamed = {k: key_map.rename(k, fits) for k in state}
        renamed = {k: new for k, new in renamed.items() if new != k and new not in state}
        if renamed:
            state = {renamed.get(k, k): v for k, v in state.items()}
            record["key_map"] = {
                "sources": key_map.sources,
                "renamed": len(renamed),
                "example": next(f"{k} -> {new}" for k, new in renamed.items()),
            }
    return with_versions(state, metadata), record


def _module_versions(raw: Mapping[str, Any], prefix: str) -> dict[str, Any] | None:
    """The per-module versions ``state_dict()`` keeps beside the tensors (``_metadata``), with
    the wrapper ``prefix`` stripped: some modules load older layouts by them (MNASNet)."""
    metadata = getattr(raw, "_metadata", None)
    if metadata is None:
        return None
    out = {}
    for key, value in metadata.items():
        if prefix and key.startswith(prefix.rstrip(".")):
            key = key[len(prefix) :] if key.startswith(prefix) else ""
        out[key] = value
    return out


def with_versions(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None
) -> dict[str, torch.Tensor]:
    """``state`` as a state dict that carries ``metadata`` (module versions), when there is any."""
    out: Any = OrderedDict(state)
    if metadata is not None:
        out._metadata = dict(metadata)
    return out


def load_state_into(
    model: nn.Module, checkpoint: dict[str, Any], source: str, expect_arch: str | None = None
) -> None:
    """Load ``checkpoint`` into ``model``, or explain in one line why it does not fit.

    ``expect_arch`` is compared with the ``arch`` recorded in the checkpoint (model name), which
    catches a checkpoint of another architecture before any shape is compared.
    """
    arch = checkpoint.get("arch")
    if expect_arch is not None and isinstance(arch, str) and arch != expect_arch:
        raise CheckpointError(
            f"checkpoint {source!r} is for model {arch!r}, not {expect_arch!r}; "
            f"pass {model_overrides(arch)} or another checkpoint"
        )
    state = state_dict_of(checkpoint)
    own = model.state_dict()
    _check_fit(state, own, own, source, expect_arch or type(model).__name__)
    model.load_state_dict(state)


#: Keys a file may lack and the model keeps its own value of: BatchNorm's step counter, which
#: files saved before PyTorch 0.4.1 do not have (it only matters with ``momentum=None``).
OPTIONAL_KEY_SUFFIXES = (".num_batches_tracked",)


def _examples(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return shown + (f", ... ({len(keys) - count} more)" if len(keys) > count else "")


def _check_fit(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    keys: Mapping[str, torch.Tensor],
    source: str,
    name: str,
    key_map: KeyMap | None = None,
) -> None:
    """Raise the one-line :class:`CheckpointError` if ``state`` and ``own`` differ on ``keys``
    (missing keys, unexpected keys or shapes), naming the keys that do not fit and, when the
    model family declares one (``key_map``), what the mismatch usually means."""
    missing = [
        k for k in own if k in keys and k not in state and not k.endswith(OPTIONAL_KEY_SUFFIXES)
    ]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in keys and k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} in checkpoint, "
                f"{tuple(own[k].shape)} in model)"
            )
        hint = key_map.hint(missing, unexpected) if key_map is not None else None
        raise CheckpointError(
            f"checkpoint {source!r} does not fit model {name!r} with this dataset: "
            + "; ".join(detail)
            + (f"; {hint}" if hint else "")
        )


def is_own_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """A checkpoint prune-cli wrote (the weights under ``"model"``, the model name under
    ``"arch"``), not a library's or another code base's file."""
    return isinstance(checkpoint.get("model"), dict) and isinstance(checkpoint.get("arch"), str)


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    expect_arch: str,
    map_location: str | torch.device = "cpu",
    map_state: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    replaceable: Mapping[str, str] | None = None,
    key_map: KeyMap | None = None,
    plain_keys: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Load ``pretrained=PATH`` into ``model``; returns what metrics.json records as ``train``.

    ``path`` is either

    - a prune-cli checkpoint (``trained.pt``, ``final.pt``...): it must be of ``expect_arch``
      and fit exactly (:func:`load_state_into`); the record is ``{"pretrained": path}``;
    - a weights file of a library or another code base: a plain state dict (torchvision's
      ``resnet18-f37072fd.pth``, timm's ``pytorch_model.bin``), one wrapped in a dict
      (``{"state_dict": ..., "best_prec1": ...}``), or a ``.safetensors`` file. It is brought
      into the model's naming by :func:`library_state` (wrapper prefix, non-tensor entries, the
      family's declared ``key_map``, applied against ``plain_keys``: the state dict of the
      architecture before a method re-parameterised it, default ``model``'s), and BatchNorm
      step counters it lacks keep the model's values. A layer of ``replaceable`` (module name
      -> role, e.g. ``{"fc": "classifier", "conv1": "stem"}``, from
      :func:`prune_cli.models.traits.stem_and_classifier`) whose keys do not fit (another
      number of classes; an adapted stem) keeps its fresh initialisation, which is logged and
      recorded under ``pretrained_weights.replaced``; any other mismatch raises the one-line
      :class:`CheckpointError` naming the keys.

    ``map_state`` maps the file's plain layout onto the model's (a method's
    ``pretrained_state``, e.g. ``weight`` -> ``weight_orig``).
    """
    source = str(path)
    checkpoint = load_checkpoint(path, map_location)
    map_state = map_state or dict
    if is_own_checkpoint(checkpoint):
        state = map_state(state_dict_of(checkpoint))
        load_state_into(model, {**checkpoint, "model": state}, source, expect_arch=expect_arch)
        return {"pretrained": source}
    own = model.state_dict()
    plain, layout = library_state(checkpoint, own if plain_keys is None else plain_keys, key_map)
    missing_counters = sum(
        1 for k in (plain_keys or own) if k.endswith(OPTIONAL_KEY_SUFFIXES) and k not in plain
    )
    state = map_state(plain)
    replaced = replaced_layers(state, own, replaceable or {})
    kept = {k for layer in replaced.values() for k in layer["keys"]}
    prefixes = tuple(f"{layer['layer']}." for layer in replaced.values())
    _check_fit(
        {k: v for k, v in state.items() if not k.startswith(prefixes)},
        own,
        {k: v for k, v in own.items() if k not in kept},
        source,
        expect_arch,
        key_map,
    )
    merged = {k: state[k] if k in state and k not in kept else own[k] for k in own}
    model.load_state_dict(with_versions(merged, getattr(plain, "_metadata", None)))
    loaded = sum(1 for k in own if k in state and k not in kept)
    log.info("pretrained weights loaded from %s: %d of %d tensors", source, loaded, len(own))
    for role, layer in replaced.items():
        log.info(
            "pretrained: %s %s replaced (kept at its fresh initialisation): %s",
            role,
            layer["layer"],
            layer["reason"],
        )
    if missing_counters:
        layout["bn_counters_missing"] = missing_counters
    return {
        "pretrained": source,
        "pretrained_weights": {
            "format": "safetensors" if Path(source).suffix == ".safetensors" else "state_dict",
            "tensors_loaded": loaded,
            "tensors_in_model": len(own),
            **layout,
            "replaced": replaced,
        },
    }
