"""``network_slimming``: Liu et al., ICCV 2017, with physical channel removal (docs/methods.md §3).

1. **Sparsity training.** After every ``backward()`` and before the optimiser step, each
   ``BatchNorm2d`` γ gets the L1 sub-gradient: ``γ.grad += λ·sign(γ)`` (β is not penalised).
   ``method.l1_lambda`` = λ; ``auto`` picks 1e-4 for plain CNNs (VGG, SqueezeNet) and 1e-5 for
   residual networks (everything else), as the reference README does for VGG vs ResNet-164 /
   DenseNet-40. ``method.bn_init`` (e.g. 0.5, the reference init) sets every γ before training;
   ``null`` keeps the model's own init. Both change training, so both are in
   :meth:`training_signature` (the trained-model cache keys them).
2. **Global threshold** over the channels' |γ| (docs/methods.md §2.1: ``exact`` removes
   ``floor(N·ratio)`` channels, ``reference`` the reference code's ``+1``). A channel's score is
   the mean |γ| of its group's BNs that are followed by a nonlinearity
   (:class:`~prune_cli.pruning.importance.BNScale`): linear BNs (MobileNet projections) are never
   ranked, and depthwise BNs follow their producer.
3. **Groups** (``method.groups``): ``single`` (default) is the paper's setting (only groups with
   one producer: post-activation ResNets rank their inner BNs, residual streams and
   concatenations stay whole, docs/methods.md §3); ``coupled`` also slims residual streams (every BN
   of the stream averaged), concatenations and ShuffleNetV2 streams. ``single`` is the default
   because one global γ threshold over coupled streams can empty a stream: the stream BNs'
   γ end up small, so ResNet-20 at ratio 0.3 kept 1 of 64 stage-3 stream channels and fell
   to chance (docs/methods-guide.md).
4. **Guards.** A group keeps at least ``method.min_channels`` channels (an int, or a fraction of
   the group for a float < 1) and, with ``method.round_to`` = r, a multiple of r channels (more
   kept, never fewer); so the removed count can be below ``floor(N·ratio)``.
5. **Removal.** The returned model is a new, physically narrower module; ``info`` describes the
   cut exactly (``channels``, ``keep``), which :meth:`restore` uses to rebuild the structure on
   resume. Fine-tuning (the pipeline's) runs without the sparsity term.
6. **Schedule** (``method.schedule``): ``oneshot`` or ``iterative`` (rounds cut the model
   further, each to its ratio of the *original* channel count; the rounds' fine-tuning runs
   without the sparsity term); ``gradual`` is refused (use iterative).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prune_cli.methods.base import (
    AutoOrNonNegative,
    ChannelOptions,
    OwnRatio,
    PruneContext,
    PruneResult,
    ScheduleOptions,
    SparsityTraining,
)
from prune_cli.methods.registry import METHODS
from prune_cli.options import Float, OneOf
from prune_cli.pruning.channels import restore_channels
from prune_cli.pruning.groups import GROUPINGS
from prune_cli.pruning.importance import BNScale
from prune_cli.pruning.schedules import ChannelSteps


@METHODS.register("network_slimming")
class NetworkSlimming(SparsityTraining):
    class Options(OwnRatio, ChannelOptions, ScheduleOptions):
        """``configs/method/network_slimming.yaml``."""

        groups: OneOf(*GROUPINGS)
        l1_lambda: AutoOrNonNegative
        bn_init: Float() | None

    opts: Options

    # ------------------------------------------------------------------ pruning
    @classmethod
    def refuses_schedule(cls, cfg: Mapping[str, Any]) -> str | None:
        if cfg.get("schedule") == "gradual":
            return "gradual channel removal is not supported; use method.schedule=iterative"
        return None

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        settings = {"scope": "global", **self.opts.channel_settings()}
        step = ChannelSteps(BNScale(), ctx.input_size, ctx.device, **settings)
        model, _, info = self.scheduled(model, ctx, step, self.ratio)
        info = {**step.info, **info, "l1_lambda": self.sparsity.lam}
        return PruneResult(model=model, masks={}, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure from ``info``, then load the weights."""
        return restore_channels(model, checkpoint, source)
