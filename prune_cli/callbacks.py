"""Hydra callbacks of ``prune-run`` (registered in ``configs/config.yaml`` under
``hydra.callbacks``).

:class:`SweepSummary` runs in the launching process when a sweep (``-m``) ends, whatever the
launcher: it writes ``summary.csv`` and ``summary.md`` into the sweep directory (the tables of
``prune-report``; run ``prune-report`` for the plots), logs how many jobs completed, and records
jobs that did not complete so that ``prune-run`` exits with status 2. Jobs that ran in other
processes (joblib workers, SLURM) cannot report their failure to the launching process
otherwise: their ``metrics.json`` is the record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prune_cli.report import DONE, ReportError, build_report

log = logging.getLogger("prune_cli")

#: One message per sweep that had jobs which did not complete (read by ``prune_cli.cli``).
SWEEP_FAILURES: list[str] = []


class SweepSummary(Callback):
    """Summarise the sweep directory at the end of a multirun (see the module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            rows = build_report([sweep_dir], plots=False)["rows"]
        except ReportError:
            return
        bad = [r for r in rows if r["status"] != DONE]
        summary = sweep_dir / "summary.md"
        log.info("sweep: %d of %d jobs completed; summary: %s", len(rows) - len(bad), len(rows),
                 summary)  # fmt: skip
        if bad:
            SWEEP_FAILURES.append(
                f"{len(bad)} of {len(rows)} jobs did not complete (see {summary})"
            )
