"""Benchmark of ``method=optimized``: time per generation and gain over magnitude.

The method is described in docs/methods.md §8.2.

Trains a dense model on the default dataset (``shapes``; or loads ``--pretrained``, a
``trained.pt`` of a run), then for every requested search runs :class:`OptimizedRetention.prune`
on a copy and prints, per configuration: seconds per generation, fitness evaluations, and the
fitness loss and test top-1 (before fine-tuning) of the magnitude mask and of the searched mask
at the same pruning rate. ``--layers`` adds the same search restricted to late layers, where the
outputs of the unchanged prefix are replayed, once with and once without the replay.

    python scripts/bench_optimized.py                       # CPU, small settings
    python scripts/bench_optimized.py --device cuda --fitness-size 2048 --population 20 \\
        --generations 30 --searches ga,pso,sa

``--compare`` (issue 15) runs instead, side by side at the same number of generations, the
search as it was before issue 15 (``fitness_size`` 2048, the fitness on the model itself:
no BatchNorm folding, no channels_last) and with the method's current defaults, and prints
seconds per generation, the final fitness on each search's own fitness images, and - the same
yardstick for both - the loss and top-1 of both final masks on one common set of 2048 fitness
images (the before search's) and on the test split (before fine-tuning), beside the dense
training time of the model searched (the run's budget: search cost <= dense training):

    python scripts/bench_optimized.py --compare --generations 3 --val-size 2048
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import prune_cli.methods.optimized as optimized_module
from prune_cli.data import build_dataset
from prune_cli.engine import (
    StageFiles,
    TrainHooks,
    fit,
    load_checkpoint,
    load_state_into,
    resolve_device,
)
from prune_cli.engine.loop import evaluate, train_one_epoch
from prune_cli.engine.optim import build_optimizer
from prune_cli.methods import PruneContext, build_method
from prune_cli.models import build_model
from prune_cli.pruning.retention import MaskedFitness, fitness_batches, folded_eval_copy

#: The defaults before issue 15 that the current defaults replace (``--compare``).
BEFORE = {"fitness_size": 2048, "fitness_batch_size": 512, "population": 20}


@torch.no_grad()
def loss_top1(model: torch.nn.Module, batches) -> tuple[float, float]:
    """Mean CE and top-1 of ``model`` (eval mode) on ``batches``."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in batches:
        logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return loss / n, 100.0 * correct / n


def cost_projection(model, data, ctx, rounds: int = 3) -> None:
    """Search cost over dense training cost of the default run (ResNet-20 on ``shapes``: 5000
    training images less the held-out fitness images, 4 epochs of batch 128, each epoch
    evaluated on the 1000 test and the held-out images), before issue 15 and now, from unit
    costs measured interleaved in this process (so that a busy machine slows both alike): one
    training step, and one fitness evaluation of 512 images on the model itself (before) and on
    its BatchNorm-folded channels_last copy (now). The search is counted at its maximum, every
    generation run (no early stop): GA evaluations = population + generations x (population -
    elitism)."""
    dev = ctx.device
    x, y = next(iter(data.loader("train", 128, train=True, device=dev, seed=0)))
    images = torch.cat([x] * 4)[:512]
    net = copy.deepcopy(model)
    opt = build_optimizer(net, {"lr": 0.01, "momentum": 0.9})
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 4}
    folded, _, what = folded_eval_copy(model, weights, images, dev.type == "cpu")
    images_cl = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        train_one_epoch(net, [(x, y)], opt, TrainHooks(), device=dev, on_check=lambda *a: None)

    @torch.no_grad()
    def plain() -> None:
        model.eval()
        model(images)

    @torch.no_grad()
    def fold() -> None:
        folded(images_cl)

    units: dict[str, list[float]] = {"step": [], "plain": [], "fold": []}
    for fn in (step, plain, fold):  # warm-up
        fn()
    for _ in range(rounds):
        for key, fn in (("step", step), ("plain", plain), ("fold", fold)):
            tic = time.perf_counter()
            fn()
            units[key].append(time.perf_counter() - tic)
    t = {k: statistics.median(v) for k, v in units.items()}
    spread = {k: max(v) / min(v) for k, v in units.items()}
    print(f"unit costs (median of {rounds}, interleaved; max/min in brackets): train step of "
          f"128 {t['step']:.3f} s [{spread['step']:.2f}], fitness of 512 images on the model "
          f"{t['plain']:.3f} s [{spread['plain']:.2f}], on the folded copy {t['fold']:.3f} s "
          f"[{spread['fold']:.2f}] ({what})")  # fmt: skip
    defaults = optimized_module.OptimizedRetention.Options()
    for label, images_fit, pop, gens, per_eval in (
        ("before", 2048, 20, 30, 4 * t["plain"]),
        ("now", defaults.fitness_size, defaults.population, defaults.generations,
         defaults.fitness_size / 512 * t["fold"]),
    ):  # fmt: skip
        steps = math.ceil((5000 - images_fit) / 128)
        train = 4 * steps * t["step"] + 4 * (1000 + images_fit) / 512 * t["plain"]
        evals = pop + gens * (pop - defaults.ga.elitism)
        search = evals * per_eval
        print(f"  {label:<6} {images_fit} fitness images, population {pop}, {gens} generations: "
              f"training ~{train:.0f} s, search <= {evals} evaluations ~{search:.0f} s, "
              f"search / training {search / train:.2f}")  # fmt: skip


