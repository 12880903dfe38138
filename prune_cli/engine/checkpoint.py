"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors on mismatch."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.distributed import is_main
from prune_cli.errors import CheckpointError
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


def _check_fit(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    keys: Mapping[str, torch.Tensor],
    source: str,
    name: str,
) -> None:
    """Raise the one-line :class:`CheckpointError` if ``state`` and ``own`` differ on ``keys``
    (missing keys, unexpected keys or shapes)."""
    missing = [k for k in own if k in keys and k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in keys and k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} in checkpoint, "
                f"{tuple(own[k].shape)} in model)"
            )
        raise CheckpointError(
            f"checkpoint {source!r} does not fit model {name!r} with this dataset: "
            + "; ".join(detail)
        )


def is_own_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """A checkpoint prune-cli wrote (the weights under ``"model"``), not a library's state dict."""
    return isinstance(checkpoint.get("model"), dict)


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    expect_arch: str,
    map_location: str | torch.device = "cpu",
    map_state: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    replaceable: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Load ``pretrained=PATH`` into ``model``; returns what metrics.json records as ``train``.

    ``path`` is either

    - a prune-cli checkpoint (``trained.pt``, ``final.pt``...): it must be of ``expect_arch``
      and fit exactly (:func:`load_state_into`); the record is ``{"pretrained": path}``;
    - a library's weights file: a plain state dict (torchvision's ``resnet18-f37072fd.pth``,
      timm's ``pytorch_model.bin`` / ``.pth``; also one wrapped as ``{"state_dict": ...}``) or a
      ``.safetensors`` file. A layer of ``replaceable`` (module name -> role, e.g. ``{"fc":
      "classifier", "conv1": "stem"}``, from :func:`prune_cli.models.traits.stem_and_classifier`)
      whose keys do not fit (another number of classes; an adapted stem) keeps its fresh
      initialisation, which is logged and recorded under ``pretrained_weights``; any other
      mismatch raises the one-line :class:`CheckpointError`.

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
    wrapped = checkpoint.get("state_dict")
    state = map_state(state_dict_of(wrapped if isinstance(wrapped, dict) else checkpoint))
    own = model.state_dict()
    replaced = replaced_layers(state, own, replaceable or {})
    kept = {k for layer in replaced.values() for k in layer["keys"]}
    prefixes = tuple(f"{layer['layer']}." for layer in replaced.values())
    _check_fit(
        {k: v for k, v in state.items() if not k.startswith(prefixes)},
        own,
        {k: v for k, v in own.items() if k not in kept},
        source,
        expect_arch,
    )
    model.load_state_dict({k: own[k] if k in kept else state[k] for k in own})
    loaded = len(own) - len(kept)
    log.info("pretrained weights loaded from %s: %d of %d tensors", source, loaded, len(own))
    for role, layer in replaced.items():
        log.info(
            "pretrained: %s %s replaced (kept at its fresh initialisation): %s",
            role,
            layer["layer"],
            layer["reason"],
        )
    return {
        "pretrained": source,
        "pretrained_weights": {
            "format": "safetensors" if Path(source).suffix == ".safetensors" else "state_dict",
            "tensors_loaded": loaded,
            "tensors_in_model": len(own),
            "replaced": replaced,
        },
    }
