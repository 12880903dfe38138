"""Sparsity schedules: how a target rate is reached over training steps."""

from __future__ import annotations


def cubic_sparsity(final: float, t: float, total: float) -> float:
    """Zhu & Gupta's schedule with initial sparsity 0: ``final - final * (1 - t/total)^3``,
    ``final`` once ``t >= total`` (and at once when ``total <= 0``)."""
    if total <= 0 or t >= total:
        return final
    return final - final * (1.0 - max(t, 0.0) / total) ** 3
