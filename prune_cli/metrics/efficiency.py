"""Speedup efficiency: how much of a model's MAC reduction its measured latency delivers.

For a dense model and the pruned model made from it, at batch size b on one backend::

    speedup(b)     = latency_dense(b) / latency_pruned(b)     (measured, median ms)
    mac_reduction  = MACs_dense / MACs_pruned                 (one input, dense counts)
    eta(b)         = speedup(b) / mac_reduction

``eta = 1``: the latency falls exactly as fast as the MACs; below 1 the pruned model runs slower
than its size says (memory-bound layers, channel counts off the kernels' fast paths, fixed
costs), above 1 faster (e.g. the dense model's activations spilled out of a cache). The MACs are
the *structure's* counts (``count_macs(...).dense``: every weight of the pruned model, zero or
not): a run that only zeroes weights keeps its dense structure and its latency, so its
``mac_reduction`` is 1 and its ``eta`` is its speedup (about 1).

:func:`speedup_efficiency` is the one place where eta is computed: the pipeline records it in
``metrics.json`` (``latency.speedup_efficiency`` for PyTorch eager,
``latency.onnxruntime.speedup_efficiency`` for ONNX Runtime, with ``mac_reduction`` beside it),
the report shows it (``eta_bN``, ``ort_eta_bN``), and the benchmark scripts print it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

#: Digits kept in metrics.json (latencies are medians of a shared machine: 4 digits are plenty).
DIGITS = 4


def speedup_efficiency(
    dense_latency: Mapping[str, Mapping[str, Any]],
    final_latency: Mapping[str, Mapping[str, Any]],
    dense_macs: float,
    final_macs: float,
) -> dict[str, float]:
    """eta per batch size: ``{"b<N>": (dense ms / final ms) / (dense MACs / final MACs)}``.

    ``dense_latency`` / ``final_latency`` are latency figures keyed ``"b<N>"`` with a
    ``latency_ms`` each (:func:`~prune_cli.metrics.latency.compare_latency`'s, or ONNX
    Runtime's); only batch sizes measured for both models are reported. Raises ``ValueError``
    for MAC counts or latencies that are not positive.
    """
    if not (dense_macs > 0 and final_macs > 0):
        raise ValueError(f"MAC counts must be positive, got {dense_macs} and {final_macs}")
    reduction = float(dense_macs) / float(final_macs)
    out = {}
    for key, after in final_latency.items():
        if key not in dense_latency:
            continue
        before_ms, after_ms = (float(dense_latency[key]["latency_ms"]), float(after["latency_ms"]))
        if not (before_ms > 0 and after_ms > 0):
            raise ValueError(f"latencies must be positive, got {before_ms} and {after_ms} ({key})")
        out[key] = round(before_ms / after_ms / reduction, DIGITS)
    return out


def add_speedup_efficiency(
    latency: MutableMapping[str, Any], dense_macs: float, final_macs: float
) -> None:
    """Add ``mac_reduction`` and ``speedup_efficiency`` to a run's ``latency`` block, in place:
    to the PyTorch eager figures (``dense_reference`` / ``final`` at its top level) and to
    ``latency["onnxruntime"]`` when ONNX Runtime measured both models (not when skipped)."""
    reduction = round(float(dense_macs) / float(final_macs), DIGITS) if final_macs else None
    for block in (latency, latency.get("onnxruntime")):
        if not isinstance(block, MutableMapping):
            continue
        if "dense_reference" in block and "final" in block:
            block["mac_reduction"] = reduction
            block["speedup_efficiency"] = speedup_efficiency(
                block["dense_reference"], block["final"], dense_macs, final_macs
            )
