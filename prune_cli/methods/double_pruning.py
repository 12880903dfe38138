"""``double_pruning``: network slimming, then magnitude pruning (methods.md §5.2, our design).

The source paper (Lee et al. 2020) combines network slimming (Liu et al. 2017) with parameter
pruning (Han et al. 2015); its order and hyper-parameters are not public, so this follows §5.2:

1. dense training with the slimming L1 penalty on BN γ (inherited from
   :class:`~prune_cli.methods.network_slimming.NetworkSlimming`);
2. slimming at ``method.channel_ratio`` (global BN threshold, coupled channels, physical
   removal), recorded as stage ``slimmed``;
3. fine-tuning without the sparsity term for ``method.slim_finetune_epochs`` epochs (``null``:
   the run's ``finetune.epochs``), recorded as stage ``slimmed_finetuned`` (history stage
   ``finetune_slim``);
4. magnitude pruning of the remaining conv weights at ``method.weight_ratio`` (§4 B1, the
   ``magnitude`` method's code: ``method.weight_scope``, ``method.include_linear``, the shared
   ``method.mode``), which the pipeline records as ``pruned``;
5. the pipeline's fine-tuning with those weights held at zero, recorded as ``final``.

``channel_ratio`` and ``weight_ratio`` default to the top-level ``ratio`` (tied mode,
``p_c = p_w = ratio``). A model without BN-led channel groups (SqueezeNet) cannot be slimmed: step
2-3 are skipped, logged, and ``info["slimming"]`` says so; it gets magnitude pruning only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import PruneContext, PruneResult
from prune_cli.methods.magnitude import MagnitudePruning
from prune_cli.methods.network_slimming import NetworkSlimming, number_option
from prune_cli.methods.registry import METHODS
from prune_cli.pruning import count_pruned
from prune_cli.pruning.channels import channel_groups
from prune_cli.pruning.importance import bn_gamma
from prune_cli.pruning.masks import SCOPES

log = logging.getLogger("prune_cli")


def _ratio(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = number_option(cfg, key, default, "double_pruning")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"method.{key} {value} is out of range; valid: 0 <= {key} < 1")
    return value


@METHODS.register("double_pruning")
class DoublePruning(NetworkSlimming):
    name = "double_pruning"

    def __init__(self, cfg: Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self.channel_ratio = _ratio(self.cfg, "channel_ratio", self.ratio)
        self.weight_ratio = _ratio(self.cfg, "weight_ratio", self.ratio)
        self.weight_scope = self.option("weight_scope", SCOPES, "global")
        epochs = self.cfg.get("slim_finetune_epochs")
        self.slim_epochs = (
            None if epochs is None else int(number_option(self.cfg, "slim_finetune_epochs", 0, ""))
        )
        if self.slim_epochs is not None and self.slim_epochs < 0:
            raise ConfigError(f"method.slim_finetune_epochs {self.slim_epochs} must be >= 0")

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        has_bn_groups = bool(bn_gamma(model, channel_groups(model, ctx.input_size)))
        if has_bn_groups:
            model, info = self._slim(model, ctx, self.channel_ratio)
            info["slimming"] = "done"
            if ctx.record is not None:
                ctx.record("slimmed", model)
            if ctx.finetune is not None and self.slim_epochs != 0:
                model = ctx.finetune(model, {}, "finetune_slim", self.slim_epochs)
                if ctx.record is not None:
                    ctx.record("slimmed_finetuned", model)
        else:
            log.warning(
                "%s has no BN-led channel groups: slimming skipped, magnitude pruning only",
                type(model).__name__,
            )
            info = {"slimming": "skipped: no BatchNorm after prunable convs"}
        magnitude = MagnitudePruning(
            {
                "scope": self.weight_scope,
                "mode": self.mode,
                "include_linear": bool(self.cfg.get("include_linear", False)),
            },
            self.weight_ratio,
            self.seed,
        )
        result = magnitude.prune(model, ctx)
        zeros, total = count_pruned(result.masks)
        info.update(
            {
                "channel_ratio": self.channel_ratio,
                "weight_ratio": self.weight_ratio,
                "weight_scope": self.weight_scope,
                "weights_pruned": zeros,
                "weights_total": total,
            }
        )
        return PruneResult(model=result.model, masks=result.masks, info=info)
