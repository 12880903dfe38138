"""Portable pruned checkpoints: the weights as safetensors, the structure as JSON, no pickle.

Every run writes, beside ``checkpoints/final.pt``:

- ``final.safetensors``: the final model's state dict (CPU, contiguous) and the masks of a
  masked method under ``masks/<parameter name>`` (state-dict keys never contain ``/``);
- ``final.json``: what rebuilds the architecture the weights belong to (:func:`describe`):

  .. code-block:: json

      {"format": "prune-cli/pruned-model", "version": 1, "weights": "final.safetensors",
       "model": {"name": "resnet56", "options": {}},
       "input": {"num_classes": 10, "in_channels": 3, "image_size": 32, "dataset": "cifar10"},
       "method": {"name": "l1_filter", "config": {...}, "ratio": 0.5, "seed": 0},
       "structure": {"channels": {"groups": "coupled", "input_size": [3, 32, 32],
                                  "channels": {"<group>": [kept, total]},
                                  "keep": {"<group>": [kept channel indices]},
                                  "blocks": {"removed": ["layer1.2", ...]}},
                     "sharing": null,
                     "masks": ["layer1.0.conv1.weight", ...]}}

  ``structure.channels`` is the cut of a channel-removal method (``network_slimming``,
  ``l1_filter``, ``double_pruning``, ``dynamic_filter`` with removal); ``structure.sharing`` the
  plan of a sharing method (``template_reuse``, ``soft_sharing``: the banks' templates and which
  convs share them); ``structure.masks`` names the masks in the weights file. ``blocks``
  (``l1_filter``'s ``method.remove_blocks``: residual blocks removed whole, replaced by the
  identity before the channels were cut) makes the file version 2: an older prune-cli refuses it
  in one line rather than misreading it.

:func:`load_pruned` (``prune_cli.load_pruned``) rebuilds the model from these two files alone:
the dense model is built from its registered name and options for the recorded input, the
method re-applies its structural change before training (``prepare``: a sharing method's
template convs, a deterministic function of the seed), the channel cut is replayed from the
kept indices (:func:`prune_cli.pruning.channels.rebuild`, the path a resumed run takes too),
and the weights are loaded. Nothing is unpickled: safetensors holds tensors only and the JSON
plain values. What runs is prune-cli's own code (and, for ``model=custom``, the user's factory,
which must be importable where the model is loaded).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli import __version__
from prune_cli.errors import CheckpointError
from prune_cli.io import atomic_write_text
from prune_cli.methods import build_method
from prune_cli.models import build_model, without_library_weights

FORMAT = "prune-cli/pruned-model"
VERSION = 2
#: The version a file gets when nothing in it needs a newer reader (no removed blocks).
BASE_VERSION = 1
MASK_PREFIX = "masks/"
#: The ``info`` keys a channel-removal method's ``restore`` reads (channels.rebuild).
CHANNEL_KEYS = ("groups", "input_size", "channels", "keep")


@dataclass
class Portable:
    """A reloaded portable checkpoint: the model (eval mode), its masks and the description."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    description: dict[str, Any]


