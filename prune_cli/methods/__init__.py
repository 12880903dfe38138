"""Pruning / sharing methods, one module each, registered under their config names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def build_method(cfg: Mapping[str, Any], ratio: float, seed: int = 0) -> Method:
    """Instantiate the method named ``cfg['name']`` (unknown names: one-line ConfigError)."""
    cls = METHODS.get(str(cfg["name"]))
    return cls(cfg, ratio, seed)


__all__ = ["METHODS", "Method", "MethodOptions", "PruneContext", "PruneResult", "build_method"]
