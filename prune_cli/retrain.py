"""What the fine-tune stage does after pruning, beyond plain fine-tuning (issue 13).

- **Distillation** (``finetune.kd.alpha`` > 0, ``finetune.kd.temperature``; Hinton et al.
  2015): the dense reference is the teacher (:class:`~prune_cli.engine.distill.Distiller`), in
  every fine-tuning stage of the run.
- **Rewinding** (``finetune.rewind``):

  - ``init`` (lottery ticket, Frankle & Carbin 2019): the pruned model's weights go back to the
    values dense training started from (``rewind_init.pt`` of the training's cache entry; for a
    physically narrower model, the kept channels' values), the masks are applied, and it is
    retrained with the dense training's settings (``train.*``) for ``train.epochs``;
  - ``epoch:K`` (late rewinding, Frankle et al. 2020): the same from the weights after epoch K
    of dense training (``rewind_epoch<K>.pt``), retrained for the last ``train.epochs - K``
    epochs of the training schedule;
  - ``lr`` (learning-rate rewinding, Renda et al. 2020): the trained weights are kept and
    fine-tuned for ``finetune.epochs`` with the learning rates of the training schedule's last
    ``finetune.epochs`` epochs (``train.*`` settings).

- **From scratch** (``finetune.from_scratch``; Liu et al. 2019, "Rethinking the value of network
  pruning"): the pruned architecture (and its masks) re-initialised — a fresh draw of the dense
  model's initialisation (seeded by :func:`scratch_seed`) cut to the kept channels — and trained
  with ``train.*`` for ``train.epochs`` (``same_epochs``, Scratch-E) or for the dense training's
  MAC budget (``same_budget``, Scratch-B: :func:`scratch_steps`).

Rewinding and from-scratch training are refused before any work (one-line ConfigError,
:func:`prune_cli.schema.check_plan`) for a method whose pruned model has no dense-training
counterpart (``Method.no_weight_reset``: sharing, ``none``, dynamic_filter), together, with
``pretrained=`` where the rewind point was never saved, and with a gradual schedule (which prunes
during the stage they would retrain). With an iterative schedule
the rewinding happens before every round's retraining, not only the last (Frankle & Carbin's
iterative pruning with rewinding). A method that changes dense training (network slimming's
sparsity term) is retrained with ``train.*`` alone, which the run says in its warnings.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.cache import load_rewind_point, rewind_point_path
from prune_cli.engine.distill import Distiller
from prune_cli.engine.loop import FitResult, StageFiles, fit
from prune_cli.engine.memo import EvalMemo
from prune_cli.engine.settings import FitSettings, TrainOptions
from prune_cli.pruning import MaskHold, rate_check
from prune_cli.pruning.channels import rebuild
from prune_cli.pruning.masks import apply_masks
from prune_cli.record import RunFiles, RunRecord
from prune_cli.schema import FinetuneOptions, RunPlan
from prune_cli.trained import TestEval, fit_summary


def stage_settings(
    finetune: FinetuneOptions, train: TrainOptions, eval_precision: str
) -> FitSettings:
    """The settings of the fine-tune stage, and with them the learning-rate schedule it
    follows (``schedule_epochs``/``schedule_start``: see
    :func:`prune_cli.engine.optim.build_scheduler`). Scratch-B's step budget is set by the
    caller (it needs the pruned model's MACs)."""
    if not finetune.uses_train_recipe:
        return FitSettings.of(finetune, eval_precision=eval_precision)
    total = train.epochs
    span: dict[str, int] = {}
    if finetune.rewind == "lr":
        epochs = finetune.epochs
        span = {"epochs": epochs, "schedule_epochs": total, "schedule_start": total - epochs}
    elif finetune.rewind_epoch is not None:
        k = finetune.rewind_epoch
        span = {"epochs": total - k, "schedule_epochs": total, "schedule_start": k}
    return FitSettings.of(train, eval_precision=eval_precision, **span)


def scratch_seed(seed: int) -> int:
    """The seed of a from-scratch model's fresh initialisation: derived from the run seed, and
    never the seed of the dense model's own initialisation (which would make it the lottery
    ticket rather than a random re-initialisation)."""
    digest = hashlib.sha256(f"prune-cli from_scratch {int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63 - 1) + 1


def scratch_steps(epochs: int, steps_per_epoch: int, dense_macs: float, pruned_macs: float) -> int:
    """Scratch-B's training steps (Liu et al. 2019): the dense training's budget,
    ``epochs * steps_per_epoch * dense_macs / pruned_macs``, rounded to the nearest step
    (halves up) and never fewer than the dense training's steps."""
    if pruned_macs <= 0:
        raise ValueError(f"the pruned model's MACs must be > 0, not {pruned_macs}")
    dense_steps = int(epochs) * int(steps_per_epoch)
    steps = math.floor(dense_steps * float(dense_macs) / float(pruned_macs) + 0.5)
    return max(dense_steps, steps)


@torch.no_grad()
def load_start_weights(
    model: nn.Module,
    dense: nn.Module,
    state: Mapping[str, torch.Tensor],
    info: Mapping[str, Any],
    masks: Mapping[str, torch.Tensor],
) -> None:
    """Set the pruned ``model``'s weights from ``state``, a state dict of the *dense*
    architecture ``dense`` (its layout; not changed): for a physically narrower model
    (``info["channels"]``, as :func:`~prune_cli.pruning.channels.channel_prune` records it) the
    kept channels of ``state`` are sliced out (:func:`~prune_cli.pruning.channels.rebuild` cut
    at ``info["keep"]``); then ``masks`` zero the pruned weights. Every parameter and buffer of
    ``model`` is replaced (BN statistics included)."""
    start = copy.deepcopy(dense)
    start.load_state_dict(dict(state))
    if info.get("channels"):
        start = rebuild(start, info)
    model.load_state_dict(start.state_dict())
    apply_masks(model, masks)


class Retrainer:
    """The run's fine-tuning: the fine-tune stage (:meth:`stage`), and the fine-tuning a method
    asks for while pruning (:meth:`finetune`: after slimming, say; :meth:`retrain_round`: between
    the rounds of an iterative schedule, rewinding as the fine-tune stage does). Every fit holds
    the masks and distils from the dense reference when ``finetune.kd.alpha > 0``.

    ``dense`` is the dense reference (the teacher), ``baseline`` the trained model in the dense
    architecture (the layout of the rewind points), ``rewind_dir`` where the training's rewind
    points are, and ``fresh_model(seed)`` a freshly initialised model of the run's architecture
    (from-scratch training)."""

    def __init__(
        self,
        plan: RunPlan,
        data: Any,
        device: torch.device,
        record: RunRecord,
        files: RunFiles,
        test_eval: TestEval,
        *,
        dense: nn.Module,
        baseline: nn.Module,
        rewind_dir: Path,
        fresh_model: Callable[[int], nn.Module],
        evaluations: EvalMemo | None = None,
    ) -> None:
        self.plan, self.data, self.device = plan, data, device
        self.record, self.files, self.test_eval = record, files, test_eval
        self.dense, self.baseline, self.rewind_dir = dense, baseline, rewind_dir
        self.fresh_model = fresh_model
        #: Where a stage's last-epoch test evaluation is kept for a later evaluation of the
        #: same weights (the final stage's): :mod:`prune_cli.engine.memo`.
        self.evaluations = evaluations
        #: Seconds spent fine-tuning inside ``prune()``: timed as their own stages.
        self.inner_seconds = 0.0

    # ------------------------------------------------------------------ one fit
    def fit_stage(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        stage: str,
        epochs: int | None = None,
        settings: FitSettings | None = None,
        hooks: Any = None,
    ) -> FitResult:
        """Fine-tune with the ``finetune`` settings (or ``settings``; ``epochs`` overrides),
        holding ``masks`` (or with ``hooks`` that hold masks of their own: a gradual
        schedule's), distilling from the dense reference when ``finetune.kd.alpha > 0``; the
        stage's summary goes to ``metrics[stage]``."""
        if settings is None:
            precision = self.plan.metrics.precision
            settings = FitSettings.of(self.plan.finetune, eval_precision=precision)
        if epochs is not None:
            settings = settings.replace(epochs=epochs)
        tic = time.perf_counter()
        files = self.files
        stage_files = StageFiles(
            stage,
            files.ckpt_dir,
            files.history_csv,
            files.resume,
            {"masks": dict(masks)},
            on_epoch=self.record.log_epoch,
        )
        result = fit(
            model,
            self.data,
            settings,
            device=self.device,
            files=stage_files,
            hooks=hooks if hooks is not None else (MaskHold(model, masks) if masks else None),
            seed=self.plan.seed + 1,
            criterion=self.distiller(),
        )
        for note in result.notes:  # what the stage did otherwise than asked
            self.record.warn(note)
        self._keep_last_eval(result, stage)
        metrics = self.record.metrics
        metrics[stage] = fit_summary(result, model, settings.epochs, self.device, self.test_eval)
        if self.plan.finetune.distills:
            metrics[stage]["kd"] = self.kd_record()
        self.record.timed(stage, time.perf_counter() - tic)
        return result

    def _keep_last_eval(self, result: FitResult, stage: str) -> None:
        """The stage's evaluation after its last epoch, when it was a test evaluation, for a
        later test evaluation of the same weights."""
        ev = result.last_eval
        if self.evaluations is None or ev is None or result.last_state is None:
            return
        if result.select_split != "test" or result.eval_batch_size is None:
            return
        setting = ("test", result.eval_batch_size, str(result.eval_precision))
        source = f"the {stage} stage's evaluation after its last epoch"
        self.evaluations.add(result.last_state, setting, ev.as_dict(), source)

    def distiller(self) -> Distiller | None:
        """Distillation from the dense reference (``finetune.kd``), or None when it is off.
        The teacher is the dense reference of this run, loaded or trained once through the
        cache in the ``dense_reference`` stage; it is only evaluated here."""
        kd = self.plan.finetune.kd
        if kd.alpha <= 0:
            return None
        return Distiller(self.dense, kd.alpha, kd.temperature)

    def kd_record(self) -> dict[str, Any]:
        reference = self.record.metrics.get("dense_reference", {})
        return {
            "alpha": self.plan.finetune.kd.alpha,
            "temperature": self.plan.finetune.kd.temperature,
            "teacher": "dense_reference",
            "teacher_source": reference.get("source"),
            "teacher_top1": reference.get("top1"),
        }

    # ------------------------------------------------------------------ while pruning
    def finetune(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        stage: str,
        epochs: int | None = None,
    ) -> nn.Module:
        """``PruneContext.finetune``: fine-tune ``model`` with ``finetune.*`` as stage
        ``stage`` (``epochs`` overrides their epoch count)."""
        tic = time.perf_counter()
        self.fit_stage(model, masks, stage, epochs)
        self.inner_seconds += time.perf_counter() - tic
        return model

    def retrain_round(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        stage: str,
        info: Mapping[str, Any],
    ) -> nn.Module:
        """``PruneContext.retrain``: between the rounds of an iterative schedule, the pruned
        model is retrained as the fine-tune stage retrains it: rewound to ``finetune.rewind``'s
        weights and retrained with ``train.*`` (Frankle & Carbin's iterative pruning with
        rewinding), with the learning rate rewound (``lr``), or fine-tuned with ``finetune.*``
        (also with ``finetune.from_scratch``, which trains the final architecture only).
        ``info``: how the round's model was cut from the dense one."""
        plan = self.plan.finetune
        if plan.from_scratch != "none" or not plan.uses_train_recipe:
            return self.finetune(model, masks, stage)
        tic = time.perf_counter()
        settings = stage_settings(plan, self.plan.train, self.plan.metrics.precision)
        record = self.rewind(model, masks, info, settings)
        self.fit_stage(model, masks, stage, settings=settings)
        self.record.metrics[stage].update(record)
        self.inner_seconds += time.perf_counter() - tic
        return model

    # ------------------------------------------------------------------ the fine-tune stage
    def stage(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        info: Mapping[str, Any],
        method: Any,
    ) -> dict[str, torch.Tensor]:
        """The fine-tune stage of ``model`` (pruned by ``method``, cut as ``info`` says,
        holding ``masks``, or pruned while it trains by the method's gradual schedule): its
        weights reset as ``finetune.rewind``/``finetune.from_scratch`` say, then trained;
        ``metrics.json`` ``finetune`` records both. Returns the masks the model holds after."""
        plan = self.plan.finetune
        settings = stage_settings(plan, self.plan.train, self.plan.metrics.precision)
        settings, reset = self.reset(model, masks, info, settings)
        self.notes(reset, method)
        schedule = method.finetune_hooks(model, masks)
        result = self.fit_stage(model, masks, "finetune", settings=settings, hooks=schedule)
        self.record.metrics["finetune"].update(reset)
        self.record.save()
        if schedule is None:
            return dict(masks)
        return self._gradual_done(schedule, result, method.name)

    def _gradual_done(self, schedule: Any, result: FitResult, method: str) -> dict[str, Any]:
        """After a gradual schedule: its masks are the run's (returned), its points go to
        ``metrics.json`` (``schedule``: every update; per epoch the target, the sparsity reached
        and the evaluation top-1 of that epoch), and its rate is checked."""
        masks = dict(schedule.masks or {})
        summary = schedule.summary()
        by_epoch = {int(row["epoch"]): row for row in result.history}
        for point in summary["epochs"]:
            row = by_epoch.get(int(point["epoch"]), {})
            point["eval_split"] = row.get("eval_split")
            point["eval_top1"] = row.get("eval_top1")
        metrics = self.record.metrics
        metrics["schedule"] = {**metrics.get("schedule", {}), **summary}
        info = metrics["prune_info"]
        info["rates"] = {**info.get("rates", {}), "weights": rate_check(masks, schedule.ratio)}
        self.record.check_prune_info({"rates": {"weights": info["rates"]["weights"]}}, method)
        return masks

    def rewind(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        info: Mapping[str, Any],
        settings: FitSettings,
    ) -> dict[str, Any]:
        """Rewind ``model`` (cut from the dense one as ``info`` says, holding ``masks``) to the
        weights ``finetune.rewind`` names, or keep its weights for learning-rate rewinding;
        returns what ``metrics.json`` records."""
        plan = self.plan.finetune
        first = settings.schedule_start
        schedule = f"train.* schedule, epochs {first + 1}..{first + settings.epochs}"
        if plan.rewind_point is None:  # lr: the weights stay, the learning rate goes back
            return {"rewind": {"to": "lr", "weights": "trained (kept)", "schedule": schedule}}
        state = load_rewind_point(self.rewind_dir, plan.rewind_point, self.device)
        load_start_weights(model, self.baseline, state, info, masks)
        source = rewind_point_path(self.rewind_dir, plan.rewind_point)
        return {"rewind": {"to": plan.rewind, "source": str(source), "schedule": schedule}}

    def reset(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        info: Mapping[str, Any],
        settings: FitSettings,
    ) -> tuple[FitSettings, dict[str, Any]]:
        """Before the fine-tune stage: rewind the pruned model's weights (``finetune.rewind``)
        or re-initialise them (``finetune.from_scratch``), as the module docstring says; for
        Scratch-B, set the step budget. Returns the stage's settings and what ``metrics.json``
        records under ``finetune`` (empty for plain fine-tuning)."""
        plan = self.plan.finetune
        if plan.rewind != "none":
            return settings, self.rewind(model, masks, info, settings)
        if plan.from_scratch == "none":
            return settings, {}
        seed = scratch_seed(self.plan.seed)
        fresh = self.fresh_model(seed)
        load_start_weights(model, self.baseline, fresh.state_dict(), info, masks)
        record: dict[str, Any] = {"mode": plan.from_scratch, "init_seed": seed}
        if plan.from_scratch == "same_budget":
            settings = self._scratch_budget(settings, record)
            schedule = f"train.* schedule stretched over {settings.epochs} epochs"
        else:
            schedule = f"train.* schedule, epochs 1..{settings.epochs}"
        record.update(epochs=settings.epochs, schedule=schedule)
        return settings, {"from_scratch": record}

    def _scratch_budget(self, settings: FitSettings, record: dict[str, Any]) -> FitSettings:
        """Scratch-B: the dense training's MAC budget in steps of the pruned model
        (:func:`scratch_steps`), recorded with its inputs."""
        loader = self.data.loader(
            "train",
            settings.options.batch_size,
            train=True,
            device=self.device,
            seed=self.plan.seed + 1,
            drop_last=False,
        )
        steps_per_epoch = len(loader)
        metrics = self.record.metrics
        dense_macs = float(metrics["dense_reference"]["macs"])
        pruned_macs = float(metrics["pruned"]["macs_nonzero"])
        steps = scratch_steps(self.plan.train.epochs, steps_per_epoch, dense_macs, pruned_macs)
        epochs = math.ceil(steps / steps_per_epoch)
        record.update(
            steps=steps,
            steps_per_epoch=steps_per_epoch,
            dense_macs=dense_macs,
            pruned_macs_nonzero=pruned_macs,
            formula="round(train.epochs * steps_per_epoch * dense_macs / pruned_macs)",
        )
        return settings.replace(epochs=epochs, schedule_epochs=epochs, max_steps=steps)

    def notes(self, reset: dict[str, Any], method: Any) -> None:
        """What the reset of the weights means for this method and schedule, in the record
        (``metrics.json`` ``finetune``) and, where it is not what the method does in dense
        training, in the warnings."""
        plan, record = self.plan.finetune, next(iter(reset.values()), None)
        if record is None:
            return
        if method.schedule == "iterative":
            record["rounds"] = (
                "fine-tuned with finetune.* between the rounds: from scratch trains the final "
                "architecture only"
                if plan.from_scratch != "none"
                else "the same before every round's retraining (finetune_round_k stages)"
            )
        if plan.resets_weights and method.training_signature():
            key = "rewind" if plan.rewind != "none" else "from_scratch"
            value = plan.rewind if key == "rewind" else plan.from_scratch
            record["method_training"] = "not applied: train.* alone"
            self.record.warn(
                f"finetune.{key}={value}: the pruned model is retrained with train.* alone, "
                f"without what {method.name} adds to dense training "
                f"({method.baseline_kind(True)})"
            )
