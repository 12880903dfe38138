"""``l1_filter``: filter pruning by L1 norm, Li et al., ICLR 2017 (docs/methods.md §6).

One shot: every channel group (:mod:`prune_cli.pruning.groups`) is scored by the L1 norm of its
filters summed over all producers (:class:`~prune_cli.pruning.importance.FilterNorm`), the lowest
``ratio`` of channels is removed **physically** (the model gets narrower), then the pipeline
fine-tunes it.

- ``method.groups``: ``coupled`` (default) also prunes residual streams, concatenations and
  ShuffleNetV2's stage streams, every producer of a channel together; ``single`` prunes only
  groups with one producer, as the paper's ResNets do (only the first conv of each block).
- ``method.scope``: ``layerwise`` (default; the paper prunes a fixed fraction of each layer)
  removes ``floor(ratio·C)`` channels of each group; ``global`` ranks all groups together by the
  *mean* |w| of each channel's filters (the L1 norm divided by the number of weights, so that
  3x3 and 1x1 filters are comparable).
- ``method.norm``: ``l1`` (default) or ``l2``.
- ``method.mode``, ``method.min_channels``: as in ``network_slimming``.
- ``method.round_to`` (default ``auto``): where a MAC budget sets the widths
  (``method.macs_reduction``, ``method.allocation=latency``), kept counts are rounded up to a
  multiple of 16 in every group of more than 16 channels
  (:func:`~prune_cli.pruning.channels.multiple_of`), the channel block of oneDNN's and ONNX
  Runtime's convolutions on AVX-512 CPUs: at 2x fewer MACs this took ONNX Runtime's speedup
  efficiency from 0.09-0.76 to 0.91-1.03 on MobileNetV2 and ResNet-50
  (``scripts/bench_deploy.py``). Where a ratio sets the cut, ``auto`` keeps the exact
  ``floor(ratio * C)`` (rounding a 32-channel group at ratio 0.3 up to 32 would not prune it);
  ``round_to: 16`` rounds there too. ``prune_info.round_to`` (and ``round_to_rule``: why)
  records what was used and the achieved channel ratio is recorded exactly
  (``prune_info.rates.channels``).
- ``method.schedule``: ``oneshot`` or ``iterative`` (rounds cut the model further, each to its
  ratio of the *original* channel counts, so the last equals one shot); ``gradual`` is refused
  (masked channels would have to be removed physically at the end: use iterative).
- ``method.layer_ratios``: ``{conv: ratio}``, inline or a file (``method=sensitivity``'s
  ``layer_ratios.json``, ``granularity=filter``); each channel group removes the smallest ratio
  of its producers listed (the most sensitive decides); groups with no listed producer stay whole.
  Li et al.'s ResNet-56-pruned-B is such a mapping (``experiment=li2017_resnet56_pruned_b``).
- ``method.macs_reduction``: a MAC budget instead of the ratio (``2.13`` = the dense model's MACs
  over the pruned model's): the smallest ratio that reaches it is solved for
  (:func:`~prune_cli.pruning.budget.ratio_for_macs_reduction`) and recorded in
  ``prune_info.macs_reduction``; a budget the guards do not let it reach is a warning.
- ``method.allocation`` (:mod:`prune_cli.pruning.allocation`): how many channels each group
  keeps. ``uniform`` (= ``scope=layerwise``), ``global`` (= ``scope=global``), or ``latency``:
  per-group widths chosen from a latency table measured on this machine
  (``method.latency_backend``: ``torch`` or ``onnxruntime``; ``method.latency_batch_sizes``,
  default ``[1, 64]``), keeping the most importance (mean |w|, as ``global``) per unit of
  latency saved until the MAC budget is met: ``method.macs_reduction``, or else the MACs of the
  uniform cut at ``ratio``. One shot. ``null`` (the default): ``method.scope`` decides.
  ``prune_info.allocation`` records the choice (and, for ``latency``, the budget, the MACs
  reached and the predicted latencies).
- ``method.remove_blocks`` (default 0): that many residual blocks removed whole before the
  channels are cut (:mod:`prune_cli.pruning.blocks`: identity-shortcut blocks of the ResNets,
  Wide ResNets and MobileNetV2/V3, lowest RMS of the branch's last BN gamma first); their layer
  calls go too, which channel widths cannot remove. ``method.macs_reduction`` stays relative to
  the dense model (the channels are cut for what the blocks left of the budget; a budget the
  blocks alone meet cuts no channels, and says so); a ``ratio`` applies to the channels left.
  ``prune_info.blocks`` records the blocks removed, their scores and the MACs after them.
  Asking for more blocks than the model has removes all it has and says so. One shot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import (
    AutoOrPositiveInt,
    ChannelOptions,
    Method,
    OwnRatio,
    PruneContext,
    PruneResult,
    ScheduleOptions,
)
from prune_cli.methods.registry import METHODS
from prune_cli.options import Float, Int, OneOf, Text
from prune_cli.pruning.allocation import ALLOCATIONS, LATENCY_BACKENDS, latency_cut
from prune_cli.pruning.blocks import remove_lowest_blocks, total_reduction
from prune_cli.pruning.budget import ratio_for_macs_reduction
from prune_cli.pruning.channels import channel_prune, restore_channels
from prune_cli.pruning.groups import discover
from prune_cli.pruning.importance import CRITERIA, FilterNorm
from prune_cli.pruning.schedules import ChannelSteps
from prune_cli.pruning.sensitivity import read_layer_ratios

log = logging.getLogger("prune_cli")

#: A MAC reduction this much above the one asked for is said (rounding makes ratios coarse).
OVERSHOOT = 0.05


@METHODS.register("l1_filter")
class L1FilterPruning(Method):
    class Options(OwnRatio, ChannelOptions, ScheduleOptions):
        """``configs/method/l1_filter.yaml``."""

        scope: OneOf("layerwise", "global")
        norm: OneOf(*CRITERIA)
        layer_ratios: Text("a path to a {layer: ratio} JSON or YAML file") | dict[str, float] | None
        #: Dense MACs over pruned MACs to reach; the ratio is solved for (null: use ratio).
        macs_reduction: Float(ge=1) | None
        #: auto: multiples of 16 (groups of more than 16) where a MAC budget sets the widths,
        #: exact counts where a ratio does (:meth:`_round_to`).
        round_to: AutoOrPositiveInt
        #: How many channels each group keeps (null: method.scope decides).
        allocation: OneOf(*ALLOCATIONS) | None
        latency_backend: OneOf(*LATENCY_BACKENDS)
        latency_batch_sizes: list[Int(ge=1)] = Field(min_length=1)
        #: Residual blocks removed whole before the channel cut (pruning/blocks.py).
        remove_blocks: Int(ge=0)

        @model_validator(mode="after")
        def _one_way_to_set_the_ratios(self) -> L1FilterPruning.Options:
            # Checked with the options, so a run refuses before training, not after it.
            if self.layer_ratios and self.scope != "layerwise":
                raise ConfigError(
                    f"method.layer_ratios needs method.scope=layerwise, not {self.scope}"
                )
            if self.layer_ratios and self.macs_reduction is not None:
                raise ConfigError(
                    "method.layer_ratios and method.macs_reduction both set the ratios; "
                    "valid: one of them (the other null)"
                )
            if self.layer_ratios and self.remove_blocks:
                raise ConfigError(
                    "method.layer_ratios names the dense model's layers; it does not take "
                    f"method.remove_blocks={self.remove_blocks} (valid: 0)"
                )
            if self.layer_ratios and self.allocation not in (None, "uniform"):
                raise ConfigError(
                    "method.layer_ratios sets each group's ratio; it does not take "
                    f"method.allocation={self.allocation}"
                )
            return self

    opts: Options

    @property
    def allocation(self) -> str:
        """``method.allocation``, or the one ``method.scope`` stands for."""
        if self.opts.allocation is not None:
            return self.opts.allocation
        return "global" if self.opts.scope == "global" else "uniform"

    @classmethod
    def refuses_schedule(cls, cfg: Mapping[str, Any]) -> str | None:
        if cfg.get("layer_ratios"):
            return "method.layer_ratios prunes one shot"
        if cfg.get("allocation") == "latency":
            return "method.allocation=latency prunes one shot"
        if cfg.get("macs_reduction") is not None:
            return "method.macs_reduction prunes one shot"
        if cfg.get("remove_blocks"):
            return "method.remove_blocks prunes one shot"
        if cfg.get("schedule") == "gradual":
            return "gradual channel removal is not supported; use method.schedule=iterative"
        return None

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        allocation = self.allocation
        scope = "global" if allocation == "global" else "layerwise"
        # global compares channels across groups by mean |w| (3x3 and 1x1 filters comparable);
        # latency weighs what a channel's removal loses, its filters' whole L1 mass.
        mean = allocation == "global"
        importance = FilterNorm(p=1 if self.opts.norm == "l1" else 2, mean=mean)
        settings = {"scope": scope, **self.opts.channel_settings()}
        settings["round_to"], round_note = self._round_to(allocation)
        target = self.opts.macs_reduction
        blocks: dict[str, Any] | None = None
        if self.opts.remove_blocks:
            model, blocks = self._remove_blocks(model, ctx)
            if target is not None:  # what the blocks left of the dense model's budget
                target = target * blocks["macs_after"] / blocks["macs_before"]
        if blocks is not None and target is not None and target <= 1.0:
            result = self._blocks_only(model, blocks)
        elif self.opts.layer_ratios:
            result = self._per_layer(model, ctx, importance, settings)
        elif allocation == "latency":
            result = self._latency_allocation(model, ctx, importance, settings, target)
        elif target is not None:
            result = self._to_macs_budget(model, ctx, importance, settings, target)
        else:
            step = ChannelSteps(importance, ctx.input_size, ctx.device, **settings)
            model, _, info = self.scheduled(model, ctx, step, self.ratio)
            result = PruneResult(model=model, masks={}, info={**step.info, **info})
        if blocks is not None:
            blocks["macs_reduction_total"] = total_reduction(blocks, result.model, ctx.input_size)
            result.info["blocks"] = blocks
            result.info.setdefault("warnings", []).extend(blocks.pop("warnings"))
        result.info.setdefault("allocation", {"name": allocation})
        result.info["round_to_rule"] = {
            "requested": self.opts.round_to,
            "used": settings["round_to"],
            **({"why": round_note} if round_note else {}),
        }
        return result

    def _round_to(self, allocation: str) -> tuple[int | str, str | None]:
        """``round_to`` as this cut uses it: ``auto`` rounds to the fast kernels' block (16)
        where the widths serve a MAC budget (``macs_reduction``, ``allocation=latency``), and
        keeps the exact counts where the user set the cut by a ratio (a 32-channel group kept
        at ratio 0.3 would otherwise keep all 32: the ratio asked for would not hold)."""
        if self.opts.round_to != "auto":
            return self.opts.round_to, None
        if allocation == "latency" or self.opts.macs_reduction is not None:
            return "auto", "a MAC budget sets the widths: multiples of 16 (the fast kernels)"
        return 1, "a ratio sets the cut: exact counts (set round_to=auto|16 for the fast kernels)"

    def _latency_allocation(
        self,
        model: nn.Module,
        ctx: PruneContext,
        importance: FilterNorm,
        settings: dict,
        target: float | None,
    ) -> PruneResult:
        """Per-group widths from the latency table for the MAC budget
        (:func:`~prune_cli.pruning.allocation.latency_cut`)."""
        pruned, record = latency_cut(
            model,
            importance,
            ctx.input_size,
            ratio=self.ratio,
            macs_reduction=target,
            backend=self.opts.latency_backend,
            batch_sizes=list(self.opts.latency_batch_sizes),
            **settings,
        )
        info = {**pruned.info, "allocation": record}
        target = record["macs_reduction_target"]
        info["warnings"] = [
            f"l1_filter: allocation=latency: each group's width chosen from the latency table "
            f"for the MAC budget of {record['budget_from']} ({target:.3f}x fewer MACs); the "
            f"channel ratio {self.ratio} is not applied per group"
        ]
        if not record["reached"]:
            info["warnings"].append(
                f"l1_filter: allocation=latency did not reach the MAC budget: "
                f"{record['macs_reduction']:.3f}x fewer MACs, not "
                f"{target:.3f}x, with these groups and guards"
            )
        return PruneResult(model=pruned.model.to(ctx.device), masks={}, info=info)

    def _to_macs_budget(
        self,
        model: nn.Module,
        ctx: PruneContext,
        importance: FilterNorm,
        settings: dict,
        target: float,
    ) -> PruneResult:
        """One shot at the smallest ratio that reaches ``target`` (``method.macs_reduction``,
        or what removed blocks left of it)."""
        found = discover(model, ctx.input_size, self.opts.groups)  # once for every cut below

        def cut(ratio: float) -> nn.Module:
            return channel_prune(
                model, importance, ratio, input_size=ctx.input_size, found=found, **settings
            ).model

        ratio, search = ratio_for_macs_reduction(model, cut, target, ctx.input_size)
        asked = float(self.opts.macs_reduction)  # type: ignore[arg-type]
        budget = f"method.macs_reduction={asked:g}"
        if target != asked:  # blocks removed first: the channels' share of the budget
            budget += f" ({target:.4g}x after the removed blocks)"
        pruned = channel_prune(
            model, importance, ratio, input_size=ctx.input_size, found=found, **settings
        )
        info = {**pruned.info, "macs_reduction": search}
        info["warnings"] = [
            f"l1_filter: ratio {self.ratio} not used: {budget} solved "
            f"for ratio {search['ratio']:.4f}"
        ]
        if not search["reached"]:
            info["warnings"].append(
                f"l1_filter: {budget} not reached: at most "
                f"{search['achieved']:.3f}x with these groups and guards"
            )
        elif search["achieved"] > target * (1 + OVERSHOOT):
            info["warnings"].append(
                f"l1_filter: {budget} overshot: {search['achieved']:.3f}x "
                f"fewer MACs, the nearest one ratio reaches with round_to={self.opts.round_to} "
                "(method.allocation=latency chooses each group's width for the budget)"
            )
        # The rate asked for is the solved one.
        rate = info.get("rates", {}).get("channels")
        if rate is not None:
            rate["target"] = search["ratio"]
        return PruneResult(model=pruned.model.to(ctx.device), masks={}, info=info)

    def _remove_blocks(self, model: nn.Module, ctx: PruneContext) -> tuple[nn.Module, dict]:
        """``model`` less its ``method.remove_blocks`` lowest-scored removable blocks, and the
        record for ``prune_info.blocks`` (with the warnings of a request it could not meet)."""
        asked = int(self.opts.remove_blocks)
        model, record = remove_lowest_blocks(model, asked, ctx.input_size)
        removed = record["removed"]
        record["warnings"] = []
        if len(removed) < asked:
            record["warnings"].append(
                f"l1_filter: method.remove_blocks={asked}: the model has {record['removable']} "
                f"removable residual blocks (identity shortcut, a known block class); removed "
                f"{len(removed)}"
            )
        log.info(
            "l1_filter: removed %d residual blocks whole (%.3fx fewer MACs): %s",
            len(removed), record["macs_reduction"] or 0.0, ", ".join(removed) or "none",
        )  # fmt: skip
        return model.to(ctx.device), record

    def _blocks_only(self, model: nn.Module, blocks: dict[str, Any]) -> PruneResult:
        """The removed blocks alone met ``method.macs_reduction``: no channel is cut."""
        target = float(self.opts.macs_reduction)  # type: ignore[arg-type]
        reached = blocks["macs_before"] / blocks["macs_after"]
        note = (
            f"l1_filter: method.remove_blocks={blocks['requested']} alone gave {reached:.3f}x "
            f"fewer MACs, at least method.macs_reduction={target:g}: no channel was cut"
        )
        info = {"macs_reduction": {"target": target, "achieved": round(reached, 4),
                                   "reached": True}, "warnings": [note]}  # fmt: skip
        return PruneResult(model=model, masks={}, info=info)

    def _per_layer(
        self, model: nn.Module, ctx: PruneContext, importance: FilterNorm, settings: dict
    ) -> PruneResult:
        """Each group at the ratio of its producers in the ``layer_ratios`` file."""
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        ratios = read_layer_ratios(self.opts.layer_ratios, convs)
        source = self.opts.layer_ratios
        source = "inline" if isinstance(source, Mapping) else str(source)
        groups = discover(model, ctx.input_size, self.opts.groups).groups
        per_group = {}
        for g in groups:
            listed = [ratios[m.module] for m in g.producers if m.module in ratios]
            if listed:
                per_group[g.name] = min(listed)
        pruned = channel_prune(
            model, importance, self.ratio, input_size=ctx.input_size, group_ratios=per_group,
            **settings,
        )  # fmt: skip
        info = pruned.info
        info["layer_ratios"] = {"file": source, "ratios": ratios}
        # The rate asked for is the file's, not the run's ratio.
        rate = info.get("rates", {}).get("channels")
        if rate is not None:
            kept_asked = sum(
                int(size) - int(per_group.get(name, 0.0) * int(size) + 1e-9)
                for name, (_, size) in info["channels"].items()
                if name in info.get("group_ratios", {})
            )
            total = rate["total"]
            rate["target"] = round((total - kept_asked) / total, 6) if total else 0.0
        info["warnings"] = [
            f"l1_filter: ratio {self.ratio} not used: method.layer_ratios sets each group's ratio"
        ]
        return PruneResult(model=pruned.model.to(ctx.device), masks={}, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure from ``info``, then load the weights."""
        return restore_channels(model, checkpoint, source)
