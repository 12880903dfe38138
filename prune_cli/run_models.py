"""The models of a run: its architecture freshly initialised (from the run seed, the same whatever
the method, or from another seed), and ``pretrained=`` weights loaded into one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.engine.checkpoint import load_pretrained
from prune_cli.models import build_model, build_skeleton, weights_warnings
from prune_cli.models.base import key_map_of
from prune_cli.models.traits import stem_and_classifier
from prune_cli.schema import RunPlan


def launch_dir() -> Path:
    """The directory ``prune-run`` was started in (Hydra's original working directory)."""
    try:
        from hydra.utils import get_original_cwd  # Hydra only where a run is composed

        return Path(get_original_cwd())
    except (ValueError, ImportError):
        return Path(os.getcwd())


class RunModels:
    """The run's architecture (``model.*``) for its data, and its pretrained weights;
    ``warn`` says what the models got otherwise than asked (layers that kept their fresh
    initialisation)."""

    def __init__(self, plan: RunPlan, data: Any, device: torch.device, warn: Callable) -> None:
        self.plan, self.data, self.device, self.warn = plan, data, device, warn

    def kwargs(self) -> dict[str, Any]:
        """The model factory's keywords: the data's shape and the model's options."""
        data = self.data
        size = {"num_classes": data.num_classes, "in_channels": data.in_channels}
        return {**size, "image_size": data.image_size, **self.plan.model_options}

    def fresh(self, seed: int | None = None) -> nn.Module:
        """The configured architecture, freshly initialised from the run seed (the same seed
        gives the same initial weights whatever the method), or from ``seed``; layers that did
        not get the library weights asked for (``model.weights``) are warnings."""
        torch.manual_seed(self.plan.seed if seed is None else seed)
        model = build_model(self.plan.model.name, **self.kwargs())
        for message in weights_warnings(model):
            self.warn(message)
        return model

    def pretrained_path(self) -> Path | None:
        """``pretrained=`` as an absolute path (a relative one is from the launch directory)."""
        if not self.plan.pretrained:
            return None
        path = Path(self.plan.pretrained).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else launch_dir() / path))

    def load_pretrained(self, model: nn.Module, path: Path, map_state: Any = None) -> dict:
        """Load ``pretrained=`` into ``model``; a file in another code base's layout is mapped
        with the model family's declared key map, against the plain architecture's keys (a
        method may have re-parameterised ``model``: ``map_state`` maps onto that)."""
        name = self.plan.model.name
        plain = None
        if map_state is not None:
            plain = build_skeleton(name, **self.kwargs()).state_dict()
        loaded = load_pretrained(
            model,
            path,
            expect_arch=name,
            map_location=self.device,
            map_state=map_state,
            replaceable=stem_and_classifier(model, self.data.num_classes),
            key_map=key_map_of(name),
            plain_keys=plain,
        )
        for role, layer in loaded.get("pretrained_weights", {}).get("replaced", {}).items():
            self.warn(
                f"pretrained: the {role} {layer['layer']} does not fit the file and keeps its "
                f"fresh initialisation ({layer['reason']})"
            )
        return loaded