def describe(
    *,
    model_name: str,
    model_options: Mapping[str, Any],
    num_classes: int,
    in_channels: int,
    image_size: int,
    dataset: str,
    method_config: Mapping[str, Any],
    ratio: float,
    seed: int,
    info: Mapping[str, Any],
    masks: Mapping[str, torch.Tensor],
    sharing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON structure description of a final model (module docstring). ``info`` is the
    method's ``prune_info``; ``sharing`` the plan of a sharing method (``templates`` per bank,
    ``layers`` per bank, ``coefficients``, ``plan``), None otherwise."""
    channels = None
    if info.get("channels") and info.get("input_size"):
        channels = {key: info[key] for key in CHANNEL_KEYS if key in info}
    removed = list((info.get("blocks") or {}).get("removed") or [])
    if removed:
        channels = {**(channels or {}), "blocks": {"removed": removed}}
    return {
        "format": FORMAT,
        "version": VERSION if removed else BASE_VERSION,
        "prune_cli_version": __version__,
        "model": {"name": model_name, "options": dict(model_options)},
        "input": {
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "image_size": int(image_size),
            "dataset": dataset,
        },
        "method": {
            "name": str(method_config.get("name")),
            "config": dict(method_config),
            "ratio": float(ratio),
            "seed": int(seed),
        },
        "structure": {
            "channels": channels,
            "sharing": dict(sharing) if sharing else None,
            "masks": sorted(masks),
        },
    }


def save_portable(
    stem: str | Path,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    description: Mapping[str, Any],
) -> dict[str, str]:
    """Write ``<stem>.safetensors`` (weights and masks) and ``<stem>.json`` (``description``),
    each through a temporary file and a rename; returns ``{"weights": path, "structure": path}``.
    """
    from safetensors.torch import save_file

    stem = Path(stem)
    weights, structure = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        # safetensors refuses tensors that share memory (a bank referenced twice) and needs
        # contiguous CPU storage: each entry gets its own copy.
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    for key, mask in masks.items():
        tensors[MASK_PREFIX + key] = mask.detach().to("cpu").contiguous().clone()
    missing = sorted(set(description["structure"]["masks"]) - set(masks))
    if missing:
        raise ValueError(f"the description names masks that are not given: {missing[:3]}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=weights.parent, prefix=f".{weights.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "structure": structure.name})
        os.replace(tmp, weights)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(structure, _json_text({**description, "weights": weights.name}))
    return {"weights": str(weights), "structure": str(structure)}


def _json_text(description: Mapping[str, Any]) -> str:
    """One top-level key per line, each value compact (the kept-index lists stay short)."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in description.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def find_portable(path: str | Path) -> tuple[Path, Path]:
    """``(structure .json, weights .safetensors)`` for ``path``: a run directory, its
    ``checkpoints/`` folder, or any of ``final.pt``, ``final.json``, ``final.safetensors``."""
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        structure = folder / "final.json"
    else:
        structure = path.with_suffix(".json")
    if not structure.is_file():
        hint = (
            " (a run from before portable checkpoints: only final.pt, which resume= reads)"
            if structure.with_suffix(".pt").is_file()
            else ""
        )
        raise CheckpointError(
            f"no portable checkpoint at {str(path)!r}: {structure} is missing{hint}; pass a run "
            "directory or its checkpoints/final.pt, final.json or final.safetensors"
        )
    try:
        description = json.loads(structure.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{structure} is not readable JSON ({exc})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointError(f"{structure} is not a prune-cli structure description")
    weights = structure.with_name(str(description.get("weights", structure.stem + ".safetensors")))
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing (the weights of {structure})")
    return structure, weights


def read_portable(path: str | Path, device: str | torch.device = "cpu") -> Portable:
    """Rebuild the final model of a run from its portable checkpoint (module docstring);
    the model is returned in eval mode on ``device``, with its masks and description."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    structure, weights = find_portable(path)
    description = json.loads(structure.read_text())
    if int(description.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{structure} is format version {description['version']}; this prune-cli reads "
            f"up to {VERSION}: upgrade prune-cli"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({exc})") from None
    masks = {k[len(MASK_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    model = rebuild_model(description, state, masks, source=str(weights))
    return Portable(model.to(device).eval(), {k: v.to(device) for k, v in masks.items()},
                    description)  # fmt: skip


def rebuild_model(
    description: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    source: str,
) -> nn.Module:
    """The model ``description`` describes, with ``state`` loaded (see the module docstring)."""
    spec, data, meth = description["model"], description["input"], description["method"]
    structure = description["structure"]
    seed = int(meth["seed"])
    torch.manual_seed(seed)  # the run's own order: the same seed before the dense model is built
    with without_library_weights():  # (``model.weights``: the state below replaces them all)
        model = build_model(
            str(spec["name"]),
            num_classes=int(data["num_classes"]),
            in_channels=int(data["in_channels"]),
            image_size=int(data["image_size"]),
            **dict(spec.get("options") or {}),
        )
    method = build_method(dict(meth["config"]), float(meth["ratio"]), seed)
    model = method.prepare(model)
    sharing = structure.get("sharing")
    if sharing:
        got = (method.sharing_plan() or {}).get("templates")
        if got != sharing.get("templates"):
            raise CheckpointError(
                f"{source}: the sharing plan rebuilt here ({got}) is not the recorded one "
                f"({sharing.get('templates')}); was it written by another prune-cli version?"
            )
    checkpoint = {
        "model": dict(state),
        "masks": dict(masks),
        "info": dict(structure.get("channels") or {}),
        "arch": spec["name"],
    }
    return method.restore(model, checkpoint, source)


def load_pruned(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The final model of a prune-cli run, rebuilt without unpickling anything.

    ``path``: a run directory, or its ``checkpoints/final.pt`` / ``final.json`` /
    ``final.safetensors``. The model (eval mode, on ``device``) is the run's final model, pruned
    structure included: a narrower network for channel removal, template convs for sharing,
    zeros where a masked method pruned weights (:func:`read_portable` also returns the masks).
    Raises :class:`~prune_cli.errors.CheckpointError` (one line) when the files are missing or
    do not fit.
    """
    return read_portable(path, device).model
