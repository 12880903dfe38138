"""How many templates each bank gets: the ``templates_per_stage`` setting (docs/methods.md §9.3).

``templates_per_stage`` is an integer ``k >= 1`` for every bank, a list of one ``k`` per shared
stage, or ``auto``: the ``k`` (same for every bank) whose predicted parameter reduction
(:func:`prune_cli.sharing.predicted_params`) is closest to the target ``ratio``, the fraction of
parameters to remove.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.metrics.counting import count_params
from prune_cli.sharing.apply import (
    BankPlan,
    SharingSummary,
    choose_templates,
    share,
    templates_per_bank,
)

AUTO = "auto"


def parse_templates(value: Any) -> int | list[int] | str:
    """``templates_per_stage``: ``auto``, an integer >= 1, or a list of integers >= 1."""
    if isinstance(value, str) and value == AUTO:
        return AUTO
    if _is_k(value):
        return int(value)
    if isinstance(value, list | tuple) and value and all(_is_k(v) for v in value):
        return [int(v) for v in value]
    raise ConfigError(
        f"bad method.templates_per_stage {value!r}; valid: an integer >= 1, a list of one "
        "integer >= 1 per shared stage, or auto (the k whose reduction is closest to ratio)"
    )


def _is_k(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class TemplateSetting:
    """A validated sharing setting: ``templates`` (see :func:`parse_templates`), the
    ``coefficients`` kind (:data:`prune_cli.sharing.COEFFICIENT_KINDS`) and the target ``ratio``
    (used by ``auto`` only)."""

    templates: int | list[int] | str
    coefficients: str
    ratio: float

    @property
    def auto(self) -> bool:
        return self.templates == AUTO

    def share(self, model: nn.Module, plans: Sequence[BankPlan], seed: int) -> SharingSummary:
        """Replace the planned convs of ``model`` by template convs (:func:`share`), with the
        templates per bank this setting gives for ``plans``."""
        if self.auto:
            params_unshared = count_params(model)[0]
            k, _ = choose_templates(params_unshared, plans, self.ratio, self.coefficients)
            ks = templates_per_bank(k, plans)
        else:
            ks = templates_per_bank(self.templates, plans)  # type: ignore[arg-type]
        return share(model, plans, ks, self.coefficients, seed=seed)
