"""The model-agnostic toolbox the methods are recipes on.

- :mod:`.threshold`, :mod:`.masks`: percentile thresholds, weight masks, holding them at zero;
- :mod:`.groups`, :mod:`.shufflenet`: channel groups (coupled producers, concatenations, splits,
  ShuffleNetV2 streams; the group model in :mod:`.group_model`, found by :mod:`.trace`, checked
  by :mod:`.verify`); :mod:`.removal`: narrower copies and masks of a cut;
  :mod:`.channels`: :func:`~.channels.channel_prune` (score, keep, remove);
- :mod:`.budget`: the ratio for a MAC budget; :mod:`.allocation`: how many channels each group
  keeps (uniform, global, or latency-aware from measured latency tables);
- :mod:`.importance`: importance criteria; :mod:`.regularizers`: training-time penalties;
- :mod:`.reparam`: masked re-parameterisation of weights (DPF); :mod:`.schedules`: sparsity
  schedules; :mod:`.search`: mask search (GA / PSO / SA).
"""

# Registers ShuffleNetV2's hand-written channel groups, which discovery and removal consult.
from prune_cli.pruning import shufflenet  # noqa: F401
from prune_cli.pruning.masks import (
    MaskHold,
    apply_masks,
    count_pruned,
    magnitude_masks,
    masks_from_scores,
    prunable_weights,
    rate_check,
)
from prune_cli.pruning.threshold import THRESHOLD_MODES, keep_mask, n_to_remove

__all__ = [
    "THRESHOLD_MODES",
    "MaskHold",
    "apply_masks",
    "count_pruned",
    "keep_mask",
    "magnitude_masks",
    "masks_from_scores",
    "n_to_remove",
    "prunable_weights",
    "rate_check",
]
