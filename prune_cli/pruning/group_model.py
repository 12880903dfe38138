r"""The channel-group model: :class:`ChannelGroup` and its :class:`Member`\ s, the result of a
discovery (:class:`Discovery`), and the providers of hand-written groups (:class:`GroupProvider`)
that discovery and removal consult for model families the tracer cannot follow.

What a channel group is, and how groups are found, verified and removed: :mod:`.groups`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from prune_cli.errors import ConfigError

GROUPINGS = ("coupled", "single")

#: Member kinds: what a member's slice is a slice of.
CONV, DEPTHWISE, LINEAR, BN, NORM, PRELU, PARAM = (
    "conv",
    "depthwise",
    "linear",
    "bn",
    "norm",
    "prelu",
    "param",
)
#: Producers and consumers: weight rows (role "out") and columns (role "in").
WEIGHTED = (CONV, LINEAR)


class ChannelRemovalError(ConfigError):
    """A model whose channels cannot be removed (one line naming the model and the reason)."""


@dataclass(frozen=True)
class Member:
    """Where the channels of a group sit in one module (or unwrapped parameter).

    ``role`` is ``"out"`` for output channels (a producer's filters, a BN, a depthwise conv,
    a norm: channel-wise modules are always ``"out"``) and ``"in"`` for a consumer's input
    channels. ``channels[k]`` (a channel of the group) sits at ``positions[k]`` of the member's
    pruned dimension; a channel may sit at several positions (flatten) or at none (a split).
    ``nonlinear`` (BN only): every path from the BN's output reaches an activation before any
    conv, linear or the model output. ``gate``: a conv/linear whose output *multiplies* the
    channels (squeeze-and-excitation) instead of producing them. ``after_depthwise`` (BN only):
    the BN normalises the output of a depthwise member of the same group. ``groups``: the module's
    convolution groups (or GroupNorm groups), 1 when it has none.
    """

    module: str
    kind: str
    role: str
    channels: tuple[int, ...]
    positions: tuple[int, ...]
    size: int
    nonlinear: bool = False
    gate: bool = False
    after_depthwise: bool = False
    groups: int = 1
    dim: int = 0

    def drop_positions(self, removed: set[int]) -> list[int]:
        """The positions of this member that the removed channels occupy."""
        return sorted({p for c, p in zip(self.channels, self.positions) if c in removed})


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel group; ``name`` is its first producer's module name.

    ``ties``: sets of channels that can only be removed together (the same position in every
    group of a grouped convolution); channels in no tie are free. ``exact``: removing channels of
    this group computes exactly what the model with those channels masked computes (false when a
    member normalises *across* channels, such as LayerNorm or GroupNorm, whose statistics change).
    """

    name: str
    size: int
    members: tuple[Member, ...]
    coupling: tuple[str, ...] = ()
    ties: tuple[tuple[int, ...], ...] = ()
    exact: bool = True

    @property
    def single(self) -> bool:
        """One producer, nothing coupled (``op:<name>`` marks an operation the tracer assumed
        channel-wise, which verification checks; it couples nothing)."""
        return not self.kinds

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.coupling if not k.startswith("op:"))

    def _of(self, kind: tuple[str, ...], role: str | None = None) -> list[Member]:
        return [m for m in self.members if m.kind in kind and (role is None or m.role == role)]

    @property
    def producers(self) -> list[Member]:
        """Convs/linears whose output rows are these channels (SE gates excluded)."""
        return [m for m in self._of(WEIGHTED, "out") if not m.gate]

    @property
    def gates(self) -> list[Member]:
        return [m for m in self._of(WEIGHTED, "out") if m.gate]

    @property
    def consumers(self) -> list[Member]:
        """Convs/linears reading these channels as input columns."""
        return self._of(WEIGHTED, "in")

    @property
    def bns(self) -> list[Member]:
        return self._of((BN,))

    @property
    def depthwise(self) -> list[Member]:
        return self._of((DEPTHWISE,))

    def atoms(self) -> list[list[int]]:
        """The units of removal: every tie, and every channel in no tie on its own (sorted by
        their first channel)."""
        tied = {c for tie in self.ties for c in tie}
        units = [list(t) for t in self.ties] + [[c] for c in range(self.size) if c not in tied]
        return sorted(units, key=lambda u: u[0])


def check_grouping(value: str) -> str:
    if value not in GROUPINGS:
        raise ConfigError(f"unknown method.groups {value!r}; choose one of: {', '.join(GROUPINGS)}")
    return value


@dataclass
class Discovery:
    """The groups of a model and the groups found but left whole, with their reasons."""

    groups: list[ChannelGroup] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for g in self.groups:
            # "op:<name>": an operation the tracer assumed channel-wise (checked by verification)
            for kind in g.kinds or ("single",):
                kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "groups": len(self.groups),
            "channels": sum(g.size for g in self.groups),
            "coupling": kinds,
            "skipped": len(self.skipped),
            "skipped_reasons": _reason_counts(self.skipped),
        }


def _reason_counts(skipped: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in skipped.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


# ----------------------------------------------------------------------------- providers
class GroupProvider(Protocol):
    """Hand-written channel groups of a model family the tracer cannot follow (ShuffleNetV2's
    channel shuffle: :mod:`.shufflenet`). Discovery takes the groups of the first provider that
    ``claims`` a model; removal lets every provider that ``restructures`` a cut rebuild what
    slicing alone cannot (the units of the pruned copy)."""

    name: str

    def claims(self, model: nn.Module) -> bool: ...

    def discover(self, model: nn.Module) -> Discovery: ...

    def restructures(
        self, groups: list[ChannelGroup], keep: Mapping[str, torch.Tensor]
    ) -> bool: ...

    def restructure(
        self, dense: nn.Module, pruned: nn.Module, keep: Mapping[str, torch.Tensor]
    ) -> None: ...


#: The registered providers, in registration order (a provider module registers itself).
GROUP_PROVIDERS: list[GroupProvider] = []


def register_provider(provider: GroupProvider) -> GroupProvider:
    """Add ``provider`` to :data:`GROUP_PROVIDERS` (once per name)."""
    if all(p.name != provider.name for p in GROUP_PROVIDERS):
        GROUP_PROVIDERS.append(provider)
    return provider


def provider_for(model: nn.Module) -> GroupProvider | None:
    """The provider whose hand-written groups ``model`` gets, or None (the tracer's)."""
    return next((p for p in GROUP_PROVIDERS if p.claims(model)), None)
