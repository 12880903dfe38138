"""``double_pruning``: network slimming, then magnitude pruning (docs/methods.md §5.2, our design).

The source paper (Lee et al. 2020) combines network slimming (Liu et al. 2017) with parameter
pruning (Han et al. 2015); its order and hyper-parameters are not public, so this follows
docs/methods.md §5.2:

1. dense training with the slimming L1 penalty on BN γ
   (:class:`~prune_cli.pruning.regularizers.BNSparsity`, ``method.l1_lambda``, ``method.bn_init``);
2. slimming at ``method.channel_ratio`` (BN-γ importance, global threshold, ``method.groups``,
   physical removal), recorded as stage ``slimmed``;
3. fine-tuning without the sparsity term for ``method.slim_finetune_epochs`` epochs (``null``:
   the run's ``finetune.epochs``), recorded as stage ``slimmed_finetuned`` (history stage
   ``finetune_slim``);
4. magnitude pruning of the remaining conv weights at ``method.weight_ratio``
   (docs/methods.md §4 B1:
   ``method.weight_scope``, ``method.include_linear``, the shared ``method.mode``), which the
   pipeline records as ``pruned``;
5. the pipeline's fine-tuning with those weights held at zero, recorded as ``final``.

``method.schedule`` applies to the weight stage (step 4): ``iterative`` prunes the weights in
``rounds`` rounds with fine-tuning between them, ``gradual`` prunes them during the pipeline's
fine-tuning (Zhu & Gupta); slimming (steps 2-3) runs once either way.

``channel_ratio`` and ``weight_ratio`` default to the top-level ``ratio`` (tied mode,
``p_c = p_w = ratio``). A model with no channel group slimming can rank (no BN followed by an
activation, e.g. SqueezeNet) cannot be slimmed: steps 2-3 are skipped, said in the log, and
``info["slimming"]`` records it; it gets magnitude pruning only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prune_cli.methods.base import (
    AutoOrNonNegative,
    ChannelOptions,
    MethodOptions,
    PruneContext,
    PruneResult,
    Ratio,
    ScheduleOptions,
    SparsityTraining,
)
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, Float, Int, OneOf
from prune_cli.pruning import (
    count_pruned,
    prunable_weights,
    rate_check,
)
from prune_cli.pruning.channels import channel_prune, restore_channels
from prune_cli.pruning.groups import GROUPINGS, ChannelRemovalError
from prune_cli.pruning.importance import BNScale, weight_scores
from prune_cli.pruning.masks import SCOPES
from prune_cli.pruning.schedules import WeightSteps


@METHODS.register("double_pruning")
class DoublePruning(SparsityTraining):
    class Options(ChannelOptions, ScheduleOptions):
        """``configs/method/double_pruning.yaml``; ``mode`` applies to both stages."""

        groups: OneOf(*GROUPINGS)
        channel_ratio: Ratio | None
        weight_ratio: Ratio | None
        slim_finetune_epochs: Int(ge=0) | None
        l1_lambda: AutoOrNonNegative
        bn_init: Float() | None
        weight_scope: OneOf(*SCOPES)
        include_linear: Bool

    opts: Options

    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        opts = self.opts
        self.channel_ratio = self.ratio if opts.channel_ratio is None else opts.channel_ratio
        self.weight_ratio = self.ratio if opts.weight_ratio is None else opts.weight_ratio

    # ------------------------------------------------------------------ pruning
    def gradual_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        weights = prunable_weights(model, self.opts.include_linear)
        return {n: weight_scores(w) for n, w in weights.items()}

    def gradual_pool(self) -> tuple[float, str, str]:
        return self.weight_ratio, self.opts.weight_scope, self.opts.mode

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        try:
            pruned = channel_prune(
                model,
                BNScale(),
                self.channel_ratio,
                input_size=ctx.input_size,
                scope="global",
                **self.opts.channel_settings(),
            )
        except ChannelRemovalError as exc:
            info = {
                "slimming": f"skipped: {exc}",
                "warnings": [f"double_pruning: slimming skipped ({exc}): magnitude pruning only"],
            }
        else:
            model, info = pruned.model.to(ctx.device), pruned.info
            info["slimming"] = "done"
            info["l1_lambda"] = self.sparsity.lam
            if ctx.record is not None:
                ctx.record("slimmed", model)
            epochs = self.opts.slim_finetune_epochs
            if ctx.finetune is not None and epochs != 0:
                model = ctx.finetune(model, {}, "finetune_slim", epochs)
                if ctx.record is not None:
                    ctx.record("slimmed_finetuned", model)
        opts = self.opts
        # The rounds' step carries the slimming cut (rewinding maps the start weights onto it).
        step = WeightSteps(self.gradual_scores, scope=opts.weight_scope, mode=opts.mode, info=info)
        model, masks, scheduled = self.scheduled(model, ctx, step, self.weight_ratio)
        info.update(scheduled)
        info.update(
            {
                "channel_ratio": self.channel_ratio,
                "weight_ratio": self.weight_ratio,
                "weight_scope": opts.weight_scope,
            }
        )
        if masks:  # (gradual: the weights are pruned during fine-tuning, counted then)
            zeros, total = count_pruned(masks)
            info.setdefault("rates", {})["weights"] = rate_check(masks, self.weight_ratio)
            info.update({"weights_pruned": zeros, "weights_total": total})
        return PruneResult(model=model, masks=masks, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the slimmed structure from ``info`` (if slimming ran), then load the weights."""
        return restore_channels(model, checkpoint, source)
