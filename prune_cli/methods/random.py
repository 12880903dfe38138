"""``random``: the control (methods.md §6).

Removes exactly as many weights as ``magnitude`` would at the same ratio, scope and pool, chosen
uniformly at random from the run seed, so that any gap to magnitude is the value of the criterion.
"""

from __future__ import annotations

import torch
from torch import nn

from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, OneOf
from prune_cli.pruning import apply_masks, masks_from_scores, prunable_weights
from prune_cli.pruning.masks import SCOPES


@METHODS.register("random")
class RandomPruning(Method):
    name = "random"

    class Options(MethodOptions):
        """``configs/method/random.yaml``: the pool and scope of ``magnitude``."""

        scope: OneOf(*SCOPES) = "global"
        include_linear: Bool = False

    opts: Options

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        scope = self.opts.scope
        weights = prunable_weights(model, self.opts.include_linear)
        gen = torch.Generator().manual_seed(self.seed)
        # Random scores with the exact threshold: the same count as magnitude's exact mode.
        scores = {name: torch.rand(w.shape, generator=gen) for name, w in weights.items()}
        masks = masks_from_scores(scores, self.ratio, scope, "exact")
        apply_masks(model, masks)
        return PruneResult(model=model, masks=masks, info={"scope": scope})
