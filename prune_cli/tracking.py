"""Experiment trackers: a run reported to TensorBoard, MLflow and/or Weights & Biases.

Chosen with the Hydra group ``logger=`` (``configs/logger/<name>.yaml``, lightning-hydra-template's
convention): the config holds ``logger.<name>`` for every chosen tracker, e.g.
``logger=[tensorboard,mlflow]`` gives ``logger.tensorboard`` and ``logger.mlflow``.

- ``csv`` (the default): the run directory's own files only (``history.csv``, ``metrics.json``),
  which every run writes whatever the trackers;
- ``tensorboard``: event files in ``<run dir>/tensorboard`` (``torch.utils.tensorboard``);
- ``mlflow``: one MLflow run per prune-run job in experiment ``prune-cli``, stored in the SQLite
  database ``outputs/mlflow/mlflow.db`` under the launch directory (artifacts beside it) unless
  ``tracking_uri`` or ``MLFLOW_TRACKING_URI`` names another store;
- ``wandb``: a W&B run, offline (files in the run directory, ``wandb sync`` later) unless the user
  is logged in (``WANDB_API_KEY`` or ``wandb login``).

What each tracker gets (:class:`Trackers`): the resolved config as parameters; one point per
epoch of every training stage (``<stage>/<column>`` for the columns of ``history.csv``, the
epoch as the step); every stage's figures as ``metrics.json`` records them
(``<stage>/top1``, ``<stage>/params``...); the final model's figures (latency speedups,
timings, the run's status); and the run directory as artifacts where the backend keeps files
(MLflow, W&B), without the resume-only checkpoints ``*_last.pt`` / ``*_best.pt``.

A tracker that fails never loses the run: the failure is logged as a warning, the tracker is
closed and left out from then on, and ``metrics.json`` records it under ``tracking`` (``status:
failed``, the error and the call that failed). A tracker whose package is missing is refused
before any work starts (:func:`check_available`), with the install command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.errors import ConfigError, one_line
from prune_cli.metrics.figures import TRACKED
from prune_cli.options import Bool, Float, OneOf, Options, Text, parse

log = logging.getLogger("prune_cli")

#: Tracker name -> (module it needs, the install command).
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install -e '.[tracking]' (or pip install tensorboard)"),
    "mlflow": ("mlflow", "pip install -e '.[tracking]' (or pip install mlflow)"),
    "wandb": ("wandb", "pip install -e '.[wandb]' (or pip install wandb)"),
}
#: Checkpoints only a resume of the same run reads: not uploaded as artifacts.
RESUME_ONLY = ("*_last.pt", "*_best.pt")
#: The stage figures sent to the trackers (the per-layer sparsity table stays in metrics.json).
STAGE_KEYS = TRACKED
#: The numeric columns of a history.csv row sent as per-epoch curves.
EPOCH_KEYS = ("lr", "train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5", "time_s")
#: MLflow and W&B take parameter values up to a length; longer ones are cut with "...".
PARAM_LIMIT = 500


# ----------------------------------------------------------------------------- options
class CsvOptions(Options):
    """``logger=csv``: nothing to set (the run directory's files are always written)."""


class TensorBoardOptions(Options):
    log_dir: Text("a directory path") | None
    flush_secs: Float(gt=0)


class MlflowOptions(Options):
    tracking_uri: Text("a tracking URI") | None
    experiment: Text("an experiment name")
    run_name: Text("a run name") | None
    artifacts: Bool


class WandbOptions(Options):
    project: Text("a project name")
    entity: Text("an entity name") | None
    mode: OneOf("auto", "online", "offline")
    dir: Text("a directory path") | None
    artifacts: Bool
    tags: list[Text("a tag")]


class LoggerOptions(Options):
    """``logger.*``: one key per chosen tracker (``configs/logger/<name>.yaml``)."""

    csv: CsvOptions | None = None
    tensorboard: TensorBoardOptions | None = None
    mlflow: MlflowOptions | None = None
    wandb: WandbOptions | None = None


def check_available(names: Iterable[str]) -> None:
    """Refuse a chosen tracker whose package is not installed (one line with the install
    command), before any work starts."""
    for name in names:
        if name not in PACKAGES:
            continue
        module, how = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger={name} needs the {module} package: {how}")


# ----------------------------------------------------------------------------- what is logged
@dataclass
class RunInfo:
    """What a tracker needs to open its run."""

    run_dir: Path
    launch_dir: Path
    config: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def param_text(value: Any) -> str:
    """A parameter value as text (YAML spelling for null and booleans), cut to PARAM_LIMIT."""
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    else:
        text = str(value)
    return text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - 3] + "..."


