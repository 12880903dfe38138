"""Inference latency and throughput on one device.

For each batch size b: ``warmup`` untimed forwards, then ``repeats`` timed forwards of a random
``(b, *input_size)`` batch, in eval mode under ``torch.inference_mode``; on CUDA the device is
synchronised before starting and after each forward, so the time covers the kernels, not just
their launch. ``latency_ms`` is the median time of one forward of the whole batch, in
milliseconds; ``throughput`` = b / median seconds, in images per second. The median resists the
outliers of a shared machine.

The model is measured on a deep copy, so the caller's model keeps its device, memory format and
mode. With ``compile=True`` the copy is compiled with ``torch.compile`` (default inductor
backend) and at least one untimed forward per batch size runs first, so compilation is never
timed. ``precision`` (``metrics.precision``: fp32 by default, so that speedups stay comparable
with published ones) runs the forwards under that autocast (:mod:`prune_cli.engine.precision`).

:func:`compare_latency` measures several models *interleaved*: each repeat times one forward of
every model in turn, so a slow phase of a shared machine (another job, frequency scaling) slows
all of them alike instead of biasing the ratio between the one measured before and the one
measured after. Speedups (dense vs pruned) come from it.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prune_cli.engine.precision import resolve_precision


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 64),
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    channels_last: bool = False,
    compile: bool = False,
    precision: str = "fp32",
) -> dict[str, dict[str, float]]:
    """Latency per batch size, keyed ``"b<size>"``: ``{"batch", "latency_ms", "throughput"}``.

    ``channels_last`` converts the model copy and the inputs to NHWC memory format;
    ``compile`` measures the copy compiled with ``torch.compile``; ``precision``: the autocast
    of the forwards (fp32: none).
    """
    models = {"model": model}
    return compare_latency(
        models, input_size, batch_sizes, device, warmup, repeats, channels_last, compile,
        precision=precision,
    )["model"]  # fmt: skip


#: How the repeats of one forward are summarised: the median (the run's figures), or the
#: minimum (for benchmark scripts, ``--stat min``: on a loaded machine a forward of a
#: millisecond or two is often preempted, which inflates a median; on the 2-core machine of
#: issue 26, with the cores oversubscribed, the minimum of 21 rounds was no steadier).
STATISTICS = {"median": statistics.median, "min": min}


def compare_latency(
    models: Mapping[str, nn.Module],
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 64),
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    channels_last: bool = False,
    compile: bool = False,
    statistic: str = "median",
    precision: str = "fp32",
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`measure_latency` of every model, measured interleaved (module docstring):
    ``{name: {"b<size>": {"batch", "latency_ms", "throughput"}}}``; ``statistic``: a key of
    :data:`STATISTICS`; ``precision``: the forwards' autocast (``auto``/``bf16``/``fp16``:
    :func:`~prune_cli.engine.precision.resolve_precision` for ``device``)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of: {list(STATISTICS)}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    device = torch.device(device)
    autocast = resolve_precision(precision, device).autocast
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    nets = {
        name: copy.deepcopy(m).to(device=device, memory_format=memory_format).eval()
        for name, m in models.items()
    }
    if compile:
        nets = {name: torch.compile(net) for name, net in nets.items()}
        warmup = max(warmup, 1)  # the first call compiles: never time it
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in nets}
    for b in batch_sizes:
        x = torch.randn((b, *input_size), device=device).to(memory_format=memory_format)
        times: dict[str, list[float]] = {name: [] for name in nets}
        with torch.inference_mode(), autocast():
            for net in nets.values():
                for _ in range(warmup):
                    net(x)
            for _ in range(repeats):
                for name, net in nets.items():
                    times[name].append(_forward_seconds(net, x, device))
        for name, ts in times.items():
            seconds = STATISTICS[statistic](ts)
            results[name][f"b{b}"] = {
                "batch": b,
                "latency_ms": seconds * 1e3,
                "throughput": b / seconds,
            }
    return results


def _forward_seconds(net: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    net(x)
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels: CUDA and MPS run asynchronously to the Python thread."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def latency_setting(device: torch.device | str) -> dict[str, object]:
    """What else a latency figure depends on, to tell stored figures apart: the device's name
    (CPU model or GPU), the host, the intra-op threads and the PyTorch version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:  # the CPU model: platform.processor() is often just the architecture
            with open("/proc/cpuinfo") as f:
                name = next(
                    (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
                )
        except OSError:
            pass
    return {
        "device_name": name,
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
    }
