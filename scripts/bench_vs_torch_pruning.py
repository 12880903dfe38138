"""prune-cli's structural pruning beside Torch-Pruning's at the same MAC count, in one process.

For each model: the same randomly initialised dense network (BN statistics randomised so that
latency-irrelevant zeros do not decide anything), pruned by

- **Torch-Pruning** 1.6: ``tp.pruner.MetaPruner`` with ``tp.importance.MagnitudeImportance(p=1)``,
  one uniform ``pruning_ratio`` for every layer (not global), the classifier ignored — the
  library's documented recipe. Its ratio is solved (bisection) for ``--macs-reduction`` (dense
  MACs / pruned MACs, default 2); a model Torch-Pruning cannot prune is reported with its error;
- **prune-cli**: the ``l1_filter`` method (``groups=coupled``) in each ``--variants`` setting
  (``allocation:round_to``, as in ``scripts/bench_deploy.py``; ``uniform:1`` is the default of
  before issue 26), at Torch-Pruning's MAC count (``method.macs_reduction`` = its achieved
  reduction; at ``--macs-reduction`` when Torch-Pruning failed).

The dense model and every pruned one are timed in interleaved rounds (every round runs each
model once in turn, medians) in PyTorch eager and in ONNX Runtime (CPU provider, the same thread
count); ``speedup`` = dense / pruned latency, ``eta`` = speedup / MAC reduction
(:func:`prune_cli.metrics.efficiency.speedup_efficiency`). The issue's target: prune-cli's
speedup at least Torch-Pruning's on every model.

    OMP_NUM_THREADS=1 python scripts/bench_vs_torch_pruning.py
    python scripts/bench_vs_torch_pruning.py --models resnet56 --variants uniform:1 latency:auto
"""

from __future__ import annotations

import argparse
import copy
import time
import traceback

import torch
from bench_deploy import INPUT, dense_model, latencies, pruned
from torch import nn

from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.metrics.efficiency import speedup_efficiency

MODELS = ("resnet56", "resnet50", "mobilenet_v2", "vgg16", "shufflenet_v2_x1_0")
VARIANTS = ("uniform:1", "latency:auto")


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


def solve_ratio(dense: nn.Module, target: float) -> float:
    """The smallest Torch-Pruning ratio whose cut reaches ``target`` (bisection to 1e-3)."""
    dense_macs = count_macs(dense, INPUT).dense
    low, high = 0.0, 0.95
    while high - low > 1e-3:
        mid = (low + high) / 2
        if dense_macs / count_macs(torch_pruning_pruned(dense, mid), INPUT).dense >= target:
            high = mid
        else:
            low = mid
    return high


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
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), input {INPUT}; "
        f"Torch-Pruning uniform L1 solved for {args.macs_reduction}x fewer MACs, prune-cli "
        f"l1_filter at its MAC count; interleaved rounds: {args.stat} of {args.repeats}"
    )
    cols = [f"{b}_b{n}" for b in args.backends for n in args.batch_sizes]
    heads = [f"speedup {c}" for c in cols] + [f"eta {c}" for c in cols]
    print("| model | tool | params | MAC reduction | " + " | ".join(heads) + " |")
    print("|---" * (4 + 2 * len(cols)) + "|")
    for name in args.models:
        tic = time.perf_counter()
        dense = dense_model(name)
        dense_macs = count_macs(dense, INPUT).dense
        models: dict[str, nn.Module] = {"dense": dense}
        target = args.macs_reduction
        try:
            ratio = solve_ratio(dense, target)
            models["Torch-Pruning"] = torch_pruning_pruned(dense, ratio)
            target = dense_macs / count_macs(models["Torch-Pruning"], INPUT).dense
        except Exception as exc:  # report a failure of the other tool, keep going
            traceback.print_exc(limit=1)
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
            print(f"| {name} | Torch-Pruning | fails: {error} |" + " |" * (1 + 2 * len(cols)))
        for variant in args.variants:
            models[f"prune-cli {variant}"] = pruned(
                dense, variant, target, args.batch_sizes, "torch"
            )[0]
        eta: dict[str, dict[str, float]] = {tool: {} for tool in models if tool != "dense"}
        macs = {tool: count_macs(m, INPUT).dense for tool, m in models.items()}
        for backend in args.backends:
            lat = latencies(models, backend, args)
            for tool in eta:
                e = speedup_efficiency(lat["dense"], lat[tool], dense_macs, macs[tool])
                eta[tool].update({f"{backend}_{k}": v for k, v in e.items()})
        for tool in eta:
            reduction = dense_macs / macs[tool]
            cells = [f"{eta[tool][c] * reduction:.2f}x" for c in cols]
            cells += [f"{eta[tool][c]:.2f}" for c in cols]
            params = count_params(models[tool])[0]
            print(
                f"| {name} | {tool} | {params:,} | {reduction:.3f}x | " + " | ".join(cells) + " |",
                flush=True,
            )
        print(f"<!-- {name}: {time.perf_counter() - tic:.0f}s -->", flush=True)


if __name__ == "__main__":
    main()
