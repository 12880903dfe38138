"""The figures of one stage, and ``metrics.json`` (written atomically).

Every stage object (``baseline``, ``pruned``, ``final``, and any intermediate stage a method
records) has at least: ``top1``, ``top5`` (test split, percent), ``params``, ``params_nonzero``,
``macs``, ``macs_nonzero`` (see :func:`prune_cli.metrics.counting.count_macs`), ``sparsity``
(zero fraction of conv + linear weights) and ``netscore`` (computed with the configured counting
mode and units, which ``metrics.json`` states under ``netscore_units``), plus ``netscore_dense``
and ``netscore_nonzero`` for both counting modes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from prune_cli.io import atomic_write_text
from prune_cli.metrics.counting import count_macs, count_params, prunable_counts, sparsity
from prune_cli.metrics.figures import Measured, stage_figures
from prune_cli.metrics.netscore import unit_label

COUNT_MODES = ("dense", "nonzero")


def stage_metrics(
    model: nn.Module,
    evaluation: Mapping[str, float],
    input_size: tuple[int, int, int],
    units: Mapping[str, Any],
    per_layer: bool = False,
) -> dict[str, Any]:
    """The figures of ``model`` after a stage (:data:`~.figures.STAGE_FIGURES`, from what is
    measured here); ``evaluation`` has top1, top5, loss; ``per_layer`` adds each layer's
    sparsity."""
    params, params_nz = count_params(model)
    macs = count_macs(model, input_size)
    global_sparsity, layer_sparsity = sparsity(model)
    weights, weights_nz = prunable_counts(model)
    measured = Measured(
        evaluation=evaluation,
        params=params,
        params_nonzero=params_nz,
        macs=macs.dense,
        macs_nonzero=macs.nonzero,
        sparsity=global_sparsity,
        weights=weights,
        weights_nonzero=weights_nz,
        units=units,
    )
    out = stage_figures(measured)
    if per_layer:
        out["layer_sparsity"] = {k: round(v, 6) for k, v in layer_sparsity.items()}
    return out


def relative_to_dense(final: Mapping[str, Any], dense: Mapping[str, Any]) -> dict[str, Any]:
    """Figures that compare across methods, all against the dense reference (docs/metrics.md):

    - ``weights_removed``: fraction of the dense reference's weights (conv + linear) that the
      final model no longer has, physically removed, zero, or shared (a shared model keeps its
      template banks: :func:`~prune_cli.metrics.counting.weight_tensors`):
      ``1 - final.weights_nonzero / dense.weights`` (structured and unstructured alike);
    - ``params``, ``macs``: the final model's nonzero params / MACs over the dense reference's;
    - ``params_structure``, ``macs_structure``: the same with every entry of the final model
      counted (what physical removal alone bought).
    """

    def ratio(a: Any, b: Any) -> float | None:
        return round(float(a) / float(b), 6) if a is not None and b else None

    removed = ratio(final.get("weights_nonzero"), dense.get("weights"))
    return {
        "weights_removed": None if removed is None else round(1.0 - removed, 6),
        "params": ratio(final.get("params_nonzero"), dense.get("params")),
        "macs": ratio(final.get("macs_nonzero"), dense.get("macs")),
        "params_structure": ratio(final.get("params"), dense.get("params")),
        "macs_structure": ratio(final.get("macs"), dense.get("macs")),
        "top1_change": None
        if final.get("top1") is None or dense.get("top1") is None
        else round(float(final["top1"]) - float(dense["top1"]), 4),
    }


def netscore_units(units: Mapping[str, Any]) -> dict[str, Any]:
    """How NetScore was computed, for the report: 'M' params, 'G' MACs, counting mode."""
    return {
        "formula": "20*log10(top1_pct^2 / (sqrt(params/p_unit) * sqrt(macs/m_unit)))",
        "params_unit": unit_label(float(units["p_unit"])) + "-params",
        "macs_unit": unit_label(float(units["m_unit"])) + "-MACs",
        "count": str(units.get("count", "nonzero")),
    }


def _clean(obj: Any) -> Any:
    """JSON has no NaN: write null instead, so every JSON reader can load the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_metrics_json(path: Path, metrics: Mapping[str, Any]) -> None:
    """Write ``metrics.json`` through a temporary file, so readers never see half a file."""
    atomic_write_text(path, json.dumps(_clean(metrics), indent=2) + "\n")
