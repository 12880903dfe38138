"""``magnitude``: unstructured magnitude pruning (Han et al., NIPS 2015), docs/methods.md §4.

Default variant B1 (rethinking-network-pruning ``cifar/weight-level``): one global threshold over
|w| of all conv weights, then fine-tuning with the pruned weights held at zero. ``scope=layerwise``
prunes the same fraction of every layer instead; ``include_linear`` adds Linear weights to the pool;
``mode=reference`` reproduces the reference code's ``+1`` threshold behaviour
(docs/methods.md §2.1).

``schedule`` (:mod:`prune_cli.pruning.schedules`): ``oneshot`` (default), ``iterative`` (Han et
al.'s prune / fine-tune rounds) or ``gradual`` (Zhu & Gupta's cubic ramp during fine-tuning).
``layer_ratios``: a ``{layer: ratio}`` file (``layer_ratios.json`` of ``method=sensitivity``)
giving each conv (or linear) its own ratio; layers it does not list are not pruned (one shot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prune_cli.methods.base import Method, OwnRatio, PruneContext, PruneResult, ScheduleOptions
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, OneOf, Text
from prune_cli.pruning import THRESHOLD_MODES, apply_masks, keep_mask, prunable_weights, rate_check
from prune_cli.pruning.importance import weight_scores
from prune_cli.pruning.masks import SCOPES
from prune_cli.pruning.schedules import WeightSteps
from prune_cli.pruning.sensitivity import read_layer_ratios


@METHODS.register("magnitude")
class MagnitudePruning(Method):
    class Options(OwnRatio, ScheduleOptions):
        """``configs/method/magnitude.yaml``."""

        scope: OneOf(*SCOPES)
        include_linear: Bool
        mode: OneOf(*THRESHOLD_MODES)
        layer_ratios: Text("a path to a {layer: ratio} JSON or YAML file") | None

    opts: Options

    @classmethod
    def refuses_schedule(cls, cfg: Mapping[str, Any]) -> str | None:
        if cfg.get("layer_ratios"):
            return "method.layer_ratios prunes one shot"
        return None

    def gradual_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {
            n: weight_scores(w)
            for n, w in prunable_weights(model, self.opts.include_linear).items()
        }

    def gradual_pool(self) -> tuple[float, str, str]:
        return self.ratio, self.opts.scope, self.opts.mode

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        scope, mode = self.opts.scope, self.opts.mode
        if self.opts.layer_ratios:
            return self._per_layer(model)
        step = WeightSteps(self.gradual_scores, scope=scope, mode=mode)
        model, masks, info = self.scheduled(model, ctx, step, self.ratio)
        info.update({"scope": scope, "mode": mode})
        if masks:
            info["rates"] = {"weights": rate_check(masks, self.ratio)}
        return PruneResult(model=model, masks=masks, info=info)

    def _per_layer(self, model: nn.Module) -> PruneResult:
        """Each layer at its ratio from the ``layer_ratios`` file (unlisted layers: 0)."""
        weights = prunable_weights(model, self.opts.include_linear)
        layers = [n.removesuffix(".weight") for n in weights]
        ratios = read_layer_ratios(self.opts.layer_ratios, layers)
        masks = {
            n: keep_mask(
                weight_scores(w), ratios.get(n.removesuffix(".weight"), 0.0), self.opts.mode
            )
            for n, w in weights.items()
        }
        apply_masks(model, masks)
        zeros = sum(int((~m).sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        # The target of the rate check is what the file asks for, not the run's ratio.
        asked = sum(
            int(ratios.get(n.removesuffix(".weight"), 0.0) * w.numel() + 1e-9)
            for n, w in weights.items()
        ) / max(total, 1)
        info = {
            "scope": "per-layer ratios",
            "mode": self.opts.mode,
            "layer_ratios": {"file": str(self.opts.layer_ratios), "ratios": ratios},
            "layers_not_listed": [n for n in layers if n not in ratios],
            "rates": {"weights": rate_check(masks, round(asked, 6))},
            "weights_pruned": zeros,
            "warnings": [
                f"magnitude: ratio {self.ratio} not used: method.layer_ratios sets each layer's "
                f"ratio ({zeros / max(total, 1):.4f} of the weights pruned)"
            ],
        }
        return PruneResult(model=model, masks=masks, info=info)
