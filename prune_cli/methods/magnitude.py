"""``magnitude``: unstructured magnitude pruning (Han et al., NIPS 2015), methods.md §4.

Default variant B1 (rethinking-network-pruning ``cifar/weight-level``): one global threshold over
|w| of all conv weights, then fine-tuning with the pruned weights held at zero. ``scope=layerwise``
prunes the same fraction of every layer instead; ``include_linear`` adds Linear weights to the pool;
``mode=reference`` reproduces the reference code's ``+1`` threshold behaviour (§2.1).
"""

from __future__ import annotations

from torch import nn

from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, OneOf
from prune_cli.pruning import THRESHOLD_MODES, magnitude_masks, rate_check
from prune_cli.pruning.masks import SCOPES


@METHODS.register("magnitude")
class MagnitudePruning(Method):
    name = "magnitude"

    class Options(MethodOptions):
        """``configs/method/magnitude.yaml``."""

        scope: OneOf(*SCOPES) = "global"
        include_linear: Bool = False
        mode: OneOf(*THRESHOLD_MODES) = "exact"

    opts: Options

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        scope, mode = self.opts.scope, self.opts.mode
        masks = magnitude_masks(model, self.ratio, scope, mode, self.opts.include_linear)
        info = {"scope": scope, "mode": mode, "rates": {"weights": rate_check(masks, self.ratio)}}
        return PruneResult(model=model, masks=masks, info=info)
