"""Hand-written channel groups of torchvision's ShuffleNetV2, stage streams included.

Torch-Pruning cannot follow ShuffleNetV2 (its channel shuffle is a ``view``/``transpose``/``view``,
which it treats as element-wise), so the groups are written out here from the unit structure:

- a stride-2 unit reads the whole stream in both branches (``branch1``: depthwise ``.0``, BN ``.1``,
  1x1 ``.2``, BN ``.3``; ``branch2``: 1x1 ``.0`` ...) and outputs ``shuffle(cat(b1, b2))``;
- a stride-1 unit splits the stream: the first half passes through, the second half feeds
  ``branch2`` (1x1 ``.0``, BN ``.1``, depthwise ``.3``, BN ``.4``, 1x1 ``.5``, BN ``.6``); output
  ``shuffle(cat(x1, b2))``;
- ``shuffle`` (2 groups) puts ``cat[m]`` at position ``2m`` and ``cat[C/2 + m]`` at ``2m + 1``.

The stream is simulated position by position (which producer's channel sits where), so every
**stream group** (the output channels of one ``branch1.2`` or ``branch2.5``) knows every position
each of its channels reaches: the ``branch2.0`` input columns of the later units that consume it,
or the next stage's first unit (depthwise + both 1x1 convs), or ``conv5``. Removing a stream
channel removes it from all of those, and :func:`restructure` replaces the units by
:class:`~prune_cli.models.shufflenet.ShuffleUnit`, whose split point and output order are the
dense model's restricted to the kept channels, so the pruned model computes exactly what the
model with those channels masked computes (no existing tool does this).

The other groups are single: the stem (``conv1.0`` -> first unit of ``stage2``), each unit's
``branch2`` inner channels (``.0`` -> BN ``.1`` -> depthwise ``.3`` -> BN ``.4`` -> ``.5``), and
``conv5`` (-> ``fc``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prune_cli.models.shufflenet import ShuffleUnit
from prune_cli.models.traits import is_shufflenet_v2
from prune_cli.pruning.group_model import (
    BN,
    CONV,
    DEPTHWISE,
    LINEAR,
    ChannelGroup,
    ChannelRemovalError,
    Discovery,
    Member,
    register_provider,
)

STAGES = ("stage2", "stage3", "stage4")
Channel = tuple[str, int]  # (group name, channel of that group)


@dataclass
class _Unit:
    """One unit of the dense model: its stream in, the concatenation, the stream out."""

    name: str
    module: nn.Module
    split: int  # -1: stride 2 (both branches read the stream); else channels passed through
    stream_in: list[Channel]
    cat: list[Channel]
    stream_out: list[Channel]


def _maps(unit: nn.Module, width: int) -> tuple[int, list[int]]:
    """``(split, perm)`` of a unit reading a stream of ``width`` channels: torchvision's unit
    splits in half (``-1`` for stride 2) and shuffles with 2 groups (``cat[m]`` to position
    ``2m``, ``cat[C/2 + m]`` to ``2m + 1``); a :class:`ShuffleUnit` (an already pruned model) says
    its own."""
    if isinstance(unit, ShuffleUnit):
        return unit.split, unit.perm.tolist()
    split = -1 if len(unit.branch1) > 0 else width // 2
    b2 = unit.branch2[5].out_channels
    n = (unit.branch1[2].out_channels if split < 0 else split) + b2
    half = n // 2
    perm: list[int] = []
    for m in range(half):
        perm += [m, half + m]
    return split, perm


def _units(model: nn.Module) -> Iterator[_Unit]:
    """The units of every stage in order, with the dense stream simulated through them."""
    stem = model.conv1[0]
    stream: list[Channel] = [("conv1.0", j) for j in range(stem.out_channels)]
    for stage in STAGES:
        for i, unit in enumerate(getattr(model, stage)):
            name = f"{stage}.{i}"
            split, perm = _maps(unit, len(stream))
            if split < 0:
                rest = [(f"{name}.branch1.2", j) for j in range(unit.branch1[2].out_channels)]
            else:
                rest = stream[:split]
            b2 = [(f"{name}.branch2.5", j) for j in range(unit.branch2[5].out_channels)]
            cat = rest + b2
            out = [cat[k] for k in perm]
            yield _Unit(name, unit, split, stream, cat, out)
            stream = out


class _Collector:
    """Accumulates members (module, role) -> per-group channel/position lists."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[tuple[str, str], list[tuple[int, int]]]] = {}
        self.meta: dict[tuple[str, str], tuple[str, int, bool, bool]] = {}

    def add(
        self,
        group: str,
        module: str,
        kind: str,
        role: str,
        size: int,
        pairs: list[tuple[int, int]],
        nonlinear: bool = False,
        after_depthwise: bool = False,
    ) -> None:
        self.parts.setdefault(group, {}).setdefault((module, role), []).extend(pairs)
        self.meta[(module, role)] = (kind, size, nonlinear, after_depthwise)

    def read(
        self,
        stream: list[Channel],
        module: str,
        kind: str,
        role: str,
        size: int,
        after_depthwise: bool = False,
    ) -> None:
        """``module`` reads ``stream`` (stream position p is the module's channel p)."""
        by_group: dict[str, list[tuple[int, int]]] = {}
        for p, (g, c) in enumerate(stream):
            by_group.setdefault(g, []).append((c, p))
        for g, pairs in by_group.items():
            self.add(g, module, kind, role, size, pairs, after_depthwise=after_depthwise)

    def group(self, name: str, size: int, coupling: tuple[str, ...]) -> ChannelGroup:
        members = []
        for (module, role), pairs in self.parts[name].items():
            kind, msize, nonlinear, after_dw = self.meta[(module, role)]
            members.append(
                Member(
                    module=module,
                    kind=kind,
                    role=role,
                    channels=tuple(c for c, _ in pairs),
                    positions=tuple(p for _, p in pairs),
                    size=msize,
                    nonlinear=nonlinear,
                    after_depthwise=after_dw,
                    groups=msize if kind == DEPTHWISE else 1,
                )
            )
        return ChannelGroup(name=name, size=size, members=tuple(members), coupling=coupling)


