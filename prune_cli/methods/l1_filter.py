"""``l1_filter``: filter pruning by L1 norm, Li et al., ICLR 2017 (methods.md §6).

One shot: every channel group (:mod:`prune_cli.pruning.groups`) is scored by the L1 norm of its
filters summed over all producers (:class:`~prune_cli.pruning.importance.FilterNorm`), the lowest
``ratio`` of channels is removed **physically** (the model gets narrower), then the pipeline
fine-tunes it.

- ``method.groups``: ``coupled`` (default) also prunes residual streams, concatenations and
  ShuffleNetV2's stage streams, every producer of a channel together; ``single`` prunes only
  groups with one producer, as the paper's ResNets do (only the first conv of each block).
- ``method.scope``: ``layerwise`` (default; the paper prunes a fixed fraction of each layer)
  removes ``floor(ratio·C)`` channels of each group; ``global`` ranks all groups together by the
  *mean* |w| of each channel's filters (the L1 norm divided by the number of weights, so that
  3x3 and 1x1 filters are comparable).
- ``method.norm``: ``l1`` (default) or ``l2``.
- ``method.mode``, ``method.min_channels``, ``method.round_to``: as in ``network_slimming``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prune_cli.methods.base import ChannelOptions, Method, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import OneOf
from prune_cli.pruning.channels import channel_prune, restore_channels
from prune_cli.pruning.importance import CRITERIA, FilterNorm


@METHODS.register("l1_filter")
class L1FilterPruning(Method):
    name = "l1_filter"

    class Options(ChannelOptions):
        """``configs/method/l1_filter.yaml``."""

        scope: OneOf("layerwise", "global") = "layerwise"
        norm: OneOf(*CRITERIA) = "l1"

    opts: Options

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        scope = self.opts.scope
        importance = FilterNorm(p=1 if self.opts.norm == "l1" else 2, mean=scope == "global")
        pruned = channel_prune(
            model,
            importance,
            self.ratio,
            input_size=ctx.input_size,
            scope=scope,
            **self.opts.channel_settings(),
        )
        return PruneResult(model=pruned.model.to(ctx.device), masks={}, info=pruned.info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure from ``info``, then load the weights."""
        return restore_channels(model, checkpoint, source)
