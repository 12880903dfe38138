"""Channel removal: a physically narrower copy of a model (:func:`remove_channels`), the same
cut as masks (:func:`mask_channels`), and the bookkeeping of both over a model's channel groups
(:mod:`.group_model`); what slicing cannot rebuild is left to the group providers."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prune_cli.pruning.group_model import (
    BN,
    CONV,
    DEPTHWISE,
    GROUP_PROVIDERS,
    LINEAR,
    NORM,
    PARAM,
    PRELU,
    ChannelGroup,
    Member,
)


def remove_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping the channels ``keep`` marks.

    ``keep`` maps group names to bool masks of the group's size; groups not in ``keep`` are left
    whole. The original model is not modified. Raises ``ValueError`` for a mask that keeps no
    channel or does not fit its group.
    """
    masks = _checked(groups, keep)
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for member, positions in removal_plan(groups, masks):
        if len(positions) >= member.size:
            raise ValueError(f"removal leaves {member.module} without {member.role}put channels")
        _slice(new, modules, member, positions)
    for provider in GROUP_PROVIDERS:  # what slicing alone cannot rebuild (ShuffleNetV2 units)
        if provider.restructures(list(groups), masks):
            provider.restructure(model, new, masks)
    return new


def _checked(
    groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    by_name = {g.name: g for g in groups}
    unknown = set(keep) - set(by_name)
    if unknown:
        raise ValueError(f"keep masks for unknown channel groups: {sorted(unknown)[:3]}")
    out = {}
    for name, mask in keep.items():
        mask = mask.detach().to(torch.bool).cpu().reshape(-1)
        if mask.numel() != by_name[name].size:
            raise ValueError(
                f"keep mask of {name} has {mask.numel()} entries, not {by_name[name].size}"
            )
        if not bool(mask.any()):
            raise ValueError(f"keep mask of {name} keeps no channel")
        out[name] = mask
    return out


def removal_plan(
    groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> list[tuple[Member, list[int]]]:
    """For every member losing channels: the member and all its positions removed by every
    group (a consumer of a concatenation loses the positions of several groups at once)."""
    by_name = {g.name: g for g in groups}
    drops: dict[tuple[str, str], set[int]] = {}
    members: dict[tuple[str, str], Member] = {}
    for name, mask in keep.items():
        if bool(mask.all()):
            continue
        removed = set(torch.nonzero(~mask).reshape(-1).tolist())
        for m in by_name[name].members:
            positions = m.drop_positions(removed)
            if positions:
                drops.setdefault((m.module, m.role), set()).update(positions)
                members[(m.module, m.role)] = m
    return [(members[k], sorted(v)) for k, v in drops.items()]


def slice_masks(
    groups: Sequence[ChannelGroup],
    keep: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    pruned: nn.Module,
) -> dict[str, torch.Tensor]:
    """``masks`` (parameter name -> mask shaped like the dense parameter) cut like the
    parameters by :func:`remove_channels`; every result has its pruned parameter's shape."""
    out = {k: v for k, v in masks.items()}
    for member, positions in removal_plan(groups, _checked(groups, keep)):
        for pname in ("weight", "bias"):
            key = f"{member.module}.{pname}"
            if key not in out:
                continue
            mask = out[key]
            dim = 0 if member.role == "out" or mask.dim() == 1 else 1
            size = mask.shape[dim] if not (dim == 1 and member.groups > 1) else member.size
            kept = [i for i in range(size) if i not in set(positions)]
            if dim == 1 and member.groups > 1:  # grouped conv: the first group's local positions
                kept = kept[: len(kept) // member.groups]
            out[key] = mask.index_select(
                dim, torch.tensor(kept, dtype=torch.long, device=mask.device)
            )
    params = dict(pruned.named_parameters())
    for key, mask in out.items():
        if key in params and params[key].shape != mask.shape:
            raise ValueError(
                f"mask of {key} is {tuple(mask.shape)}, its weight {tuple(params[key].shape)}"
            )
    return out


def _slice(root: nn.Module, modules: dict[str, nn.Module], member: Member, idxs: list[int]) -> None:
    """Remove positions ``idxs`` of one member with Torch-Pruning's pruning functions."""
    import torch_pruning as tp

    if member.kind == PARAM:
        parent_name, _, attr = member.module.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        pruner = tp.pruner.function.ParameterPruner(pruning_dim=member.dim)
        setattr(parent, attr, pruner.prune_out_channels(getattr(parent, attr), idxs))
        return
    layer = modules[member.module]
    out = member.role == "out"
    if member.kind == CONV:
        fn = tp.prune_conv_out_channels if out else tp.prune_conv_in_channels
    elif member.kind == DEPTHWISE:
        fn = tp.prune_depthwise_conv_out_channels
    elif member.kind == LINEAR:
        fn = tp.prune_linear_out_channels if out else tp.prune_linear_in_channels
    elif member.kind == BN:
        fn = tp.prune_batchnorm_out_channels
    elif member.kind == PRELU:
        fn = tp.prune_prelu_out_channels
    elif member.kind == NORM:
        fn = {
            nn.GroupNorm: tp.prune_groupnorm_out_channels,
        }.get(type(layer))
        if fn is None:
            fn = (
                tp.prune_layernorm_out_channels
                if isinstance(layer, nn.LayerNorm)
                else tp.prune_instancenorm_out_channels
            )
    else:  # pragma: no cover - discovery only creates the kinds above
        raise ValueError(f"cannot slice {member.kind} member {member.module}")
    fn(layer, idxs)
    if isinstance(layer, nn.Conv2d):
        layer.weight.data = layer.weight.data.contiguous()


@torch.no_grad()
def mask_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> None:
    """The masked-dense equivalent of :func:`remove_channels`, in place: the input columns of
    every consumer (conv or linear) that reads a removed channel are set to 0.

    Removed channels then have no influence on the output, so in eval mode this model computes
    what the physically pruned one computes for every group that is ``exact`` (channel-wise
    members only; a LayerNorm or GroupNorm over the channels changes when channels go).
    """
    modules = dict(model.named_modules())
    by_name = {g.name: g for g in groups}
    for name, mask in keep.items():
        removed = set(torch.nonzero(~mask.to(torch.bool).cpu()).reshape(-1).tolist())
        if not removed:
            continue
        for m in by_name[name].consumers:
            _zero_inputs(modules[m.module], m.drop_positions(removed))


def _zero_inputs(layer: nn.Module, positions: list[int]) -> None:
    w = layer.weight
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:
        per_group_in = layer.in_channels // layer.groups
        per_group_out = layer.out_channels // layer.groups
        for position in positions:
            g, q = divmod(position, per_group_in)
            w[g * per_group_out : (g + 1) * per_group_out, q] = 0
    elif positions:
        w[:, torch.tensor(positions, dtype=torch.long, device=w.device)] = 0


@torch.no_grad()
def zero_pruned_bn(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> None:
    """The mask implementation of slimming (docs/methods.md §3 step 3): γ = β = 0 on the removed
    channels of every BN of each group, in place. In eval mode this model computes the same
    function as :func:`remove_channels`'s output when every removed channel then reaches its
    consumers as exactly 0 (single groups whose BN follows the producer, activations with
    f(0) = 0)."""
    modules = dict(model.named_modules())
    by_name = {g.name: g for g in groups}
    for name, mask in keep.items():
        removed = set(torch.nonzero(~mask.to(torch.bool).cpu()).reshape(-1).tolist())
        for m in by_name[name].bns:
            bn = modules[m.module]
            for p in m.drop_positions(removed):
                bn.weight[p] = 0.0
                bn.bias[p] = 0.0


# ----------------------------------------------------------------------------- reporting, rebuild
