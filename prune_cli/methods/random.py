"""``random``: the control (docs/methods.md §6).

- ``granularity: weight`` (default) removes exactly as many weights as ``magnitude`` would at the
  same ratio, scope and pool, chosen uniformly at random from the run seed, so that any gap to
  magnitude is the value of the criterion.
- ``granularity: filter`` is the control of the structured methods: channels chosen at random
  (:class:`~prune_cli.pruning.importance.RandomChannels`) and removed physically exactly as
  ``l1_filter`` removes its lowest-norm ones (same groups, scope, guards); compare
  ``method=l1_filter`` with ``method=random method.granularity=filter method.scope=layerwise``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prune_cli.methods.base import (
    ChannelOptions,
    Method,
    OwnRatio,
    PruneContext,
    PruneResult,
    ScheduleOptions,
)
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, OneOf
from prune_cli.pruning import prunable_weights, rate_check
from prune_cli.pruning.channels import restore_channels
from prune_cli.pruning.importance import RandomChannels
from prune_cli.pruning.masks import SCOPES
from prune_cli.pruning.schedules import ChannelSteps, WeightSteps

GRANULARITIES = ("weight", "filter")


@METHODS.register("random")
class RandomPruning(Method):
    class Options(OwnRatio, ChannelOptions, ScheduleOptions):
        """``configs/method/random.yaml``: the pool and scope of ``magnitude`` (weights), or
        the groups, scope and guards of ``l1_filter`` (filters); the schedule (``gradual``:
        weights only)."""

        granularity: OneOf(*GRANULARITIES)
        scope: OneOf(*SCOPES)
        include_linear: Bool

    opts: Options

    @classmethod
    def refuses_schedule(cls, cfg: Mapping[str, Any]) -> str | None:
        if cfg.get("schedule") == "gradual" and cfg.get("granularity") == "filter":
            return "gradual pruning of filters is not supported (weights only); use iterative"
        return None

    def gradual_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Random scores drawn once from the run seed (the same every call), so the weights a
        schedule removes are a growing random subset."""
        weights = prunable_weights(model, self.opts.include_linear)
        gen = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(w.shape, generator=gen) for name, w in weights.items()}

    def gradual_pool(self) -> tuple[float, str, str]:
        return self.ratio, self.opts.scope, "exact"

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        if self.opts.granularity == "filter":
            return self._filters(model, ctx)
        scope = self.opts.scope
        # Random scores with the exact threshold: the same count as magnitude's exact mode.
        step = WeightSteps(self.gradual_scores, scope=scope, mode="exact")
        model, masks, info = self.scheduled(model, ctx, step, self.ratio)
        info.update({"granularity": "weight", "scope": scope})
        if masks:
            info["rates"] = {"weights": rate_check(masks, self.ratio)}
        return PruneResult(model=model, masks=masks, info=info)

    def _filters(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        step = ChannelSteps(
            RandomChannels(self.seed),
            ctx.input_size,
            ctx.device,
            scope=self.opts.scope,
            **self.opts.channel_settings(),
        )
        model, _, info = self.scheduled(model, ctx, step, self.ratio)
        info = {**step.info, **info, "granularity": "filter"}
        return PruneResult(model=model, masks={}, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure (filter granularity), then load the weights."""
        return restore_channels(model, checkpoint, source)
