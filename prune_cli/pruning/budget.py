"""A MAC budget instead of a ratio: the channel ratio whose cut reaches a MAC reduction.

Papers report channel pruning at a MAC reduction ("2.13x", DepGraph's ResNet-56 row), not at a
channel ratio, and how many MACs a ratio removes depends on the model (a CIFAR ResNet with
zero-padding shortcuts keeps its residual streams whole: ratio 0.5 removes half the MACs of
the inner convolutions only). :func:`ratio_for_macs_reduction` finds the smallest ratio whose
cut reaches the reduction, by bisection: the MACs a global or layerwise cut keeps do not grow
with the ratio (more channels go, never fewer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.metrics.counting import count_macs

#: Stop when the ratio is known to this precision (a channel of ResNet-56's 2,000 is 5e-4).
RATIO_TOLERANCE = 1e-4
#: The largest ratio tried: a cut beyond it leaves layers of one channel.
MAX_RATIO = 0.99


def ratio_for_macs_reduction(
    model: nn.Module,
    cut: Callable[[float], nn.Module],
    target: float,
    input_size: Sequence[int],
) -> tuple[float, dict[str, Any]]:
    """The smallest channel ratio ``r`` with ``MACs(model) / MACs(cut(r)) >= target``, and a
    record of the search (``target``, ``achieved``, ``ratio``, ``reached``).

    ``cut(r)`` returns ``model`` cut at ratio ``r`` (without changing ``model``). When even
    :data:`MAX_RATIO` does not reach ``target`` (guards such as ``min_channels`` keep more),
    that ratio is returned with ``reached: false`` and the caller says so.
    """
    if target < 1.0:
        raise ConfigError(f"method.macs_reduction {target} is below 1; valid: a number >= 1")
    size = tuple(int(s) for s in input_size)
    dense = count_macs(model, size).dense

    def reduction(ratio: float) -> float:
        return dense / max(1, count_macs(cut(ratio), size).dense)

    low, high = 0.0, MAX_RATIO
    best = reduction(high)
    if best < target:
        return high, _record(target, best, high, dense, reached=False)
    while high - low > RATIO_TOLERANCE:
        mid = (low + high) / 2
        got = reduction(mid)
        if got >= target:
            high, best = mid, got
        else:
            low = mid
    return high, _record(target, best, high, dense, reached=True)


def _record(target: float, achieved: float, ratio: float, dense: int, reached: bool) -> dict:
    return {
        "target": target,
        "achieved": round(achieved, 4),
        "ratio": round(ratio, 6),
        "dense_macs": dense,
        "reached": reached,
    }
