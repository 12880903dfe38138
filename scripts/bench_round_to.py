"""Which channel counts keep convolutions on their fast paths? Latency vs channel count.

For each case (a convolution kind at a feature-map size and batch size) every channel count
``c`` in a range gets one convolution with ``c`` input and ``c`` output channels (a depthwise
one: ``c`` channels), timed in interleaved rounds (every round times one forward of each
``c`` in turn, so that a slow phase of a shared machine slows all of them alike; the median per
``c``). Backends:

- ``torch``: PyTorch eager, fp32, NCHW (oneDNN/MKL-DNN convolutions on CPU);
- ``torch_cl``: the same in channels-last (NHWC) memory format;
- ``torch_bf16``: the module and input in bfloat16 (oneDNN's bf16 kernels: AVX512-BF16/AMX);
- ``onnxruntime``: the convolution exported to ONNX, ONNX Runtime's CPU provider.

Reported per case, with ``p(c)`` = time per MAC and its local trend (the running median of
``p`` over ``c +- 8``, since small layers are less efficient per MAC):

- ``rel_x16``, ``rel_x8``, ``rel_x4``, ``rel_other``: the mean of ``p(c) / trend(c)`` over the
  counts that are multiples of 16, of 8 (not 16), of 4 (not 8), and the rest; a fast path at
  multiples of N shows as a dip (below 1) at those residues;
- ``round_up_N``: the mean over ``c`` of ``t(ceil(c/N)*N) / t(c)``; below 1: rounding the kept
  count *up* to a multiple of N makes the layer faster despite the extra channels;
- ``eta_gain_N``: the mean of ``p(c) / p(ceil(c/N)*N)``; above 1: the rounded layer runs more
  efficiently per MAC, which is what the speedup efficiency (speedup / MAC reduction) gains.

Single convolutions only show the kernels; whether a backend's graph-level choices (ONNX
Runtime's blocked NCHWc layout, which needs channel counts in multiples of its block) follow the
same steps is measured on whole models (``scripts/bench_deploy.py --round-to``).

    OMP_NUM_THREADS=1 python scripts/bench_round_to.py                      # the default cases
    python scripts/bench_round_to.py --threads 2 --backends torch onnxruntime --cases 3x3:8:64
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

#: kind:feature size:batch:first channel count:last channel count
DEFAULT_CASES = (
    "3x3:32:64:8:40",  # CIFAR ResNet stage 1 (16 channels dense)
    "3x3:8:64:32:72",  # CIFAR ResNet stage 3 (64 channels dense)
    "3x3:32:1:8:40",
    "3x3:8:1:32:72",
    "1x1:8:64:32:72",  # bottleneck / inverted-residual 1x1 convs
    "dw3x3:16:64:32:72",  # MobileNetV2's depthwise convs
    "3x3:56:1:32:72",  # ImageNet ResNet stage 1
    "3x3:14:1:224:264",  # ImageNet ResNet stage 3
)


def conv_of(kind: str, c: int) -> nn.Module:
    if kind == "3x3":
        return nn.Conv2d(c, c, 3, padding=1, bias=False)
    if kind == "1x1":
        return nn.Conv2d(c, c, 1, bias=False)
    if kind == "dw3x3":
        return nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
    raise SystemExit(f"unknown kind {kind!r}; choose one of: 3x3, 1x1, dw3x3")


def macs_of(kind: str, c: int, size: int) -> int:
    per_pixel = {"3x3": 9 * c * c, "1x1": c * c, "dw3x3": 9 * c}[kind]
    return per_pixel * size * size


def runner(backend: str, conv: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    conv = conv.eval()
    if backend == "torch":
        return lambda: conv(x)
    if backend == "torch_cl":
        conv_cl = conv.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        return lambda: conv_cl(x_cl)
    if backend == "torch_bf16":
        conv_bf = conv.to(torch.bfloat16)
        x_bf = x.to(torch.bfloat16)
        return lambda: conv_bf(x_bf)
    if backend == "onnxruntime":
        import onnxruntime as ort

        from prune_cli.export import onnx_bytes

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            onnx_bytes(conv, tuple(x.shape[1:])), options, providers=["CPUExecutionProvider"]
        )
        data = x.numpy()
        return lambda: session.run(None, {"input": data})
    raise SystemExit(
        f"unknown backend {backend!r}; choose one of: torch, torch_cl, torch_bf16, onnxruntime"
    )


def time_case(
    kind: str, size: int, batch: int, channels: list[int], backend: str, args: argparse.Namespace
) -> dict[int, float]:
    """Median seconds of one forward for every channel count, interleaved rounds."""
    torch.manual_seed(0)
    runs = {}
    for c in channels:
        x = torch.randn(batch, c, size, size)
        runs[c] = runner(backend, conv_of(kind, c), x, args.threads)
    times: dict[int, list[float]] = {c: [] for c in channels}
    with torch.inference_mode():
        for run in runs.values():
            for _ in range(args.warmup):
                run()
        for _ in range(args.repeats):
            for c, run in runs.items():
                start = time.perf_counter()
                run()
                times[c].append(time.perf_counter() - start)
    return {c: statistics.median(ts) for c, ts in times.items()}


def summarise(kind: str, size: int, t: dict[int, float]) -> dict[str, float]:
    """Per-residue time per MAC against the local trend, and the effect of rounding up."""
    per_mac = {c: t[c] / macs_of(kind, c, size) for c in t}
    cs = sorted(t)
    # The local trend: the running median of the time per MAC over +-8 channel counts (small
    # layers are less efficient per MAC; a global fit would bias the residue classes).
    trend = {c: statistics.median(per_mac[d] for d in cs if abs(d - c) <= 8) for c in cs}
    rel = {c: per_mac[c] / trend[c] for c in cs}
    out: dict[str, float] = {}
    for name, test in (
        ("x16", lambda c: c % 16 == 0),
        ("x8", lambda c: c % 8 == 0 and c % 16),
        ("x4", lambda c: c % 4 == 0 and c % 8),
        ("other", lambda c: c % 4),
    ):
        vals = [rel[c] for c in cs if test(c)]
        out[f"rel_{name}"] = float(np.mean(vals)) if vals else math.nan
    top = max(cs)
    for n in (4, 8, 16):
        up = {c: math.ceil(c / n) * n for c in cs if math.ceil(c / n) * n <= top}
        out[f"round_up_{n}"] = float(np.mean([t[u] / t[c] for c, u in up.items()]))
        out[f"eta_gain_{n}"] = float(np.mean([per_mac[c] / per_mac[u] for c, u in up.items()]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--detail", action="store_true", help="print every channel count")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), repeats {args.repeats}")
    keys = ["rel_x16", "rel_x8", "rel_x4", "rel_other"]
    keys += [f"{k}_{n}" for k in ("round_up", "eta_gain") for n in (4, 8, 16)]
    print("| case | backend | " + " | ".join(keys) + " | s |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for case in args.cases:
        kind, size, batch, lo, hi = case.split(":")
        channels = list(range(int(lo), int(hi) + 1))
        for backend in args.backends:
            tic = time.perf_counter()
            t = time_case(kind, int(size), int(batch), channels, backend, args)
            s = summarise(kind, int(size), t)
            cells = " | ".join(f"{s[k]:.3f}" for k in keys)
            label = f"{kind} {size}x{size} b{batch} c{lo}-{hi}"
            print(f"| {label} | {backend} | {cells} | {time.perf_counter() - tic:.0f} |")
            if args.detail:
                base = statistics.median(t[c] / macs_of(kind, c, int(size)) for c in t)
                print(
                    "    "
                    + " ".join(
                        f"{c}:{t[c] / macs_of(kind, c, int(size)) / base:.2f}" for c in channels
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
