"""Optimizer and learning-rate schedule of a training stage (its typed ``train``/``finetune``
options, :class:`~prune_cli.engine.settings.TrainOptions`; a mapping is typed first, the keys
it leaves out taken from ``configs/train/default.yaml``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prune_cli.engine.settings import (
    OPTIMIZERS,
    SCHEDULE_EVERY,
    SCHEDULES,
    TrainOptions,
    train_options,
)
from prune_cli.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_EVERY",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "param_groups",
    "step_lr_setter",
]

# Parameters whose name contains one of these never get weight decay (e.g. sharing
# coefficients, whose scale is the thing being learned).
NO_DECAY_DEFAULT: tuple[str, ...] = ("coefficients",)


def param_groups(
    model: nn.Module, weight_decay: float, no_decay: Sequence[str] = NO_DECAY_DEFAULT
) -> list[dict[str, Any]]:
    """Split trainable parameters into a weight-decay group and a zero-decay group."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if any(tag in name for tag in no_decay) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module, cfg: TrainOptions | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """SGD with momentum (optionally Nesterov) and weight decay, as the pruning literature uses,
    or AdamW (``optimizer: adamw``: ``momentum`` unused, ``nesterov=true`` refused)."""
    opts = train_options(cfg)
    groups = param_groups(model, opts.weight_decay)
    if opts.optimizer == "adamw":
        if opts.nesterov:  # said, not ignored
            raise ConfigError("nesterov=true needs optimizer sgd; AdamW has no Nesterov momentum")
        return torch.optim.AdamW(groups, lr=opts.lr)
    return torch.optim.SGD(
        groups, lr=opts.lr, momentum=opts.momentum, nesterov=opts.nesterov and opts.momentum > 0
    )


def lr_factor(cfg: TrainOptions | Mapping[str, Any], epoch: float, epochs: int) -> float:
    """Multiplier of the base learning rate at (fractional) ``epoch`` in ``[0, epochs)``.

    ``multistep`` milestones below 1 are fractions of the run (0.5 = half-way), others are epochs.
    ``cosine`` decays to 0 at the end of the run. A linear warm-up of ``warmup_epochs`` comes first.
    """
    opts = train_options(cfg)
    warmup = float(opts.warmup_epochs)
    if warmup > 0 and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if opts.schedule == "constant":
        return 1.0
    if opts.schedule == "cosine":
        span = max(epochs - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(epoch - warmup, 0.0) / span, 1.0)))
    milestones = [m * epochs if m < 1 else m for m in opts.milestones]
    return opts.gamma ** sum(epoch >= m for m in milestones)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainOptions | Mapping[str, Any],
    epochs: int,
    *,
    schedule_epochs: int | None = None,
    schedule_start: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler following :func:`lr_factor` (stepped once at the end of each epoch).

    By default the schedule spans this stage's ``epochs``. ``schedule_epochs`` and
    ``schedule_start`` make the stage follow epochs ``start, start + 1, ...`` of a longer
    schedule instead: rewinding retrains with the dense training's schedule from the rewind
    point (Renda et al. 2020)."""
    opts = train_options(cfg)
    total = schedule_epochs or epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(opts, schedule_start + e, total)
    )


def step_lr_setter(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: TrainOptions | Mapping[str, Any],
    epochs: int,
    steps_per_epoch: int,
    *,
    schedule_epochs: int | None = None,
    schedule_start: int = 0,
) -> Callable[[int, int], None] | None:
    """With ``schedule_every: step``, a callable ``(epoch, step in epoch)`` that sets every
    group's learning rate to its base rate times :func:`lr_factor` at the fractional epoch
    ``epoch + step / steps_per_epoch`` (called before each step). None with ``epoch``: the
    per-epoch :func:`build_scheduler` alone sets the rate."""
    opts = train_options(cfg)
    if opts.schedule_every == "epoch":
        return None
    total, start = schedule_epochs or epochs, schedule_start
    per_epoch = max(int(steps_per_epoch), 1)

    def set_lr(epoch: int, step: int) -> None:
        factor = lr_factor(opts, start + epoch + step / per_epoch, total)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

    return set_lr
