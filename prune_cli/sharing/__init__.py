"""Parameter sharing through template banks (docs/methods.md §9): layers, plans, the templates
setting, materialisation and the report of a shared model."""

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
from prune_cli.sharing.report import sharing_report
from prune_cli.sharing.setting import AUTO, TemplateSetting, parse_templates

__all__ = [
    "AUTO",
    "BANKS_ATTR",
    "COEFFICIENT_KINDS",
    "BankPlan",
    "SConv2d",
    "SharingSummary",
    "TemplateBank",
    "TemplateSetting",
    "choose_templates",
    "combine",
    "is_cifar_resnet",
    "is_shufflenet",
    "materialize",
    "orthogonal_coefficients",
    "parse_templates",
    "predicted_params",
    "resnet_plans",
    "share",
    "sharing_report",
    "shufflenet_plans",
    "templates_per_bank",
]
