"""Sparsity schedules: how a target rate is reached (``method.schedule``).

- ``oneshot``: prune once to ``ratio``, then fine-tune (every method's default).
- ``iterative`` (Han et al. 2015): ``rounds`` rounds of *prune to the next ratio, then
  fine-tune*; :func:`round_ratios` gives the ratios (``linear``: ``ratio·k/N``; ``geometric``:
  the kept fraction shrinks by the same factor every round, ``1 - (1-ratio)^(k/N)``) and
  :func:`run_rounds` drives the rounds through a method's ``prune_to`` step
  (:class:`WeightSteps` for weights, :class:`ChannelSteps` for channels). Weights pruned in
  a round stay pruned (:func:`nested_masks`: a round's mask is a subset of the previous one).
- ``gradual`` (Zhu & Gupta 2017, "To prune, or not to prune"): the masks are recomputed during
  fine-tuning every ``frequency`` steps from ``initial`` to ``ratio`` along
  :func:`cubic_sparsity` over ``[start, end]`` epochs, and held between updates
  (:class:`GradualPruning`, a set of training hooks).

:func:`run_schedule` runs the one a method's ``method.schedule`` names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prune_cli.engine.hooks import TrainHooks
from prune_cli.errors import ConfigError
from prune_cli.pruning.channels import Importance, channel_prune
from prune_cli.pruning.masks import apply_masks, count_pruned, masks_from_scores, rate_check

log = logging.getLogger("prune_cli")

SCHEDULES = ("oneshot", "iterative", "gradual")
STEPS = ("linear", "geometric")

#: ``prune_to(model, ratio, previous_masks) -> (model, masks, achieved rate)``: one pruning
#: step of a method, to ``ratio`` of the *original* model, keeping what earlier steps removed.
#: A step object (:class:`WeightSteps`, :class:`ChannelSteps`) also has ``info``: how the model
#: it returns was cut from the original one (``channels``/``keep``; empty for masks alone).
PruneTo = Callable[
    [nn.Module, float, Mapping[str, torch.Tensor]], tuple[nn.Module, dict[str, torch.Tensor], float]
]
#: ``retrain(model, masks, stage, info) -> model``: what happens between iterative rounds (the
#: pipeline fine-tunes, or rewinds and retrains); ``info`` is the step's.
Retrain = Callable[[nn.Module, Mapping[str, torch.Tensor], str, Mapping[str, Any]], nn.Module]


def cubic_sparsity(final: float, t: float, total: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: ``final + (initial - final) * (1 - t/total)^3`` at step ``t`` of
    ``total``; ``initial`` at ``t = 0``, ``final`` once ``t >= total`` (and at once when
    ``total <= 0``)."""
    if total <= 0 or t >= total:
        return final
    return final + (initial - final) * (1.0 - max(t, 0.0) / total) ** 3


def round_ratios(ratio: float, rounds: int, steps: str = "linear") -> list[float]:
    """The ratio each of ``rounds`` iterative rounds prunes to (of the original model); the
    last is ``ratio`` exactly. ``linear``: ``ratio·k/N``; ``geometric``: kept fraction
    ``(1-ratio)^(k/N)``, i.e. every round removes the same fraction of what is left."""
    if steps not in STEPS:
        raise ConfigError(f"unknown method.steps {steps!r}; choose one of: {', '.join(STEPS)}")
    if rounds < 1:
        raise ConfigError(f"method.rounds {rounds} is out of range; valid: an integer >= 1")
    if steps == "linear":
        out = [ratio * k / rounds for k in range(1, rounds + 1)]
    else:
        out = [1.0 - (1.0 - ratio) ** (k / rounds) for k in range(1, rounds + 1)]
    out[-1] = float(ratio)
    return out


