"""The percentile threshold of docs/methods.md §2.1, in an exact and a reference flavour.

The reference code (network-slimming, rethinking-network-pruning) does::

    thre = sort(v)[int(len(v) * percent)];  keep = v > thre

which, with distinct values, removes ``int(N * percent) + 1`` items (the one sitting on the
threshold goes too). ``mode="exact"`` removes exactly ``floor(N * percent)`` items, ties broken by
position (the earlier of two equal scores is removed first); ``mode="reference"`` reproduces the
``+1`` so that published numbers can be matched.
"""

from __future__ import annotations

import math

import torch

from prune_cli.errors import ConfigError

THRESHOLD_MODES = ("exact", "reference")


def n_to_remove(n: int, ratio: float) -> int:
    """``floor(n * ratio)``, robust to float error (0.7 * 1000 is 700, not 699)."""
    return math.floor(n * ratio + 1e-9)


def keep_mask(scores: torch.Tensor, ratio: float, mode: str = "exact") -> torch.Tensor:
    """Boolean mask (same shape as ``scores``) of the entries kept when pruning ``ratio`` of them.

    Lower scores are pruned first.
    """
    if mode not in THRESHOLD_MODES:
        raise ConfigError(
            f"unknown threshold mode {mode!r}; choose one of: {', '.join(THRESHOLD_MODES)}"
        )
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio {ratio} is out of range; valid: 0 <= ratio < 1")
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if mode == "reference":
        thre = flat.sort().values[int(n * ratio)]
        return (scores > thre).reshape(scores.shape)
    k = n_to_remove(n, ratio)
    keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    return keep.reshape(scores.shape)
