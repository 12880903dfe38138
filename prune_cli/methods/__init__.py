"""Pruning / sharing methods, one module each, registered under their config names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

# Importing the modules registers the methods.
from prune_cli.methods import (  # noqa: F401
    double_pruning,
    dynamic_filter,
    l1_filter,
    magnitude,
    network_slimming,
    none,
    optimized,
    random,
    sensitivity,
    soft_sharing,
    template_reuse,
)
from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS


@runtime_checkable
class MethodPlan(Protocol):
    """What a method is built from in a run (:class:`prune_cli.schema.RunPlan`): its typed
    options (a mapping for a method that declares none), the ratio it prunes to and the seed."""

    method: Any
    method_ratio: float
    seed: int


def build_method(
    cfg: MethodPlan | MethodOptions | Mapping[str, Any], ratio: float = 0.5, seed: int = 0
) -> Method:
    """Instantiate a method: from a run plan (``ratio`` and ``seed`` are then the plan's), from
    a method's typed options, or from a mapping naming it in ``name`` (the keys it leaves out
    from ``configs/method/<name>.yaml``). Unknown names: one-line ConfigError."""
    if isinstance(cfg, MethodPlan):
        return build_method(cfg.method, cfg.method_ratio, cfg.seed)
    name = cfg.name if isinstance(cfg, MethodOptions) else cfg["name"]
    return METHODS.get(str(name))(cfg, ratio, seed)


__all__ = [
    "METHODS",
    "Method",
    "MethodOptions",
    "MethodPlan",
    "PruneContext",
    "PruneResult",
    "build_method",
]