def nested_masks(
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    scope: str = "global",
    mode: str = "exact",
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`masks_from_scores` where the entries ``previous`` masked out rank lowest, so they
    are removed first and stay removed: the result is a subset of ``previous`` whenever
    ``ratio`` removes at least as many entries (rounds with growing ratios)."""
    if not previous:
        return masks_from_scores(scores, ratio, scope, mode)
    ranked = {}
    for name, s in scores.items():
        s = s.detach().float()
        kept = previous.get(name)
        ranked[name] = s if kept is None else torch.where(kept.to(s.device), s, -math.inf)
    masks = masks_from_scores(ranked, ratio, scope, mode)
    return {n: m & previous[n].to(m.device) if n in previous else m for n, m in masks.items()}


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """The fraction of the masks' entries removed (0 for no masks)."""
    zeros, total = count_pruned(masks)
    return round(zeros / total, 6) if total else 0.0


# ----------------------------------------------------------------------------- iterative
def run_schedule(
    schedule: str,
    model: nn.Module,
    prune_to: PruneTo,
    ratio: float,
    *,
    rounds: int = 1,
    steps: str = "linear",
    record: Callable[[str, nn.Module], Any] | None = None,
    retrain: Retrain | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Prune ``model`` to ``ratio`` by ``schedule`` with the step ``prune_to``: once
    (``oneshot``), in ``rounds`` rounds of ``steps`` (``iterative``, :func:`run_rounds`), or not
    now (``gradual``: the masks come during fine-tuning, :class:`GradualPruning`). Returns the
    model, its masks and ``info`` (``schedule``: what ran, for iterative and gradual; empty for
    one shot, whose info stays what it was before schedules existed)."""
    if schedule == "gradual":
        return (
            model,
            {},
            {"schedule": {"name": "gradual", "ratio": ratio, "pruned_during": "finetune"}},
        )
    if schedule == "oneshot":
        model, masks, _ = prune_to(model, ratio, {})
        return model, masks, {}
    ratios = round_ratios(ratio, rounds, steps)
    model, masks, points = run_rounds(model, ratios, prune_to, record=record, retrain=retrain)
    info = {
        "schedule": {
            "name": "iterative",
            "rounds": rounds,
            "steps": steps,
            "ratios": [round(r, 6) for r in ratios],
            "points": points,
            "finetune_epochs_per_round": "finetune.epochs",
        }
    }
    return model, masks, info


def run_rounds(
    model: nn.Module,
    ratios: Sequence[float],
    prune_to: PruneTo,
    *,
    record: Callable[[str, nn.Module], Any] | None = None,
    retrain: Retrain | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Iterative pruning: for each ratio, ``prune_to`` it, then (all rounds but the last)
    record the pruned model as stage ``round_k``, retrain it (history stage
    ``finetune_round_k``; ``retrain`` gets the step's ``info``) and record
    ``round_k_finetuned``. The last round's pruned and retrained models are the pipeline's
    ``pruned`` and ``final`` stages (its fine-tune stage).

    Returns the model, its masks and one entry per round (``round``, ``target``,
    ``achieved``, ``stages``: the stage names holding its figures).
    """
    masks: dict[str, torch.Tensor] = {}
    rounds: list[dict[str, Any]] = []
    for k, ratio in enumerate(ratios, start=1):
        model, masks, achieved = prune_to(model, float(ratio), masks)
        entry: dict[str, Any] = {"round": k, "target": round(float(ratio), 6)}
        entry["achieved"] = round(float(achieved), 6)
        log.info("round %d/%d: pruned to %.4f (asked %.4f)", k, len(ratios), achieved, ratio)
        if k == len(ratios):
            entry["stages"] = ["pruned", "final"]
        else:
            entry["stages"] = [f"round_{k}"]
            if record is not None:
                record(f"round_{k}", model)
            if retrain is not None:
                info = getattr(prune_to, "info", None) or {}
                model = retrain(model, masks, f"finetune_round_{k}", info)
                entry["stages"].append(f"round_{k}_finetuned")
                if record is not None:
                    record(f"round_{k}_finetuned", model)
        rounds.append(entry)
    return model, masks, rounds


class WeightSteps:
    """The ``prune_to`` step of the unstructured methods: the masks of the lowest ``scores``
    (``scores(model)``: a score per weight of every pruned tensor) at ``ratio`` over ``scope``,
    nested in the previous round's (:func:`nested_masks`), applied to the model. ``info`` is how
    the model was cut before the rounds (double_pruning's slimming), else empty."""

    def __init__(
        self,
        scores: Callable[[nn.Module], Mapping[str, torch.Tensor]],
        *,
        scope: str,
        mode: str,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.scores, self.scope, self.mode = scores, scope, mode
        self.info: dict[str, Any] = dict(info or {})

    def __call__(
        self, model: nn.Module, ratio: float, previous: Mapping[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, torch.Tensor], float]:
        masks = nested_masks(self.scores(model), ratio, self.scope, self.mode, previous)
        apply_masks(model, masks)
        return model, masks, rate_check(masks, ratio)["achieved"]


class ChannelSteps:
    """The ``prune_to`` step of the channel-removal methods: every call cuts the (already cut)
    model to ``ratio`` of the *original* channel counts with :func:`channel_prune` (its
    ``prior``), so the last round keeps as many channels as one shot to the same ratio would;
    ``info`` is the last cut's, described from the original model (what ``rebuild`` needs)."""

    def __init__(
        self, importance: Importance, input_size: Sequence[int], device: Any, **settings: Any
    ) -> None:
        self.importance, self.input_size, self.device = importance, input_size, device
        self.settings = settings
        self.info: dict[str, Any] = {}
        self.prior: dict[str, torch.Tensor] | None = None

    def __call__(
        self, model: nn.Module, ratio: float, previous: Mapping[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, torch.Tensor], float]:
        pruned = channel_prune(
            model,
            self.importance,
            ratio,
            input_size=self.input_size,
            prior=self.prior,
            **self.settings,
        )
        self.info = pruned.info
        self.prior = original_keep(pruned.info)
        return pruned.model.to(self.device), {}, pruned.info["rates"]["channels"]["achieved"]


def original_keep(info: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The kept channels of every cut group over its original channels, from a
    :func:`channel_prune` ``info`` (``channels`` and ``keep``)."""
    out = {}
    for name, (kept, total) in info["channels"].items():
        if int(kept) == int(total):
            continue
        mask = torch.zeros(int(total), dtype=torch.bool)
        mask[torch.tensor(info["keep"][name], dtype=torch.long)] = True
        out[name] = mask
    return out


# ----------------------------------------------------------------------------- gradual
class GradualPruning(TrainHooks):
    """Zhu & Gupta's gradual pruning as training hooks (unstructured masks).

    The stage's steps are counted from 0 (``epoch * steps_per_epoch + i``). Pruning starts at
    ``start_step = round(start · steps_per_epoch)`` and ends at ``end_step = round(end ·
    steps_per_epoch)``, capped at the stage's last step so that the last update happens
    (``end`` defaults to the stage's epochs). Before the forward pass of every step ``t`` with
    ``t - start_step`` a multiple of ``frequency``, and at ``end_step``, the masks become those
    of ``cubic_sparsity(ratio, t - start_step, end_step - start_step, initial)`` over
    ``scores(model)`` (:func:`nested_masks`: pruned weights stay pruned); between updates they
    are held at zero as :class:`~prune_cli.pruning.masks.MaskHold` holds them. At ``end_step``
    the target is ``ratio`` exactly.

    ``updates`` lists every update (``step``, ``target``, ``achieved``); ``epochs`` one point
    per epoch end (``epoch``, ``step``, ``target``, ``achieved``); ``masks`` the current masks.
    """

    def __init__(
        self,
        scores: Callable[[nn.Module], dict[str, torch.Tensor]],
        ratio: float,
        *,
        initial: float = 0.0,
        start: float = 0.0,
        end: float | None = None,
        frequency: int = 100,
        scope: str = "global",
        mode: str = "exact",
    ) -> None:
        if not 0.0 <= initial <= ratio:
            raise ConfigError(
                f"method.initial {initial} is out of range; valid: 0 <= initial <= ratio ({ratio})"
            )
        if frequency < 1:
            raise ConfigError(f"method.frequency {frequency} is out of range; valid: >= 1")
        self.scores, self.ratio, self.initial = scores, float(ratio), float(initial)
        self.start, self.end, self.frequency = float(start), end, int(frequency)
        self.scope, self.mode = scope, mode
        self.masks: dict[str, torch.Tensor] | None = None
        self.start_step = self.end_step = 0
        self.steps_per_epoch = 0
        self.updates: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self._target = 0.0
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def steps(self, epochs: int, steps_per_epoch: int) -> tuple[int, int]:
        """``(start_step, end_step)`` of a stage of ``epochs`` x ``steps_per_epoch`` steps."""
        end = float(epochs) if self.end is None else float(self.end)
        check_window(self.start, end, epochs)
        last = epochs * steps_per_epoch - 1
        end_step = min(round(end * steps_per_epoch), last)
        start_step = min(round(self.start * steps_per_epoch), end_step)
        return start_step, end_step

    def target(self, step: int) -> float:
        """The sparsity the schedule asks for at the latest update at or before ``step``."""
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.ratio
        last_update = self.start_step + (step - self.start_step) // self.frequency * self.frequency
        span = self.end_step - self.start_step
        return cubic_sparsity(self.ratio, last_update - self.start_step, span, self.initial)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, model: nn.Module, epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.start_step, self.end_step = self.steps(epochs, steps_per_epoch)

    def before_step(self, model: nn.Module, step: int, epoch: int) -> None:
        if step < self.start_step:
            return
        due = (step - self.start_step) % self.frequency == 0 or step == self.end_step
        # No masks yet past the start: a resumed stage; its masks are those of the last update.
        if (due and step <= self.end_step) or self.masks is None:
            self._update(model, step, self.target(step))

    @torch.no_grad()
    def _update(self, model: nn.Module, step: int, target: float) -> None:
        self.masks = nested_masks(self.scores(model), target, self.scope, self.mode, self.masks)
        apply_masks(model, self.masks)
        params = dict(model.named_parameters())
        self._pairs = [
            (params[n], m.to(params[n].device, params[n].dtype)) for n, m in self.masks.items()
        ]
        self._target = target
        self.updates.append(
            {"step": step, "target": round(target, 6), "achieved": sparsity_of(self.masks)}
        )

    def after_backward(self, model: nn.Module) -> None:
        for p, m in self._pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for p, m in self._pairs:
            p.mul_(m)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        self.epochs.append(
            {
                "epoch": epoch + 1,
                "step": (epoch + 1) * self.steps_per_epoch,
                "target": round(self._target, 6),
                "achieved": sparsity_of(self.masks or {}),
            }
        )

    def summary(self) -> dict[str, Any]:
        """The schedule for ``metrics.json``: settings, steps, every update and epoch point."""
        return {
            "name": "gradual",
            "ratio": self.ratio,
            "initial": self.initial,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "steps_per_epoch": self.steps_per_epoch,
            "updates": self.updates,
            "epochs": self.epochs,
        }


def check_window(start: float, end: float | None, epochs: int) -> None:
    """``0 <= start < end <= epochs`` (``end`` None: ``epochs``), one-line ConfigError if not."""
    end = float(epochs) if end is None else float(end)
    if epochs < 1:
        raise ConfigError(
            "method.schedule=gradual prunes during fine-tuning: finetune.epochs 0 is invalid; "
            "valid: an integer >= 1"
        )
    if not 0.0 <= start < end <= epochs:
        raise ConfigError(
            f"method.start {start} / method.end {end} are out of range; valid: "
            f"0 <= start < end <= finetune.epochs ({epochs})"
        )
