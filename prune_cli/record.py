"""The record of one run: ``metrics.json`` (written atomically after every change), each stage's
figures with their log line, the experiment trackers, the timings, and what the run did otherwise
than asked (``warnings``, ``skipped_stages``).

Run directory layout::

    .hydra/            resolved config, overrides (Hydra)
    prune-run.log      the log (Hydra)
    history.csv        one row per epoch of every training stage
    checkpoints/       trained.pt, pruned.pt, final.pt, and per-epoch *_last.pt for resuming;
                       final.safetensors + final.json, the portable copy (prune_cli.load_pruned)
    metrics.json       written after every stage (status: running -> completed | failed)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune_cli.metrics.expected import check_expected_accuracy
from prune_cli.metrics.figures import log_line
from prune_cli.metrics.report import write_metrics_json
from prune_cli.tracking import RunInfo, Trackers, build_trackers

log = logging.getLogger("prune_cli")

#: Set by a launcher that ran the job otherwise than asked (hydra_plugins/prune_cli_launchers).
LAUNCHER_NOTE_ENV = "PRUNE_CLI_LAUNCHER_NOTE"
#: How far an achieved pruning rate may be from the one asked for before the run says so.
RATE_TOLERANCE = 0.01


@dataclass(frozen=True)
class RunFiles:
    """Where a run writes (see the module docstring), and whether it resumes from what is
    there."""

    run_dir: Path
    resume: bool = False

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def history_csv(self) -> Path:
        return self.run_dir / "history.csv"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"


class RunRecord:
    """``metrics.json`` of one run, kept in :attr:`metrics` and written after every change."""

    def __init__(self, path: Path, metrics: dict[str, Any]) -> None:
        self.path = path
        self.metrics = metrics
        #: The run's experiment trackers (``logger=``), once started.
        self.trackers: Trackers | None = None
        #: The dataset's record of unreadable files (``summary()``), once the data is read.
        self.bad_files: Any = None

    def save(self) -> None:
        if self.bad_files is not None:  # unreadable files skipped so far
            self.metrics["data"] = self.bad_files.summary()
        write_metrics_json(self.path, self.metrics)

    def save_final(self) -> None:
        """Write ``metrics.json`` at the end; when the run already failed (a full disk, say),
        a failing write is logged rather than hiding the first error."""
        try:
            self.save()
        except OSError as exc:
            if self.metrics["status"] == "completed":
                raise
            log.error("could not record the failure in %s: %s", self.path, exc)

    def launcher(self) -> None:
        """Which GPUs a launcher gave this run (``hydra/launcher=gpu_pool`` sets one per job),
        and a launcher's fallback (gpu_pool on a machine without GPUs) as a warning."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            self.metrics["cuda_visible_devices"] = visible
        note = os.environ.get(LAUNCHER_NOTE_ENV)
        if note:
            self.warn(note)

    def timed(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to the stage's ``timings``."""
        timings = self.metrics["timings"]
        timings[stage] = round(timings.get(stage, 0) + seconds, 3)

    def warn(self, message: str) -> None:
        """A run that does something other than asked says so, in the log and in
        ``metrics.json`` (``warnings``), which the report shows."""
        log.warning(message)
        warnings = self.metrics.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)
        self.save()

    def skip(self, stage: str, reason: str) -> None:
        """A stage that does not apply to this run, recorded with its reason."""
        self.metrics.setdefault("skipped_stages", {})[stage] = reason
        log.info("%s skipped: %s", stage, reason)
        self.save()

    def stage(self, stage: str, figures: dict[str, Any]) -> dict[str, Any]:
        """Store a stage's figures as ``metrics[stage]`` (listed in ``stages``), log them and
        send them to the trackers."""
        self.metrics[stage] = figures
        if stage not in self.metrics["stages"]:
            self.metrics["stages"].append(stage)
        self.save()
        if self.trackers is not None:
            self.trackers.log_stage(stage, figures)
        log.info("%s", log_line(stage, figures))
        return figures

    def check_prune_info(self, info: Mapping[str, Any], method: str) -> None:
        """A method's own warnings, and every rate it achieved more than
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
                    f"{method}: {what} pruned {rate['achieved']:.4f}, not the "
                    f"{rate['target']:.4f} asked for ({100 * gap:+.1f} points)"
                )

    def expected_accuracy(self, weights: Mapping[str, Any], test_images: int) -> None:
        """The pretrained dense model against its published top-1 (``weights.top1``, set by a
        ``weights=`` config or by hand): recorded as ``metrics.json`` ``weights``, and a gap
        beyond ``weights.tolerance`` is a warning (:mod:`prune_cli.metrics.expected`)."""
        if weights.get("top1") is None:
            return
        top1 = float(self.metrics["dense_reference"]["top1"])
        self.metrics["weights"], warning = check_expected_accuracy(weights, top1, test_images)
        if warning is not None:
            self.warn(warning)
        else:
            self.save()

    def data_read(self, data: Any, holdout: dict[str, Any] | None) -> None:
        """The dataset is read: its unreadable files are recorded from now on, what building it
        did otherwise than asked (``data.notes``) goes to the warnings, and a validation split
        held out for the method (``holdout``) is recorded with its size, or as the dataset's own
        when it has one (then nothing was held out)."""
        self.bad_files = data.bad_files
        if holdout is not None:
            self.metrics["data_holdout"] = holdout
            if data.has_split("val"):
                holdout["val_images"] = len(data.splits["val"])
                if data.notes:  # the dataset's own validation split: nothing held out
                    holdout.update(val_size=0, used="the dataset's own validation split")
                    return
        for note in data.notes:
            self.warn(note)

    # ------------------------------------------------------------------ trackers
    def start_tracking(self, logger: Mapping[str, Any], run: RunInfo) -> None:
        """Open the trackers of ``logger=`` and log the config; ``metrics.json`` follows how
        they fare under ``tracking`` (the same dict, updated as they go)."""
        self.trackers = build_trackers(logger)
        self.metrics["tracking"] = self.trackers.records
        self.trackers.start(run)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """A training epoch's ``history.csv`` row, to the trackers' curves."""
        if self.trackers is not None:
            self.trackers.log_epoch(str(row["stage"]), row)

    def finish_tracking(self, run_dir: Path) -> None:
        """Final figures and the run directory to the trackers, then close them; their
        records go into ``metrics.json`` (written again)."""
        if self.trackers is None:
            return
        self.metrics["tracking"] = self.trackers.finish(self.metrics, run_dir)
        self.trackers = None
        self.save_final()


def completed_before(path: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` at ``path`` when it says the run ``completed`` (None when there is
    none, it cannot be read, or the run did not complete)."""
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: run it again
    if not isinstance(previous, dict) or previous.get("status") != "completed":
        return None
    return previous
