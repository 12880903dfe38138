"""Verification of channel groups: removing a group must compute what masking it computes
(:func:`verify_groups`), checked on a randomised copy of the model."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from prune_cli.pruning.group_model import ChannelGroup, first_line
from prune_cli.pruning.removal import mask_channels, remove_channels


def verify_groups(
    model: nn.Module, groups: Sequence[ChannelGroup], input_size: tuple[int, ...]
) -> dict[str, str]:
    """Check each group's maps on a randomised copy of ``model``; ``{group: reason}`` of failures.

    For the exact groups, about half of every group's channels is removed at once and the pruned
    copy must reproduce, in eval mode, the copy with those channels' consumer columns zeroed
    (:func:`prune_cli.pruning.channels.mask_channels`); BN statistics and affine parameters are
    randomised first so that no channel hides behind a zero. A failing combined check is retried
    group by group to name the culprits. Non-exact groups (normalising across channels) must at
    least give a pruned model that runs and keeps the output shape.
    """
    gen = torch.Generator().manual_seed(0)
    probe = _randomised_copy(model, gen)
    x = torch.randn((2, *input_size), generator=gen).to(_device(probe))
    with torch.no_grad():
        reference = probe(x)

    def keep_half(g: ChannelGroup) -> torch.Tensor:
        keep = torch.ones(g.size, dtype=torch.bool)
        atoms = g.atoms()
        order = torch.randperm(len(atoms), generator=gen).tolist()
        for i in order[: len(atoms) // 2]:
            keep[atoms[i]] = False
        return keep

    def check(subset: Sequence[ChannelGroup]) -> str | None:
        keep = {g.name: keep_half(g) for g in subset}
        keep = {k: v for k, v in keep.items() if not bool(v.all())}
        if not keep:
            return None
        try:
            pruned = remove_channels(probe, subset, keep).eval()
            with torch.no_grad():
                got = pruned(x)
        except Exception as exc:  # a map that does not fit fails in many ways
            return f"removal fails ({type(exc).__name__}: {first_line(exc)[:80]})"
        if got.shape != reference.shape:
            return "removal changes the output shape"
        if not all(g.exact for g in subset):
            return None
        modules = dict(probe.named_modules())
        saved = {
            m.module: modules[m.module].weight.detach().clone() for g in subset for m in g.consumers
        }
        mask_channels(probe, subset, keep)
        with torch.no_grad():
            want = probe(x)
            for name, weight in saved.items():
                modules[name].weight.copy_(weight)
        scale = float(want.abs().max()) + 1e-6
        if not torch.isfinite(got).all() or float((got - want).abs().max()) > 1e-3 * scale:
            return "removal does not reproduce the masked model"
        return None

    failed: dict[str, str] = {}
    exact = [g for g in groups if g.exact]
    loose = [g for g in groups if not g.exact]
    for subset in (exact, loose):
        if subset and check(subset) is not None:
            for g in subset:
                reason = check([g])
                if reason is not None:
                    failed[g.name] = reason
    return failed


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def _randomised_copy(model: nn.Module, gen: torch.Generator) -> nn.Module:
    probe = copy.deepcopy(model).eval()
    for m in probe.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    # Keep activations of deep random networks in range: scale every conv/linear to unit gain.
    for m in probe.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
    return probe
