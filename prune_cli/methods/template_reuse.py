"""``template_reuse``: template-based parameter sharing for ShuffleNetV2
(docs/methods.md §9.1, §9.3).

Kim & Kang (KTSDE 2020) generate layer weights from a few small templates combined with small
layer-specific parameters; their full text is not public, so this is prune-cli's reconstruction
(docs/methods.md §9.3, **our design**): per stage of ShuffleNetV2 one
:class:`~prune_cli.sharing.TemplateBank` of ``k`` templates ``(bf, bf, 1, 1)`` serves both 1x1 convs
of every stride-1 unit (``L_s = 6, 14, 6`` layers), with ``W_i = sum_j alpha_ij T_j``; templates
Kaiming-normal, coefficients from an orthogonal ``L_s x k`` matrix and never weight-decayed.
Everything else (stride-2 units, depthwise convs, conv1, conv5, FC, BN) stays unshared.

Options (``configs/method/template_reuse*.yaml``):

- ``templates_per_stage``: ``k`` for every stage (default 2), a list ``[k2, k3, k4]``, or
  ``auto`` (the ``k`` whose parameter reduction is closest to ``ratio``).
- ``coefficients``: ``scalar`` (``alpha_i`` in R^k) or ``per_channel`` (variant B: ``alpha_i`` in
  R^(k x C_out), ``W_i[o] = sum_j alpha_i[j, o] T_j[o]``; ``k * bf`` parameters per layer).
- ``share_depthwise``: variant C, a second bank ``(bf, 1, 3, 3)`` per stage for the depthwise
  convs of the stride-1 units.

The parameter counts for ``k = 1..4`` are the table of docs/methods.md §9.3 (e.g.
``shufflenet_v2_x1_0``, k = 2: 1,888,432 with the ImageNet head, 965,932 with the CIFAR-100 head).
Training, reporting and the materialisation check: :class:`prune_cli.methods.base.SharingMethod` on
:mod:`prune_cli.sharing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import MethodOptions, SharingMethod, SharingOptions
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, OneOf
from prune_cli.sharing import COEFFICIENT_KINDS, BankPlan, is_shufflenet, shufflenet_plans


@METHODS.register("template_reuse")
class TemplateReuse(SharingMethod):
    class Options(SharingOptions):
        """``configs/method/template_reuse*.yaml``."""

        coefficients: OneOf(*COEFFICIENT_KINDS)
        share_depthwise: Bool

    opts: Options

    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self.share_depthwise = self.opts.share_depthwise

    def plans(self, model: nn.Module) -> list[BankPlan]:
        if not is_shufflenet(model):
            raise ConfigError(
                f"method 'template_reuse' needs a ShuffleNetV2, got {type(model).__name__}; "
                "choose model=shufflenet_v2_x0_5 or model=shufflenet_v2_x1_0 "
                "(soft_sharing also takes the CIFAR ResNets)"
            )
        return shufflenet_plans(model, pointwise=True, depthwise=self.share_depthwise)

    def plan_description(self) -> str:
        extra = " and the depthwise 3x3 convs (second bank)" if self.share_depthwise else ""
        return f"ShuffleNetV2: one bank per stage over both 1x1 convs of the stride-1 units{extra}"
