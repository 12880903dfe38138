"""Parameter sharing through template banks (methods.md §9): layers, plans, materialisation."""

from prune_cli.sharing.apply import (
    BANKS_ATTR,
    BankPlan,
    SharingSummary,
    choose_templates,
    is_cifar_resnet,
    is_shufflenet,
    materialize,
    predicted_params,
    resnet_plans,
    share,
    shufflenet_plans,
    templates_per_bank,
)
from prune_cli.sharing.layers import (
    COEFFICIENT_KINDS,
    SConv2d,
    TemplateBank,
    combine,
    orthogonal_coefficients,
)

__all__ = [
    "BANKS_ATTR",
    "COEFFICIENT_KINDS",
    "BankPlan",
    "SConv2d",
    "SharingSummary",
    "TemplateBank",
    "choose_templates",
    "combine",
    "is_cifar_resnet",
    "is_shufflenet",
    "materialize",
    "orthogonal_coefficients",
    "predicted_params",
    "resnet_plans",
    "share",
    "shufflenet_plans",
    "templates_per_bank",
]
