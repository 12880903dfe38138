"""Dense training through the trained-model cache (:mod:`prune_cli.cache`), and the figures
measured once per trained checkpoint: a sweep over ratios or methods trains the dense model once,
and evaluates it (and measures its latency) once.

The rewind points ``finetune.rewind`` needs are kept beside the trained model: the weights
training started from (always), and those after epoch K when the run asks for ``epoch:K`` (such a
run trains its own entry: the same dense training, keyed apart).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from prune_cli import distributed
from prune_cli.cache import (
    RewindSaver,
    TrainedCache,
    cache_key,
    rewind_point_path,
    save_rewind_point,
    saved_rewind_points,
    training_payload,
)
from prune_cli.engine import fit, load_checkpoint
from prune_cli.engine.hooks import CompositeHooks
from prune_cli.engine.loop import FitResult, StageFiles, write_history
from prune_cli.engine.precision import resolve_precision
from prune_cli.engine.settings import FitSettings
from prune_cli.errors import UserError
from prune_cli.record import RunFiles, RunRecord
from prune_cli.schema import RunPlan

log = logging.getLogger("prune_cli")

#: ``test_eval(model) -> {"loss", "top1", "top5", "n"}``: the run's test evaluation.
TestEval = Callable[[nn.Module], dict[str, float]]


def fit_summary(
    result: FitResult, model: nn.Module, epochs: int, device: Any, test_eval: TestEval
) -> dict[str, Any]:
    """Final and best-epoch accuracy of a training stage; best is chosen on val when present
    (and then evaluated on the test split here)."""
    summary: dict[str, Any] = {
        "epochs": epochs,
        **({"numerics": result.numerics} if result.numerics else {}),
        "selected_on": result.select_split,
        "best_epoch": result.best_epoch,
        "best_top1_selection": result.best_top1,
        "seconds": round(result.seconds, 3),
    }
    if result.best_path is not None and result.select_split != "test":
        best = copy.deepcopy(model)
        best.load_state_dict(load_checkpoint(result.best_path, device)["model"])
        summary["best_top1_test"] = round(test_eval(best)["top1"], 4)
    elif result.best_top1 is not None:
        summary["best_top1_test"] = round(result.best_top1, 4)
    return summary


class CachedTraining:
    """The run's dense training stages (``train``, and ``dense_reference`` when it is trained
    apart) through the trained-model cache, and what is measured on the trained models."""

    def __init__(
        self,
        plan: RunPlan,
        data: Any,
        device: Any,
        record: RunRecord,
        files: RunFiles,
        test_eval: TestEval,
    ) -> None:
        self.plan, self.data, self.device = plan, data, device
        self.record, self.files, self.test_eval = record, files, test_eval
        self.cache = TrainedCache(plan.cache.enabled, Path(plan.cache.dir))
        #: The trained checkpoint of each training stage: figures are cached beside it.
        self.trained_at: dict[str, Path] = {}
        #: The training stages run here (not loaded from the cache).
        self.fitted: dict[str, FitResult] = {}
        #: Where the ``train`` stage's rewind points are (its cache entry, or the run's).
        self.rewind_dir: Path = files.ckpt_dir

    def train_or_load(
        self,
        model: nn.Module,
        hooks: Any,
        method_training: Mapping[str, Any],
        *,
        stage: str = "train",
        filename: str = "trained.pt",
        start: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` (with the training ``hooks``; ``method_training``: what the method
        changes about training, :meth:`~prune_cli.methods.Method.training_signature`) through
        the cache, or load the entry a run with the same setup trained; ``start``: the
        weights training starts from when they are not a fresh initialisation. Returns the
        ``metrics.json`` summary of the stage."""
        plan = self.plan
        signature = dict(method_training)
        if stage == "train" and plan.finetune.rewind_epoch is not None:
            # The epoch-K weights are saved only while training: a run that needs them trains
            # its own cache entry (the same dense training, keyed apart), so a sweep over
            # finetune.rewind=none,epoch:K never finds an entry trained without them.
            signature = {**signature, "rewind_epochs": [plan.finetune.rewind_epoch]}
        train = dict(plan.resolved["train"])
        # ``auto`` names what this machine does natively: the key holds what training used.
        train["precision"] = resolve_precision(plan.train.precision, self.device).name
        payload = training_payload(
            model=plan.resolved["model"],
            dataset=plan.resolved["dataset"],
            train=train,
            seed=plan.seed,
            deterministic=plan.deterministic,
            method_training=signature if start is None else {**signature, "start": start},
            device_type=self.device.type,
        )
        files = self.files
        run = StageFiles(stage, files.ckpt_dir, files.history_csv, files.resume)
        label = f"{plan.model.name}_{plan.dataset.name}"
        trained = self.cache.train_or_load(
            model,
            payload,
            run,
            label=label,
            arch=plan.model.name,
            device=self.device,
            train=lambda stage_files: self._train(model, hooks, stage_files),
            filename=filename,
        )
        write_history(files.history_csv, stage, trained.history)
        if trained.summary.get("from_cache"):  # the curves of the training that made the entry
            for row in trained.history:
                self.record.log_epoch({**row, "stage": stage})
        self.trained_at[stage] = trained.checkpoint
        if stage == "train":  # where the training's rewind points are (finetune.rewind)
            self.rewind_dir = (
                self.cache.entry(label, payload) if self.cache.enabled else files.ckpt_dir
            )
            self._check_rewind_point()
        return trained.summary

    def _check_rewind_point(self) -> None:
        """The rewind point ``finetune.rewind`` asks for must have been saved when the trained
        model was: an entry trained before (or by a run that asked for another epoch) lacks it,
        and the run stops here rather than rewind to something else."""
        point = self.plan.finetune.rewind_point
        if point is None or rewind_point_path(self.rewind_dir, point).is_file():
            return
        saved = ", ".join(saved_rewind_points(self.rewind_dir)) or "none"
        raise UserError(
            f"finetune.rewind={point}: the trained model in {self.rewind_dir} has no saved "
            f"{point} weights (saved there: {saved}; it was trained before rewind points were "
            "kept); delete that directory, or set cache.dir to another one, to train it again"
        )

    def _train(
        self, model: nn.Module, hooks: Any, files: StageFiles
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Train ``model`` with the ``train`` settings and the given training hooks; the
        weights it starts from (and those after epoch K for ``finetune.rewind=epoch:K``) are
        kept beside the trained model as rewind points (:mod:`prune_cli.cache`)."""
        settings = FitSettings.of(self.plan.train, eval_precision=self.plan.metrics.precision)
        if not (files.resume and files.last.is_file()):  # a resumed one saved its start before
            save_rewind_point(files.ckpt_dir, "init", model)
        rewind_epoch = self.plan.finetune.rewind_epoch
        if files.stage == "train" and rewind_epoch is not None:
            hooks = CompositeHooks([hooks, RewindSaver(files.ckpt_dir, [rewind_epoch])])
        result = fit(
            model,
            self.data,
            settings,
            device=self.device,
            files=dataclasses.replace(files, on_epoch=self.record.log_epoch),
            hooks=hooks,
            seed=self.plan.seed,
        )
        self.fitted[files.stage] = result
        for note in result.notes:  # what the stage did otherwise than asked
            self.record.warn(note)
        summary = fit_summary(result, model, settings.epochs, self.device, self.test_eval)
        return summary, result.history

    # ------------------------------------------------------------------ figures
    def figures(
        self,
        model: nn.Module,
        checkpoint: Path | None,
        key: Mapping[str, Any],
        compute: Callable[[], Mapping[str, Any]],
    ) -> tuple[dict[str, Any], str]:
        """Figures of ``model`` as trained into ``checkpoint``, computed once per checkpoint
        and ``key`` (:meth:`TrainedCache.figures`: every job of a sweep reuses them) when there
        is a checkpoint and ``cache.figures`` is on. The key also names the model's structure
        (a method's re-parameterisation of the same weights is another measurement). Returns
        the figures and where they came from: ``cached`` or ``measured``."""
        if checkpoint is None or not self.plan.cache.figures:
            return dict(compute()), "measured"
        full = {**key, "module": cache_key({"repr": repr(model)})}
        got = self.cache.figures(checkpoint, full, compute)
        return got.values, "cached" if got.cached else "measured"

    def test_evaluation(self, model: nn.Module, stage: str) -> dict[str, float]:
        """The test evaluation of ``model`` as the training ``stage`` trained it: once per
        trained checkpoint and evaluation setting."""
        checkpoint = self.trained_at.get(stage)
        key = {
            "kind": "test_eval",
            "split": "test",
            "batch_size": self.plan.train.eval_batch_size,
            "device": self.device.type,
            "world_size": distributed.world_size(),
        }
        # Trained here and evaluated on the test split after its last epoch, as evaluating
        # again would do it on the same weights: the same figures, an evaluation sooner.
        fitted = self.fitted.get(stage)
        key["precision"] = self.plan.metrics.precision
        same = (
            fitted is not None
            and fitted.select_split == "test"
            and fitted.eval_batch_size == key["batch_size"]
            and fitted.eval_precision == key["precision"]
        )
        last = fitted.last_eval if same else None

        def compute() -> dict[str, float]:
            return last.as_dict() if last is not None else self.test_eval(model)

        values, source = self.figures(model, checkpoint, key, compute)
        if source == "cached":
            log.info("test evaluation of %s reused from the trained-model cache", checkpoint)
        return values
