"""Physical channel removal: find the coupled channel groups of a CNN and slice them out.

Definitions (methods.md §3 "coupled-set rule", §6):

- A **channel group** is a set of channels that must be removed together: the output channels
  of one *producer* conv, the BNs over them, the depthwise convs (and their BNs) that process them
  one-to-one, and the input channels of every *consumer* conv or linear that reads them. Removing
  channel ``i`` of a group removes row ``i`` / column ``i`` of every member.
- The group's **leader** is the BN right after the producer conv. Network slimming ranks a group
  by |γ| of its leader only; a depthwise BN follows its producer's mask and is never ranked on its
  own (methods.md §3, MobileNetV2 rule).
- A group is **prunable** only when the removal is a plain slice of every member: exactly one
  producer (a conv with ``groups == 1``); no residual addition (post-activation ResNets: only the
  inner BNs; the residual stream of ResNet/MobileNet/EfficientNet/MNASNet blocks stays whole);
  no concatenation, split, slice or reshape other than the flatten before a linear layer; not the
  model output. Everything else is left untouched.

Groups come from Torch-Pruning's ``DependencyGraph`` (v1.6), which traces the autograd graph;
its groups are translated into :class:`ChannelGroup` (module names) and the slicing is done here,
so the same code rebuilds a pruned structure on resume. Torch-Pruning fails on ShuffleNetV2
(``channel_shuffle`` reshapes break its index mapping), so torchvision's ``ShuffleNetV2`` gets
hand-written groups (:func:`shufflenet_groups`): the stem, the inner channels of every block's
``branch2`` and ``conv5``. The block outputs (channel split + concat + shuffle) stay whole.

Keep masks are bool tensors (``True`` = kept) keyed by group name (the producer's module name).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual, ShuffleNetV2

from prune_cli.engine.checkpoint import load_state_into
from prune_cli.errors import ConfigError
from prune_cli.pruning.threshold import keep_mask


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel group (module names as in ``model.named_modules()``).

    ``name`` is the producer conv; ``leader`` the BN right after it (``None`` for a conv without
    BN, which slimming cannot rank); ``bns`` every BN over the channels (leader first);
    ``depthwise`` the depthwise convs over them; ``consumers`` the convs/linears reading them;
    ``gates`` the squeeze-and-excitation expand convs whose outputs scale these channels (their
    output channels are removed with the group, methods.md §3 MobileNetV3).
    """

    name: str
    size: int
    leader: str | None
    bns: tuple[str, ...]
    depthwise: tuple[str, ...]
    consumers: tuple[str, ...]
    gates: tuple[str, ...] = ()


class ChannelRemovalError(ConfigError):
    """The model's structure cannot be traced for channel removal."""


