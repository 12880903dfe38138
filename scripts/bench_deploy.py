"""Latency where models are deployed: ONNX Runtime vs PyTorch eager, pruned vs dense.

For each model: ``l1_filter``'s channel removal (layerwise L1 filter norm,
``groups=coupled``, :func:`prune_cli.pruning.channels.channel_prune`) at ``--ratio`` on a
randomly initialised model (latency depends on the kept widths, not on the weights), then

- ``torch_speedup_bN`` = dense / pruned latency at batch N in PyTorch eager
  (:func:`prune_cli.metrics.latency.compare_latency`, dense and pruned interleaved),
- ``ort_speedup_bN``   = the same for both models exported to ONNX and run in ONNX Runtime
  (:func:`prune_cli.metrics.deploy.onnxruntime_latency`: CPU execution provider, or CUDA with
  ``--device cuda`` and onnxruntime-gpu; the same thread count as PyTorch),
- ``ort_vs_torch_bN``  = PyTorch eager latency / ONNX Runtime latency of the pruned model
  (above 1: ONNX Runtime is faster),
- ``mac_x`` = dense MACs / pruned MACs (one image).

The two backends are timed one after the other for each model (each interleaves its dense and
pruned model); compare speedups, which are ratios measured side by side, rather than raw ms
across runs.

    OMP_NUM_THREADS=2 python scripts/bench_deploy.py            # ResNet-56, MobileNetV2, VGG-16
    python scripts/bench_deploy.py --models resnet56 --batch-sizes 1 256 --repeats 20
"""

from __future__ import annotations

import argparse
import time

import torch

from prune_cli.metrics.counting import count_macs
from prune_cli.metrics.deploy import onnxruntime_latency
from prune_cli.metrics.latency import compare_latency
from prune_cli.models import build_model
from prune_cli.pruning.channels import channel_prune
from prune_cli.pruning.importance import FilterNorm

MODELS = ("resnet56", "mobilenet_v2", "vgg16")


def _row(name: str, ratio: float, args: argparse.Namespace) -> dict[str, float | str]:
    size = (3, 32, 32)
    torch.manual_seed(0)
    dense = build_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    pruned = channel_prune(
        dense, FilterNorm(p=1), ratio, input_size=size, scope="layerwise", grouping="coupled"
    ).model.eval()
    models = {"dense": dense, "pruned": pruned}
    timing = {"warmup": args.warmup, "repeats": args.repeats}
    eager = compare_latency(models, size, args.batch_sizes, args.device, **timing)
    ort = onnxruntime_latency(models, size, args.batch_sizes, args.device, **timing)
    if "skipped" in ort:
        raise SystemExit(f"ONNX Runtime skipped: {ort['skipped']}")
    row: dict[str, float | str] = {
        "model": name,
        "mac_x": count_macs(dense, size).dense / count_macs(pruned, size).dense,
        "provider": ort["provider"],
    }
    for b in args.batch_sizes:
        k = f"b{b}"
        row[f"torch_ms_{k}"] = eager["pruned"][k]["latency_ms"]
        row[f"ort_ms_{k}"] = ort["pruned"][k]["latency_ms"]
        row[f"torch_speedup_{k}"] = (
            eager["dense"][k]["latency_ms"] / eager["pruned"][k]["latency_ms"]
        )
        row[f"ort_speedup_{k}"] = ort["speedup"][k]
        row[f"ort_vs_torch_{k}"] = row[f"torch_ms_{k}"] / row[f"ort_ms_{k}"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"channel ratio {args.ratio}, l1_filter (layerwise, groups=coupled)"
    )
    keys = ["mac_x"]
    for b in args.batch_sizes:
        keys += [f"torch_ms_b{b}", f"ort_ms_b{b}", f"torch_speedup_b{b}", f"ort_speedup_b{b}"]
        keys += [f"ort_vs_torch_b{b}"]
    print("| model | provider | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name in args.models:
        tic = time.perf_counter()
        row = _row(name, args.ratio, args)
        cells = [f"{row[k]:.2f}" for k in keys]
        print(f"| {name} | {row['provider']} | " + " | ".join(cells) + " |", flush=True)
        print(f"  ({time.perf_counter() - tic:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
