"""The dense reference against the final model: their latency in one backend, and the speedup.

:func:`dense_vs_final` is the one comparison for both backends a run measures
(``metrics.latency.backends``): ``torch`` (PyTorch eager, :mod:`.latency`) and ``onnxruntime``
(the exported ONNX model in ONNX Runtime, :mod:`.deploy`). The dense model's figures are measured
interleaved with the final model's (``metrics.latency.dense=interleaved``) or, by default, once
per trained checkpoint and reused (``reuse``: through the caller's ``cached``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prune_cli.engine.precision import resolve_precision
from prune_cli.metrics.deploy import LATENCY_BACKENDS, onnxruntime_latency
from prune_cli.metrics.efficiency import add_speedup_efficiency
from prune_cli.metrics.latency import compare_latency, latency_setting, measure_latency

#: ``cached(key, compute) -> (figures, source)``: the dense model's figures for ``key``, from
#: ``compute()`` or stored before; ``source`` is ``cached`` or ``measured``.
Cached = Callable[[Mapping[str, Any], Callable[[], Mapping[str, Any]]], tuple[dict[str, Any], str]]


def dense_vs_final(
    backend: str,
    dense: nn.Module,
    final: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int],
    device: torch.device,
    warmup: int,
    repeats: int,
    compile: bool,
    interleaved: bool,
    cached: Cached,
    exported: Mapping[str, bytes] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Latency of ``dense`` (the dense reference) and ``final`` in ``backend``, per batch size,
    with ``speedup`` (dense latency / final latency), ``dense_source`` (``interleaved``,
    ``cached`` or ``measured``) and ``precision`` (the one the forwards ran in: ``precision``
    resolved for ``device`` in PyTorch; fp32 in ONNX Runtime, whose exported graph is fp32).
    ``compile`` (torch only) measures compiled copies;
    ``exported`` (onnxruntime only): ONNX bytes of the final model made already. An ONNX
    Runtime that cannot measure (not installed, a model it cannot take) gives
    ``{"skipped": reason}``."""
    if backend not in LATENCY_BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {LATENCY_BACKENDS}")
    common = {"batch_sizes": list(batch_sizes), "device": device, "warmup": warmup}
    common["repeats"] = repeats
    used = resolve_precision(precision, device).name if backend == "torch" else "fp32"
    if backend == "torch":
        kwargs = {**common, "compile": compile, "precision": used}
        key = {"kind": "latency", **latency_setting(device), **kwargs, "device": str(device)}
        if used == "fp32":  # the key of the figures stored before precision was a setting
            del key["precision"]

        def measure(models: Mapping[str, nn.Module]) -> dict[str, Any]:
            return compare_latency(models, input_size, **kwargs)

        def dense_alone() -> dict[str, Any]:  # what the cache keeps: the dense table itself
            return measure_latency(dense, input_size, **kwargs)

        def dense_table(stored: dict[str, Any]) -> dict[str, Any]:
            return stored

    else:
        args = {"input_size": input_size, **common}
        key = {"kind": "onnxruntime", **latency_setting(device), **args, "device": str(device)}
        key["input_size"] = list(input_size)

        def measure(models: Mapping[str, nn.Module]) -> dict[str, Any]:
            return onnxruntime_latency(models, **args, exported=exported)

        def dense_alone() -> dict[str, Any]:
            return onnxruntime_latency({"dense_reference": dense}, **args)

        def dense_table(stored: dict[str, Any]) -> dict[str, Any]:
            return stored["dense_reference"]

    if interleaved:  # both now, each repeat timing both models in turn
        result, source = measure({"dense_reference": dense, "final": final}), "interleaved"
        if "skipped" in result:
            return {**result, "dense_source": source, "precision": used}
    else:  # the dense latency once per trained checkpoint and setting
        stored, source = cached(key, dense_alone)
        result = measure({"final": final})
        if "skipped" in stored or "skipped" in result:
            return result if "skipped" in result else stored
        result["dense_reference"] = dense_table(stored)
    before, after = result["dense_reference"], result["final"]
    result["speedup"] = {
        k: round(before[k]["latency_ms"] / after[k]["latency_ms"], 4) for k in after
    }
    result["dense_source"] = source
    result["precision"] = used
    return result


def run_latency(
    options: Any,
    dense: nn.Module,
    final: nn.Module,
    *,
    input_size: tuple[int, int, int],
    device: torch.device,
    cached: Cached,
    final_onnx: Callable[[], bytes | None],
    dense_macs: float,
    final_macs: float,
    precision: str = "fp32",
) -> dict[str, Any]:
    """A run's ``latency`` block: :func:`dense_vs_final` in PyTorch eager at its top level and
    in ONNX Runtime under ``onnxruntime``, as ``options`` (``metrics.latency``: batch sizes,
    warmup, repeats, compile, dense, backends) ask, with the speedup efficiency (eta) of each;
    PyTorch's forwards in ``precision`` (``metrics.precision``).
    ``final_onnx()``: the final model's ONNX bytes, made once (None when it does not export)."""
    setting = {
        "input_size": input_size,
        "batch_sizes": options.batch_sizes,
        "device": device,
        "warmup": options.warmup,
        "repeats": options.repeats,
        "compile": options.compile,
        "interleaved": options.dense == "interleaved",
        "cached": cached,
    }
    latency: dict[str, Any] = {}
    if "torch" in options.backends:
        latency = dense_vs_final("torch", dense, final, **setting, precision=precision)
    if "onnxruntime" in options.backends:  # the deployed runtime
        onnx = final_onnx()
        exported = {"final": onnx} if onnx is not None else {}
        latency["onnxruntime"] = dense_vs_final(
            "onnxruntime", dense, final, **setting, exported=exported
        )
    add_speedup_efficiency(latency, dense_macs, final_macs)  # eta per backend and batch
    return latency
