"""Latency where models are deployed: the exported ONNX model in ONNX Runtime.

PyTorch eager (:mod:`prune_cli.metrics.latency`) is where a model is trained, rarely where it
is served; a channel-pruned model that is barely faster in eager mode can be much faster in a
runtime that fuses and plans the whole graph, and the other way round. So the run also measures
the ``dense_reference`` and ``final`` models exported to ONNX
(:func:`prune_cli.export.onnx_bytes`) in ONNX Runtime
(``metrics.latency.backends: [torch, onnxruntime]``):

- execution provider: CPU, or CUDA when the run is on a GPU and ONNX Runtime has the CUDA
  provider (the ``onnxruntime-gpu`` package); on a GPU without it the CPU provider is used,
  logged and recorded (``provider``, ``note``);
- CPU threads: ONNX Runtime's intra-op pool gets PyTorch's thread count, so both backends
  compete with the same cores;
- timing as :func:`~prune_cli.metrics.latency.compare_latency`: per batch size, ``warmup``
  untimed runs, then ``repeats`` rounds timing one run of every model in turn (interleaved,
  so that a slow phase of a shared machine slows both alike); the median in ms. On CUDA the
  input lives on the device (I/O binding) and each run ends with the stream synchronised.

:func:`onnxruntime_latency` returns ``{"provider", "threads", "version", "dense_reference":
{"b1": {"batch", "latency_ms", "throughput"}, ...}, "final": {...}, "speedup": {"b1": ...}}``
(speedup: the first model's latency / the last one's); when
the runtime is missing or a model does not export, ``{"skipped": "<reason>"}`` (logged): the run
itself never fails on a latency measurement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prune_cli.errors import one_line
from prune_cli.export import onnx_bytes
from prune_cli.metrics.latency import STATISTICS

log = logging.getLogger("prune_cli")

#: ``metrics.latency.backends``: PyTorch eager and ONNX Runtime.
LATENCY_BACKENDS = ("torch", "onnxruntime")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def choose_provider(device: torch.device | str, available: Sequence[str]) -> tuple[str, str | None]:
    """``(execution provider, note)`` for a run on ``device`` given ONNX Runtime's
    ``available`` providers; the note says why a GPU run is measured on the CPU provider."""
    if torch.device(device).type != "cuda":
        return CPU_PROVIDER, None
    if CUDA_PROVIDER in available:
        return CUDA_PROVIDER, None
    return CPU_PROVIDER, (
        "the run is on CUDA but ONNX Runtime has no CUDAExecutionProvider "
        "(pip install onnxruntime-gpu): measured with the CPU provider"
    )


def _session(model_bytes: bytes, provider: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers otherwise
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    return ort.InferenceSession(model_bytes, sess_options=options, providers=providers)


def _runner(session: Any, x: np.ndarray, provider: str) -> Callable[[], Any]:
    """One inference of ``x``; on CUDA with the input bound on the device (no copy timed)."""
    if provider == CPU_PROVIDER:
        return lambda: session.run(None, {"input": x})
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output("logits", "cuda")
    return lambda: session.run_with_iobinding(binding)


def time_interleaved(
    runners: Mapping[str, Callable[[], Any]], warmup: int, repeats: int, statistic: str = "median"
) -> dict[str, float]:
    """Median (or ``statistic``, :data:`~prune_cli.metrics.latency.STATISTICS`) seconds of one
    call of every runner, measured in interleaved rounds."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: STATISTICS[statistic](ts) for name, ts in times.items()}


def _onnx_of(
    name: str, model: nn.Module, input_size: Sequence[int], exported: Mapping[str, bytes]
) -> bytes:
    return exported[name] if name in exported else onnx_bytes(model, input_size)


def onnxruntime_latency(
    models: Mapping[str, nn.Module],
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 64),
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    exported: Mapping[str, bytes] | None = None,
    statistic: str = "median",
) -> dict[str, Any]:
    """Latency of every model exported to ONNX, in ONNX Runtime (module docstring). With two or
    more ``models``, ``speedup`` is the first one's latency / the last one's (the run passes
    ``dense_reference`` then ``final``). ``exported[name]``: that model's ONNX bytes
    (:func:`~prune_cli.export.onnx_bytes`), made already (the run writes them as its export)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return _skipped("onnxruntime is not installed (pip install onnxruntime)")
    provider, note = choose_provider(device, ort.get_available_providers())
    if note:
        log.warning("latency: %s", note)
    threads = int(threads or torch.get_num_threads())
    try:
        sessions = {
            name: _session(_onnx_of(name, model, input_size, exported or {}), provider, threads)
            for name, model in models.items()
        }
    except Exception as exc:  # a model the exporter or the runtime cannot take
        return _skipped(f"ONNX export or session failed: {type(exc).__name__}: {one_line(exc)}")
    result: dict[str, Any] = {
        "provider": provider,
        "threads": threads,
        "version": ort.__version__,
        **({"note": note} if note else {}),
    }
    for name in sessions:
        result[name] = {}
    for b in batch_sizes:
        x = np.random.default_rng(0).standard_normal((b, *input_size), dtype=np.float32)
        runners = {name: _runner(s, x, provider) for name, s in sessions.items()}
        for name, seconds in time_interleaved(runners, warmup, repeats, statistic).items():
            result[name][f"b{b}"] = {
                "batch": b,
                "latency_ms": seconds * 1e3,
                "throughput": b / seconds,
            }
    if len(sessions) >= 2:
        names = list(sessions)
        before, after = result[names[0]], result[names[-1]]
        result["speedup"] = {
            k: round(before[k]["latency_ms"] / after[k]["latency_ms"], 4) for k in after
        }
    return result


def _skipped(reason: str) -> dict[str, Any]:
    log.warning("latency: onnxruntime skipped: %s", reason)
    return {"skipped": reason}
