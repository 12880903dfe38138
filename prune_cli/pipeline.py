"""The pipeline: train -> prune -> fine-tune -> evaluate, one run directory per run.

It knows stages, not methods: everything method-specific goes through the :class:`Method`
interface (``prepare``, the training hooks, ``prune``) and the :class:`PruneContext` callbacks.
The stages are thin; the work is done by:

- :mod:`prune_cli.schema`: the typed run plan (``validate``, before any data is read or model
  built);
- :mod:`prune_cli.trained`: dense training through the trained-model cache, and the figures
  measured once per trained checkpoint;
- :mod:`prune_cli.retrain`: fine-tuning, distillation, rewinding, from-scratch training;
- :mod:`prune_cli.metrics` (:func:`~prune_cli.metrics.versus.dense_vs_final`: latency);
- :mod:`prune_cli.record`: ``metrics.json``, the log lines, the trackers, the warnings (its
  docstring has the run directory's layout).

A failure in any stage is recorded in ``metrics.json`` (``status: failed``, ``error: "<Kind>:
<one line>"``, ``failed_stage``); expected failures of the machine (out of memory, disk full,
permissions) are re-raised as the one-line :class:`~prune_cli.errors.UserError` that
:func:`explain` gives.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from prune_cli import distributed
from prune_cli.cache import file_sha256
from prune_cli.data import build_dataset
from prune_cli.engine import (
    evaluate,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from prune_cli.engine.memo import EvalMemo, Setting, state_fingerprint
from prune_cli.engine.precision import resolve_precision
from prune_cli.errors import explain, one_line
from prune_cli.export import FORMATS, export_formats, onnx_bytes
from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.report import netscore_units, relative_to_dense, stage_metrics
from prune_cli.metrics.versus import run_latency
from prune_cli.portable import describe, save_portable
from prune_cli.record import RunFiles, RunRecord, completed_before
from prune_cli.retrain import Retrainer
from prune_cli.run_models import RunModels, launch_dir
from prune_cli.schema import RunPlan, peek, validate_config
from prune_cli.tracking import RunInfo
from prune_cli.trained import CachedTraining

log = logging.getLogger("prune_cli")


class Pipeline:
    """One run. ``run()`` executes the stages and returns the ``metrics.json`` content."""

    #: The stages ``run()`` calls, in order.
    STAGES = (
        "validate",
        "setup",
        "train",
        "dense_reference",
        "prune",
        "finetune",
        "evaluate",
        "export",
    )

    def __init__(self, cfg: DictConfig | RunPlan, run_dir: Path) -> None:
        #: The config as composed; validate() types it into :attr:`plan`, which every stage
        #: reads from then on.
        self.cfg = cfg
        self.plan: RunPlan
        self.run_dir = Path(run_dir)
        self.files = RunFiles(self.run_dir)
        self.stage: str | None = None
        # Taken as typed only in validate(), so that a bad value is recorded in metrics.json too.
        self.seed = peek(cfg, "seed")
        metrics: dict[str, Any] = {
            "status": "running",
            "error": None,
            "model": str(peek(cfg, "model.name")),
            "dataset": str(peek(cfg, "dataset.name")),
            "method": str(peek(cfg, "method.name")),
            "ratio": peek(cfg, "ratio"),
            "seed": self.seed,
            "run_dir": str(self.run_dir),
            "netscore_units": None,
            "stages": [],
            "timings": {},
        }
        self.recorder = RunRecord(self.files.metrics_path, metrics)
        self.dense_checkpoint: Path | None = None  # the dense reference's, when trained here
        self.final_onnx: bytes | None = None  # the final model's ONNX graph, once made
        self.evaluations = EvalMemo()  # test evaluations made, by weights (engine/memo.py)

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json`` content."""
        return self.recorder.metrics

    def warn(self, message: str) -> None:
        self.recorder.warn(message)

    def _test_eval(self, model: nn.Module) -> dict[str, float]:
        """``model``'s test figures; taken from an evaluation of the same weights made before in
        this run (the fine-tune's last epoch) where there is one (:mod:`prune_cli.engine.memo`)."""
        setting = self.test_setting()
        fingerprint = state_fingerprint(model)
        found = self.evaluations.get(fingerprint, setting)
        if found is not None:
            log.info("test evaluation of the same weights taken from %s", found[1])
            return found[0]
        batch_size = self.plan.train.eval_batch_size
        loader = self.data.loader("test", batch_size, train=False, device=self.device)
        values = evaluate(model, loader, self.device, precision=setting[2]).as_dict()
        self.evaluations.add(fingerprint, setting, values, f"stage {self.stage}")
        return values

    def test_setting(self) -> Setting:
        """What the run's test figures depend on besides the weights."""
        precision = resolve_precision(self.plan.metrics.precision, self.device).name
        return ("test", self.plan.train.eval_batch_size, precision)

    def record(
        self,
        stage: str,
        model: nn.Module,
        per_layer: bool = False,
        evaluation: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """Evaluate ``model`` on the test split (or take ``evaluation``, its test loss/top-1/
        top-5 measured before) and store its figures as ``metrics[stage]``."""
        if evaluation is None:
            evaluation = self._test_eval(model)
        figures = stage_metrics(model, evaluation, self.input_size, self.units, per_layer=per_layer)
        return self.recorder.stage(stage, figures)

    # ------------------------------------------------------------------ stages
    def validate(self) -> None:
        """Check the whole config (:mod:`prune_cli.schema`) and go on with its typed plan."""
        self.recorder.launcher()  # first: a run that fails validation still says where it ran
        self.plan = plan = validate_config(self.cfg)
        self.files = RunFiles(self.run_dir, plan.resume)
        self.metrics["ratio"] = plan.ratio
        self.seed = self.metrics["seed"] = plan.seed
        self.units = plan.metrics.netscore.model_dump()
        self.metrics["netscore_units"] = netscore_units(self.units)
        if distributed.is_main():
            tags = {
                k: str(self.metrics[k]) for k in ("model", "dataset", "method", "ratio", "seed")
            }
            run = RunInfo(self.run_dir, launch_dir(), plan.resolved, tags)
            self.recorder.start_tracking(plan.resolved["logger"], run)

    def setup(self) -> None:
        plan = self.plan
        self.device = resolve_device(plan.device)
        seed_everything(self.seed, plan.deterministic)
        self.method = build_method(plan)
        self.plan, holdout = plan.held_out_for(self.method)
        self.data = build_dataset(self.plan.dataset)
        self.recorder.data_read(self.data, holdout)
        self.input_size = (self.data.in_channels, self.data.image_size, self.data.image_size)
        self.models = RunModels(self.plan, self.data, self.device, self.warn)
        self.model = self.method.prepare(self.models.fresh()).to(self.device)
        self.metrics["device"] = str(self.device)
        self.metrics["method_config"] = plan.resolved["method"]
        self.training = CachedTraining(
            self.plan, self.data, self.device, self.recorder, self.files, self._test_eval
        )

    def train(self) -> None:
        """Dense training, shared through the cache, or loading ``pretrained``.

        With ``pretrained=`` training is skipped, except for methods whose training is part of
        the method (``trains_from_pretrained``: DPF, the sparsity training of slimming), whose
        training then starts from the pretrained weights (keyed in the cache by its digest).
        """
        tic = time.perf_counter()
        pretrained, method = self.models.pretrained_path(), self.method
        if pretrained is None:
            summary = self.training.train_or_load(self.model, method, method.training_signature())
        else:
            mapped = lambda state: method.pretrained_state(self.model, state)  # noqa: E731
            summary = loaded = self.models.load_pretrained(self.model, pretrained, map_state=mapped)
            if method.trains_from_pretrained:
                start = {"pretrained": str(pretrained), "sha256": file_sha256(pretrained)}
                trained = self.training.train_or_load(
                    self.model, method, method.training_signature(), start=start
                )
                what = f"{method.baseline_kind(True)}, from the pretrained weights (train.*)"
                summary = {**trained, "training": what, "started_from": loaded}
                log.info("%s trains from the pretrained weights %s", method.name, pretrained)
        self.metrics["train"] = summary
        self.recorder.timed("train", time.perf_counter() - tic)
        self.baseline_model = copy.deepcopy(self.model)
        evaluation = self.training.test_evaluation(self.model, "train")
        self.record("baseline", self.model, evaluation=evaluation)

    def dense_reference(self) -> None:
        """The dense reference: the plain dense model of this training setup, the yardstick of
        every run. When the method does not change training, it is the baseline itself;
        otherwise (sparsity training, dynamic masks, sharing) the plain model is trained
        through the cache (shared with ``method=none`` and every method that trains plainly,
        so a sweep trains it once) or, with ``pretrained=``, loaded from the file.
        ``baseline_kind`` says what the ``baseline`` stage is."""
        tic = time.perf_counter()
        pretrained = self.models.pretrained_path()
        trained = pretrained is None or self.method.trains_from_pretrained
        kind = self.metrics["baseline_kind"] = self.method.baseline_kind(trained)
        if kind == "dense":
            self.dense_model = self.baseline_model
            self.dense_checkpoint = self.training.trained_at.get("train")
            self.metrics["stages"].insert(1, "dense_reference")
            self.recorder.stage(
                "dense_reference", {**self.metrics["baseline"], "source": "baseline"}
            )
        else:
            self.dense_model = model = self.models.fresh().to(self.device)
            if pretrained is not None:
                self.models.load_pretrained(model, pretrained)
                source = f"pretrained: {pretrained}"
            else:
                summary = self.training.train_or_load(
                    model, None, {}, stage="dense_reference", filename="dense_reference.pt"
                )
                self.metrics["dense_reference_train"] = summary
                source = "trained plainly" + (" (cache)" if summary.get("cache_entry") else "")
            self.dense_checkpoint = self.training.trained_at.get("dense_reference")
            evaluation = self.training.test_evaluation(model, "dense_reference")
            self.record("dense_reference", model, evaluation=evaluation)["source"] = source
            self.recorder.save()
        if pretrained is not None and self.plan.weights is not None:
            weights = self.plan.weights.model_dump()
            self.recorder.expected_accuracy(weights, len(self.data.splits["test"]))
        self.recorder.timed("dense_reference", time.perf_counter() - tic)

    def prune(self) -> None:
        tic = time.perf_counter()
        self.retrainer = retrainer = Retrainer(
            self.plan,
            self.data,
            self.device,
            self.recorder,
            self.files,
            self._test_eval,
            dense=self.dense_model,
            baseline=self.baseline_model,
            rewind_dir=self.training.rewind_dir,
            fresh_model=lambda seed: self.models.fresh(seed).to(self.device),
            evaluations=self.evaluations,
        )
        ctx = PruneContext(
            data=self.data,
            device=self.device,
            seed=self.seed,
            input_size=self.input_size,
            finetune=retrainer.finetune,
            retrain=retrainer.retrain_round,
            record=self.record,
            latency=self.plan.metrics.latency.enabled,
            run_dir=self.run_dir,
        )
        pruned_path = self.files.ckpt_dir / "pruned.pt"
        if self.files.resume and pruned_path.is_file():
            ckpt = load_checkpoint(pruned_path, self.device)
            self.model = self.method.restore(self.model, ckpt, str(pruned_path)).to(self.device)
            self.masks = dict(ckpt.get("masks", {}))
            self.metrics["prune_info"] = ckpt.get("info", {})
            log.info("pruned model loaded from %s (resume)", pruned_path)
        else:
            result = self.method.prune(self.model, ctx)
            if not self.method.produces_model:  # an analysis (sensitivity): no pruned model
                self.masks = {}
                self.metrics["analysis"] = analysis = result.info.get("analysis", self.method.name)
                self.metrics[analysis] = result.info
                self.recorder.timed("prune", time.perf_counter() - tic)
                return
            self.model, self.masks = result.model.to(self.device), result.masks
            self.metrics["prune_info"] = result.info
            self._save_model(pruned_path, result.info)
        self.recorder.check_prune_info(self.metrics["prune_info"], self.method.name)
        # A method's inner fine-tunes (double_pruning's slimmed_finetuned) are timed as their own
        # stages; timings.prune is the pruning work alone.
        self.recorder.timed("prune", time.perf_counter() - tic - retrainer.inner_seconds)
        if "schedule" in self.metrics["prune_info"]:
            self.metrics["schedule"] = self.metrics["prune_info"]["schedule"]
        tic = time.perf_counter()
        self.record("pruned", self.model)
        self.recorder.timed("evaluate_pruned", time.perf_counter() - tic)

    def _save_model(self, path: Path, info: Mapping[str, Any]) -> None:
        model = {"model": self.model.state_dict(), "masks": self.masks}
        save_checkpoint(path, {**model, "arch": self.plan.model.name, "info": info})

    def finetune(self) -> None:
        if not self.method.produces_model:
            self.recorder.skip("finetune", f"{self.method.name} is an analysis: no pruned model")
            return
        plan, info = self.plan.finetune, self.metrics.get("prune_info", {})
        if self.method.prunes and (plan.epochs > 0 or plan.resets_weights):
            # a gradual schedule's hooks prune while fine-tuning: its masks are the run's after
            self.masks = self.retrainer.stage(self.model, self.masks, info, self.method)
        elif plan.distills:
            why = "it prunes nothing" if not self.method.prunes else "finetune.epochs=0"
            self.warn(
                f"finetune.kd.alpha={plan.kd.alpha}: no distillation, there is no fine-tuning "
                f"stage for method {self.method.name!r} ({why})"
            )
        final_path = self.files.ckpt_dir / "final.pt"
        self._save_model(final_path, self.metrics.get("prune_info", {}))
        if distributed.is_main():  # weights + structure that load_pruned() reads, no pickle
            self.metrics["portable"] = save_portable(
                final_path, self.model, self.masks, self._portable_description()
            )

    def _portable_description(self) -> dict[str, Any]:
        """What :func:`prune_cli.load_pruned` needs to rebuild the final model (portable.py)."""
        return describe(
            model_name=self.plan.model.name,
            model_options=self.plan.model_options,
            num_classes=self.data.num_classes,
            in_channels=self.data.in_channels,
            image_size=self.data.image_size,
            dataset=self.plan.dataset.name,
            method_config=self.metrics["method_config"],
            ratio=self.method.ratio,
            seed=self.seed,
            info=self.metrics.get("prune_info", {}),
            masks=self.masks,
            sharing=self.method.sharing_plan(),
        )

    def evaluate(self) -> None:
        if not self.method.produces_model:
            self.recorder.skip("evaluate", f"{self.method.name} is an analysis: no pruned model")
            return
        tic = time.perf_counter()
        final = self.record("final", self.model, per_layer=True)
        dense = self.metrics["dense_reference"]
        self.metrics["relative_to_dense"] = relative_to_dense(final, dense)
        if self.plan.metrics.latency.enabled:
            self.metrics["latency"] = run_latency(
                self.plan.metrics.latency,
                self.dense_model,
                self.model,
                input_size=self.input_size,
                device=self.device,
                cached=lambda key, compute: self.training.figures(
                    self.dense_model, self.dense_checkpoint, key, compute
                ),
                final_onnx=self._final_onnx_bytes,
                dense_macs=dense["macs"],
                final_macs=final["macs"],
                precision=self.plan.metrics.precision,
            )
        self.recorder.timed("evaluate", time.perf_counter() - tic)

    def export(self) -> None:
        """The final model as files that reload without prune-cli's classes (the narrower
        structure included): ``export.onnx`` (the graph whose ONNX Runtime latency was
        measured, not made twice) and ``export.torchscript``. A format that does not export is
        skipped and said; the run completes with its checkpoints."""
        formats = [f for f in FORMATS if getattr(self.plan.export, f)]
        if not formats or not self.method.produces_model or not distributed.is_main():
            return
        tic = time.perf_counter()
        stem = self.files.ckpt_dir / "final.pt"
        written, errors = export_formats(
            self.model, stem, self.input_size, formats, onnx_data=self.final_onnx
        )
        for message in errors:
            self.warn(f"export skipped: {message}")
        self.metrics["export"] = {**written, **({"error": "; ".join(errors)} if errors else {})}
        self.recorder.timed("export", time.perf_counter() - tic)

    def _final_onnx_bytes(self) -> bytes | None:
        """The final model as ONNX, made once for its latency and its export (None when it
        does not export: both then say why)."""
        if self.final_onnx is None:
            try:
                self.final_onnx = onnx_bytes(self.model, self.input_size)
            except Exception:  # the latency and the export report the exporter's error
                return None
        return self.final_onnx

    # ------------------------------------------------------------------ driver
    def run(self) -> dict[str, Any]:
        # With resume, a run whose metrics.json says completed is not run again (a resumed
        # sweep redoes only its unfinished jobs); its figures are returned.
        resume = peek(self.cfg, "resume") is True
        done = completed_before(self.files.metrics_path) if resume else None
        if done is not None:
            log.info("%s already completed: nothing to resume", self.run_dir)
            return done
        total = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.recorder.save()
            for stage in self.STAGES:
                self.stage = stage
                getattr(self, stage)()
            self.metrics["status"] = "completed"
        except BaseException as exc:
            failure = explain(exc, self.stage) if isinstance(exc, Exception) else None
            shown = failure or exc
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.metrics["status"] = "interrupted" if interrupted else "failed"
            self.metrics["error"] = f"{type(shown).__name__}: {one_line(shown)}"
            self.metrics["failed_stage"] = self.stage
            if failure is not None and failure is not exc:
                raise failure from exc
            raise
        finally:
            self.recorder.timed("total", time.perf_counter() - total)
            self.recorder.save_final()
            self.recorder.finish_tracking(self.run_dir)
        skipped = self.metrics.get("data", {}).get("skipped_files", 0)
        if skipped:
            log.warning("%d unreadable file(s) skipped (metrics.json: data)", skipped)
        return self.metrics