def numbers(values: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, float]:
    """The finite numbers of ``values`` (only ``keys`` if given), as floats."""
    out = {}
    for key in keys if keys is not None else list(values):
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def final_figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The final model's figures beyond its stage object: the latency speedups of every backend
    (``latency/speedup_b1``, ``latency/onnxruntime_speedup_b1``) and the stage timings
    (``timings/train``...)."""
    out: dict[str, float] = {}
    latency = metrics.get("latency") or {}
    for key, value in numbers(latency.get("speedup") or {}).items():
        out[f"latency/speedup_{key}"] = value
    for backend, block in latency.items():
        if isinstance(block, Mapping) and isinstance(block.get("speedup"), Mapping):
            for key, value in numbers(block["speedup"]).items():
                out[f"latency/{backend}_speedup_{key}"] = value
    for key, value in numbers(metrics.get("timings") or {}).items():
        out[f"timings/{key}"] = value
    return out


def artifact_files(run_dir: Path, skip: Iterable[Path] = ()) -> list[Path]:
    """The files of ``run_dir`` sent as artifacts: all but the resume-only checkpoints and the
    folders in ``skip`` (a tracker's own files)."""
    skipped = [Path(p).resolve() for p in skip]
    files = []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or any(path.match(p) for p in RESUME_ONLY):
            continue
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skipped):
            continue
        files.append(path)
    return files


