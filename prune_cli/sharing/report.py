"""What a shared model reports after training (docs/methods.md §9): parameters against the unshared
model and the docs/methods.md §9.3 formula, MACs, and the materialisation check.

Materialising folds the templates into plain conv weights (:func:`prune_cli.sharing.materialize`);
the check requires the materialised model to have exactly the unshared model's parameter count
and, on a fixed random batch, the shared model's logits. Batch-1 latency of both shows what
regenerating the weights at every forward costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.metrics.latency import compare_latency
from prune_cli.sharing.apply import BankPlan, SharingSummary, materialize, predicted_params
from prune_cli.sharing.setting import AUTO, TemplateSetting

MACS_NOTE = (
    "sharing changes storage, not compute: every layer still convolves with a full-size "
    "(generated) weight, so MACs equal the unshared model's"
)


def sharing_report(
    model: nn.Module,
    summary: SharingSummary,
    plans: Sequence[BankPlan],
    setting: TemplateSetting,
    *,
    input_size: tuple[int, int, int],
    device: torch.device,
    seed: int,
    latency: bool = True,
) -> dict[str, Any]:
    """The figures of a shared ``model`` (after :meth:`TemplateSetting.share` gave ``summary``);
    ``latency=False`` (``metrics.latency.enabled=false``) leaves out the latency measurement.

    Raises RuntimeError when materialising changes the architecture (parameter count) or the
    logits: sharing must change how weights are stored, nothing else.
    """
    params_shared = count_params(model)[0]
    predicted = predicted_params(
        summary.params_unshared, plans, summary.templates, setting.coefficients
    )
    plain, materialized = materialize(model)
    macs_shared = count_macs(model, input_size).dense
    macs_plain = count_macs(plain, input_size).dense
    report: dict[str, Any] = {
        "templates_per_bank": summary.templates,
        "layers_per_bank": summary.layers,
        "coefficients": setting.coefficients,
        "templates_per_stage": AUTO if setting.auto else setting.templates,
        "target_ratio": setting.ratio if setting.auto else None,
        "params_unshared": summary.params_unshared,
        "params_shared": params_shared,
        "params_predicted": predicted,
        "param_reduction": round(1.0 - params_shared / summary.params_unshared, 6),
        "macs_shared": macs_shared,
        "macs_unshared": macs_plain,
        "macs_note": MACS_NOTE,
        "materialize": {**materialized, **_logits_check(model, plain, input_size, device, seed)},
        "latency_b1_ms": _latency_b1(model, plain, input_size, device) if latency else None,
    }
    if materialized["runtime_params"] != summary.params_unshared:
        raise RuntimeError(
            f"materialised model has {materialized['runtime_params']} parameters, the unshared "
            f"model {summary.params_unshared}: the sharing changed the architecture"
        )
    return report


def _logits_check(
    shared: nn.Module,
    plain: nn.Module,
    input_size: tuple[int, int, int],
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Compare the logits of the shared and materialised models on a fixed random batch."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((4, *input_size), generator=generator).to(device)
    modes = shared.training, plain.training
    shared.eval()
    plain.eval()
    try:
        with torch.no_grad():
            a, b = shared(x), plain(x)
    finally:
        shared.train(modes[0])
        plain.train(modes[1])
    diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    if diff > 1e-5 * max(scale, 1.0):
        raise RuntimeError(f"materialised logits differ from the shared model's by {diff:.3g}")
    return {"logits_equal": bool(torch.equal(a, b)), "logits_max_abs_diff": diff}


def _latency_b1(
    shared: nn.Module, plain: nn.Module, input_size: tuple[int, int, int], device: torch.device
) -> dict[str, float]:
    """Batch-1 latency (median ms) of the shared model (weights regenerated at every forward) and
    of its materialised copy (plain convs): the runtime cost of regenerating the weights."""
    kwargs = {"batch_sizes": [1], "device": device, "warmup": 2, "repeats": 10}
    both = compare_latency({"shared": shared, "materialized": plain}, input_size, **kwargs)
    return {name: round(lat["b1"]["latency_ms"], 4) for name, lat in both.items()}
