"""Channel groups: every tensor slice that must go when one channel goes (docs/methods.md §2.4).

A **channel group** is a set of channels removed together. Channel ``j`` of a group is one
*logical* channel of the network, and each **member** of the group says where that channel sits
in one module: its position in the producer conv's output rows, in every BN and depthwise conv
over it, in every consumer conv's or linear's input columns. A member maps channels to positions
explicitly (``channels[k]`` sits at ``positions[k]``), which covers

- residual additions: one group has several producers (every conv whose output is added into the
  stream, projection shortcuts included);
- concatenations (DenseNet, GoogLeNet, SqueezeNet's fire modules): each input of a concatenation is
  its own group, and the consumers of the concatenated tensor carry that group's channels at an
  offset;
- splits and chunks: a member may see only some channels of a group;
- flattening before a linear layer: one channel maps to ``H*W`` input columns;
- ShuffleNetV2's channel split + concatenation + channel shuffle, where a stream channel moves to a
  new position after every unit (:mod:`.shufflenet`, written by hand: per-position maps).

How a group is ranked is the importance criterion's business (:mod:`.importance`); how it is cut is
:func:`prune_cli.pruning.channels.remove_channels`'s. This module only finds the groups.

Discovery uses Torch-Pruning's ``DependencyGraph`` (v1.6), which traces the autograd graph and
propagates channel indices through additions, concatenations, splits and flattens. Its groups
are translated into :class:`ChannelGroup`; what it gets wrong is handled here:

- channel shuffles (a ``view``/``transpose``/``view``), which it treats as element-wise:
  torchvision's ShuffleNetV2 gets hand-written groups (:mod:`.shufflenet`);
- any other operation it does not model (padding the channel dimension, ``permute``, unknown
  ``grad_fn``\\ s): every group is **verified** on a copy of the model (:func:`verify_groups`) and
  a group whose removal does not reproduce the masked model is dropped with its reason;
- grouped (not depthwise) convolutions: its slicing assumes the same positions are removed in
  every convolution group; here that becomes a constraint (``ties``: channels removed together).

Coupling kinds (``ChannelGroup.coupling``): ``()`` is a *single* group (one producer conv, its BN,
depthwise followers, SE gates and consumers: the slimming paper's setting); ``residual`` (several
producers added together), ``concat``, ``split``, ``shuffle``, ``flatten`` (a flatten over a spatial
map before a linear layer), ``linear`` (a linear layer's output features). ``groups=single`` keeps
only single groups; ``groups=coupled`` keeps all of them.

The code: the group model (:mod:`.group_model`), the trace translation (:mod:`.trace`), the
verification (:mod:`.verify`) and here, :func:`discover`, which puts them together and consults
the providers of hand-written groups (:data:`~.group_model.GROUP_PROVIDERS`; ShuffleNetV2's
registers itself in :mod:`.shufflenet`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from prune_cli.models.traits import not_structurally_prunable
from prune_cli.pruning.group_model import (  # noqa: F401  (the group model, importable from here)
    BN,
    CONV,
    DEPTHWISE,
    GROUPINGS,
    LINEAR,
    NORM,
    PARAM,
    PRELU,
    WEIGHTED,
    ChannelGroup,
    ChannelRemovalError,
    Discovery,
    GroupProvider,
    Member,
    check_grouping,
    provider_for,
    register_provider,
)
from prune_cli.pruning.trace import traced_groups
from prune_cli.pruning.verify import verify_groups


def discover(
    model: nn.Module,
    input_size: Sequence[int],
    grouping: str = "coupled",
    verify: bool = True,
) -> Discovery:
    """The channel groups of ``model`` for inputs of one image of ``input_size`` ``(C, H, W)``.

    ``grouping="single"`` keeps only single groups (see the module docstring). With ``verify``
    every group is checked on a randomised copy of the model (:func:`verify_groups`). The model
    is traced in eval mode on a zero batch (its mode and weights are left as they were).
    """
    check_grouping(grouping)
    reason = not_structurally_prunable(model)
    if reason is not None:
        raise ChannelRemovalError(
            f"{type(model).__name__} cannot be pruned structurally: {reason}; prune its "
            "weights instead (method=magnitude)"
        )
    size = tuple(int(v) for v in input_size)
    provider = provider_for(model)  # hand-written groups (ShuffleNetV2), else the tracer's
    found = provider.discover(model) if provider is not None else traced_groups(model, size)
    if grouping == "single":
        kept = []
        for g in found.groups:
            if g.single:
                kept.append(g)
            else:
                found.skipped[g.name] = f"coupled ({', '.join(g.kinds)}); groups=single"
        found.groups = kept
    if verify and found.groups:
        failed = verify_groups(model, found.groups, size)
        found.groups = [g for g in found.groups if g.name not in failed]
        found.skipped.update(failed)
    return found


def channel_groups(
    model: nn.Module, input_size: Sequence[int], grouping: str = "coupled", verify: bool = True
) -> list[ChannelGroup]:
    """The groups of :func:`discover`, in module order of their names."""
    return discover(model, input_size, grouping, verify).groups
