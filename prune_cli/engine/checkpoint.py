"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors on mismatch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.distributed import is_main
from prune_cli.errors import CheckpointError


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

    Only tensors and plain containers are unpickled (``weights_only=True``). A missing or
    unreadable file raises :class:`CheckpointError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
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
            f"pass model={arch} or another checkpoint"
        )
    state = state_dict_of(checkpoint)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
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
        name = expect_arch or type(model).__name__
        raise CheckpointError(
            f"checkpoint {source!r} does not fit model {name!r} with this dataset: "
            + "; ".join(detail)
        )
    model.load_state_dict(state)