def compare(model, data, ctx, args, train_seconds: float) -> None:
    """Before issue 15 vs the current defaults, at ``--generations`` generations."""
    cost_projection(model, data, ctx)
    if args.generations <= 0:
        return
    common = fitness_batches(data, 2048, 512, ctx.device, args.seed)[0]
    test = [(x, y) for x, y in data.loader("test", 512, train=False, device=ctx.device)]
    defaults = optimized_module.OptimizedRetention.Options()
    print(f"generations {args.generations} for both; dense training took {train_seconds:.1f} s")
    print(f"{'search':<8} {'images':>6} {'pop':>4} {'evals':>6} {'s/gen':>8} {'search s':>9} "
          f"{'own loss':>9} {'common loss':>12} {'common top1':>12} {'test loss':>10} "
          f"{'test top1':>10}")  # fmt: skip
    for label, over, fold in (("before", BEFORE, False), ("after", {}, True)):
        cfg = {
            "name": "optimized",
            "generations": args.generations,
            "patience": max(args.generations, 1),  # equal generations: no early stop here
            "progress": False,
            **over,
        }
        real = optimized_module.MaskedFitness
        optimized_module.MaskedFitness = functools.partial(MaskedFitness, fold=fold)
        try:
            method = build_method(cfg, args.ratio, args.seed)
            tic = time.perf_counter()
            result = method.prune(copy.deepcopy(model), ctx)
            seconds = time.perf_counter() - tic
        finally:
            optimized_module.MaskedFitness = real
        info = result.info
        c_loss, c_top1 = loss_top1(result.model, common)
        t_loss, t_top1 = loss_top1(result.model, test)
        print(f"{label:<8} {info['fitness_images']:>6} "
              f"{over.get('population', defaults.population):>4} {info['evaluations']:>6} "
              f"{info['seconds_per_generation']:>8.2f} {seconds:>9.1f} "
              f"{info['optimized']['fitness_loss']:>9.4f} {c_loss:>12.4f} {c_top1:>12.2f} "
              f"{t_loss:>10.4f} {t_top1:>10.2f}")  # fmt: skip
    mag = info["magnitude"]
    print(f"magnitude mask (the seed): test loss {mag.get('test_loss', float('nan')):.4f}, "
          f"test top1 {mag.get('test_top1', float('nan')):.2f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=0,
                    help="images held out of training (the fitness split; a run holds out "
                         "fitness_size)")  # fmt: skip
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
    ap.add_argument("--compare", action="store_true",
                    help="before issue 15 vs the current defaults (module docstring)")  # fmt: skip
    args = ap.parse_args()

    device = resolve_device(args.device)
    data = build_dataset(
        {
            "name": args.dataset,
            "train_size": args.train_size,
            "test_size": args.test_size,
            "val_size": args.val_size,
        }
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
    train_seconds = time.perf_counter() - tic
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
    if args.compare:
        compare(model, data, ctx, args, train_seconds)
        return
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
