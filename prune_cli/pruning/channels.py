"""Structured pruning: score channel groups, choose the channels to keep, slice them out.

:func:`channel_prune` is the one entry point the structured methods (``l1_filter``,
``network_slimming``, ``double_pruning``, ``dynamic_filter``'s filter removal) are recipes on::

    groups -> scores (an importance criterion) -> keep masks -> removal -> info

- **groups** (:mod:`.groups`): every tensor slice that must go when one channel goes; ``single``
  (one producer, the slimming paper's setting) or ``coupled`` (residual streams, concatenations,
  splits, ShuffleNetV2 streams: the DepGraph setting).
- **scores** (:mod:`.importance`): one score per channel of each group; a group the criterion
  cannot score (e.g. slimming on a group without a BN followed by an activation) is left whole.
- **keep**: ``layerwise`` removes ``floor(ratio * size)`` channels of every scored group;
  ``global`` ranks all channels of all scored groups together and removes the lowest
  ``floor(ratio * N)`` (docs/methods.md §2.1: ``mode=exact``; ``reference`` reproduces the reference
  code's ``+1``); ``zeros`` removes exactly the channels scored 0 (a mask decided elsewhere).
  Then the guards: a group keeps at least ``min_channels`` (an int, or a fraction of the group if
  < 1) rounded up to a multiple of ``round_to`` (``auto``: of 16 in groups of more than 16
  channels, :func:`multiple_of`; channels come back in order of score); channels
  tied by a grouped convolution go together; and no conv, linear or BN is left without input or
  output channels (the best-scored channel that reaches it comes back).
- **removal** (:func:`remove_channels`): a new, physically smaller copy of the model. For every
  module the positions removed by all groups are collected first and sliced in one pass with
  Torch-Pruning's pruning functions (conv, depthwise conv, linear, BN, norms, PReLU, parameters).
  Torch-Pruning's own ``Group.prune`` works one group at a time and re-derives its index maps in
  between; slicing once from the dense model makes the result a pure function of (dense model,
  keep masks), which :func:`rebuild` (resume) and portable checkpoints rely on.

Keep masks are bool tensors (``True`` = kept) keyed by group name; ``info["keep"]`` stores the
kept channel indices of every cut group so that the structure can be rebuilt exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prune_cli.engine.checkpoint import load_state_into
from prune_cli.errors import ConfigError
from prune_cli.pruning.blocks import drop_blocks
from prune_cli.pruning.groups import (
    BN,
    CONV,
    DEPTHWISE,
    LINEAR,
    ChannelGroup,
    ChannelRemovalError,
    Discovery,
    Member,
    check_grouping,
    discover,
)
from prune_cli.pruning.removal import (  # noqa: F401  (removal is importable from here too)
    mask_channels,
    removal_plan,
    remove_channels,
    slice_masks,
    zero_pruned_bn,
)
from prune_cli.pruning.threshold import THRESHOLD_MODES, keep_mask, n_to_remove

log = logging.getLogger("prune_cli")

#: How keep masks are chosen from scores (see the module docstring).
CHANNEL_SCOPES = ("layerwise", "global", "zeros")

Importance = Callable[[nn.Module, Sequence[ChannelGroup]], dict[str, torch.Tensor]]


@dataclass
class Pruned:
    """What :func:`channel_prune` returns: the narrower model, the ``info`` describing the cut,
    and the parameter masks given to it, sliced to the new shapes."""

    model: nn.Module
    info: dict[str, Any]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the recipe
def channel_prune(
    model: nn.Module,
    importance: Importance,
    ratio: float,
    *,
    input_size: Sequence[int],
    scope: str = "layerwise",
    grouping: str = "coupled",
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int | str = 1,
    masks: Mapping[str, torch.Tensor] | None = None,
    prior: Mapping[str, torch.Tensor] | None = None,
    group_ratios: Mapping[str, float] | None = None,
    found: Discovery | None = None,
) -> Pruned:
    """Prune ``model``'s channels: a new, narrower model and the ``info`` describing it.

    ``importance(model, groups)`` scores the channels of the groups it can rank. ``masks``
    (parameter name -> mask shaped like the parameter, e.g. DPF's) are sliced alongside the
    parameters they belong to. ``info``:
    ``importance`` (the criterion's name), ``scope``, ``groups`` (the grouping), ``mode``,
    ``min_channels``, ``round_to``, ``channels_kept`` / ``channels_total`` (over the scored
    groups), ``groups_ranked`` / ``groups_unranked``, ``discovery`` (groups found by coupling
    kind, and those left whole with their reasons), ``channels`` (``{group: [kept, total]}``),
    ``keep`` (kept indices of every cut group) and ``input_size`` — everything :func:`rebuild`
    needs. Raises :class:`ChannelRemovalError` (one line) when no group can be pruned.

    ``prior`` (iterative rounds, :mod:`.schedules`): ``model`` was already cut from an original
    model; ``prior`` maps each cut group to a bool mask over its *original* channels (``True`` =
    still there). Removed channels then rank lowest, and ``ratio``, the threshold and the guards
    apply to the original sizes, so a round to ``ratio`` keeps what one shot to ``ratio`` would
    keep in number; ``info`` (``channels``, ``keep``, ``rates``) describes the cut from the
    original model, so :func:`rebuild` of the original model reproduces it.
    ``group_ratios`` (layerwise scope only): each ranked group removes its own ratio (groups
    absent from it are left whole) instead of ``ratio``. ``found``: the groups of ``model``
    discovered before (:func:`discover` with ``grouping``), for callers that cut the same model
    at several ratios (discovery, with its verification, is most of a cut's cost).
    """
    if scope not in CHANNEL_SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of: {', '.join(CHANNEL_SCOPES)}")
    if mode not in THRESHOLD_MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of: {', '.join(THRESHOLD_MODES)}")
    check_grouping(grouping)
    if found is None:
        found = discover(model, input_size, grouping)
    scores = importance(model, found.groups)
    if not scores:
        raise ChannelRemovalError(_nothing_to_prune(model, found, importance))
    by_name = {g.name: g for g in found.groups}
    ranked = {name: by_name[name] for name in scores}
    space = _OriginalSpace(found.groups, prior or {})
    if scope == "zeros":
        keep = {name: scores[name] > 0 for name in scores}
        keep = {n: guard_keep(k, scores[n], ranked[n], 1, 1) for n, k in keep.items()}
    else:
        select = global_keep if scope == "global" else layerwise_keep
        o_scores, o_groups = space.scores(scores), space.groups(ranked)
        if group_ratios is not None:
            if scope != "layerwise":
                raise ConfigError(f"per-layer ratios need scope layerwise, not {scope!r}")
            o_keep = {}
            for name in o_scores:
                one = {name: o_scores[name]}
                if name not in group_ratios:  # left whole (mode reference would cut one at 0)
                    o_keep[name] = torch.ones_like(o_scores[name], dtype=torch.bool)
                    continue
                o_keep.update(
                    layerwise_keep(
                        one, float(group_ratios.get(name, 0.0)), mode, min_channels, round_to,
                        groups=o_groups,
                    )
                )  # fmt: skip
        else:
            o_keep = select(o_scores, ratio, mode, min_channels, round_to, groups=o_groups)
        keep = space.current(o_keep)
    keep = guard_members(found.groups, keep, scores)
    new = remove_channels(model, found.groups, keep)
    sliced = slice_masks(found.groups, keep, masks or {}, new)
    cut = {n: k for n, k in keep.items() if not bool(k.all())}
    info = {
        "importance": getattr(importance, "name", type(importance).__name__),
        "scope": scope,
        "groups": grouping,
        "mode": mode,
        "min_channels": min_channels,
        "round_to": round_to,
        "channels_kept": int(sum(int(k.sum()) for k in keep.values())),
        "channels_total": int(sum(k.numel() for k in keep.values())),
        "groups_ranked": len(scores),
        "groups_unranked": len(found.groups) - len(scores),
        "discovery": found.summary(),
        "channels": channel_report(found.groups, keep),
        "keep": {n: torch.nonzero(k).reshape(-1).tolist() for n, k in cut.items()},
        "input_size": [int(v) for v in input_size],
    }
    if group_ratios is not None:
        info["group_ratios"] = {n: float(group_ratios.get(n, 0.0)) for n in scores}
    if scope != "zeros":
        total = info["channels_total"]
        removed = total - info["channels_kept"]
        achieved = round(removed / total, 6) if total else 0.0
        info["rates"] = {"channels": {"target": ratio, "achieved": achieved, "total": total}}
    if prior:
        info.update(_prior_info(space, keep, scores, ratio, input_size))
    return Pruned(new, info, sliced)


class _OriginalGroup:
    """A group of the already-cut model seen in the original model's channel positions: its
    units of removal mapped back, every removed channel a unit of its own."""

    def __init__(self, group: ChannelGroup | None, index: list[int], size: int) -> None:
        self.index, self.size = index, size
        current = group.atoms() if group is not None else [[c] for c in range(len(index))]
        mapped = [[index[c] for c in unit] for unit in current]
        gone = sorted(set(range(size)) - set(index))
        self.units = sorted(mapped + [[c] for c in gone], key=lambda u: u[0])

    def atoms(self) -> list[list[int]]:
        return self.units


class _OriginalSpace:
    """Maps scores and keep masks between an already-cut model's groups and the original
    channel positions (``prior``: group -> bool mask over the original channels)."""

    def __init__(self, groups: Sequence[ChannelGroup], prior: Mapping[str, torch.Tensor]) -> None:
        by_name = {g.name: g for g in groups}
        missing = sorted(set(prior) - set(by_name))
        if missing:
            raise ChannelRemovalError(
                f"channel group {missing[0]!r} of an earlier round is not in the pruned model"
            )
        self.prior = {n: m.detach().to(torch.bool).cpu().reshape(-1) for n, m in prior.items()}
        self.index = {n: torch.nonzero(m).reshape(-1).tolist() for n, m in self.prior.items()}
        for name, idx in self.index.items():
            if len(idx) != by_name[name].size:
                raise ChannelRemovalError(
                    f"channel group {name!r} has {by_name[name].size} channels, "
                    f"not the {len(idx)} an earlier round kept"
                )

    def scores(self, scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, s in scores.items():
            if name not in self.prior:
                out[name] = s
                continue
            full = torch.full((self.prior[name].numel(),), -math.inf)
            full[torch.tensor(self.index[name], dtype=torch.long)] = s.detach().float().cpu()
            out[name] = full
        return out

    def groups(self, ranked: Mapping[str, ChannelGroup]) -> dict[str, Any]:
        return {
            n: _OriginalGroup(g, self.index[n], self.prior[n].numel()) if n in self.prior else g
            for n, g in ranked.items()
        }

    def current(self, keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Original-space keep masks as masks over the cut model's channels."""
        return {
            n: k[torch.tensor(self.index[n], dtype=torch.long)] if n in self.prior else k
            for n, k in keep.items()
        }

    def original(self, name: str, keep: torch.Tensor | None, size: int) -> torch.Tensor:
        """A cut model's keep mask of group ``name`` (None: whole) over the original channels."""
        if name not in self.prior:
            return torch.ones(size, dtype=torch.bool) if keep is None else keep.clone()
        out = torch.zeros(self.prior[name].numel(), dtype=torch.bool)
        idx = torch.tensor(self.index[name], dtype=torch.long)
        out[idx] = True if keep is None else keep.to(torch.bool).cpu()
        return out


def _prior_info(
    space: _OriginalSpace,
    keep: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    input_size: Sequence[int],
) -> dict[str, Any]:
    """The figures of :func:`channel_prune`'s ``info`` for a round on an already-cut model, in
    original terms (the cut from the original model: what :func:`rebuild` needs)."""
    found_sizes = {n: int(k.numel()) for n, k in keep.items()}
    names = list(dict.fromkeys([*space.prior, *found_sizes]))
    full = {n: space.original(n, keep.get(n), found_sizes.get(n, 0)) for n in names}
    ranked = [n for n in scores]
    kept = sum(int(full[n].sum()) for n in ranked)
    total = sum(int(full[n].numel()) for n in ranked)
    return {
        "channels_kept": kept,
        "channels_total": total,
        "channels": {n: [int(m.sum()), int(m.numel())] for n, m in full.items()},
        "keep": {n: torch.nonzero(m).reshape(-1).tolist() for n, m in full.items() if not m.all()},
        "input_size": [int(v) for v in input_size],
        "rates": {
            "channels": {
                "target": ratio,
                "achieved": round((total - kept) / total, 6) if total else 0.0,
                "total": total,
            }
        },
    }


def _nothing_to_prune(model: nn.Module, found: Discovery, importance: Importance) -> str:
    name = type(model).__name__
    what = getattr(importance, "name", type(importance).__name__)
    if not found.groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in found.summary()["skipped_reasons"].items())
        return (
            f"{name} has no channel group that can be removed structurally"
            + (f" ({reasons})" if reasons else "")
            + "; use an unstructured method (method=magnitude)"
        )
    needs = getattr(importance, "needs", "")
    return f"{name}: none of its {len(found.groups)} channel groups can be ranked by {what}" + (
        f" ({needs})" if needs else ""
    )


# ----------------------------------------------------------------------------- keep masks
def min_keep(size: int, min_channels: float) -> int:
    """Channels a group of ``size`` always keeps: ``min_channels`` (int >= 1) or, for a float
    in (0, 1), that fraction of ``size`` rounded up; at least 1, at most ``size``."""
    if min_channels <= 0:
        raise ConfigError(f"min_channels {min_channels} is out of range; valid: > 0")
    n = math.ceil(size * min_channels) if min_channels < 1 else int(min_channels)
    return max(1, min(size, n))


#: ``round_to: auto``: a group wider than this keeps a multiple of it (or all its channels); a
#: group of at most this many keeps any count (a multiple would leave it no width but its own).
#: 16 fp32 values fill an AVX-512 vector; oneDNN blocks channels by 16 on such CPUs, and ONNX
#: Runtime's blocked (NCHWc) convolutions need channel counts in multiples of 16 (any other
#: count falls back to plain NCHW kernels between layout reorders; ``scripts/bench_round_to.py``,
#: ``scripts/bench_deploy.py``). 16 is also a multiple of the 8 that AVX2 and GPU tensor cores
#: want.
AUTO_BLOCK = 16


def check_round_to(round_to: int | str) -> int | str:
    """``round_to`` itself, or a one-line ConfigError."""
    if round_to == "auto":
        return round_to
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to {round_to!r} is out of range; valid: auto, or integer >= 1")
    return round_to


def multiple_of(size: int, round_to: int | str) -> int:
    """The multiple a group of ``size`` channels keeps: ``round_to``, or for ``"auto"``
    :data:`AUTO_BLOCK` when ``size > AUTO_BLOCK`` and 1 otherwise."""
    if check_round_to(round_to) == "auto":
        return AUTO_BLOCK if size > AUTO_BLOCK else 1
    return int(round_to)


def allowed_width(kept: int, size: int, round_to: int | str) -> bool:
    """Whether a group of ``size`` may keep ``kept`` channels (:func:`multiple_of`); the
    whole group always."""
    return kept == size or kept % multiple_of(size, round_to) == 0


def rounded_keep(kept: int, size: int, round_to: int | str) -> int:
    """``kept`` rounded up to a multiple of :func:`multiple_of` (capped at ``size``)."""
    multiple = multiple_of(size, round_to)
    return min(size, math.ceil(kept / multiple) * multiple)


def _atoms(group: ChannelGroup | None, size: int) -> list[list[int]]:
    return group.atoms() if group is not None else [[c] for c in range(size)]


def _atom_scores(scores: torch.Tensor, atoms: list[list[int]]) -> torch.Tensor:
    return torch.stack([scores[a].mean() for a in atoms]) if atoms else scores[:0]


def _expand(atom_keep: torch.Tensor, atoms: list[list[int]], size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    for a, k in zip(atoms, atom_keep.tolist()):
        if not k:
            keep[a] = False
    return keep


def guard_keep(
    keep: torch.Tensor,
    scores: torch.Tensor,
    group: ChannelGroup | None = None,
    min_channels: float = 1,
    round_to: int | str = 1,
) -> torch.Tensor:
    """Apply the layer-collapse guard and rounding to one group's keep mask.

    The kept count becomes ``max(kept, min_keep)`` rounded up to ``round_to``; channels (or the
    tied channels of ``group``) are added back in order of decreasing score (ties: the earlier
    channel first). Never removes channels.
    """
    size = keep.numel()
    target = rounded_keep(max(int(keep.sum()), min_keep(size, min_channels)), size, round_to)
    if target <= int(keep.sum()):
        return keep
    atoms = _atoms(group, size)
    order = torch.sort(-_atom_scores(scores.detach().float().cpu(), atoms), stable=True).indices
    out = keep.clone()
    for idx in order.tolist():
        if int(out.sum()) >= target:
            break
        out[atoms[idx]] = True
    return out


def global_keep(
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int | str = 1,
    groups: Mapping[str, ChannelGroup] | None = None,
) -> dict[str, torch.Tensor]:
    """One threshold over the scores of all groups together (docs/methods.md §2.1, §3 step 2).

    The lowest ``ratio`` of all channels is removed (``exact``: ``floor(N*ratio)``; ``reference``:
    the reference code's ``+1``); tied channels (``groups``) are ranked by their mean score and
    removed together while the count allows. Then :func:`guard_keep` runs per group.
    """
    if not scores:
        return {}
    groups = groups or {}
    flat_scores = {n: s.detach().reshape(-1).float().cpu() for n, s in scores.items()}
    atoms = {n: _atoms(groups.get(n), s.numel()) for n, s in flat_scores.items()}
    if all(len(a) == s.numel() for a, s in zip(atoms.values(), flat_scores.values())):
        flat = torch.cat(list(flat_scores.values()))
        keep_flat = keep_mask(flat, ratio, mode)
        out, offset = {}, 0
        for name, s in flat_scores.items():
            out[name] = keep_flat[offset : offset + s.numel()]
            offset += s.numel()
    else:
        out = _global_keep_atoms(flat_scores, atoms, ratio, mode)
    return {
        n: guard_keep(k, flat_scores[n], groups.get(n), min_channels, round_to)
        for n, k in out.items()
    }


def _global_keep_atoms(
    scores: Mapping[str, torch.Tensor],
    atoms: Mapping[str, list[list[int]]],
    ratio: float,
    mode: str,
) -> dict[str, torch.Tensor]:
    """Global selection over units of several channels: lowest mean score first, while the
    removed count stays within ``floor(N*ratio)`` (exact) or below the reference threshold."""
    keep_mask(torch.zeros(1), ratio, mode)  # validates ratio and mode
    units = [(n, a) for n in scores for a in atoms[n]]
    unit_scores = torch.stack([scores[n][a].mean() for n, a in units])
    total = sum(s.numel() for s in scores.values())
    out = {n: torch.ones(s.numel(), dtype=torch.bool) for n, s in scores.items()}
    if mode == "reference":
        flat = torch.cat(list(scores.values()))
        thre = flat.sort().values[int(total * ratio)]
        for (n, a), s in zip(units, unit_scores.tolist()):
            if s <= thre:
                out[n][a] = False
        return out
    budget = n_to_remove(total, ratio)
    for idx in torch.sort(unit_scores, stable=True).indices.tolist():
        n, a = units[idx]
        if len(a) <= budget:
            out[n][a] = False
            budget -= len(a)
        if budget == 0:
            break
    return out


def layerwise_keep(
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int | str = 1,
    groups: Mapping[str, ChannelGroup] | None = None,
) -> dict[str, torch.Tensor]:
    """The lowest ``ratio`` of each group's channels (or of its tied units) removed, group by
    group, then the guard."""
    groups = groups or {}
    out = {}
    for name, s in scores.items():
        s = s.detach().reshape(-1).float().cpu()
        atoms = _atoms(groups.get(name), s.numel())
        if len(atoms) == s.numel():
            keep = keep_mask(s, ratio, mode)
        else:
            keep = _expand(keep_mask(_atom_scores(s, atoms), ratio, mode), atoms, s.numel())
        out[name] = guard_keep(keep, s, groups.get(name), min_channels, round_to)
    return out


def guard_members(
    groups: Sequence[ChannelGroup],
    keep: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """No conv, linear, depthwise conv or BN may lose all its channels: a member whose every
    position is removed (possible when a group reaches a module only with some of its channels,
    e.g. a ShuffleNetV2 unit's ``branch2`` input) gets back the best-scored channel reaching it."""
    out = {n: k.clone() for n, k in keep.items()}
    by_module: dict[tuple[str, str], list[tuple[ChannelGroup, Member]]] = {}
    for g in groups:
        for m in g.members:
            by_module.setdefault((m.module, m.role), []).append((g, m))
    for entries in by_module.values():
        if entries[0][1].kind not in (CONV, LINEAR, DEPTHWISE, BN):
            continue
        best: tuple[float, ChannelGroup, int] | None = None
        alive = False
        for g, m in entries:
            mask = out.get(g.name)
            if mask is None:
                alive = True
                break
            for c in set(m.channels):
                if bool(mask[c]):
                    alive = True
                    break
                score = float(scores[g.name][c]) if g.name in scores else 0.0
                if best is None or score > best[0]:
                    best = (score, g, c)
            if alive:
                break
        if not alive and best is not None:
            _, g, c = best
            tie = next((list(t) for t in g.ties if c in t), [c])
            out[g.name][tie] = True
    return out


def channel_report(
    groups: Sequence[ChannelGroup], keep: Mapping[str, torch.Tensor]
) -> dict[str, list[int]]:
    """``{group name: [kept, total]}`` for every group (whole groups report ``[size, size]``)."""
    return {g.name: [int(keep[g.name].sum()) if g.name in keep else g.size, g.size] for g in groups}


def rebuild(model: nn.Module, info: Mapping[str, Any]) -> nn.Module:
    """The pruned structure described by ``info`` (:func:`channel_prune`'s), for resuming and
    reloading: the groups of the dense ``model`` are found again and cut at ``info["keep"]``.

    Older checkpoints without ``keep`` record only ``channels`` (``[kept, total]``): the first
    ``kept`` channels of each group are kept (only the shapes matter; the weights are loaded
    afterwards), which reproduces every structure they could describe. Blocks removed whole
    (``info["blocks"]["removed"]``, :mod:`.blocks`) go first, as they went when it was cut.
    """
    removed = list((info.get("blocks") or {}).get("removed") or [])
    if removed:
        model = drop_blocks(model, removed)
    if not info.get("channels"):
        return model
    grouping = str(info.get("groups", "single"))
    groups = discover(model, info["input_size"], grouping, verify=False).groups
    by_name = {g.name: g for g in groups}
    keep: dict[str, torch.Tensor] = {}
    explicit = info.get("keep") or {}
    for name, (kept, total) in dict(info["channels"]).items():
        group = by_name.get(name)
        if group is None or group.size != int(total):
            raise ChannelRemovalError(
                f"cannot rebuild the pruned model: channel group {name!r} ({total} channels) "
                "is not in this model"
            )
        if int(kept) == group.size:
            continue
        mask = torch.zeros(group.size, dtype=torch.bool)
        if name in explicit:
            mask[torch.tensor(explicit[name], dtype=torch.long)] = True
        else:
            mask[: int(kept)] = True
        keep[name] = mask
    return remove_channels(model, groups, keep)


def restore_channels(model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
    """The model saved in ``checkpoint`` (``model`` state dict + ``info``), for ``restore``.

    With ``info["channels"]`` and ``info["input_size"]`` (written by the channel-removal
    methods) the narrower structure is rebuilt from the dense ``model`` first; otherwise the
    state dict is loaded into ``model`` itself. (To reload a run's final model, use the public
    ``prune_cli.load_pruned(path)``: it builds the dense model and calls the method's
    ``restore``, which comes here.)
    """
    info = dict(checkpoint.get("info", {}))
    if info.get("channels") or info.get("blocks"):
        model = rebuild(model, info)
    load_state_into(model, dict(checkpoint), source)
    return model
