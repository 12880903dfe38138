"""Benchmark of ``method=optimized`` (methods.md §8.2): time per generation and gain over magnitude.

Trains a dense model on the default dataset (``shapes``; or loads ``--pretrained``, a
``trained.pt`` of a run), then for every requested search runs :class:`OptimizedRetention.prune`
on a copy and prints, per configuration: seconds per generation, fitness evaluations, and the
fitness loss and test top-1 (before fine-tuning) of the magnitude mask and of the searched mask
at the same pruning rate. ``--layers`` adds the same search restricted to late layers, where the
outputs of the unchanged prefix are replayed, once with and once without the replay.

    python scripts/bench_optimized.py                       # CPU, small settings
    python scripts/bench_optimized.py --device cuda --fitness-size 2048 --population 20 \\
        --generations 30 --searches ga,pso,sa
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from prune_cli.data import build_dataset
from prune_cli.engine import StageFiles, fit, load_checkpoint, load_state_into, resolve_device
from prune_cli.engine.loop import evaluate
from prune_cli.methods import PruneContext, build_method
from prune_cli.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--small-ratio", type=float, default=0.1)
    ap.add_argument("--searches", default="ga")
    ap.add_argument("--gene", default="weight")
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--fitness-size", type=int, default=512)
    ap.add_argument("--layers", default="layer3,fc", help="late layers for the replay variant")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = resolve_device(args.device)
    data = build_dataset(
        {"name": args.dataset, "train_size": args.train_size, "test_size": args.test_size}
    )
    torch.manual_seed(args.seed)
    model = build_model(
        args.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
    ).to(device)
    tic = time.perf_counter()
    if args.pretrained:
        load_state_into(model, load_checkpoint(Path(args.pretrained), device), args.pretrained)
    else:
        train_cfg = {"epochs": args.epochs, "batch_size": 128, "lr": 0.1, "schedule": "cosine"}
        with tempfile.TemporaryDirectory() as tmp:
            fit(model, data, train_cfg, device=device, files=StageFiles("train", Path(tmp)))
    test = data.loader("test", 256, train=False, device=device)
    dense = evaluate(model, test, device)
    print(
        f"dense {args.model} on {args.dataset}: top1 {dense.top1:.2f}% "
        f"({time.perf_counter() - tic:.1f} s to train/load), device {device}, "
        f"threads {torch.get_num_threads()}"
    )
    ctx = PruneContext(
        data=data,
        device=device,
        seed=args.seed,
        input_size=(data.in_channels, data.image_size, data.image_size),
    )
    runs = [(s, None, True) for s in args.searches.split(",") if s]
    if args.layers:  # the same late-layer search with and without the prefix replay
        runs += [("ga", args.layers.split(","), True), ("ga", args.layers.split(","), False)]
    header = (
        f"{'search':<6} {'layers':<12} {'genes':>7} {'evals':>6} {'s/gen':>8} "
        f"{'mag loss':>9} {'opt loss':>9} {'mag top1':>9} {'opt top1':>9} {'changed':>8}"
    )
    print(f"ratio {args.ratio}, small_ratio {args.small_ratio}, gene {args.gene}, "
          f"population {args.population}, generations {args.generations}, "
          f"fitness images {args.fitness_size}")  # fmt: skip
    print(header)
    for search, layers, replay in runs:
        cfg = {
            "name": "optimized",
            "search": search,
            "small_ratio": args.small_ratio,
            "gene": args.gene,
            "population": args.population,
            "generations": args.generations,
            "iterations": args.generations,
            "fitness_size": args.fitness_size,
            "layers": layers,
            "reuse_prefix": replay,
            "progress": False,
        }
        method = build_method(cfg, args.ratio, args.seed)
        info = method.prune(copy.deepcopy(model), ctx).info
        mag, opt = info["magnitude"], info["optimized"]
        print(
            f"{search:<6} {','.join(layers) if layers else 'all':<12} {info['genes']:>7} "
            f"{info['evaluations']:>6} {info['seconds_per_generation']:>8.3f} "
            f"{mag['fitness_loss']:>9.4f} {opt['fitness_loss']:>9.4f} "
            f"{mag['test_top1']:>9.2f} {opt['test_top1']:>9.2f} {info['weights_changed']:>8}"
        )
        print(f"       prefix reuse: {info['prefix_reuse']}")


if __name__ == "__main__":
    main()
