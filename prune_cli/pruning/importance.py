"""Importance criteria, separate from the removal mechanics (Torch-Pruning style).

Channel criteria are small callables ``criterion(model, groups) -> {group name: scores}`` with one
score per channel of each group they can rank; lower scores are removed first, and a group left
out of the result is not pruned. How a **group** is scored from its members:

- :class:`BNScale` (network slimming, docs/methods.md §3): the mean |γ| over the group's BNs that
  are followed by a nonlinearity, leaving out the BNs behind a depthwise conv of the same group
  (they follow their producer, docs/methods.md §3 MobileNetV2 rule). A BN followed by no activation
  (a *linear* BN: MobileNet's projection, the BN feeding a residual stream that is added without an
  activation) is never a ranking signal; a group with no other BN is not ranked. For residual
  streams this averages the BNs of every producer (post-activation ResNets) or of every
  pre-activation block reading the stream (pre-activation ResNets, DenseNet), the BNs that the
  slimming paper's ResNet-164 and DenseNet-40 rank.
- :class:`FilterNorm` (l1_filter, Li et al. 2017, docs/methods.md §6): the summed L1 (or L2) norm of
  the channel's filter in **every producer** (all convs added into a residual stream;
  squeeze-and-excitation gates are not producers); ``mean=True`` divides by the number of
  weights summed, which makes groups with filters of different sizes comparable in one global
  ranking.
- :class:`RandomChannels` (``random`` with ``granularity: filter``): the control, seeded scores.
- :class:`MaskedFilters` (dynamic_filter's removal): 0 for a channel whose filter is masked to
  zero in every producer, 1 otherwise (a channel some producer still uses is never removed).

A concatenation does not merge groups: each input of a ``torch.cat`` is its own group (its
producer's filters, the BNs that read its slice of the concatenated tensor), so DenseNet layers,
Inception branches and SqueezeNet's two expand convs are ranked like any other group.

Weight-level scores (unstructured pruning and DPF's masks) are plain functions:
:func:`filter_scores` (one score per filter of a weight) and :func:`weight_scores` (one per entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prune_cli.pruning.groups import ChannelGroup

CRITERIA = ("l1", "l2")
FILTER_IMPORTANCES = ("l1_mean", "l1", "l2", "l2_mean")


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


@dataclass(frozen=True)
class BNScale:
    """Network slimming's criterion: mean |γ| of the ranking BNs of each group (module doc)."""

    name: str = "bn_gamma"
    needs: str = "a BatchNorm followed by an activation (slimming never ranks linear BNs)"

    def __call__(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        scores = {}
        for g in groups:
            bns = [m for m in g.bns if m.nonlinear and not m.after_depthwise]
            bns = [m for m in bns if getattr(modules[m.module], "weight", None) is not None]
            if not bns:
                continue
            total = torch.zeros(g.size)
            count = torch.zeros(g.size)
            for m in bns:
                gamma = modules[m.module].weight.detach().abs().float().cpu()
                total.index_add_(0, torch.tensor(m.channels), gamma[list(m.positions)])
                count.index_add_(0, torch.tensor(m.channels), torch.ones(len(m.channels)))
            # A channel no ranking BN sees (possible only in hand-written partial groups) is
            # never removed by this criterion.
            scores[g.name] = torch.where(count > 0, total / count.clamp(min=1), torch.inf)
        return scores


@dataclass(frozen=True)
class FilterNorm:
    """``l1_filter``'s criterion: Lp norm of each channel's filter, summed over producers."""

    p: int = 1
    mean: bool = False
    name: str = field(default="")
    needs: str = "a producer conv or linear"

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"filter_l{self.p}" + ("_mean" if self.mean else ""))

    def __call__(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        scores = {}
        for g in groups:
            total = torch.zeros(g.size)
            entries = torch.zeros(g.size)
            for m in g.producers:
                w = modules[m.module].weight.detach().float().cpu().flatten(1)
                rows = w[list(m.positions)]
                # L1: summed |w|; L2: summed squares, rooted below
                part = rows.abs().sum(dim=1) if self.p == 1 else rows.pow(2).sum(dim=1)
                total.index_add_(0, torch.tensor(m.channels), part)
                entries.index_add_(
                    0, torch.tensor(m.channels), torch.full((len(m.channels),), float(w.shape[1]))
                )
            if self.p != 1:
                total = total.sqrt()
            scores[g.name] = total / entries.clamp(min=1) if self.mean else total
        return scores


@dataclass(frozen=True)
class MaskedFilters:
    """1 for a channel some producer still uses, 0 when every producer's filter for it is
    masked (``masks``: parameter name -> bool mask, ``True`` = kept). Producers without a mask
    count as using every channel."""

    masks: dict[str, torch.Tensor]
    name: str = "masked_filters"
    needs: str = "masked producer filters"

    def __call__(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
        scores = {}
        for g in groups:
            alive = torch.zeros(g.size, dtype=torch.bool)
            if not g.producers:
                continue
            for m in g.producers:
                mask = self.masks.get(f"{m.module}.weight")
                if mask is None:
                    alive[list(m.channels)] = True
                    continue
                used = mask.reshape(mask.shape[0], -1).any(dim=1).cpu()
                alive[list(m.channels)] |= used[list(m.positions)]
            scores[g.name] = alive.float()
        return scores


@dataclass(frozen=True)
class RandomChannels:
    """The control of the channel criteria (docs/methods.md §6): uniform random scores from
    ``seed``, drawn group by group in the groups' order, so a seed fixes the channels chosen."""

    seed: int = 0
    name: str = "random"
    needs: str = ""

    def __call__(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return {g.name: torch.rand(g.size, generator=gen) for g in groups}


# ----------------------------------------------------------------------------- weight level
def filter_scores(weight: torch.Tensor, importance: str = "l1_mean") -> torch.Tensor:
    """One score per filter ``W[j]``: ``l1_mean`` = ``sum|W[j]| / W[j].numel()`` (filters of
    different sizes become comparable: a filter of all 0.1 scores 0.1 whatever its shape),
    ``l1`` = ``sum|W[j]|``, ``l2`` = ``||W[j]||_2``, ``l2_mean`` = ``sum W[j]^2 / W[j].numel()``."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    if importance == "l1_mean":
        return flat.abs().sum(dim=1) / flat.shape[1]
    if importance == "l1":
        return flat.abs().sum(dim=1)
    if importance == "l2":
        return flat.pow(2).sum(dim=1).sqrt()
    if importance == "l2_mean":
        return flat.pow(2).sum(dim=1) / flat.shape[1]
    raise ValueError(
        f"unknown importance {importance!r}; choose one of: {', '.join(FILTER_IMPORTANCES)}"
    )


def weight_scores(weight: torch.Tensor, importance: str = "l1") -> torch.Tensor:
    """One score per weight: ``w^2`` for ``l2_mean``, ``|w|`` otherwise (the same ranking as L2)."""
    w = weight.detach().float()
    return w.pow(2) if importance == "l2_mean" else w.abs()
