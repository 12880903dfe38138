"""``l1_filter``: filter pruning by L1 norm, Li et al., ICLR 2017 (methods.md §6).

One shot: every prunable channel group (:mod:`prune_cli.pruning.channels`: a producer conv with
its BN, depthwise followers, SE gates and consumers) is scored by the norm of the producer's
filters, the lowest ``ratio`` of filters is removed **physically** (the model gets narrower),
then the pipeline fine-tunes it.

- ``method.scope``: ``layerwise`` (default; the paper prunes a fixed fraction of each layer)
  removes ``floor(ratio·C)`` filters of each group, ranked by ``sum |W[i]|``; ``global`` uses one
  ranking over all groups by the *mean* |w| of each filter (the L1 norm divided by its number of
  entries, so that 3x3 and 1x1 filters are comparable).
- ``method.norm``: ``l1`` (default) or ``l2``.
- ``method.mode``, ``method.min_channels``, ``method.round_to``: as in ``network_slimming``.

As in the paper's ResNets, the filters that feed a residual addition are not pruned (only the
inner convs of each block), because removing them would change the residual stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, PruneContext, PruneResult
from prune_cli.methods.network_slimming import number_option
from prune_cli.methods.registry import METHODS
from prune_cli.pruning import THRESHOLD_MODES
from prune_cli.pruning.channels import (
    channel_groups,
    channel_report,
    global_keep,
    layerwise_keep,
    load_pruned,
    remove_channels,
)
from prune_cli.pruning.importance import CRITERIA, filter_norm
from prune_cli.pruning.masks import SCOPES


@METHODS.register("l1_filter")
class L1FilterPruning(Method):
    name = "l1_filter"

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        scope = self.option("scope", SCOPES, "layerwise")
        norm = self.option("norm", CRITERIA, "l1")
        mode = self.option("mode", THRESHOLD_MODES, "exact")
        min_channels = number_option(self.cfg, "min_channels", 1, self.name)
        round_to = int(number_option(self.cfg, "round_to", 1, self.name))
        groups = channel_groups(model, ctx.input_size)
        if not groups:
            raise ConfigError(f"{type(model).__name__} has no prunable filter groups")
        scores = filter_norm(model, groups, p=1 if norm == "l1" else 2, mean=scope == "global")
        select = global_keep if scope == "global" else layerwise_keep
        keep = select(scores, self.ratio, mode, min_channels, round_to)
        new = remove_channels(model, groups, keep).to(ctx.device)
        info = {
            "importance": f"filter_{norm}",
            "scope": scope,
            "mode": mode,
            "min_channels": min_channels,
            "round_to": round_to,
            "channels_kept": int(sum(int(k.sum()) for k in keep.values())),
            "channels_total": int(sum(k.numel() for k in keep.values())),
            "channels": channel_report(groups, keep),
            "input_size": list(ctx.input_size),
        }
        return PruneResult(model=new, masks={}, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure from ``info["channels"]``, then load the weights."""
        return load_pruned(model, checkpoint, source)
