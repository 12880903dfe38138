"""The pipeline: train -> prune -> fine-tune -> evaluate, one run directory per run.

It knows stages, not methods: everything method-specific goes through the :class:`Method`
interface (``prepare``, the training hooks, ``prune``) and the :class:`PruneContext` callbacks.

Run directory layout::

    .hydra/            resolved config, overrides (Hydra)
    prune-run.log      the log (Hydra)
    history.csv        one row per epoch of every training stage
    checkpoints/       trained.pt, pruned.pt, final.pt, and per-epoch *_last.pt for resuming;
                       final.safetensors + final.json, the portable copy (prune_cli.load_pruned)
    metrics.json       written after every stage (status: running -> completed | failed)

The first stage, ``validate``, checks the whole config against its schema
(:mod:`prune_cli.schema`) before any data is read or model built. A failure in any stage is
recorded in ``metrics.json`` (``status: failed``, ``error: "<Kind>: <one line>"``,
``failed_stage``); expected failures of the machine (out of memory, disk full, permissions)
are re-raised as the one-line :class:`~prune_cli.errors.UserError` that :func:`explain` gives.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prune_cli import distributed
from prune_cli.cache import (
    RewindSaver,
    TrainedCache,
    cache_key,
    file_sha256,
    load_rewind_point,
    rewind_point_path,
    save_rewind_point,
    saved_rewind_points,
    training_payload,
)
from prune_cli.data import build_dataset
from prune_cli.engine import (
    fit,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from prune_cli.engine.checkpoint import load_pretrained
from prune_cli.engine.distill import Distiller
from prune_cli.engine.hooks import CompositeHooks
from prune_cli.engine.loop import (
    DEFAULT_EVAL_BATCH_SIZE,
    FitResult,
    FitSettings,
    StageFiles,
    evaluate,
    write_history,
)
from prune_cli.engine.precision import resolve_precision
from prune_cli.errors import ConfigError, ExportError, UserError, explain, one_line
from prune_cli.export import FORMATS, export_model, onnx_bytes
from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.deploy import onnxruntime_latency
from prune_cli.metrics.efficiency import add_speedup_efficiency
from prune_cli.metrics.expected import check_expected_accuracy
from prune_cli.metrics.latency import compare_latency, latency_setting, measure_latency
from prune_cli.metrics.report import (
    netscore_units,
    relative_to_dense,
    stage_metrics,
    write_metrics_json,
)
from prune_cli.models import build_model, build_skeleton, weights_warnings
from prune_cli.models.base import key_map_of
from prune_cli.models.traits import stem_and_classifier
from prune_cli.portable import describe, save_portable
from prune_cli.pruning import MaskHold, rate_check
from prune_cli.retrain import (
    RetrainPlan,
    check_plan,
    load_start_weights,
    scratch_seed,
    scratch_steps,
    stage_settings,
)
from prune_cli.schema import validate_config
from prune_cli.tracking import RunInfo, Trackers, build_trackers

log = logging.getLogger("prune_cli")
#: Set by a launcher that ran the job otherwise than asked (hydra_plugins/prune_cli_launchers).
LAUNCHER_NOTE_ENV = "PRUNE_CLI_LAUNCHER_NOTE"


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _peek(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at ``key`` before validation: None if it is missing or cannot be
    resolved (validate() then reports it, recorded in metrics.json)."""
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # any OmegaConf error: the check comes in validate()
        return None


#: How far an achieved pruning rate may be from the one asked for before the run says so.
RATE_TOLERANCE = 0.01


