"""``soft_sharing``: soft parameter sharing, Savarese & Maire, ICLR 2019 (docs/methods.md §9.2).

The authors' rule (lolemacs/soft-sharing, SWRN-d-w-k): one :class:`~prune_cli.sharing.TemplateBank`
of ``k`` full-size templates per stage; every conv of the blocks *after the first* block of a stage
is an ``SConv2d`` on that bank with scalar coefficients ``W_i = sum_j alpha_ij T_j``; templates
Kaiming-normal, coefficients from an orthogonal ``L x k`` matrix, no weight decay on them. The
first block of each stage (stride or width change), the stem, shortcut convs, the classifier
and every BN stay unshared.

Models:

- Wide ResNets (``wrn16_4/16_8/28_10/40_4``), the paper's SWRN-d-w-k, and CIFAR ResNets
  (``resnet20/32/56/110``): the two 3x3 convs of blocks ``2..n`` of each stage share the stage's
  bank, ``L = 2 (n - 1)`` layers of ``C_s x C_s x 3 x 3``. ``model=wrn28_10
  method.templates_per_stage=2`` is SWRN-28-10-2 (17,125,630 parameters for 10 classes).
- ShuffleNetV2 (``shufflenet_v2_x0_5/x1_0``), the baseline of the template-reuse comparison: the
  same rule, "every conv of the units after the first", shares the two 1x1 convs *and* the
  depthwise 3x3 conv of every stride-1 unit; as a bank holds one weight shape, each stage gets a
  1x1 bank and a depthwise bank of ``k`` templates each. (This is the plan of ``template_reuse``
  with ``share_depthwise: true`` and scalar coefficients: our template-reuse reconstruction is
  soft sharing restricted to the pointwise convs.)

``templates_per_stage``: ``k`` per bank (default 2), a list of one ``k`` per stage, or ``auto``
(closest reduction to ``ratio``). Training, reporting and the materialisation check:
:class:`prune_cli.methods.base.SharingMethod` on :mod:`prune_cli.sharing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import MethodOptions, SharingMethod
from prune_cli.methods.registry import METHODS
from prune_cli.sharing import (
    BankPlan,
    is_cifar_resnet,
    is_shufflenet,
    resnet_plans,
    shufflenet_plans,
)


@METHODS.register("soft_sharing")
class SoftSharing(SharingMethod):
    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self._kind = ""  # set by plans(): "cifar_resnet" or "shufflenet"

    def plans(self, model: nn.Module) -> list[BankPlan]:
        if is_cifar_resnet(model):
            self._kind = "cifar_resnet"
            return resnet_plans(model)  # type: ignore[arg-type]
        if is_shufflenet(model):
            self._kind = "shufflenet"
            return shufflenet_plans(model, pointwise=True, depthwise=True)
        raise ConfigError(
            f"method 'soft_sharing' does not support {type(model).__name__}; choose one of: "
            "resnet20, resnet32, resnet56, resnet110, wrn16_4, wrn16_8, wrn28_10, wrn40_4, "
            "shufflenet_v2_x0_5, shufflenet_v2_x1_0"
        )

    def plan_description(self) -> str:
        if self._kind == "shufflenet":
            return (
                "ShuffleNetV2: every conv of the stride-1 units (1x1 bank and depthwise bank "
                "per stage)"
            )
        return "(Wide) CIFAR ResNet: one bank per stage over the 3x3 convs after the first block"
