"""Training throughput: prune-cli's loop against a bare PyTorch loop, in fp32 and at the
hardware's limit (bf16 autocast + channels-last where the CPU or GPU has native bf16).

Four loops train copies of the same model (same initial weights, same SGD settings) on the same
batches from the same in-memory loader (on-tensor crop + flip):

- ``bare fp32``: forward, loss, backward, step, in fp32 NCHW (what a user writes first);
- ``runner fp32``: prune-cli's ``train_one_epoch`` with ``precision=fp32``, contiguous (the
  default before ``precision: auto``);
- ``bare fast``: the same bare loop with bf16 autocast and channels-last, by hand (the limit of
  this hardware in PyTorch eager);
- ``runner auto``: prune-cli's loop with the defaults ``precision=auto``,
  ``memory_format=auto`` as ``fit`` resolves them (:mod:`prune_cli.engine.precision`).

Rounds alternate the order of the loops and the best round of each is kept, to damp machine
noise; every figure is a ratio measured side by side in one process.

    python scripts/bench_train.py                      # ResNet-20, batch 128, CPU
    python scripts/bench_train.py --model resnet56 --threads 2

Targets: runner fp32 / bare fp32 >= 0.97 (issue 2: what the runner adds per step); runner auto /
runner fp32 >= 2.0 and runner auto / bare fast >= 0.95 (issue 26).
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
from prune_cli.engine.precision import choose_memory_format, resolve_precision
from prune_cli.models import build_model

TRAIN_CFG = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}


def bare_loop(model, batches, optimizer, fast: bool = False) -> int:
    """The loop a user writes; ``fast``: bf16 autocast and channels-last, by hand."""
    seen = 0
    for images, labels in batches:
        if fast:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += labels.numel()
    return seen


def runner_loop(model, batches, optimizer, device, steps, precision, channels_last) -> int:
    bar = tqdm(batches, total=steps, leave=False, mininterval=1.0, desc="runner")
    _, _, seen = train_one_epoch(
        model,
        bar,
        optimizer,
        TrainHooks(),
        device=device,
        steps_per_epoch=steps,
        precision=precision,
        channels_last=channels_last,
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

    auto = resolve_precision("auto", device)
    probe = next(iter(data.loader("test", 16, train=False, device=device)))[0]
    auto_cl, note = choose_memory_format("auto", copy.deepcopy(model0), probe, auto)
    fast_ok = device.type == "cpu" and auto.name == "bf16"
    names = ["bare fp32", "runner fp32", "runner auto"] + (["bare fast"] if fast_ok else [])
    models = {k: copy.deepcopy(model0) for k in names}
    for k in ("runner auto", "bare fast"):
        if k in models and (auto_cl or k == "bare fast"):
            models[k].to(memory_format=torch.channels_last)
    opts = {k: build_optimizer(m, TRAIN_CFG) for k, m in models.items()}

    def one(name: str, epoch: int, steps: int) -> tuple[float, int]:
        it = batches(epoch) if steps == args.steps else itertools.islice(iter(loader), steps)
        m, o = models[name], opts[name]
        if name.startswith("bare"):
            return timed(bare_loop, m, it, o, name == "bare fast")
        precision = "fp32" if name == "runner fp32" else auto
        cl = name == "runner auto" and auto_cl
        return timed(runner_loop, m, it, o, device, steps, precision, cl)

    for name in names:  # warm-up: one short pass each (allocator, kernels, oneDNN primitives)
        one(name, 0, 3)
    best = dict.fromkeys(names, 0.0)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else list(reversed(names)):
            secs, seen = one(name, r, args.steps)
            rate = seen / secs
            best[name] = max(best[name], rate)
            print(f"round {r + 1} {name:12s}: {rate:8.1f} images/s ({secs:.2f} s, {seen} images)")
    print(
        f"\n{args.model} batch {args.batch_size} on {device} ({torch.get_num_threads()} threads),"
        f" auto = {auto.name}{' channels-last' if auto_cl else ''}"
        f"{f' ({note})' if note else ''}:"
    )
    for name in names:
        print(f"  {name:12s} {best[name]:8.1f} images/s")
    print(
        f"  runner fp32 / bare fp32  {best['runner fp32'] / best['bare fp32']:.3f} (target >= 0.97)"
    )
    print(
        f"  runner auto / runner fp32 {best['runner auto'] / best['runner fp32']:.3f} "
        "(target >= 2.0)"
    )
    if fast_ok:
        print(
            f"  runner auto / bare fast  {best['runner auto'] / best['bare fast']:.3f} "
            "(target >= 0.95)"
        )


if __name__ == "__main__":
    main()