def check_ratio(ratio: Any) -> float:
    """``ratio`` must be a number in [0, 1)."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"ratio {ratio!r} is not a number; valid: 0 <= ratio < 1") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"ratio {value} is out of range; valid: 0 <= ratio < 1")
    return value


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

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.history_csv = self.run_dir / "history.csv"
        self.metrics_path = self.run_dir / "metrics.json"
        self.stage: str | None = None
        # Taken as typed only in validate(), so that a bad value is recorded in metrics.json too.
        self.resume = False
        self.ratio = _peek(cfg, "ratio")
        self.seed = _peek(cfg, "seed")
        self.metrics: dict[str, Any] = {
            "status": "running",
            "error": None,
            "model": str(_peek(cfg, "model.name")),
            "dataset": str(_peek(cfg, "dataset.name")),
            "method": str(_peek(cfg, "method.name")),
            "ratio": self.ratio,
            "seed": self.seed,
            "run_dir": str(self.run_dir),
            "netscore_units": None,
            "stages": [],
            "timings": {},
        }
        self._inner_fit_seconds = 0.0  # fine-tuning done inside prune(), timed as its own stage
        self.trackers: Trackers | None = None  # logger=: TensorBoard, MLflow, W&B (tracking.py)
        # The trained checkpoint of each training stage ("train", "dense_reference"): the
        # figures measured on the model as trained are cached beside it (TrainedCache.figures).
        self.trained_at: dict[str, Path] = {}
        self.dense_checkpoint: Path | None = None  # the dense reference's, when trained here
        self.fitted: dict[str, FitResult] = {}  # the training stages run here (not from cache)
        self.final_onnx: bytes | None = None  # the final model's ONNX graph, once made

    # ------------------------------------------------------------------ helpers
    def _save_metrics(self) -> None:
        if getattr(self, "data", None) is not None:  # unreadable files skipped so far
            self.metrics["data"] = self.data.bad_files.summary()
        write_metrics_json(self.metrics_path, self.metrics)

    def _timed(self, stage: str, seconds: float) -> None:
        self.metrics["timings"][stage] = round(self.metrics["timings"].get(stage, 0) + seconds, 3)

    def _eval_batch_size(self) -> int:
        return int(self.cfg.train.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE))

    def _eval_precision(self) -> str:
        return str(self.cfg.metrics.get("precision", "fp32"))

    def _test_eval(self, model: nn.Module) -> dict[str, float]:
        loader = self.data.loader("test", self._eval_batch_size(), train=False, device=self.device)
        return evaluate(model, loader, self.device, precision=self._eval_precision()).as_dict()

    def _stage_settings(self, node: Mapping[str, Any]) -> dict[str, Any]:
        """A ``train``/``finetune`` node for :func:`fit`, with the evaluations' precision."""
        return {**node, "eval_precision": self._eval_precision()}

    def _fit_notes(self, result: FitResult) -> None:
        """What a training stage did otherwise than asked goes to the run's warnings."""
        for note in result.notes:
            self.warn(note)

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
        self.metrics[stage] = figures
        if stage not in self.metrics["stages"]:
            self.metrics["stages"].append(stage)
        self._save_metrics()
        if self.trackers is not None:
            self.trackers.log_stage(stage, figures)
        log.info(
            "%s: top1 %.2f%%  params %d (nonzero %d)  MACs %d (nonzero %d)  sparsity %.4f  "
            "NetScore %.2f",
            stage,
            figures["top1"],
            figures["params"],
            figures["params_nonzero"],
            figures["macs"],
            figures["macs_nonzero"],
            figures["sparsity"],
            figures["netscore"] if figures["netscore"] == figures["netscore"] else float("nan"),
        )
        return figures

    def _fit_summary(self, result: FitResult, model: nn.Module, epochs: int) -> dict[str, Any]:
        """Final and best-epoch accuracy of a training stage; best is chosen on val when present."""
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
            best.load_state_dict(load_checkpoint(result.best_path, self.device)["model"])
            summary["best_top1_test"] = round(self._test_eval(best)["top1"], 4)
        elif result.best_top1 is not None:
            summary["best_top1_test"] = round(result.best_top1, 4)
        return summary

    # ------------------------------------------------------------------ stages
    def validate(self) -> None:
        """Check the whole config (:mod:`prune_cli.schema`) and go on with its typed values."""
        self._record_launcher()  # first: a run that fails validation still says where it ran
        self.cfg = cfg = validate_config(self.cfg)
        self.resume = bool(cfg.resume)
        self.ratio = self.metrics["ratio"] = cfg.ratio
        self.seed = self.metrics["seed"] = int(cfg.seed)
        self.units = _plain(cfg.metrics.netscore)
        self.metrics["netscore_units"] = netscore_units(self.units)
        if distributed.is_main():
            self._start_tracking()

    def _record_launcher(self) -> None:
        """Which GPUs a launcher gave this run (``hydra/launcher=gpu_pool`` sets one per job),
        and a launcher's fallback (gpu_pool on a machine without GPUs) as a warning."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            self.metrics["cuda_visible_devices"] = visible
        note = os.environ.get(LAUNCHER_NOTE_ENV)
        if note:
            self.warn(note)

    def _start_tracking(self) -> None:
        """Open the trackers of ``logger=`` and log the config; ``metrics.json`` follows how
        they fare under ``tracking`` (the same dict, updated as they go)."""
        self.trackers = build_trackers(_plain(self.cfg.get("logger")))
        self.metrics["tracking"] = self.trackers.records
        tags = {k: str(self.metrics[k]) for k in ("model", "dataset", "method", "ratio", "seed")}
        run = RunInfo(self.run_dir, Path(_original_cwd()), _plain(self.cfg), tags)
        self.trackers.start(run)

    def _log_epoch(self, row: dict[str, Any]) -> None:
        if self.trackers is not None:
            self.trackers.log_epoch(str(row["stage"]), row)

    def setup(self) -> None:
        cfg = self.cfg
        self.ratio = self.metrics["ratio"] = check_ratio(self.ratio)
        self.device = resolve_device(str(cfg.device))
        seed_everything(self.seed, bool(cfg.get("deterministic", False)))
        method_cfg = _plain(cfg.method)
        own_ratio = method_cfg.get("ratio")  # null or absent: the run's ratio
        self.method = build_method(
            method_cfg, check_ratio(self.ratio if own_ratio is None else own_ratio), self.seed
        )
        self.method.check_finetune(int(cfg.finetune.epochs))  # gradual prunes while fine-tuning
        self.plan = RetrainPlan.from_cfg(_plain(cfg.finetune))
        check_plan(
            self.plan,
            method_name=self.method.name,
            no_weight_reset=self.method.no_weight_reset,
            train_epochs=int(cfg.train.epochs),
            finetune_epochs=int(cfg.finetune.epochs),
            pretrained=self._pretrained_path() is not None
            and not self.method.trains_from_pretrained,
        )
        self._hold_out_for_method()
        self.data = build_dataset(cfg.dataset)
        self.input_size = (self.data.in_channels, self.data.image_size, self.data.image_size)
        self.model_name = str(cfg.model.name)
        self.model_options = {k: v for k, v in _plain(cfg.model).items() if k != "name"}
        model = self._build_plain_model()
        self.model = self.method.prepare(model).to(self.device)
        self.metrics["device"] = str(self.device)
        self.metrics["method_config"] = method_cfg
        self.cache = TrainedCache(bool(cfg.cache.enabled), Path(str(cfg.cache.dir)))

    def _hold_out_for_method(self) -> None:
        """A method that decides on held-out images (``optimized``'s fitness) gets a validation
        split carved from train (seeded, stratified: ``dataset.val_size``) when the dataset has
        none configured; training then never sees those images, and the run records it."""
        wanted = int(self.method.holdout_size())
        if wanted <= 0 or _peek(self.cfg, "dataset.val_size") not in (0, None):
            return
        OmegaConf.update(self.cfg, "dataset.val_size", wanted, force_add=True)
        self.metrics["data_holdout"] = {
            "val_size": wanted,
            "why": f"method {self.method.name!r} decides on images held out of training",
        }
        log.info(
            "%s: %d training images held out as the validation split (dataset.val_size)",
            self.method.name,
            wanted,
        )

    def _build_plain_model(self, seed: int | None = None) -> nn.Module:
        """The configured architecture, freshly initialised from the run seed (the same seed
        gives the same initial weights whatever the method), or from ``seed``; layers that did
        not get the library weights asked for (``model.weights``) are warnings."""
        model_kwargs = {k: v for k, v in _plain(self.cfg.model).items() if k != "name"}
        torch.manual_seed(self.seed if seed is None else seed)
        model = build_model(
            self.model_name,
            num_classes=self.data.num_classes,
            in_channels=self.data.in_channels,
            image_size=self.data.image_size,
            **model_kwargs,
        )
        for message in weights_warnings(model):
            self.warn(message)
        return model

    def _pretrained_path(self) -> Path | None:
        if not self.cfg.get("pretrained"):
            return None
        path = Path(str(self.cfg.pretrained)).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else Path(_original_cwd()) / path))

    def _load_pretrained(self, model: nn.Module, path: Path, map_state: Any = None) -> dict:
        """Load ``pretrained=`` into ``model``; a file in another code base's layout is mapped
        with the model family's declared key map, against the plain architecture's keys (a
        method may have re-parameterised ``model``: ``map_state`` maps onto that)."""
        plain = None
        if map_state is not None:
            plain = build_skeleton(
                self.model_name,
                num_classes=self.data.num_classes,
                in_channels=self.data.in_channels,
                image_size=self.data.image_size,
                **self.model_options,
            ).state_dict()
        loaded = load_pretrained(
            model,
            path,
            expect_arch=self.model_name,
            map_location=self.device,
            map_state=map_state,
            replaceable=stem_and_classifier(model, self.data.num_classes),
            key_map=key_map_of(self.model_name),
            plain_keys=plain,
        )
        for role, layer in loaded.get("pretrained_weights", {}).get("replaced", {}).items():
            self.warn(
                f"pretrained: the {role} {layer['layer']} does not fit the file and keeps its "
                f"fresh initialisation ({layer['reason']})"
            )
        return loaded

    def train(self) -> None:
        """Dense training, shared through the cache, or loading ``pretrained``.

        With ``pretrained=`` training is skipped, except for methods that prune *during*
        training (``trains_from_pretrained``: dynamic_filter), whose training then starts from
        the pretrained weights (keyed in the cache by the file's digest).
        """
        tic = time.perf_counter()
        pretrained = self._pretrained_path()
        if pretrained is None:
            self.metrics["train"] = self._train_or_load(self.model, self.method)
        else:
            loaded = self._load_pretrained(
                self.model,
                pretrained,
                map_state=lambda state: self.method.pretrained_state(self.model, state),
            )
            if self.method.trains_from_pretrained:
                start = {"pretrained": str(pretrained), "sha256": file_sha256(pretrained)}
                trained = self._train_or_load(self.model, self.method, start=start)
                self.metrics["train"] = {**trained, "started_from": loaded}
                log.info("%s trains from the pretrained weights %s", self.method.name, pretrained)
            else:
                self.metrics["train"] = loaded
        self._timed("train", time.perf_counter() - tic)
        self.baseline_model = copy.deepcopy(self.model)
        evaluation = self._trained_test_eval(self.model, self.trained_at.get("train"), "train")
        self.record("baseline", self.model, evaluation=evaluation)

    def _trained_figures(
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
        if checkpoint is None or not bool(self.cfg.cache.figures):
            return dict(compute()), "measured"
        full = {**key, "module": cache_key({"repr": repr(model)})}
        got = self.cache.figures(checkpoint, full, compute)
        return got.values, "cached" if got.cached else "measured"

    def _trained_test_eval(
        self, model: nn.Module, checkpoint: Path | None, stage: str
    ) -> dict[str, float]:
        """The test evaluation of ``model`` as trained into ``checkpoint`` by the training
        ``stage``: once per checkpoint and evaluation setting."""
        key = {
            "kind": "test_eval",
            "split": "test",
            "batch_size": self._eval_batch_size(),
            "device": self.device.type,
            "world_size": distributed.world_size(),
        }
        # Trained here and evaluated on the test split after its last epoch, as evaluating
        # again would do it on the same weights: the same figures, an evaluation sooner.
        fitted = self.fitted.get(stage)
        key["precision"] = self._eval_precision()
        same = (
            fitted is not None
            and fitted.select_split == "test"
            and fitted.eval_batch_size == key["batch_size"]
            and fitted.eval_precision == key["precision"]
        )
        last = fitted.last_eval if same else None

        def compute() -> dict[str, float]:
            return last.as_dict() if last is not None else self._test_eval(model)

        values, source = self._trained_figures(model, checkpoint, key, compute)
        if source == "cached":
            log.info("test evaluation of %s reused from the trained-model cache", checkpoint)
        return values

    def _train_or_load(
        self,
        model: nn.Module,
        hooks: Any,
        *,
        method_training: dict[str, Any] | None = None,
        stage: str = "train",
        filename: str = "trained.pt",
        start: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` (with the training ``hooks``) through the trained-model cache
        (:mod:`prune_cli.cache`); ``method_training`` defaults to the method's signature."""
        cfg = self.cfg
        signature = self.method.training_signature() if method_training is None else method_training
        if stage == "train" and self.plan.rewind_epoch is not None:
            # The epoch-K weights are saved only while training: a run that needs them trains
            # its own cache entry (the same dense training, keyed apart), so a sweep over
            # finetune.rewind=none,epoch:K never finds an entry trained without them.
            signature = {**signature, "rewind_epochs": [self.plan.rewind_epoch]}
        train = _plain(cfg.train)
        # ``auto`` names what this machine does natively: the key holds what training used.
        train["precision"] = resolve_precision(
            str(train.get("precision", "fp32")), self.device
        ).name
        payload = training_payload(
            model=_plain(cfg.model),
            dataset=_plain(cfg.dataset),
            train=train,
            seed=self.seed,
            deterministic=bool(cfg.get("deterministic", False)),
            method_training=signature if start is None else {**signature, "start": start},
            device_type=self.device.type,
        )
        cache = self.cache
        run = StageFiles(stage, self.ckpt_dir, self.history_csv, self.resume)
        label = f"{self.model_name}_{cfg.dataset.name}"
        trained = cache.train_or_load(
            model,
            payload,
            run,
            label=label,
            arch=self.model_name,
            device=self.device,
            train=lambda files: self._train_dense(model, hooks, files),
            filename=filename,
        )
        write_history(self.history_csv, stage, trained.history)
        if trained.summary.get("from_cache"):  # the curves of the training that made the entry
            for row in trained.history:
                self._log_epoch({**row, "stage": stage})
        self.trained_at[stage] = trained.checkpoint
        if stage == "train":  # where the training's rewind points are (finetune.rewind)
            self.rewind_dir = cache.entry(label, payload) if cache.enabled else self.ckpt_dir
            self._check_rewind_point()
        return trained.summary

    def _check_rewind_point(self) -> None:
        """The rewind point ``finetune.rewind`` asks for must have been saved when the trained
        model was: an entry trained before (or by a run that asked for another epoch) lacks it,
        and the run stops here rather than rewind to something else."""
        point = self.plan.rewind_point
        if point is None or rewind_point_path(self.rewind_dir, point).is_file():
            return
        saved = ", ".join(saved_rewind_points(self.rewind_dir)) or "none"
        raise UserError(
            f"finetune.rewind={point}: the trained model in {self.rewind_dir} has no saved "
            f"{point} weights (saved there: {saved}; it was trained before rewind points were "
            "kept); delete that directory, or set cache.dir to another one, to train it again"
        )

    def _train_dense(
        self, model: nn.Module, hooks: Any, files: StageFiles
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Train ``model`` with the ``train`` settings and the given training hooks; the
        weights it starts from (and those after epoch K for ``finetune.rewind=epoch:K``) are
        kept beside the trained model as rewind points (:mod:`prune_cli.cache`)."""
        settings = FitSettings.from_cfg(self._stage_settings(_plain(self.cfg.train)))
        if not (files.resume and files.last.is_file()):  # a resumed one saved its start before
            save_rewind_point(files.ckpt_dir, "init", model)
        if files.stage == "train" and self.plan.rewind_epoch is not None:
            hooks = CompositeHooks([hooks, RewindSaver(files.ckpt_dir, [self.plan.rewind_epoch])])
        result = fit(
            model,
            self.data,
            settings,
            device=self.device,
            files=dataclasses.replace(files, on_epoch=self._log_epoch),
            hooks=hooks,
            seed=self.seed,
        )
        self.fitted[files.stage] = result
        self._fit_notes(result)
        return self._fit_summary(result, model, settings.epochs), result.history

    def dense_reference(self) -> None:
        """The dense reference (docs/metrics.md): the plain dense model of this training
        setup, the yardstick of every run. When the method does not change training, it is the
        baseline itself; otherwise (sparsity training, dynamic masks, sharing) the plain model is
        trained through the cache (shared with ``method=none`` and every method that trains
        plainly, so a sweep trains it once) or, with ``pretrained=``, loaded from the file.
        ``baseline_kind`` says what the ``baseline`` stage is."""
        tic = time.perf_counter()
        pretrained = self._pretrained_path()
        trained = pretrained is None or self.method.trains_from_pretrained
        kind = self.method.baseline_kind(trained)
        self.metrics["baseline_kind"] = kind
        if kind == "dense":
            self.dense_model = self.baseline_model
            self.dense_checkpoint = self.trained_at.get("train")
            self.metrics["dense_reference"] = {**self.metrics["baseline"], "source": "baseline"}
            self.metrics["stages"].insert(1, "dense_reference")
            self._save_metrics()
            if self.trackers is not None:
                self.trackers.log_stage("dense_reference", self.metrics["dense_reference"])
        else:
            model = self._build_plain_model().to(self.device)
            if pretrained is not None:
                self._load_pretrained(model, pretrained)
                source = f"pretrained: {pretrained}"
            else:
                summary = self._train_or_load(
                    model,
                    None,
                    method_training={},
                    stage="dense_reference",
                    filename="dense_reference.pt",
                )
                self.metrics["dense_reference_train"] = summary
                source = "trained plainly" + (" (cache)" if summary.get("cache_entry") else "")
            self.dense_model = model
            self.dense_checkpoint = self.trained_at.get("dense_reference")
            evaluation = self._trained_test_eval(model, self.dense_checkpoint, "dense_reference")
            self.record("dense_reference", model, evaluation=evaluation)
            self.metrics["dense_reference"]["source"] = source
            self._save_metrics()
        if pretrained is not None:
            self._check_expected_accuracy()
        self._timed("dense_reference", time.perf_counter() - tic)

    def _check_expected_accuracy(self) -> None:
        """The pretrained dense model against its published top-1 (``weights.top1``, set by a
        ``weights=`` config or by hand): recorded as ``metrics.json`` ``weights``, and a gap
        beyond ``weights.tolerance`` is a warning (:mod:`prune_cli.metrics.expected`)."""
        weights = _plain(self.cfg.get("weights")) or {}
        if weights.get("top1") is None:
            return
        record, warning = check_expected_accuracy(
            weights,
            float(self.metrics["dense_reference"]["top1"]),
            len(self.data.splits["test"]),
        )
        self.metrics["weights"] = record
        if warning is not None:
            self.warn(warning)
        else:
            self._save_metrics()

    def prune(self) -> None:
        tic = time.perf_counter()
        self._inner_fit_seconds = 0.0
        pruned_path = self.ckpt_dir / "pruned.pt"
        ctx = PruneContext(
            data=self.data,
            device=self.device,
            seed=self.seed,
            input_size=self.input_size,
            finetune=self._finetune_callback,
            record=self.record,
            latency=bool(self.cfg.metrics.latency.enabled),
            run_dir=self.run_dir,
        )
        if self.resume and pruned_path.is_file():
            ckpt = load_checkpoint(pruned_path, self.device)
            self.model = self.method.restore(self.model, ckpt, str(pruned_path)).to(self.device)
            self.masks = dict(ckpt.get("masks", {}))
            self.metrics["prune_info"] = ckpt.get("info", {})
            self._check_prune_info(self.metrics["prune_info"])
            log.info("pruned model loaded from %s (resume)", pruned_path)
        elif not self.method.produces_model:  # an analysis (sensitivity): no pruned model
            result = self.method.prune(self.model, ctx)
            self.masks = {}
            self.metrics["analysis"] = result.info.get("analysis", self.method.name)
            self.metrics[self.metrics["analysis"]] = result.info
            self._timed("prune", time.perf_counter() - tic)
            return
        else:
            result = self.method.prune(self.model, ctx)
            self.model, self.masks = result.model.to(self.device), result.masks
            self.metrics["prune_info"] = result.info
            self._check_prune_info(result.info)
            save_checkpoint(
                pruned_path,
                {
                    "model": self.model.state_dict(),
                    "masks": self.masks,
                    "arch": self.model_name,
                    "info": result.info,
                },
            )
        # A method's inner fine-tunes (double_pruning's slimmed_finetuned) are timed as their own
        # stages; timings.prune is the pruning work alone.
        self._timed("prune", time.perf_counter() - tic - self._inner_fit_seconds)
        if "schedule" in self.metrics["prune_info"]:
            self.metrics["schedule"] = self.metrics["prune_info"]["schedule"]
        tic = time.perf_counter()
        self.record("pruned", self.model)
        self._timed("evaluate_pruned", time.perf_counter() - tic)

    def warn(self, message: str) -> None:
        """A run that does something other than asked says so, in the log and in
        ``metrics.json`` (``warnings``), which the report shows."""
        log.warning(message)
        warnings = self.metrics.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)
        self._save_metrics()

    def _check_prune_info(self, info: Mapping[str, Any]) -> None:
        """The method's own warnings, and every rate it achieved more than
        :data:`RATE_TOLERANCE` (or one counted unit, if larger) away from the rate asked for
        (``prune_info.rates``)."""
        for message in info.get("warnings") or []:
            self.warn(message)
        for what, rate in (info.get("rates") or {}).items():
            gap = float(rate["achieved"]) - float(rate["target"])
            # one unit of what is counted may be more than a point (a layer of 24 filters)
            tolerance = max(RATE_TOLERANCE, 1.0 / max(1, int(rate.get("total") or 1)))
            if abs(gap) > tolerance:
                self.warn(
                    f"{self.method.name}: {what} pruned {rate['achieved']:.4f}, not the "
                    f"{rate['target']:.4f} asked for ({100 * gap:+.1f} points)"
                )

    def _finetune_callback(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        stage: str,
        epochs: int | None = None,
    ) -> nn.Module:
        tic = time.perf_counter()
        self._fit_stage(model, masks, stage, epochs)
        self._inner_fit_seconds += time.perf_counter() - tic
        return model

    def _fit_stage(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        stage: str,
        epochs: int | None = None,
        settings: dict[str, Any] | None = None,
        hooks: Any = None,
    ) -> FitResult:
        """Fine-tune with the ``finetune`` settings (or ``settings``; ``epochs`` overrides),
        holding ``masks`` (or with ``hooks`` that hold masks of their own: a gradual
        schedule's), distilling from the dense reference when ``finetune.kd.alpha > 0``."""
        settings = self._stage_settings(_plain(self.cfg.finetune) if settings is None else settings)
        if epochs is not None:
            settings["epochs"] = int(epochs)
        tic = time.perf_counter()
        files = StageFiles(
            stage,
            self.ckpt_dir,
            self.history_csv,
            self.resume,
            {"masks": dict(masks)},
            on_epoch=self._log_epoch,
        )
        result = fit(
            model,
            self.data,
            settings,
            device=self.device,
            files=files,
            hooks=hooks if hooks is not None else (MaskHold(model, masks) if masks else None),
            seed=self.seed + 1,
            criterion=self._distiller(),
        )
        self._fit_notes(result)
        self.metrics[stage] = self._fit_summary(result, model, int(settings["epochs"]))
        if self.plan.distills:
            self.metrics[stage]["kd"] = self._kd_record()
        self._timed(stage, time.perf_counter() - tic)
        return result

    def _skip(self, stage: str, reason: str) -> None:
        """A stage that does not apply to this run, recorded with its reason."""
        self.metrics.setdefault("skipped_stages", {})[stage] = reason
        log.info("%s skipped: %s", stage, reason)
        self._save_metrics()

    def _distiller(self) -> Distiller | None:
        """Distillation from the dense reference (``finetune.kd``), or None when it is off.
        The teacher is the dense reference of this run, loaded or trained once through the
        cache in the ``dense_reference`` stage; it is only evaluated here."""
        if not self.plan.distills:
            return None
        return Distiller(self.dense_model, self.plan.alpha, self.plan.temperature)

    def _kd_record(self) -> dict[str, Any]:
        reference = self.metrics.get("dense_reference", {})
        return {
            "alpha": self.plan.alpha,
            "temperature": self.plan.temperature,
            "teacher": "dense_reference",
            "teacher_source": reference.get("source"),
            "teacher_top1": reference.get("top1"),
        }

    def _reset_weights(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Before the fine-tune stage: rewind the pruned model's weights (``finetune.rewind``)
        or re-initialise them (``finetune.from_scratch``), as :mod:`prune_cli.retrain` says;
        for Scratch-B, set the step budget in ``settings``. Returns what ``metrics.json``
        records under ``finetune`` (empty for plain fine-tuning)."""
        plan, info = self.plan, self.metrics.get("prune_info", {})
        total = int(self.cfg.train.epochs)
        first = int(settings.get("schedule_start") or 0)
        schedule = f"train.* schedule, epochs {first + 1}..{first + int(settings['epochs'])}"
        if plan.rewind_point is not None:
            state = load_rewind_point(self.rewind_dir, plan.rewind_point, self.device)
            load_start_weights(self.model, self.baseline_model, state, info, self.masks)
            source = rewind_point_path(self.rewind_dir, plan.rewind_point)
            return {"rewind": {"to": plan.rewind, "source": str(source), "schedule": schedule}}
        if plan.rewind == "lr":
            return {"rewind": {"to": "lr", "weights": "trained (kept)", "schedule": schedule}}
        if plan.from_scratch == "none":
            return {}
        seed = scratch_seed(self.seed)
        fresh = self._build_plain_model(seed).to(self.device)
        load_start_weights(self.model, self.baseline_model, fresh.state_dict(), info, self.masks)
        record: dict[str, Any] = {"mode": plan.from_scratch, "init_seed": seed}
        if plan.from_scratch == "same_budget":
            steps_per_epoch = len(
                self.data.loader(
                    "train",
                    int(settings["batch_size"]),
                    train=True,
                    device=self.device,
                    seed=self.seed + 1,
                    drop_last=False,
                )
            )
            dense_macs = float(self.metrics["dense_reference"]["macs"])
            pruned_macs = float(self.metrics["pruned"]["macs_nonzero"])
            steps = scratch_steps(total, steps_per_epoch, dense_macs, pruned_macs)
            settings.update(epochs=math.ceil(steps / steps_per_epoch), max_steps=steps)
            record.update(
                steps=steps,
                steps_per_epoch=steps_per_epoch,
                dense_macs=dense_macs,
                pruned_macs_nonzero=pruned_macs,
                formula="round(train.epochs * steps_per_epoch * dense_macs / pruned_macs)",
            )
            schedule = f"train.* schedule stretched over {settings['epochs']} epochs"
        record.update(epochs=int(settings["epochs"]), schedule=schedule)
        return {"from_scratch": record}

    def finetune(self) -> None:
        if not self.method.produces_model:
            self._skip("finetune", f"{self.method.name} is an analysis: no pruned model")
            return
        final_path = self.ckpt_dir / "final.pt"
        plan = self.plan
        if self.method.prunes and (int(self.cfg.finetune.epochs) > 0 or plan.resets_weights):
            settings = stage_settings(plan, _plain(self.cfg.train), _plain(self.cfg.finetune))
            reset = self._reset_weights(settings)
            schedule = self.method.finetune_hooks(self.model, self.masks)
            result = self._fit_stage(
                self.model, self.masks, "finetune", settings=settings, hooks=schedule
            )
            if schedule is not None:
                self._gradual_done(schedule, result)
            self.metrics["finetune"].update(reset)
            self._save_metrics()
        elif plan.distills:
            why = "it prunes nothing" if not self.method.prunes else "finetune.epochs=0"
            self.warn(
                f"finetune.kd.alpha={plan.alpha}: no distillation, there is no fine-tuning "
                f"stage for method {self.method.name!r} ({why})"
            )
        save_checkpoint(
            final_path,
            {
                "model": self.model.state_dict(),
                "masks": self.masks,
                "arch": self.model_name,
                "info": self.metrics.get("prune_info", {}),
            },
        )
        if distributed.is_main():  # weights + structure that load_pruned() reads, no pickle
            self.metrics["portable"] = save_portable(
                final_path, self.model, self.masks, self._portable_description()
            )

    def _portable_description(self) -> dict[str, Any]:
        """What :func:`prune_cli.load_pruned` needs to rebuild the final model (portable.py)."""
        return describe(
            model_name=self.model_name,
            model_options=self.model_options,
            num_classes=self.data.num_classes,
            in_channels=self.data.in_channels,
            image_size=self.data.image_size,
            dataset=str(self.cfg.dataset.name),
            method_config=self.metrics["method_config"],
            ratio=self.method.ratio,
            seed=self.seed,
            info=self.metrics.get("prune_info", {}),
            masks=self.masks,
            sharing=self.method.sharing_plan(),
        )

    def _gradual_done(self, schedule: Any, result: FitResult) -> None:
        """After a gradual schedule: its masks are the run's, its points go to
        ``metrics.json`` (``schedule``: every update; per epoch the target, the sparsity reached
        and the evaluation top-1 of that epoch), and its rate is checked."""
        self.masks = dict(schedule.masks or {})
        summary = schedule.summary()
        by_epoch = {int(row["epoch"]): row for row in result.history}
        for point in summary["epochs"]:
            row = by_epoch.get(int(point["epoch"]), {})
            point["eval_split"] = row.get("eval_split")
            point["eval_top1"] = row.get("eval_top1")
        self.metrics["schedule"] = {**self.metrics.get("schedule", {}), **summary}
        info = self.metrics["prune_info"]
        info["rates"] = {**info.get("rates", {}), "weights": rate_check(self.masks, schedule.ratio)}
        self._check_prune_info({"rates": {"weights": info["rates"]["weights"]}})

    def evaluate(self) -> None:
        if not self.method.produces_model:
            self._skip("evaluate", f"{self.method.name} is an analysis: no pruned model")
            return
        tic = time.perf_counter()
        final = self.record("final", self.model, per_layer=True)
        self.metrics["relative_to_dense"] = relative_to_dense(
            final, self.metrics["dense_reference"]
        )
        lat_cfg = self.cfg.metrics.latency
        backends = list(lat_cfg.get("backends", ["torch"]))
        if bool(lat_cfg.enabled) and "torch" in backends:
            kwargs = {
                "batch_sizes": [int(b) for b in lat_cfg.batch_sizes],
                "device": self.device,
                "warmup": int(lat_cfg.warmup),
                "repeats": int(lat_cfg.repeats),
                "compile": bool(lat_cfg.compile),
            }
            if str(lat_cfg.dense) == "interleaved":
                # Against the plain dense reference (no mask re-parameterisation, no
                # templates), each repeat timing both models in turn.
                models = {"dense_reference": self.dense_model, "final": self.model}
                both = compare_latency(models, self.input_size, **kwargs)
                before, after, source = both["dense_reference"], both["final"], "interleaved"
            else:  # reuse: the dense latency measured once per trained checkpoint and setting
                key = {"kind": "latency", **latency_setting(self.device), **kwargs}
                key["device"] = str(self.device)
                before, source = self._trained_figures(
                    self.dense_model,
                    self.dense_checkpoint,
                    key,
                    lambda: measure_latency(self.dense_model, self.input_size, **kwargs),
                )
                after = measure_latency(self.model, self.input_size, **kwargs)
            speedup = {
                key: round(before[key]["latency_ms"] / after[key]["latency_ms"], 4) for key in after
            }
            self.metrics["latency"] = {
                "dense_reference": before,
                "final": after,
                "speedup": speedup,
                "dense_source": source,
            }
        if bool(lat_cfg.enabled) and "onnxruntime" in backends:  # the deployed runtime
            self.metrics.setdefault("latency", {})["onnxruntime"] = self._onnxruntime_latency()
        if "latency" in self.metrics:  # eta = speedup / MAC reduction, per backend and batch
            dense_macs = self.metrics["dense_reference"]["macs"]
            add_speedup_efficiency(self.metrics["latency"], dense_macs, final["macs"])
        self._timed("evaluate", time.perf_counter() - tic)

    def export(self) -> None:
        """The final model as files that reload without prune-cli's classes (the narrower
        structure included): ``export.onnx`` (the graph whose ONNX Runtime latency was
        measured, not made twice) and ``export.torchscript``. A format that does not export
        (:class:`ExportError`: the copy computes other logits; or the exporter's own error) is
        skipped and said; the run completes with its checkpoints."""
        export_cfg = _plain(self.cfg.get("export")) or {}
        formats = [f for f in FORMATS if export_cfg.get(f, False)]
        if not formats or not self.method.produces_model or not distributed.is_main():
            return
        tic = time.perf_counter()
        written: dict[str, str] = {}
        errors = []
        for fmt in formats:
            try:
                written.update(
                    export_model(
                        self.model,
                        self.ckpt_dir / "final.pt",
                        self.input_size,
                        [fmt],
                        onnx_data=self.final_onnx,
                    )
                )
            except OSError:
                raise  # a full disk, no permission: the run's failure, as for its checkpoints
            except Exception as exc:  # no wrong copy is written
                message = (
                    str(exc)
                    if isinstance(exc, ExportError)
                    else (f"{fmt} export failed: {type(exc).__name__}: {one_line(exc)}")
                )
                errors.append(message)
                self.warn(f"export skipped: {message}")
        self.metrics["export"] = {**written, **({"error": "; ".join(errors)} if errors else {})}
        self._timed("export", time.perf_counter() - tic)

    def _final_onnx_bytes(self) -> bytes | None:
        """The final model as ONNX, made once for its latency and its export (None when it
        does not export: both then say why)."""
        if self.final_onnx is None:
            try:
                self.final_onnx = onnx_bytes(self.model, self.input_size)
            except Exception:  # the latency and the export report the exporter's error
                return None
        return self.final_onnx

    def _onnxruntime_latency(self) -> dict[str, Any]:
        """The dense reference and the final model in ONNX Runtime: interleaved, or (the
        default, ``metrics.latency.dense=reuse``) the dense one once per trained checkpoint,
        like PyTorch eager's."""
        lat_cfg = self.cfg.metrics.latency
        args = {
            "input_size": self.input_size,
            "batch_sizes": [int(b) for b in lat_cfg.batch_sizes],
            "device": self.device,
            "warmup": int(lat_cfg.warmup),
            "repeats": int(lat_cfg.repeats),
        }
        final_onnx = self._final_onnx_bytes()
        exported = {"final": final_onnx} if final_onnx is not None else {}
        if str(lat_cfg.dense) == "interleaved":
            both = {"dense_reference": self.dense_model, "final": self.model}
            result = onnxruntime_latency(both, **args, exported=exported)
            return {**result, "dense_source": "interleaved"}
        key = {"kind": "onnxruntime", **latency_setting(self.device), **args}
        key.update(device=str(self.device), input_size=list(self.input_size))
        dense, source = self._trained_figures(
            self.dense_model,
            self.dense_checkpoint,
            key,
            lambda: onnxruntime_latency({"dense_reference": self.dense_model}, **args),
        )
        final = onnxruntime_latency({"final": self.model}, **args, exported=exported)
        if "skipped" in dense or "skipped" in final:
            return final if "skipped" in final else dense
        before, after = dense["dense_reference"], final["final"]
        return {
            **final,
            "dense_reference": before,
            "speedup": {
                k: round(before[k]["latency_ms"] / after[k]["latency_ms"], 4) for k in after
            },
            "dense_source": source,
        }

    # ------------------------------------------------------------------ driver
    def run(self) -> dict[str, Any]:
        done = self._completed_before()
        if done is not None:
            return done
        total = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._save_metrics()
            for stage in self.STAGES:
                self.stage = stage
                getattr(self, stage)()
            self.metrics["status"] = "completed"
        except BaseException as exc:
            failure = explain(exc, self.stage) if isinstance(exc, Exception) else None
            shown = failure or exc
            self.metrics["status"] = (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            )
            self.metrics["error"] = f"{type(shown).__name__}: {one_line(shown)}"
            self.metrics["failed_stage"] = self.stage
            if failure is not None and failure is not exc:
                raise failure from exc
            raise
        finally:
            self._timed("total", time.perf_counter() - total)
            self._save_final_metrics()
            self._finish_tracking()
        skipped = self.metrics.get("data", {}).get("skipped_files", 0)
        if skipped:
            log.warning("%d unreadable file(s) skipped (metrics.json: data)", skipped)
        return self.metrics

    def _finish_tracking(self) -> None:
        """Final figures and the run directory to the trackers, then close them; their
        records go into ``metrics.json`` (written again)."""
        if self.trackers is None:
            return
        self.metrics["tracking"] = self.trackers.finish(self.metrics, self.run_dir)
        self.trackers = None
        self._save_final_metrics()

    def _completed_before(self) -> dict[str, Any] | None:
        """With ``resume``, a run whose ``metrics.json`` already says ``completed`` is not run
        again (a resumed sweep redoes only its unfinished jobs); its figures are returned."""
        if _peek(self.cfg, "resume") is not True or not self.metrics_path.is_file():
            return None
        try:
            previous = json.loads(self.metrics_path.read_text())
        except (OSError, ValueError):
            return None  # unreadable: run it again
        if not isinstance(previous, dict) or previous.get("status") != "completed":
            return None
        log.info("%s already completed: nothing to resume", self.run_dir)
        return previous

    def _save_final_metrics(self) -> None:
        """Write ``metrics.json`` at the end; when the run already failed (a full disk, say),
        a failing write is logged rather than hiding the first error."""
        try:
            self._save_metrics()
        except OSError as exc:
            if self.metrics["status"] == "completed":
                raise
            log.error("could not record the failure in %s: %s", self.metrics_path, exc)


def _original_cwd() -> str:
    try:
        from hydra.utils import get_original_cwd

        return get_original_cwd()
    except (ValueError, ImportError):
        return os.getcwd()