def discover(model: nn.Module) -> Discovery:
    """The groups of a torchvision ``ShuffleNetV2`` (see the module docstring)."""
    try:
        units = list(_units(model))
        first = units[0]
    except (AttributeError, IndexError, TypeError) as exc:
        raise ChannelRemovalError(f"unexpected ShuffleNetV2 layout ({exc})") from None
    if first.split >= 0:
        raise ChannelRemovalError("unexpected ShuffleNetV2 layout: stage2 must start with stride 2")
    col = _Collector()
    sizes: dict[str, int] = {}
    coupling: dict[str, tuple[str, ...]] = {}

    def producer(name: str, bn: str, conv: nn.Conv2d, shuffle: bool) -> None:
        n = conv.out_channels
        ident = [(j, j) for j in range(n)]
        col.add(name, name, CONV, "out", n, ident)
        col.add(name, bn, BN, "out", n, ident, nonlinear=True)
        sizes[name] = n
        coupling[name] = ("shuffle",) if shuffle else ()

    producer("conv1.0", "conv1.1", model.conv1[0], shuffle=False)
    for u in units:
        b1, b2 = u.module.branch1, u.module.branch2
        p = f"{u.name}.branch1"
        q = f"{u.name}.branch2"
        if u.split < 0:
            n_in = b1[0].in_channels
            col.read(u.stream_in, f"{p}.0", DEPTHWISE, "out", n_in)
            col.read(u.stream_in, f"{p}.1", BN, "out", n_in, after_depthwise=True)
            col.read(u.stream_in, f"{p}.2", CONV, "in", n_in)
            col.read(u.stream_in, f"{q}.0", CONV, "in", n_in)
            producer(f"{p}.2", f"{p}.3", b1[2], shuffle=True)
        else:
            col.read(u.stream_in[u.split :], f"{q}.0", CONV, "in", b2[0].in_channels)
        # branch2's inner channels: a single group
        inner = f"{q}.0"
        n = b2[0].out_channels
        ident = [(j, j) for j in range(n)]
        col.add(inner, inner, CONV, "out", n, ident)
        col.add(inner, f"{q}.1", BN, "out", n, ident, nonlinear=True)
        col.add(inner, f"{q}.3", DEPTHWISE, "out", n, ident)
        col.add(inner, f"{q}.4", BN, "out", n, ident, after_depthwise=True)
        col.add(inner, f"{q}.5", CONV, "in", n, ident)
        sizes[inner] = n
        coupling[inner] = ()
        producer(f"{q}.5", f"{q}.6", b2[5], shuffle=True)
    last = units[-1].stream_out
    col.read(last, "conv5.0", CONV, "in", len(last))
    n5 = model.conv5[0].out_channels
    producer("conv5.0", "conv5.1", model.conv5[0], shuffle=False)
    col.add("conv5.0", "fc", LINEAR, "in", n5, [(j, j) for j in range(n5)])

    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    groups = [col.group(name, sizes[name], coupling[name]) for name in sizes]
    groups.sort(key=lambda g: order[g.name])
    return Discovery(groups=groups)


def is_restructured(groups: list[ChannelGroup], keep: Mapping[str, torch.Tensor]) -> bool:
    """Does this removal cut a stream group (so that the units need explicit maps)?"""
    return any(
        "shuffle" in g.coupling and g.name in keep and not bool(keep[g.name].all()) for g in groups
    )


def restructure(dense: nn.Module, pruned: nn.Module, keep: Mapping[str, torch.Tensor]) -> None:
    """Replace every unit of ``pruned`` (the sliced copy of ``dense``) by a :class:`ShuffleUnit`
    whose split and output order are the dense model's restricted to the kept channels."""

    def kept(ch: Channel) -> bool:
        mask = keep.get(ch[0])
        return True if mask is None else bool(mask[ch[1]])

    for u in _units(dense):
        stage, index = u.name.split(".")
        old = getattr(pruned, stage)[int(index)]
        split = -1 if u.split < 0 else sum(kept(ch) for ch in u.stream_in[: u.split])
        cat = [ch for ch in u.cat if kept(ch)]
        where = {ch: i for i, ch in enumerate(cat)}
        perm = torch.tensor([where[ch] for ch in u.stream_out if kept(ch)], dtype=torch.long)
        device = next(old.parameters()).device
        getattr(pruned, stage)[int(index)] = ShuffleUnit(
            old.branch1, old.branch2, split, perm.to(device)
        )


class ShuffleNetStreams:
    """ShuffleNetV2's hand-written groups as a group provider: discovery takes them for a
    torchvision ShuffleNetV2, removal restructures the units when a stream group is cut."""

    name = "shufflenet_v2"

    def claims(self, model: nn.Module) -> bool:
        return is_shufflenet_v2(model)

    def discover(self, model: nn.Module) -> Discovery:
        return discover(model)

    def restructures(self, groups: list[ChannelGroup], keep: Mapping[str, torch.Tensor]) -> bool:
        return is_restructured(groups, keep)

    def restructure(
        self, dense: nn.Module, pruned: nn.Module, keep: Mapping[str, torch.Tensor]
    ) -> None:
        restructure(dense, pruned, keep)


register_provider(ShuffleNetStreams())
