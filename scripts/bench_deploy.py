"""Pruned models that run as fast as they are small: speedup efficiency at a MAC budget.

For each model, the same randomly initialised dense network (BN statistics randomised, as in
``scripts/bench_vs_torch_pruning.py``; latency depends on the kept widths, not on the weights) is
pruned by the ``l1_filter`` method itself (:class:`prune_cli.methods.l1_filter.L1FilterPruning`,
``groups=coupled``) to ``--macs-reduction`` (dense MACs / pruned MACs, default 2) in every
``--variants`` setting, written ``allocation:round_to[:blocks]`` (``uniform:1`` is today's default,
``latency:16`` the latency-aware allocation with widths in multiples of 16, ``latency:16:13``
the same after removing 13 residual blocks whole: ``method.remove_blocks``). Then, per backend
(``torch``: PyTorch eager; ``onnxruntime``: the models exported to ONNX, CPU execution provider,
the same thread count) the dense model and every pruned one are timed in interleaved rounds (each
round times one run of every model in turn, so that a slow phase of a shared machine slows all
of them alike; medians), and for every batch size

- ``speedup`` = dense latency / pruned latency,
- ``eta``     = speedup / MAC reduction (:func:`prune_cli.metrics.efficiency.speedup_efficiency`;
  the issue's target: eta >= 0.8 at 2x fewer MACs on ResNet-56, ResNet-50 and MobileNetV2, both
  backends, batch 1 and 64).

``--threads`` sets PyTorch's and ONNX Runtime's intra-op threads (default 1). Numbers from a
shared machine are noisy: read ratios measured side by side in one run, not raw ms across runs.

    OMP_NUM_THREADS=1 python scripts/bench_deploy.py
    python scripts/bench_deploy.py --models resnet56 --variants uniform:1 uniform:16 latency:16
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from prune_cli.methods.base import PruneContext
from prune_cli.methods.l1_filter import L1FilterPruning
from prune_cli.metrics.counting import count_macs
from prune_cli.metrics.deploy import onnxruntime_latency
from prune_cli.metrics.efficiency import speedup_efficiency
from prune_cli.metrics.latency import compare_latency
from prune_cli.models import build_model

MODELS = ("resnet56", "resnet50", "mobilenet_v2")
VARIANTS = ("uniform:1", "uniform:16", "latency:16")
INPUT = (3, 32, 32)


def dense_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, in_channels=3, image_size=INPUT[-1]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def pruned(
    dense: nn.Module, variant: str, target: float, batch_sizes: list[int], backend: str
) -> tuple[nn.Module, dict[str, Any], float]:
    """``dense`` pruned by l1_filter at the MAC budget in setting ``variant``; seconds taken."""
    allocation, round_to, blocks = [*variant.split(":"), "", ""][:3]
    cfg = {
        "remove_blocks": int(blocks or 0),
        "allocation": allocation,
        "round_to": int(round_to) if round_to.isdigit() else (round_to or 1),
        "macs_reduction": target,
        "groups": "coupled",
        "latency_batch_sizes": batch_sizes,
        "latency_backend": backend,
    }
    method = L1FilterPruning(cfg, ratio=0.5)
    ctx = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=INPUT)
    tic = time.perf_counter()
    result = method.prune(dense, ctx)
    return result.model.eval(), result.info, time.perf_counter() - tic


def floor_model(dense: nn.Module) -> nn.Module:
    """``dense`` with every channel group cut to one channel: what is left of its latency is
    the fixed cost (per-layer overheads, the stem and the classifier) no width can remove."""
    from prune_cli.pruning.channels import channel_prune
    from prune_cli.pruning.importance import FilterNorm

    return channel_prune(dense, FilterNorm(), 0.999, input_size=INPUT).model.eval()


def latencies(
    models: dict[str, nn.Module], backend: str, args: argparse.Namespace
) -> dict[str, dict[str, dict[str, float]]]:
    timing = {"warmup": args.warmup, "repeats": args.repeats, "statistic": args.stat}
    if backend == "torch":
        return compare_latency(models, INPUT, args.batch_sizes, "cpu", **timing)
    ort = onnxruntime_latency(
        models, INPUT, args.batch_sizes, "cpu", threads=args.threads, **timing
    )
    if "skipped" in ort:
        raise SystemExit(f"ONNX Runtime skipped: {ort['skipped']}")
    return {name: ort[name] for name in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--macs-reduction", type=float, default=2.0)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="summary of the repeats: median (as a run records), or min (a loaded machine "
        "preempts short forwards, which inflates medians at batch 1)",
    )
    parser.add_argument(
        "--table-backend",
        default="torch",
        help="backend of the latency tables of allocation=latency (method.latency_backend)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the model cut to one channel per group, and print the eta bound: the "
        "eta a model would have at --macs-reduction if everything but that fixed cost fell as "
        "fast as the MACs",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), input {INPUT}, "
        f"l1_filter groups=coupled at {args.macs_reduction}x fewer MACs; "
        f"interleaved rounds: {args.stat} of {args.repeats}"
    )
    cols = [f"{b}_b{n}" for b in args.backends for n in args.batch_sizes]
    heads = [f"speedup {c}" for c in cols] + [f"eta {c}" for c in cols]
    print("| model | variant | MAC reduction | prune s | " + " | ".join(heads) + " |")
    print("|---" * (4 + 2 * len(cols)) + "|")
    for name in args.models:
        dense = dense_model(name)
        models = {"dense": dense}
        infos, seconds = {}, {}
        for variant in args.variants:
            model, info, secs = pruned(
                dense, variant, args.macs_reduction, args.batch_sizes, args.table_backend
            )
            models[variant], infos[variant], seconds[variant] = model, info, secs
        if args.floor:
            models["floor"] = floor_model(dense)
        dense_macs = count_macs(dense, INPUT).dense
        macs = {v: count_macs(models[v], INPUT).dense for v in args.variants}
        speed: dict[str, dict[str, float]] = {v: {} for v in args.variants}
        eta: dict[str, dict[str, float]] = {v: {} for v in args.variants}
        bound: dict[str, float] = {}
        for backend in args.backends:
            lat = latencies(models, backend, args)
            if args.floor:
                for key, row in lat["dense"].items():
                    fixed = lat["floor"][key]["latency_ms"] / row["latency_ms"]
                    r = args.macs_reduction
                    bound[f"{backend}_{key}"] = 1 / (fixed + (1 - fixed) / r) / r
            for v in args.variants:
                e = speedup_efficiency(lat["dense"], lat[v], dense_macs, macs[v])
                for key, value in e.items():
                    eta[v][f"{backend}_{key}"] = value
                    speed[v][f"{backend}_{key}"] = value * dense_macs / macs[v]
        if args.floor:
            cells = ["" for c in cols] + [f"{bound[c]:.2f}" for c in cols]
            print(f"| {name} | eta bound (fixed cost) | | | " + " | ".join(cells) + " |")
        for v in args.variants:
            cells = [f"{speed[v][c]:.2f}x" for c in cols] + [f"{eta[v][c]:.2f}" for c in cols]
            print(
                f"| {name} | {v} | {dense_macs / macs[v]:.3f}x | {seconds[v]:.1f} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
