"""Mechanics shared by pruning methods: thresholds, masks, holding masks during fine-tuning."""

from prune_cli.pruning.masks import (
    MaskHold,
    apply_masks,
    count_pruned,
    masks_from_scores,
    prunable_weights,
)
from prune_cli.pruning.threshold import THRESHOLD_MODES, keep_mask, n_to_remove

__all__ = [
    "THRESHOLD_MODES",
    "MaskHold",
    "apply_masks",
    "count_pruned",
    "keep_mask",
    "masks_from_scores",
    "n_to_remove",
    "prunable_weights",
]