# ----------------------------------------------------------------------------- discovery
def channel_groups(model: nn.Module, input_size: Sequence[int]) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (see the module docstring), in module order.

    ``input_size`` is ``(C, H, W)`` of one input image; the model is traced on a zero batch in
    eval mode (its mode is restored).
    """
    if isinstance(model, ShuffleNetV2):
        return shufflenet_groups(model)
    return _traced_groups(model, tuple(int(v) for v in input_size))


def _traced_groups(model: nn.Module, input_size: tuple[int, ...]) -> list[ChannelGroup]:
    import torch_pruning as tp
    from torch_pruning import ops

    names = {m: n for n, m in model.named_modules()}
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros((1, *input_size), device=device), verbose=False
            )
    except Exception as exc:  # Torch-Pruning raises many types on untraceable models
        raise ChannelRemovalError(
            f"cannot trace {type(model).__name__} for channel removal "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    finally:
        model.train(was_training)

    groups = []
    for tp_group in graph.get_all_groups(root_module_types=(nn.Conv2d,)):
        group = _translate(tp_group, graph, names, ops)
        if group is not None:
            groups.append(group)
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(groups, key=lambda g: order[g.name])


def _translate(tp_group, graph, names, ops) -> ChannelGroup | None:
    """A Torch-Pruning group as a :class:`ChannelGroup`, or ``None`` if it is not a plain slice."""
    producers: list[nn.Module] = []
    bns: list[nn.Module] = []
    depthwise: list[nn.Module] = []
    consumers: list[nn.Module] = []
    for dep, _ in tp_group:
        module = dep.target.module
        kind = dep.target.type
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if kind == ops.OPTYPE.CONV:
            if module.groups != 1:
                return None  # grouped (not depthwise) conv: not a plain slice
            (producers if out else consumers).append(module)
        elif kind == ops.OPTYPE.DEPTHWISE_CONV:
            depthwise.append(module)
        elif kind == ops.OPTYPE.BN:
            bns.append(module)
        elif kind == ops.OPTYPE.LINEAR:
            if out:
                return None
            consumers.append(module)
        elif kind == ops.OPTYPE.ELEMENTWISE:
            # A residual addition couples several producers; SE's multiplication and the
            # activations are channel-wise and harmless.
            if "Add" in type(module._grad_fn).__name__ or "Sub" in type(module._grad_fn).__name__:
                return None
        elif kind == ops.OPTYPE.RESHAPE:
            continue  # flatten before a linear: checked below through in_features
        else:
            return None  # concat, split, slice, output, unwrapped parameters, ...
    if not producers:
        return None
    # The producer is the conv followed by a BN; any other producer must be a BN-free SE gate
    # (its output multiplies the channels), never a second BN-carrying branch.
    after_bn = {}
    for bn in bns:
        inputs = graph.module2node[bn].inputs
        if len(inputs) == 1 and inputs[0].module in producers:
            after_bn[inputs[0].module] = bn
    if len(producers) == 1:
        producer = producers[0]
    elif len(after_bn) == 1:
        producer = next(iter(after_bn))
    else:
        return None
    gates = [p for p in producers if p is not producer]
    if any(p in after_bn for p in gates):
        return None
    leader = after_bn.get(producer)
    size = producer.out_channels
    if any(isinstance(c, nn.Linear) and c.in_features != size for c in consumers):
        return None  # a flatten over a spatial map: channel i is not column i
    if any(isinstance(c, nn.Conv2d) and c.in_channels != size for c in consumers):
        return None
    # Depthwise convs with a channel multiplier, or BNs of another width, are not a plain slice.
    if any(not d.in_channels == d.out_channels == size for d in depthwise):
        return None
    if any(b.num_features != size for b in bns) or any(g.out_channels != size for g in gates):
        return None
    if any(m not in names for m in (*bns, *depthwise, *consumers, *producers)):
        return None
    ordered_bns = ([leader] if leader is not None else []) + [b for b in bns if b is not leader]
    return ChannelGroup(
        name=names[producer],
        size=size,
        leader=None if leader is None else names[leader],
        bns=tuple(dict.fromkeys(names[b] for b in ordered_bns)),
        depthwise=tuple(dict.fromkeys(names[d] for d in depthwise)),
        consumers=tuple(dict.fromkeys(names[c] for c in consumers)),
        gates=tuple(dict.fromkeys(names[g] for g in gates)),
    )


def shufflenet_groups(model: ShuffleNetV2) -> list[ChannelGroup]:
    """Hand-written groups of torchvision's ShuffleNetV2 (Torch-Pruning cannot trace it).

    - stem: ``conv1.0`` -> ``conv1.1`` -> (max-pool) -> the first block of ``stage2``, which reads
      the stem in both branches (``branch1``: depthwise ``.0`` + BN ``.1``, then 1x1 ``.2``;
      ``branch2``: 1x1 ``.0``);
    - each block: ``branch2.0`` (1x1) -> BN ``.1`` -> depthwise ``.3`` -> BN ``.4`` -> 1x1 ``.5``;
    - head: ``conv5.0`` -> BN ``conv5.1`` -> global mean -> ``fc``.

    The block outputs go through channel split, concatenation and channel shuffle, which tie
    every channel to a fixed position in the next block; they are not pruned.
    """
    groups = []
    stage2 = model.stage2
    first = stage2[0]
    if not isinstance(first, InvertedResidual) or len(first.branch1) == 0:
        raise ChannelRemovalError("unexpected ShuffleNetV2 layout: stage2 must start with stride 2")
    groups.append(
        ChannelGroup(
            name="conv1.0",
            size=model.conv1[0].out_channels,
            leader="conv1.1",
            bns=("conv1.1", "stage2.0.branch1.1"),
            depthwise=("stage2.0.branch1.0",),
            consumers=("stage2.0.branch1.2", "stage2.0.branch2.0"),
        )
    )
    for stage in ("stage2", "stage3", "stage4"):
        for i, block in enumerate(getattr(model, stage)):
            prefix = f"{stage}.{i}.branch2"
            groups.append(
                ChannelGroup(
                    name=f"{prefix}.0",
                    size=block.branch2[0].out_channels,
                    leader=f"{prefix}.1",
                    bns=(f"{prefix}.1", f"{prefix}.4"),
                    depthwise=(f"{prefix}.3",),
                    consumers=(f"{prefix}.5",),
                )
            )
    groups.append(
        ChannelGroup(
            name="conv5.0",
            size=model.conv5[0].out_channels,
            leader="conv5.1",
            bns=("conv5.1",),
            depthwise=(),
            consumers=("fc",),
        )
    )
    return groups


# ----------------------------------------------------------------------------- keep masks
def min_keep(size: int, min_channels: float) -> int:
    """Channels a group of ``size`` always keeps: ``min_channels`` (int >= 1) or, for a float
    in (0, 1), that fraction of ``size`` rounded up; at least 1, at most ``size``."""
    if min_channels <= 0:
        raise ConfigError(f"min_channels {min_channels} is out of range; valid: > 0")
    n = math.ceil(size * min_channels) if min_channels < 1 else int(min_channels)
    return max(1, min(size, n))


def rounded_keep(kept: int, size: int, round_to: int) -> int:
    """``kept`` rounded up to a multiple of ``round_to`` (capped at ``size``)."""
    if round_to < 1:
        raise ConfigError(f"round_to {round_to} is out of range; valid: integer >= 1")
    return min(size, math.ceil(kept / round_to) * round_to)


def guard_keep(
    keep: torch.Tensor, scores: torch.Tensor, min_channels: float = 1, round_to: int = 1
) -> torch.Tensor:
    """Apply the layer-collapse guard and rounding to one group's keep mask.

    The kept count becomes ``max(kept, min_keep)`` rounded up to ``round_to``; channels are added
    back in order of decreasing score (ties: the earlier channel first). Never removes channels.
    """
    size = keep.numel()
    target = rounded_keep(max(int(keep.sum()), min_keep(size, min_channels)), size, round_to)
    if target == int(keep.sum()):
        return keep
    order = torch.sort(-scores.detach().float(), stable=True).indices
    out = keep.clone()
    for idx in order.tolist():
        if int(out.sum()) >= target:
            break
        out[idx] = True
    return out


def global_keep(
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int = 1,
) -> dict[str, torch.Tensor]:
    """One threshold over the scores of all groups together (methods.md §2.1, §3 step 2).

    The lowest ``ratio`` of all channels is removed (``exact``: ``floor(N*ratio)``; ``reference``:
    the reference code's ``+1``), then :func:`guard_keep` runs per group.
    """
    if not scores:
        return {}
    flat = torch.cat([s.detach().reshape(-1).float().cpu() for s in scores.values()])
    keep_flat = keep_mask(flat, ratio, mode)
    out, offset = {}, 0
    for name, s in scores.items():
        keep = keep_flat[offset : offset + s.numel()]
        out[name] = guard_keep(keep, s.detach().float().cpu(), min_channels, round_to)
        offset += s.numel()
    return out


def layerwise_keep(
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int = 1,
) -> dict[str, torch.Tensor]:
    """The lowest ``ratio`` of each group's channels removed, group by group, then the guard."""
    return {
        name: guard_keep(
            keep_mask(s.detach().float().cpu(), ratio, mode),
            s.detach().float().cpu(),
            min_channels,
            round_to,
        )
        for name, s in scores.items()
    }


# ----------------------------------------------------------------------------- removal
def remove_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping the channels ``keep`` marks.

    ``keep`` maps group names to bool masks of the group's size; groups not in ``keep`` are left
    whole. The original model is not modified. Raises ``ValueError`` for a mask that keeps no
    channel or does not fit its group.
    """
    by_name = {g.name: g for g in groups}
    unknown = set(keep) - set(by_name)
    if unknown:
        raise ValueError(f"keep masks for unknown channel groups: {sorted(unknown)[:3]}")
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for name, mask in keep.items():
        group = by_name[name]
        mask = mask.detach().to(torch.bool).cpu().reshape(-1)
        if mask.numel() != group.size:
            raise ValueError(f"keep mask of {name} has {mask.numel()} entries, not {group.size}")
        if not bool(mask.any()):
            raise ValueError(f"keep mask of {name} keeps no channel")
        if bool(mask.all()):
            continue
        idx = torch.nonzero(mask).reshape(-1)
        _slice_out(modules[group.name], idx)
        for gate in group.gates:
            _slice_out(modules[gate], idx)
        for bn in group.bns:
            _slice_bn(modules[bn], idx)
        for dw in group.depthwise:
            _slice_depthwise(modules[dw], idx)
        for consumer in group.consumers:
            _slice_in(modules[consumer], idx)
    return new


def _take(param: torch.Tensor | None, idx: torch.Tensor, dim: int) -> None:
    """Replace ``param``'s data by its entries at ``idx`` along ``dim`` (keeping it a Parameter)."""
    if param is None:
        return
    param.data = param.data.index_select(dim, idx.to(param.device)).contiguous()
    if param.grad is not None:
        param.grad = None


def _slice_out(conv: nn.Module, idx: torch.Tensor) -> None:
    _take(conv.weight, idx, 0)
    _take(conv.bias, idx, 0)
    conv.out_channels = len(idx)


def _slice_bn(bn: nn.Module, idx: torch.Tensor) -> None:
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        _take(tensor, idx, 0)
    bn.num_features = len(idx)


def _slice_depthwise(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    _take(conv.weight, idx, 0)
    _take(conv.bias, idx, 0)
    conv.in_channels = conv.out_channels = conv.groups = len(idx)


def _slice_in(layer: nn.Module, idx: torch.Tensor) -> None:
    _take(layer.weight, idx, 1)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(idx)
    else:
        layer.in_channels = len(idx)


# ----------------------------------------------------------------------------- reporting, rebuild
def channel_report(
    groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> dict[str, list[int]]:
    """``{group name: [kept, total]}`` for every group (whole groups report ``[size, size]``)."""
    return {g.name: [int(keep[g.name].sum()) if g.name in keep else g.size, g.size] for g in groups}


def rebuild(
    model: nn.Module, channels: Mapping[str, Sequence[int]], input_size: Sequence[int]
) -> nn.Module:
    """The pruned structure described by ``channels`` (:func:`channel_report`), for resuming.

    Keeps the first ``kept`` channels of each group: only the shapes matter, the weights are
    loaded from the checkpoint afterwards.
    """
    groups = channel_groups(model, input_size)
    by_name = {g.name: g for g in groups}
    keep = {}
    for name, (kept, total) in channels.items():
        group = by_name.get(name)
        if group is None or group.size != int(total):
            raise ChannelRemovalError(
                f"cannot rebuild the pruned model: channel group {name!r} ({total} channels) "
                "is not in this model"
            )
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[: int(kept)] = True
        keep[name] = mask
    return remove_channels(model, groups, keep)


def load_pruned(model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
    """The model saved in ``checkpoint`` (``model`` state dict + ``info``), for ``restore``.

    With ``info["channels"]`` and ``info["input_size"]`` (written by the channel-removal
    methods) the narrower structure is rebuilt from the dense ``model`` first; otherwise the
    state dict is loaded into ``model`` itself.
    """
    info = dict(checkpoint.get("info", {}))
    if "channels" in info:
        model = rebuild(model, info["channels"], info["input_size"])
    load_state_into(model, dict(checkpoint), source)
    return model


@torch.no_grad()
def zero_pruned_bn(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> None:
    """The mask implementation of slimming (methods.md §3 step 3): γ = β = 0 on the removed
    channels of every BN of each group, in place. In eval mode this model computes the same
    function as :func:`remove_channels`'s output when every removed channel then reaches its
    consumers as exactly 0 (activations with f(0) = 0)."""
    modules = dict(model.named_modules())
    for group in groups:
        if group.name not in keep:
            continue
        drop = ~keep[group.name].to(torch.bool).reshape(-1)
        for bn in group.bns:
            modules[bn].weight[drop.to(modules[bn].weight.device)] = 0.0
            modules[bn].bias[drop.to(modules[bn].bias.device)] = 0.0
