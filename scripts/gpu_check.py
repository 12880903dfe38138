"""The GPU check's sections (run them all with ``bash scripts/gpu_check.sh``).

- ``train``: training throughput of ResNet-20 and ResNet-56 on CIFAR-shaped data (the
  ``shapes`` dataset at 32 px, kept on the device and augmented there), prune-cli's training
  loop (:func:`prune_cli.engine.loop.train_one_epoch`) against a bare PyTorch loop over the same
  batches, both channels-last, in every precision the device has (:mod:`prune_cli.engine.precision`:
  on CUDA ``auto`` = bf16 where supported, and fp16 with its gradient scaler; on the CPU fp32 and,
  with native bf16, bf16); rounds alternate and the best round of each counts. Target: runner /
  bare >= 0.97 in each precision.
- ``compile``: the same runner loop through ``torch.compile`` and without: compile time (the
  first steps) and steady images/s.
- ``latency``: dense ResNet-56 (ResNet-20 in ``--quick``) against the same model with half of
  its channels removed (L1 filter criterion, coupled groups), measured interleaved
  (:func:`prune_cli.metrics.latency.compare_latency`), eager and compiled.
- ``ddp``: run under ``torchrun --nproc_per_node=1``: a DistributedDataParallel ResNet-20 (NCCL
  on CUDA, gloo on CPU) trained for a few steps through the runner loop, an all-reduce checked,
  images/s against the same steps without DDP.

On a machine without CUDA, ``--quick`` (what ``gpu_check.sh`` passes there) runs every section
on the CPU with small sizes (ResNet-20 only) and compiles with the ``eager`` backend (Dynamo
captures the graphs as for inductor, but no code is generated: inductor's C++ build takes
minutes on a small CPU), so that the whole script runs in seconds: the test suite runs it that
way (``gpu_check.sh --cpu``) so that it cannot rot. Its numbers are not a measurement.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.data import build_dataset
from prune_cli.engine import TrainHooks
from prune_cli.engine.loop import train_one_epoch
from prune_cli.engine.optim import build_optimizer
from prune_cli.engine.precision import Precision, cpu_bf16_native, resolve_precision
from prune_cli.metrics.counting import count_macs
from prune_cli.metrics.latency import compare_latency
from prune_cli.models import build_model
from prune_cli.pruning.channels import channel_prune
from prune_cli.pruning.importance import FilterNorm

TRAIN_CFG = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}


def settings(quick: bool) -> dict:
    """Sizes of every section: full on a GPU, tiny for the CPU fallback."""
    if quick:
        return {"models": ["resnet20"], "batch": 8, "steps": 2, "rounds": 1,
                "latency_model": "resnet20", "latency_batches": [1, 4], "repeats": 2,
                "backend": "eager"}  # fmt: skip
    return {"models": ["resnet20", "resnet56"], "batch": 256, "steps": 40, "rounds": 3,
            "latency_model": "resnet56", "latency_batches": [1, 256], "repeats": 20,
            "backend": "inductor"}  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_batches(device: torch.device, batch: int, steps: int) -> Callable[[int], Iterable]:
    """``batches(epoch)``: ``steps`` augmented batches of CIFAR-shaped images, on ``device``."""
    data = build_dataset(
        {"name": "shapes", "train_size": batch * (steps + 2), "test_size": 10, "seed": 0}
    )
    loader = data.loader("train", batch, train=True, device=device, seed=0, drop_last=True)

    def batches(epoch: int) -> Iterable:
        loader.set_epoch(epoch)
        return itertools.islice(iter(loader), steps)

    return batches


def bare_loop(
    model: nn.Module, batches: Iterable, optimizer, precision: Precision, channels_last: bool
) -> int:
    """The loop a user would write: forward, loss, backward, step (the runner's autocast; fp16
    with a gradient scaler, as PyTorch's AMP recipe)."""
    scaler = precision.grad_scaler()
    seen = 0
    for images, labels in batches:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        seen += labels.numel()
    return seen


def runner_loop(
    model, batches, optimizer, device, precision: Precision, channels_last, forward=None
) -> int:
    _, _, seen = train_one_epoch(
        model, batches, optimizer, TrainHooks(), device=device,
        precision=precision, channels_last=channels_last, scaler=precision.grad_scaler(),
        on_check=lambda total, i: None, forward=forward,
    )  # fmt: skip
    return seen


def precisions(device: torch.device) -> list[Precision]:
    """Every precision worth timing on ``device``: CUDA ``auto`` (bf16 where supported) and
    fp16 with loss scaling; the CPU's fp32 and, with native bf16, bf16."""
    if device.type == "cuda":
        names = ["auto", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    else:
        names = ["fp32", "bf16"] if cpu_bf16_native() else ["fp32"]
    return [resolve_precision(name, device) for name in names]


def rate(fn: Callable[[], int], device: torch.device) -> float:
    synchronize(device)
    tic = time.perf_counter()
    seen = fn()
    synchronize(device)
    return seen / (time.perf_counter() - tic)


def best_rates(loops: dict[str, Callable[[int], int]], rounds: int, device) -> dict[str, float]:
    """Images/s of each loop (``loop(epoch)`` returns the images it trained on): one warm-up
    pass each, then ``rounds`` rounds taken in alternating order; the best round counts."""
    for loop in loops.values():  # allocator, kernels, autotuning, compilation
        loop(0)
    best = dict.fromkeys(loops, 0.0)
    for r in range(1, rounds + 1):
        for key in list(loops) if r % 2 else list(loops)[::-1]:
            best[key] = max(best[key], rate(partial(loops[key], r), device))
    return best


def fresh(name: str, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def section_train(device: torch.device, s: dict) -> None:
    print(f"channels_last on, data on {device}, batch {s['batch']}, {s['steps']} steps per round")
    batches = cifar_batches(device, s["batch"], s["steps"])
    for precision in precisions(device):
        for name in s["models"]:
            bare, runner = fresh(name, device, True), fresh(name, device, True)
            opt_bare = build_optimizer(bare, TRAIN_CFG)
            opt_runner = build_optimizer(runner, TRAIN_CFG)
            best = best_rates(
                {
                    "bare": lambda r, m=bare, o=opt_bare, p=precision: bare_loop(
                        m, batches(r), o, p, True
                    ),
                    "runner": lambda r, m=runner, o=opt_runner, p=precision: runner_loop(
                        m, batches(r), o, device, p, True
                    ),
                },
                s["rounds"],
                device,
            )
            print(f"  {precision.name:<4} {name:<9} runner {best['runner']:9.1f} img/s  "
                  f"bare {best['bare']:9.1f} img/s  ratio {best['runner'] / best['bare']:.3f} "
                  "(target >= 0.97)")  # fmt: skip


def section_compile(device: torch.device, s: dict) -> None:
    cl = device.type == "cuda"
    precision = resolve_precision("auto", device)
    batches = cifar_batches(device, s["batch"], s["steps"])
    name = s["models"][0]
    print(f"torch.compile backend {s['backend']}, {name}, batch {s['batch']}")
    for compiled in (False, True):
        model = fresh(name, device, cl)
        opt = build_optimizer(model, TRAIN_CFG)
        forward = torch.compile(model, backend=s["backend"], dynamic=False) if compiled else None
        tic = time.perf_counter()
        runner_loop(model, itertools.islice(batches(0), 2), opt, device, precision, cl, forward)
        synchronize(device)
        first = time.perf_counter() - tic
        loop = partial(_runner_epoch, model, batches, opt, device, precision, cl, forward)
        best = best_rates({"run": loop}, s["rounds"], device)["run"]
        keys = list(model.state_dict())
        assert not any("_orig_mod" in k for k in keys), "compiled state_dict keys leaked"
        print(f"  compile {'on ' if compiled else 'off'}: first 2 steps {first:6.2f} s, "
              f"then {best:9.1f} img/s")  # fmt: skip


def _runner_epoch(model, batches, opt, device, precision, cl, forward, epoch: int) -> int:
    return runner_loop(model, batches(epoch), opt, device, precision, cl, forward)


def section_latency(device: torch.device, s: dict) -> None:
    arch = s["latency_model"]
    dense = build_model(arch, num_classes=10, in_channels=3, image_size=32).to(device)
    size = (3, 32, 32)
    pruned = channel_prune(copy.deepcopy(dense).cpu(), FilterNorm(), 0.5, input_size=size,
                           scope="layerwise", grouping="coupled").model.to(device)  # fmt: skip
    mac_x = count_macs(dense, size).dense / count_macs(pruned, size).dense
    print(f"{arch} dense vs channels halved (coupled groups): MACs / {mac_x:.2f}")
    for compiled in (False, True):
        if compiled and s["backend"] != "inductor":
            print(f"  compiled latency: skipped in --quick ({s['backend']} generates no code)")
            continue
        models = {"dense": dense, "pruned": pruned}
        both = compare_latency(models, size, s["latency_batches"], device, warmup=3,
                               repeats=s["repeats"], compile=compiled)  # fmt: skip
        for key in both["dense"]:
            d, p = both["dense"][key]["latency_ms"], both["pruned"][key]["latency_ms"]
            print(f"  {'compiled' if compiled else 'eager   '} {key:<5} dense {d:8.3f} ms  "
                  f"pruned {p:8.3f} ms  speedup {d / p:5.2f}x")  # fmt: skip


def section_ddp(device: torch.device, s: dict) -> None:
    """Under torchrun: one DDP rank (NCCL on CUDA, gloo on CPU) trains through the runner."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    try:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        world = dist.get_world_size()
        total = torch.ones((), device=device)
        dist.all_reduce(total)
        assert int(total.item()) == world, f"all_reduce gave {total.item()}, not {world}"
        cl = device.type == "cuda"
        precision = resolve_precision("auto", device)
        batches = cifar_batches(device, s["batch"], s["steps"])
        plain, wrapped = fresh("resnet20", device, cl), fresh("resnet20", device, cl)
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(wrapped, device_ids=ids)
        opt_plain, opt_ddp = build_optimizer(plain, TRAIN_CFG), build_optimizer(wrapped, TRAIN_CFG)
        best = best_rates(
            {
                "plain": partial(
                    _runner_epoch, plain, batches, opt_plain, device, precision, cl, None
                ),
                "ddp": partial(
                    _runner_epoch, wrapped, batches, opt_ddp, device, precision, cl, ddp
                ),
            },
            s["rounds"],
            device,
        )
        print(f"DDP {backend}, world size {world}: all_reduce ok; resnet20 runner "
              f"{best['ddp']:.1f} img/s with DDP, {best['plain']:.1f} without "
              f"(ratio {best['ddp'] / best['plain']:.3f})")  # fmt: skip
    finally:
        dist.destroy_process_group()


SECTIONS = {
    "train": section_train,
    "compile": section_compile,
    "latency": section_latency,
    "ddp": section_ddp,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=[*SECTIONS, "all"], default="all",
                    help="all: train, compile, latency (ddp needs torchrun)")  # fmt: skip
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="CPU fallback sizes (seconds)")
    ap.add_argument("--backend", default=None, help="torch.compile backend (inductor, eager ...)")
    ap.add_argument("--batch", type=int, default=None, help="training batch size")
    ap.add_argument("--steps", type=int, default=None, help="training steps per round")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per loop")
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    s = settings(args.quick)
    for key in ("backend", "batch", "steps", "rounds"):  # e.g. inductor on a CPU: --backend
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    names = ["train", "compile", "latency"] if args.section == "all" else [args.section]
    if device.type == "cuda" and args.section != "ddp":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    elif args.section != "ddp":
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
    for name in names:
        tic = time.perf_counter()
        print(f"== {name}", flush=True)
        SECTIONS[name](device, s)
        print(f"   ({time.perf_counter() - tic:.1f} s)", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
