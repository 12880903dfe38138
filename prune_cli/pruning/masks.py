"""Weight masks: which weights are prunable, how masks are computed, applied and held.

A mask is a bool tensor shaped like the weight it belongs to, ``True`` = kept. Masks are keyed
by the parameter name (``layer1.0.conv1.weight``) so they survive a state-dict round trip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prune_cli.engine.hooks import TrainHooks
from prune_cli.errors import ConfigError
from prune_cli.metrics.counting import prunable_layers
from prune_cli.pruning.importance import weight_scores
from prune_cli.pruning.threshold import keep_mask

SCOPES = ("global", "layerwise")


def prunable_weights(model: nn.Module, include_linear: bool = False) -> dict[str, nn.Parameter]:
    """The weights unstructured pruning may zero: every Conv2d weight (and Linear, if asked).

    Biases and BN parameters are never pruned (docs/methods.md §4 B1).
    """
    return {f"{name}.weight": m.weight for name, m in prunable_layers(model, include_linear)}


def masks_from_scores(
    scores: Mapping[str, torch.Tensor], ratio: float, scope: str = "global", mode: str = "exact"
) -> dict[str, torch.Tensor]:
    """Prune the lowest-scoring ``ratio`` of entries, over all tensors together or per tensor."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    if scope == "layerwise":
        return {name: keep_mask(s, ratio, mode) for name, s in scores.items()}
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    keep = keep_mask(flat, ratio, mode)
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset : offset + s.numel()].reshape(s.shape)
        offset += s.numel()
    return masks


def magnitude_masks(
    model: nn.Module,
    ratio: float,
    scope: str = "global",
    mode: str = "exact",
    include_linear: bool = False,
) -> dict[str, torch.Tensor]:
    """Magnitude pruning (Han et al. 2015, docs/methods.md §4 B1) applied to ``model`` in place:
    the lowest-|w| ``ratio`` of the prunable weights (:func:`prunable_weights`) is zeroed, over
    all of them (``global``) or per layer; returns the masks."""
    weights = prunable_weights(model, include_linear)
    masks = masks_from_scores({n: weight_scores(w) for n, w in weights.items()}, ratio, scope, mode)
    apply_masks(model, masks)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked-out entries of each named parameter in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


def count_pruned(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(number of masked-out entries, total entries) over all masks."""
    zeros = sum(int((~m).sum()) for m in masks.values())
    return zeros, sum(m.numel() for m in masks.values())


def rate_check(masks: Mapping[str, torch.Tensor], target: float) -> dict[str, float]:
    """``{"target", "achieved", "total"}`` for ``metrics.json``'s ``prune_info.rates``: the
    fraction of the masks' ``total`` entries removed against the rate asked for."""
    zeros, total = count_pruned(masks)
    achieved = round(zeros / total, 6) if total else 0.0
    return {"target": float(target), "achieved": achieved, "total": total}


class MaskHold(TrainHooks):
    """Keeps pruned weights at exactly zero during fine-tuning.

    Gradients of pruned entries are zeroed before the step (as the reference code does), and the
    weights are re-masked after it, because momentum and weight decay could otherwise move a
    zero away from zero.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise KeyError(f"masks name parameters the model lacks: {missing[:3]}")
        self.pairs = [
            (params[n], m.to(params[n].device, params[n].dtype)) for n, m in masks.items()
        ]

    def after_backward(self, model: nn.Module) -> None:
        for p, m in self.pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for p, m in self.pairs:
            p.mul_(m)
