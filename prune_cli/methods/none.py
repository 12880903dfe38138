"""``none``: the dense baseline. Nothing is pruned and nothing is fine-tuned."""

from __future__ import annotations

from torch import nn

from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS


@METHODS.register("none")
class NoPruning(Method):
    prunes = False
    no_weight_reset = "it prunes nothing"

    class Options(MethodOptions):
        """No options beyond ``name`` (and ``ratio``, which it ignores)."""

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        return PruneResult(model=model)
