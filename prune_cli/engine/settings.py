"""The typed settings of a training stage: :class:`TrainOptions` (a ``train``/``finetune`` node)
and :class:`FitSettings` (one :func:`~prune_cli.engine.loop.fit` call).

The defaults of these keys are those of ``configs/train/default.yaml``: the options declare types
and ranges only (:mod:`prune_cli.defaults`), and :func:`train_options` takes the keys a mapping
leaves out from that file, so the engine has no defaults of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.engine.precision import MEMORY_FORMATS, PRECISIONS
from prune_cli.options import Bool, Float, Int, OneOf, Options, parse

#: The learning-rate schedules (:func:`~prune_cli.engine.optim.lr_factor`).
SCHEDULES = ("constant", "multistep", "cosine")
#: ``train.optimizer`` / ``finetune.optimizer``. SGD with momentum is the pruning literature's
#: (and every paper recipe here); AdamW (Loshchilov & Hutter 2019, decoupled weight decay) learns
#: far faster in the few hundred steps of an offline CPU demo: ResNet-50 on 32 px ``shapes``
#: reached 66% test top-1 in 3 epochs with AdamW and 15% with SGD (configs/budget/).
OPTIMIZERS = ("sgd", "adamw")
#: ``schedule_every``: the learning rate follows the schedule once per epoch (the papers' recipes)
#: or at every optimisation step (timm's ``sched_on_updates``): in a run of 2-3 epochs a per-epoch
#: cosine is a staircase of 2-3 values, while per step it warms up and anneals smoothly.
SCHEDULE_EVERY = ("epoch", "step")


class TrainOptions(Options):
    """One training stage (``train.*``; ``configs/train/default.yaml`` has the defaults)."""

    epochs: Int(ge=1)
    batch_size: Int(ge=1)
    optimizer: OneOf(*OPTIMIZERS)
    lr: Float(gt=0)
    momentum: Float(ge=0, lt=1)
    nesterov: Bool
    weight_decay: Float(ge=0)
    schedule: OneOf(*SCHEDULES)
    schedule_every: OneOf(*SCHEDULE_EVERY)
    milestones: list[Float(ge=0)]
    gamma: Float(gt=0)
    warmup_epochs: Int(ge=0)
    label_smoothing: Float(ge=0, lt=1)
    #: auto: bf16 autocast where the hardware does it natively, else fp32 (engine/precision.py)
    precision: OneOf(*PRECISIONS)
    memory_format: OneOf(*MEMORY_FORMATS)
    eval_batch_size: Int(ge=1)
    select_best: Bool
    compile: Bool


def train_options(
    given: Mapping[str, Any] | TrainOptions, options: type[TrainOptions] = TrainOptions
) -> TrainOptions:
    """``given`` typed: a :class:`TrainOptions` as it is; a mapping checked against
    ``options`` (one-line ConfigError), the keys it leaves out taken from
    ``configs/train/default.yaml``."""
    if isinstance(given, TrainOptions):
        return given
    return parse(options, with_defaults(group_defaults("train", "default"), given), "train.")


@dataclass(frozen=True)
class FitSettings:
    """One :func:`~prune_cli.engine.loop.fit` call: the stage's options, the evaluations'
    precision (``metrics.precision``) and what the stage sets itself: its ``epochs`` (the
    options' unless a stage says otherwise), a step budget ``max_steps`` (None: every epoch runs
    whole; Scratch-B ends inside its last epoch) and the learning-rate schedule it follows,
    epochs ``schedule_start, ...`` of a schedule of ``schedule_epochs`` epochs (rewinding replays
    the end of the dense training's schedule: :func:`~prune_cli.engine.optim.build_scheduler`).
    """

    options: TrainOptions
    eval_precision: str
    epochs: int
    max_steps: int | None
    schedule_epochs: int
    schedule_start: int

    @classmethod
    def of(
        cls,
        options: TrainOptions,
        *,
        eval_precision: str,
        epochs: int | None = None,
        max_steps: int | None = None,
        schedule_epochs: int | None = None,
        schedule_start: int = 0,
    ) -> FitSettings:
        """The settings of a stage trained with ``options`` (``epochs`` etc.: see the class)."""
        epochs = options.epochs if epochs is None else int(epochs)
        return cls(
            options=options,
            eval_precision=eval_precision,
            epochs=epochs,
            max_steps=max_steps,
            schedule_epochs=epochs if schedule_epochs is None else int(schedule_epochs),
            schedule_start=int(schedule_start),
        )

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | TrainOptions | FitSettings) -> FitSettings:
        """Settings from a ``train`` node (a :class:`FitSettings` is returned as it is): the
        keys it leaves out from ``configs/train/default.yaml``, its evaluation precision from
        ``eval_precision`` (default: ``metrics.precision`` of ``configs/config.yaml``)."""
        if isinstance(cfg, FitSettings):
            return cfg
        stage: dict[str, Any] = {}
        if isinstance(cfg, Mapping):
            stage = {k: cfg[k] for k in STAGE_KEYS if k in cfg}
            cfg = {k: v for k, v in cfg.items() if k not in STAGE_KEYS}
        if "eval_precision" not in stage:
            stage["eval_precision"] = group_defaults("", "config", "metrics.precision")
        return cls.of(train_options(cfg), **stage)

    def replace(self, **changes: Any) -> FitSettings:
        return dataclasses.replace(self, **changes)


#: Keys of a mapping given to :meth:`FitSettings.from_cfg` that are the stage's, not options.
STAGE_KEYS = ("eval_precision", "max_steps", "schedule_epochs", "schedule_start")
