"""Training-loop overhead benchmark: prune-cli's loop against a bare PyTorch loop.

Both loops train the same model (same initial weights) with the same SGD settings on the same
batches from the same in-memory loader (on-tensor crop + flip), so the ratio isolates what the
runner adds per step: hooks, progress bar, NaN checks, running metrics. Rounds alternate
between the two loops and the best round of each is kept, to damp machine noise.

    python scripts/bench_train.py                      # ResNet-20, batch 128, CPU
    python scripts/bench_train.py --model resnet56 --device cuda --batch-size 256

Target (issue 2): runner/bare images/s >= 0.97 on CPU for ResNet-20 at batch 128.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prune_cli.data import build_dataset
from prune_cli.engine import TrainHooks, resolve_device
from prune_cli.engine.loop import train_one_epoch
from prune_cli.engine.optim import build_optimizer
from prune_cli.models import build_model

TRAIN_CFG = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}


def bare_loop(model, batches, optimizer) -> int:
    seen = 0
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += labels.numel()
    return seen


def runner_loop(model, batches, optimizer, device, steps) -> int:
    bar = tqdm(batches, total=steps, leave=False, mininterval=1.0, desc="runner")
    _, _, seen = train_one_epoch(
        model,
        bar,
        optimizer,
        TrainHooks(),
        device=device,
        steps_per_epoch=steps,
        on_check=lambda total, i: total.item(),
    )
    return seen


def timed(fn, *args) -> tuple[float, int]:
    tic = time.perf_counter()
    seen = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - tic, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.batch_size * (args.steps + 2)
    data = build_dataset({"name": "shapes", "train_size": n, "test_size": 100, "seed": 0})
    torch.manual_seed(0)
    model0 = build_model(
        args.model, num_classes=data.num_classes, in_channels=data.in_channels, image_size=32
    ).to(device)
    loader = data.loader("train", args.batch_size, train=True, device=device, seed=0)

    def batches(epoch: int):
        loader.set_epoch(epoch)
        return itertools.islice(iter(loader), args.steps)

    models = {"runner": copy.deepcopy(model0), "bare": copy.deepcopy(model0)}
    opts = {k: build_optimizer(m, TRAIN_CFG) for k, m in models.items()}
    # Warm-up: one short pass each (allocator, kernels).
    bare_loop(models["bare"], itertools.islice(iter(loader), 3), opts["bare"])
    runner_loop(models["runner"], itertools.islice(iter(loader), 3), opts["runner"], device, 3)

    best = {"runner": 0.0, "bare": 0.0}
    for r in range(args.rounds):
        for name in ("bare", "runner") if r % 2 == 0 else ("runner", "bare"):
            if name == "bare":
                secs, seen = timed(bare_loop, models[name], batches(r), opts[name])
            else:
                secs, seen = timed(
                    runner_loop, models[name], batches(r), opts[name], device, args.steps
                )
            rate = seen / secs
            best[name] = max(best[name], rate)
            print(f"round {r + 1} {name:6s}: {rate:8.1f} images/s ({secs:.2f} s, {seen} images)")
    ratio = best["runner"] / best["bare"]
    print(
        f"\n{args.model} batch {args.batch_size} on {device} ({torch.get_num_threads()} threads): "
        f"runner {best['runner']:.1f} images/s, bare {best['bare']:.1f} images/s, "
        f"ratio {ratio:.3f} (target >= 0.97)"
    )


if __name__ == "__main__":
    main()
