"""prune-cli's structural pruning beside Torch-Pruning's, on the same models, in one process.

For each model: the same randomly initialised dense network (BN statistics randomised so that
latency-irrelevant zeros do not decide anything), pruned by

- **prune-cli**: ``l1_filter`` (:func:`prune_cli.pruning.channels.channel_prune` with the summed
  filter-L1 criterion), uniform channel ratio per group, ``--groups coupled`` (default);
- **Torch-Pruning** 1.6: ``tp.pruner.MetaPruner`` with ``tp.importance.MagnitudeImportance(p=1)``,
  the same uniform ratio (``pruning_ratio``, not global), the classifier ignored — the library's
  documented recipe.

Both remove the same number of channels from every group, so the MAC reductions compare the
*reach* of the two tools (which channels each can couple and remove); latencies are measured
interleaved (:func:`prune_cli.metrics.latency.compare_latency`: every repeat times one forward of
each model in turn, so a slow phase of a shared machine slows all of them) at batch 1 and
``--large-batch``; ``eff`` = speedup / MAC reduction. A tool that fails on a model is reported
with its error.

    OMP_NUM_THREADS=2 python scripts/bench_vs_torch_pruning.py
    python scripts/bench_vs_torch_pruning.py --models resnet56 --repeats 20 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import time
import traceback

import torch
from torch import nn

from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.metrics.latency import compare_latency
from prune_cli.models import build_model
from prune_cli.pruning.channels import channel_prune
from prune_cli.pruning.importance import FilterNorm

MODELS = ("resnet56", "vgg16", "mobilenet_v2", "resnet50", "shufflenet_v2_x1_0")
INPUT = (3, 32, 32)


def dense_model(name: str, seed: int) -> nn.Module:
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


def prune_cli_pruned(model: nn.Module, ratio: float, groups: str) -> nn.Module:
    return channel_prune(
        model, FilterNorm(p=1), ratio, input_size=INPUT, scope="layerwise", grouping=groups
    ).model.eval()


def classifier(model: nn.Module) -> nn.Module:
    """The layer producing the logits (never pruned): the last Linear, else the last Conv2d."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1] if last else [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]


def torch_pruning_pruned(model: nn.Module, ratio: float) -> nn.Module:
    import torch_pruning as tp

    net = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        net,
        torch.zeros(1, *INPUT),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[classifier(net)],
    )
    pruner.step()
    net.eval()
    with torch.no_grad():
        net(torch.zeros(2, *INPUT))  # a pruned model that cannot run is a failure too
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--groups", choices=("coupled", "single"), default="coupled")
    parser.add_argument("--large-batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [1, args.large_batch]
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"ratio {args.ratio} per group, prune-cli groups={args.groups}, input {INPUT}"
    )
    header = (
        f"| model | tool | params | MACs (M) | MAC reduction | speedup b1 | "
        f"speedup b{args.large_batch} | eff b1 | eff b{args.large_batch} |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name in args.models:
        tic = time.perf_counter()
        dense = dense_model(name, args.seed)
        dense_macs = count_macs(dense, INPUT).dense
        contenders: dict[str, nn.Module] = {"dense": dense}
        errors: dict[str, str] = {}
        for tool, make in (
            ("prune-cli", lambda m: prune_cli_pruned(m, args.ratio, args.groups)),
            ("Torch-Pruning", lambda m: torch_pruning_pruned(m, args.ratio)),
        ):
            try:
                contenders[tool] = make(dense)
            except Exception as exc:  # report any failure of either tool, keep going
                errors[tool] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                traceback.print_exc(limit=1)
        lat = compare_latency(
            contenders, INPUT, sizes, device, warmup=args.warmup, repeats=args.repeats
        )
        for tool in ("dense", "prune-cli", "Torch-Pruning"):
            if tool in errors:
                print(f"| {name} | {tool} | fails: {errors[tool]} | | | | | | |")
                continue
            model = contenders[tool]
            macs = count_macs(model, INPUT).dense
            params = count_params(model)[0]
            mac_x = dense_macs / macs
            speed = [
                lat["dense"][f"b{b}"]["latency_ms"] / lat[tool][f"b{b}"]["latency_ms"]
                for b in sizes
            ]
            print(
                f"| {name} | {tool} | {params:,} | {macs / 1e6:.2f} | {mac_x:.2f}x | "
                f"{speed[0]:.2f}x | {speed[1]:.2f}x | {speed[0] / mac_x:.2f} | "
                f"{speed[1] / mac_x:.2f} |",
                flush=True,
            )
        print(f"<!-- {name}: {time.perf_counter() - tic:.0f}s -->", flush=True)


if __name__ == "__main__":
    main()
