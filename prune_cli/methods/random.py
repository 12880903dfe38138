"""``random``: the control (methods.md §6).

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

from prune_cli.methods.base import ChannelOptions, Method, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, OneOf
from prune_cli.pruning import apply_masks, masks_from_scores, prunable_weights, rate_check
from prune_cli.pruning.channels import channel_prune, restore_channels
from prune_cli.pruning.importance import RandomChannels
from prune_cli.pruning.masks import SCOPES

GRANULARITIES = ("weight", "filter")


@METHODS.register("random")
class RandomPruning(Method):
    name = "random"

    class Options(ChannelOptions):
        """``configs/method/random.yaml``: the pool and scope of ``magnitude`` (weights), or
        the groups, scope and guards of ``l1_filter`` (filters)."""

        granularity: OneOf(*GRANULARITIES) = "weight"
        scope: OneOf(*SCOPES) = "global"
        include_linear: Bool = False

    opts: Options

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        if self.opts.granularity == "filter":
            pruned = channel_prune(
                model,
                RandomChannels(self.seed),
                self.ratio,
                input_size=ctx.input_size,
                scope=self.opts.scope,
                **self.opts.channel_settings(),
            )
            pruned.info["granularity"] = "filter"
            return PruneResult(model=pruned.model.to(ctx.device), masks={}, info=pruned.info)
        scope = self.opts.scope
        weights = prunable_weights(model, self.opts.include_linear)
        gen = torch.Generator().manual_seed(self.seed)
        # Random scores with the exact threshold: the same count as magnitude's exact mode.
        scores = {name: torch.rand(w.shape, generator=gen) for name, w in weights.items()}
        masks = masks_from_scores(scores, self.ratio, scope, "exact")
        apply_masks(model, masks)
        info = {
            "granularity": "weight",
            "scope": scope,
            "rates": {"weights": rate_check(masks, self.ratio)},
        }
        return PruneResult(model=model, masks=masks, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure (filter granularity), then load the weights."""
        return restore_channels(model, checkpoint, source)