# ----------------------------------------------------------------------------- trackers
class Tracker:
    """One backend. Subclasses implement the calls; :class:`Trackers` catches their failures."""

    name = "base"

    def start(self, run: RunInfo) -> dict[str, Any]:
        """Open the tracker's run; returns what ``metrics.json`` records about where it logs."""
        raise NotImplementedError

    def log_params(self, params: Mapping[str, str]) -> None:
        raise NotImplementedError

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_artifacts(self, run_dir: Path) -> int:
        """Upload the run directory's files; returns how many (0: the backend keeps none)."""
        return 0

    def finish(self, status: str) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files written by ``torch.utils.tensorboard.SummaryWriter``."""

    name = "tensorboard"

    def __init__(self, opts: TensorBoardOptions) -> None:
        self.opts = opts
        self.writer: Any = None

    def start(self, run: RunInfo) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(self.opts.log_dir) if self.opts.log_dir else run.run_dir / "tensorboard"
        if not log_dir.is_absolute():
            log_dir = run.launch_dir / log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=self.opts.flush_secs)
        self.log_dir = log_dir
        return {"log_dir": str(log_dir), "view": f"tensorboard --logdir {log_dir}"}

    def log_params(self, params: Mapping[str, str]) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)
        self.params = dict(params)

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.flush()
        self.writer.close()


class MlflowTracker(Tracker):
    """An MLflow run, through ``MlflowClient`` (no global active run: sweeps that run several
    jobs in one process keep them apart)."""

    name = "mlflow"

    def __init__(self, opts: MlflowOptions) -> None:
        self.opts = opts
        self.client: Any = None
        self.run_id: str | None = None

    def _store(self, launch_dir: Path) -> tuple[str, str | None]:
        """(tracking URI, artifact location for a new experiment or None)."""
        uri = self.opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            if uri.startswith("file:") or "://" not in uri:
                # A file store named explicitly: MLflow 3 asks for this opt-in, the user gave it.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            return uri, None
        store = launch_dir / "outputs" / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()

    def start(self, run: RunInfo) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        uri, artifacts = self._store(run.launch_dir)
        # Jobs of a parallel sweep start together: one at a time creates the database (schema
        # migrations) and the experiment, the others then find them.
        with _store_lock(run.launch_dir, uri):
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(self.opts.experiment)
            if experiment is None:
                experiment_id = self.client.create_experiment(
                    self.opts.experiment, artifact_location=artifacts
                )
            else:
                experiment_id = experiment.experiment_id
        created = self.client.create_run(
            experiment_id, run_name=self.opts.run_name or run.name, tags=dict(run.tags)
        )
        self.run_id = created.info.run_id
        ui = f"mlflow ui --backend-store-uri {uri}"
        return {"tracking_uri": uri, "experiment": self.opts.experiment, "run_id": self.run_id,
                "view": ui}  # fmt: skip

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifacts(self, run_dir: Path) -> int:
        if not self.opts.artifacts:
            return 0
        files = artifact_files(run_dir)
        for path in files:
            folder = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        return len(files)

    def finish(self, status: str) -> None:
        state = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, state)


def wandb_logged_in() -> bool:
    """Whether W&B has credentials here: ``WANDB_API_KEY``, or the entry ``wandb login``
    writes to ``~/.netrc`` (read without calling the network)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbTracker(Tracker):
    """A W&B run; ``mode=auto`` is online only with credentials (:func:`wandb_logged_in`)."""

    name = "wandb"

    def __init__(self, opts: WandbOptions) -> None:
        self.opts = opts
        self.run: Any = None

    def mode(self) -> str:
        if os.environ.get("WANDB_MODE"):  # W&B's own switch wins, as in every W&B program
            return os.environ["WANDB_MODE"]
        if self.opts.mode != "auto":
            return self.opts.mode
        return "online" if wandb_logged_in() else "offline"

    def start(self, run: RunInfo) -> dict[str, Any]:
        import wandb

        folder = Path(self.opts.dir) if self.opts.dir else run.run_dir
        if not folder.is_absolute():
            folder = run.launch_dir / folder
        folder.mkdir(parents=True, exist_ok=True)
        mode = self.mode()
        self.run = wandb.init(
            project=self.opts.project,
            entity=self.opts.entity,
            name=run.name,
            dir=str(folder),
            mode=mode,
            tags=[*self.opts.tags, *(f"{k}={v}" for k, v in run.tags.items())],
            config=None,
            reinit="create_new",
        )
        self.folder = folder
        return {"mode": mode, "project": self.opts.project, "dir": str(folder / "wandb")}

    def log_params(self, params: Mapping[str, str]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        # W&B's own step must only grow; stage curves carry their epoch as a metric instead.
        self.run.log({**values, "step": step})

    def log_artifacts(self, run_dir: Path) -> int:
        if not self.opts.artifacts:
            return 0
        import wandb

        files = artifact_files(run_dir, skip=[self.folder / "wandb"])
        artifact = wandb.Artifact(f"run-{self.run.id}", type="run-directory")
        for path in files:
            artifact.add_file(str(path), name=path.relative_to(run_dir).as_posix())
        self.run.log_artifact(artifact)
        return len(files)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}


class _store_lock:
    """An exclusive ``flock`` on ``<launch dir>/outputs/.mlflow.lock`` for a local SQLite store
    (no-op for a remote tracking server)."""

    def __init__(self, launch_dir: Path, uri: str) -> None:
        self.path = launch_dir / "outputs" / ".mlflow.lock" if uri.startswith("sqlite") else None
        self.handle: Any = None

    def __enter__(self) -> None:
        if self.path is None:
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")  # held until __exit__
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


