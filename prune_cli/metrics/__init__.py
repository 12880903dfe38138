"""Metrics: parameters, MACs, sparsity (:mod:`.counting`), NetScore (:mod:`.netscore`),
latency (:mod:`.latency`, :mod:`.deploy` for ONNX Runtime), speedup efficiency
(:mod:`.efficiency`) and single-layer latency tables (:mod:`.layer_latency`). Definitions are in
each module's docstring."""

from prune_cli.metrics.counting import MacCount, count_macs, count_params, prunable_layers, sparsity
from prune_cli.metrics.latency import compare_latency, measure_latency
from prune_cli.metrics.netscore import netscore, unit_label

__all__ = [
    "MacCount",
    "compare_latency",
    "count_macs",
    "count_params",
    "measure_latency",
    "netscore",
    "prunable_layers",
    "sparsity",
    "unit_label",
]
