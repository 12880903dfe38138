"""Does a pretrained dense model score what its publisher says? (``weights.top1``)

A wrong input normalization or a wrong model option (a zero-padding checkpoint in a projection
shortcut model) is the classic silent error of starting from published weights: the weights
load, the run completes, and every pruned figure is measured against a crippled dense model.
The published figure is the check: :func:`check_expected_accuracy` compares the dense model's
test top-1 with it and says what the gap means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_expected_accuracy(
    weights: Mapping[str, Any], measured_top1: float, test_images: int
) -> tuple[dict[str, Any], str | None]:
    """``(record, warning)`` for the dense model loaded from ``weights`` (``weights.*``: ``top1``,
    ``test_images``, ``tolerance``, ``name``), which scored ``measured_top1`` (percent) on a
    test split of ``test_images`` images.

    The warning (None when all is well) is given when the gap exceeds ``tolerance`` points, or
    when the test split is not the one the figure was published for (then the figures cannot be
    compared and the record says so, with ``comparable: false``).
    """
    expected = float(weights["top1"])
    tolerance = float(weights.get("tolerance", 0.5))
    gap = round(measured_top1 - expected, 4)
    name = weights.get("name") or "the pretrained weights"
    record: dict[str, Any] = {
        "name": weights.get("name"),
        "expected_top1": expected,
        "measured_top1": round(measured_top1, 4),
        "gap": gap,
        "tolerance": tolerance,
        "test_images": test_images,
        "source": weights.get("source"),
    }
    published_on = weights.get("test_images")
    if published_on is not None and int(published_on) != int(test_images):
        record["comparable"] = False
        return record, (
            f"{name}: the published top-1 {expected:.2f}% is for {int(published_on)} test images, "
            f"this test split has {test_images}: measured {measured_top1:.2f}%, not checked"
        )
    record["comparable"] = True
    record["within_tolerance"] = abs(gap) <= tolerance
    if abs(gap) <= tolerance:
        return record, None
    return record, (
        f"{name}: the dense model scores {measured_top1:.2f}% top-1, {gap:+.2f} points from the "
        f"published {expected:.2f}% (tolerance {tolerance:g}); check the input normalization "
        "(dataset.mean / dataset.std) and the model's options (e.g. model.shortcut) against "
        "the checkpoint's"
    )
