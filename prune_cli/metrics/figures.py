"""The figures of a stage, declared once: what ``metrics.json`` records for every stage, how each
is computed from the stage's measurements, whether the log line and the trackers show it, and
which ``prune-report`` column holds the final stage's value.

Adding a figure is one :class:`StageFigure` in :data:`STAGE_FIGURES`:
:func:`~prune_cli.metrics.report.stage_metrics` records it, the pipeline logs it, the trackers
get it (:mod:`prune_cli.tracking`) and ``prune-report`` tabulates it (:mod:`prune_cli.report`).
The measurements (:class:`Measured`) are taken by ``stage_metrics``; this module needs no torch,
so that ``prune-report`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prune_cli.metrics.netscore import netscore


@dataclass(frozen=True)
class Measured:
    """What is measured on a stage's model (:mod:`.counting`) and its test evaluation, and the
    NetScore settings (``metrics.netscore``: ``p_unit``, ``m_unit``, ``count``)."""

    evaluation: Mapping[str, float]
    params: int
    params_nonzero: int
    macs: int
    macs_nonzero: int
    sparsity: float
    weights: int
    weights_nonzero: int
    units: Mapping[str, Any]


@dataclass(frozen=True)
class StageFigure:
    """One figure of a stage: its key in ``metrics.json``, its value from the measurements,
    its part of the stage's log line (a %-format of the value; None: not logged), whether the
    trackers get it, and the ``prune-report`` column of the final stage's value (None: none)."""

    key: str
    value: Callable[[Measured], Any]
    log: str | None = None
    tracked: bool = True
    report: str | None = None


def netscore_or_nan(acc: float, params: float, macs: float, units: Mapping[str, Any]) -> float:
    """NetScore (:func:`~.netscore.netscore`) rounded to 4 places; nan where it is undefined
    (no accuracy, params or MACs)."""
    if not (acc > 0 and params > 0 and macs > 0) or math.isnan(acc):
        return float("nan")
    p_unit, m_unit = float(units["p_unit"]), float(units["m_unit"])
    return round(netscore(acc, params, macs, p_unit=p_unit, m_unit=m_unit), 4)


def _netscore(m: Measured, count: str) -> float:
    params = m.params if count == "dense" else m.params_nonzero
    macs = m.macs if count == "dense" else m.macs_nonzero
    return netscore_or_nan(float(m.evaluation["top1"]), params, macs, m.units)


#: Every figure of a stage, in the order ``metrics.json`` writes them.
STAGE_FIGURES: tuple[StageFigure, ...] = (
    StageFigure("top1", lambda m: round(float(m.evaluation["top1"]), 4), "top1 %.2f%%"),
    StageFigure("top5", lambda m: round(float(m.evaluation["top5"]), 4), report="top5_after"),
    StageFigure("loss", lambda m: round(float(m.evaluation["loss"]), 6)),
    StageFigure("params", lambda m: m.params, "params %d", report="params"),
    StageFigure(
        "params_nonzero", lambda m: m.params_nonzero, "(nonzero %d)", report="params_nonzero"
    ),
    StageFigure("macs", lambda m: m.macs, "MACs %d", report="macs"),
    StageFigure("macs_nonzero", lambda m: m.macs_nonzero, "(nonzero %d)", report="macs_nonzero"),
    StageFigure("sparsity", lambda m: round(m.sparsity, 6), "sparsity %.4f", report="sparsity"),
    StageFigure("weights", lambda m: m.weights, tracked=False),
    StageFigure("weights_nonzero", lambda m: m.weights_nonzero, tracked=False),
    StageFigure("netscore_dense", lambda m: _netscore(m, "dense"), report="netscore_dense"),
    StageFigure("netscore_nonzero", lambda m: _netscore(m, "nonzero"), report="netscore_nonzero"),
    # the headline: the counting mode metrics.netscore.count names
    StageFigure(
        "netscore",
        lambda m: _netscore(m, str(m.units.get("count", "nonzero"))),
        "NetScore %.2f",
        report="netscore",
    ),
)


def stage_figures(measured: Measured) -> dict[str, Any]:
    """The figures of :data:`STAGE_FIGURES` for a stage's measurements."""
    return {f.key: f.value(measured) for f in STAGE_FIGURES}


def log_line(stage: str, figures: Mapping[str, Any]) -> str:
    """The stage's line in the log: every figure with a log format (a format in parentheses
    follows the one before it)."""
    line = ""
    for f in STAGE_FIGURES:
        if f.log is not None:
            line += (" " if f.log.startswith("(") else "  ") + f.log % figures[f.key]
    return f"{stage}: {line.lstrip()}"


#: The figures the experiment trackers get.
TRACKED = tuple(f.key for f in STAGE_FIGURES if f.tracked)
#: ``prune-report`` columns of the final stage's figures: ``{column: key}``.
REPORT_COLUMNS = {f.report: f.key for f in STAGE_FIGURES if f.report is not None}
