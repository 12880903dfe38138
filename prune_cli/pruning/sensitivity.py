"""Per-layer sensitivity analysis (Li et al. 2017, Section 3.2; Han et al. 2015) and per-layer
ratios.

:func:`layer_sensitivity` prunes each prunable layer *alone* at several ratios (``weight``:
the lowest-|w| weights of the layer; ``filter``: its lowest-L1 filters, masked to zero) and
evaluates the model without fine-tuning, restoring the layer after each point. From the table,
:func:`choose_layer_ratios` picks for each layer the largest ratio whose top-1 drop from the
dense model stays within ``max_drop`` points; :func:`read_layer_ratios` reads such a
``{layer: ratio}`` file (JSON or YAML) back for ``method.layer_ratios``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.io import atomic_save_figure, atomic_write_text
from prune_cli.metrics.counting import prunable_layers
from prune_cli.pruning.importance import filter_scores, weight_scores
from prune_cli.pruning.threshold import keep_mask

GRANULARITIES = ("weight", "filter")
CSV_COLUMNS = ("layer", "ratio", "top1", "loss", "drop", "params", "pruned")


def layer_mask(weight: torch.Tensor, ratio: float, granularity: str = "weight") -> torch.Tensor:
    """Keep mask (bool, the weight's shape) removing ``ratio`` of one layer: its lowest-|w|
    weights, or its lowest-L1 filters (whole output rows); ``ratio == 1`` removes everything."""
    if granularity not in GRANULARITIES:
        raise ConfigError(
            f"unknown method.granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}"
        )
    if ratio >= 1.0:
        return torch.zeros_like(weight, dtype=torch.bool)
    if granularity == "weight":
        return keep_mask(weight_scores(weight), ratio)
    keep = keep_mask(filter_scores(weight, "l1"), ratio)
    return keep.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], Any],
    ratios: Sequence[float],
    granularity: str = "weight",
    include_linear: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each prunable layer (Conv2d, and Linear if asked) pruned alone at each ratio and
    evaluated by ``evaluate(model)`` (an :class:`~prune_cli.engine.loop.EvalResult`); the layer
    is restored after every point, so ``model`` comes back unchanged.

    Returns the dense figures (``top1``, ``loss``) and one row per (layer, ratio): ``layer``,
    ``ratio``, ``top1``, ``loss``, ``drop`` (dense top-1 minus this top-1, points), ``params``
    (the layer's weight entries) and ``pruned`` (entries zeroed).
    """
    dense = evaluate(model)
    base = {"top1": round(float(dense.top1), 4), "loss": round(float(dense.loss), 6)}
    rows = []
    for name, layer in prunable_layers(model, include_linear):
        weight = layer.weight
        saved = weight.detach().clone()
        for ratio in ratios:
            keep = layer_mask(saved, float(ratio), granularity)
            weight.mul_(keep.to(weight.dtype))
            ev = evaluate(model)
            weight.copy_(saved)
            rows.append(
                {
                    "layer": name,
                    "ratio": float(ratio),
                    "top1": round(float(ev.top1), 4),
                    "loss": round(float(ev.loss), 6),
                    "drop": round(base["top1"] - float(ev.top1), 4),
                    "params": int(saved.numel()),
                    "pruned": int((~keep).sum()),
                }
            )
    return base, rows


def choose_layer_ratios(rows: Sequence[Mapping[str, Any]], max_drop: float) -> dict[str, float]:
    """For every layer of the table, the largest ratio below 1 whose top-1 drop is at most
    ``max_drop`` points (0.0 when none is); layers in table order."""
    chosen: dict[str, float] = {}
    for row in rows:
        layer, ratio = str(row["layer"]), float(row["ratio"])
        chosen.setdefault(layer, 0.0)
        if ratio < 1.0 and float(row["drop"]) <= max_drop and ratio > chosen[layer]:
            chosen[layer] = ratio
    return chosen


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``sensitivity.csv``: the rows of :func:`layer_sensitivity` (atomic write)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_plot(path: Path, rows: Sequence[Mapping[str, Any]], dense_top1: float, what: str) -> None:
    """``sensitivity.png``: top-1 against the ratio, one line per layer, the dense top-1 dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    layers: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        layers.setdefault(str(row["layer"]), []).append((float(row["ratio"]), float(row["top1"])))
    fig, ax = plt.subplots(figsize=(8, 5))
    for layer, points in layers.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=layer)
    ax.axhline(dense_top1, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel(f"fraction of the layer's {what} pruned (that layer alone, no fine-tuning)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Per-layer sensitivity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(layers) > 12 else 1, loc="lower left")
    try:
        atomic_save_figure(fig, Path(path))
    finally:
        plt.close(fig)


def write_layer_ratios(path: Path, ratios: Mapping[str, float]) -> None:
    """``layer_ratios.json``: ``{layer: ratio}``, the file ``method.layer_ratios`` reads."""
    atomic_write_text(path, json.dumps(dict(ratios), indent=2) + "\n")


def read_layer_ratios(
    path: str | Path | Mapping[str, Any], valid: Sequence[str]
) -> dict[str, float]:
    """The ``{layer: ratio}`` mapping given inline or in a JSON or YAML file, every layer one of
    ``valid`` and every ratio in [0, 1); one-line ConfigError otherwise."""
    if isinstance(path, Mapping):
        return _checked_ratios(path, valid, "the inline mapping")
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"method.layer_ratios {str(path)!r} cannot be read ({exc.strerror or exc})"
        ) from None
    try:
        import yaml

        data = yaml.safe_load(text)  # JSON is YAML too
    except Exception as exc:  # any parse error of the file: one line
        raise ConfigError(f"method.layer_ratios {str(path)!r} is not JSON or YAML: {exc}") from None
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            f"method.layer_ratios {str(path)!r} is not a mapping of layer names to ratios"
        )
    return _checked_ratios(data, valid, path.name)


def _checked_ratios(data: Mapping[str, Any], valid: Sequence[str], where: str) -> dict[str, float]:
    if not data:
        raise ConfigError("method.layer_ratios is empty; valid: a mapping of layer names to ratios")
    unknown = [str(k) for k in data if str(k) not in set(valid)]
    if unknown:
        shown = ", ".join(valid[:8]) + (f", ... ({len(valid)} layers)" if len(valid) > 8 else "")
        raise ConfigError(
            f"method.layer_ratios: unknown layer {unknown[0]!r} in {where}; valid: {shown}"
        )
    out = {}
    for key, value in data.items():
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            ratio = -1.0
        if isinstance(value, bool) or not 0.0 <= ratio < 1.0:
            raise ConfigError(
                f"method.layer_ratios: layer {key!r} ratio {value!r} is invalid; "
                "valid: 0 <= ratio < 1"
            )
        out[str(key)] = ratio
    return out