# ----------------------------------------------------------------------------- all of them
class Trackers:
    """The chosen trackers of one run. Every call goes to each tracker still working; a tracker
    that raises is closed, warned about once and recorded (:attr:`records`), and the run goes on.

    ``records`` is what ``metrics.json`` holds under ``tracking``: per tracker its ``status``
    (``running``, ``finished``, ``failed``), where it logs, and for a failure the ``error`` and
    the call that failed (``during``).
    """

    def __init__(self, trackers: Sequence[Tracker], names: Sequence[str]) -> None:
        self.trackers = list(trackers)
        self.names = list(names)
        self.records: dict[str, dict[str, Any]] = {
            "loggers": list(names),  # type: ignore[dict-item]
        }
        if "csv" in names or not trackers:
            self.records["csv"] = {"status": "files", "files": ["history.csv", "metrics.json"]}
        self.stage_steps: dict[str, int] = {}

    def _call(self, during: str, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                result = getattr(tracker, method)(*args)
            except Exception as exc:  # any failure of a tracker: the run itself goes on
                self._failed(tracker, during, exc)
            else:
                if method == "start":
                    self.records[tracker.name] = {"status": "running", **(result or {})}
                elif method == "log_artifacts" and result:
                    self.records[tracker.name]["artifacts"] = result

    def _failed(self, tracker: Tracker, during: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {one_line(exc)}"
        log.warning("logger %s failed during %s (%s); the run goes on without it (metrics.json: "
                    "tracking)", tracker.name, during, message)  # fmt: skip
        record = self.records.setdefault(tracker.name, {})
        record.update({"status": "failed", "during": during, "error": message})
        self.trackers.remove(tracker)
        if during != "start":
            with contextlib.suppress(Exception):  # closing a broken tracker is best effort
                tracker.finish("failed")

    # ------------------------------------------------------------------ the pipeline's calls
    def start(self, run: RunInfo) -> None:
        """Open every tracker's run and log the resolved config as parameters."""
        self._call("start", "start", run)
        params = {k: param_text(v) for k, v in flatten(run.config).items()}
        self._call("logging the config", "log_params", params)

    def log_epoch(self, stage: str, row: Mapping[str, Any]) -> None:
        """One ``history.csv`` row of a training stage, as ``<stage>/<column>`` at its epoch."""
        values = {f"{stage}/{k}": v for k, v in numbers(row, EPOCH_KEYS).items()}
        self._call(f"{stage} epoch {row.get('epoch')}", "log_metrics", values, int(row["epoch"]))

    def log_stage(self, stage: str, figures: Mapping[str, Any]) -> None:
        """A stage's figures (``metrics.json[stage]``) as ``<stage>/<key>``; the step is the
        stage's position in the run (0 = baseline, 1 = dense_reference...), so stage plots read
        left to right."""
        step = self.stage_steps.setdefault(stage, len(self.stage_steps))
        values = {f"{stage}/{k}": v for k, v in numbers(figures, STAGE_KEYS).items()}
        self._call(f"stage {stage}", "log_metrics", values, step)

    def finish(self, metrics: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
        """Log the final figures and the run directory, close every tracker; returns the
        records for ``metrics.json``."""
        status = str(metrics.get("status"))
        figures = final_figures(metrics)
        if figures:
            self._call("the final figures", "log_metrics", figures, 0)
        self._call("uploading the run directory", "log_artifacts", run_dir)
        for tracker in list(self.trackers):
            try:
                tracker.finish(status)
            except Exception as exc:  # recorded like any other failure
                self._failed(tracker, "finish", exc)
            else:
                self.records[tracker.name]["status"] = "finished"
        self.trackers.clear()
        return self.records


def build_trackers(logger_cfg: Mapping[str, Any] | None) -> Trackers:
    """The trackers named in the ``logger`` config (validated: :class:`LoggerOptions`)."""
    chosen = {k: v for k, v in (logger_cfg or {}).items() if v is not None}
    # The keys a tracker's node leaves out: configs/logger/<name>.yaml's.
    filled = {
        k: with_defaults((group_defaults("logger", k) or {}).get(k), v) for k, v in chosen.items()
    }
    opts = parse(LoggerOptions, filled, "logger.", group="logger")
    check_available(chosen)
    trackers = [TRACKERS[name](getattr(opts, name)) for name in chosen if name in TRACKERS]
    return Trackers(trackers, list(chosen))
