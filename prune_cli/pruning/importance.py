"""Channel importance criteria, separate from the removal mechanics (Torch-Pruning style).

Each criterion maps every channel group (:class:`~prune_cli.pruning.channels.ChannelGroup`) to a
1-D tensor of scores, one per channel; lower scores are removed first.

- ``bn_gamma``: |γ| of the group's leader BN (network slimming, methods.md §3 step 2). Groups
  without a leader BN have no score and are left whole.
- ``filter_norm`` with ``p=1``: the L1 norm ``sum |W[i]|`` of the producer conv's filter ``i``
  (Li et al. 2017, methods.md §6); ``p=2``: the L2 norm. ``mean=True`` divides by the filter's
  number of entries (mean |w|), which makes filters of different sizes comparable for one global
  ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prune_cli.pruning.channels import ChannelGroup

CRITERIA = ("l1", "l2")


def bn_gamma(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
    """``{group: |γ| of its leader BN}`` for every group that has a leader."""
    modules = dict(model.named_modules())
    return {
        g.name: modules[g.leader].weight.detach().abs().float().cpu()
        for g in groups
        if g.leader is not None
    }


def filter_norm(
    model: nn.Module, groups: Sequence[ChannelGroup], p: int = 1, mean: bool = False
) -> dict[str, torch.Tensor]:
    """``{group: per-filter Lp norm of the producer conv}`` (``mean``: L1 divided by entries)."""
    modules = dict(model.named_modules())
    scores = {}
    for g in groups:
        w = modules[g.name].weight.detach().float().cpu().flatten(1)
        norm = w.abs().sum(dim=1) if p == 1 else w.norm(p=p, dim=1)
        scores[g.name] = norm / w.shape[1] if mean else norm
    return scores
