"""``prune-report PATH...``: tables and plots over the run directories of sweeps or single runs.

Every directory below each PATH that holds a ``metrics.json`` or a ``.hydra/`` folder is one run
(one row). A run's **status** is the one its ``metrics.json`` records (``completed``, ``failed``,
``interrupted``, ``running``: a job in progress, or one killed without a chance to record its
end), or, when there is no such file, ``unfinished`` (Hydra started the job but the pipeline
wrote nothing) or ``corrupt`` (the file cannot be read as JSON). Runs that did not complete are
listed with their status and error, never dropped; plots say how many runs they leave out.

Written into ``--out`` (default: the first PATH), each through a temporary file and a rename:

- ``summary.csv``: one row per run, all figures (columns in :data:`CSV_COLUMNS`);
- ``summary.md``: the same runs in a readable table, then the NetScore table: mean ± sd over
  seeds for every model x dataset x method x ratio (plus ``variant``, below);
- ``accuracy_vs_removed.png``, ``accuracy_vs_macs.png``, ``netscore_vs_ratio.png``: one line per
  method (per model/dataset/method when several), mean ± sd bands when a point has several seeds,
  and the dense reference as a star;
- ``schedule_trajectory.png`` (when some run followed an ``iterative`` or ``gradual`` schedule):
  accuracy against the parameters removed along the schedule, one line per run through its
  rounds (iterative: ``round_k``, ``round_k_finetuned``, then ``pruned`` and ``final``) or its
  epochs (gradual: the sparsity reached and the evaluation top-1 at each epoch end).

Analysis runs (``method=sensitivity``: ``analysis`` in ``metrics.json``) produce no pruned
model: they are listed with their ``analysis`` column and kept out of the figures and plots.

Definitions (those of ``metrics.json``, docs/metrics.md): "before" is the ``baseline`` stage (the
trained model the method pruned, ``baseline_kind`` says what it is: the dense model, or a
sparsity-trained, masked or shared one), "after" the ``final`` stage (pruned and
fine-tuned), "dense" the ``dense_reference`` stage (the plain dense model of the same training
setup); accuracies are top-1 on the test split in percent; ``params``/``macs`` are the dense
counts and ``*_nonzero`` the counts of non-zero weights; ``sparsity`` is the fraction of zero conv
+ linear weights *of the final model itself* (about 0 for a physically narrowed model), so methods
are compared with ``weights_removed`` (the fraction of the dense reference's conv + linear weights
removed or zero) and ``params_vs_dense``/``macs_vs_dense`` (nonzero counts over the dense
reference's); NetScore (docs/methods.md §2.3) =
``20·log10(top1² / (√(params/p_unit)·√(MACs/m_unit)))``, ``netscore`` with the counting mode the
run was configured with (``netscore_count``), both modes in ``netscore_dense``/``netscore_nonzero``,
and the units in ``params_unit``/``macs_unit``;
``speedup_bN`` is the dense reference's latency / the final model's at batch size N in PyTorch
eager, ``ort_speedup_bN`` the same for the exported ONNX models in ONNX Runtime; ``eta_bN`` and
``ort_eta_bN`` the speedup efficiency, speedup / MAC reduction (the dense reference's MACs over
the final model's, structure counts: :mod:`prune_cli.metrics.efficiency`), as the run recorded it
(runs made before it was recorded leave it empty);
``warnings`` lists what a run did other than asked (a skipped stage, a missed rate).

``variant`` names the command-line overrides (other than model, dataset, method, ratio, seed)
whose values differ between the runs of a report, e.g. ``method.scope=layerwise``, so that two
settings of one method are not averaged together.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune_cli.io import atomic_save_figure, atomic_write_text
from prune_cli.metrics.figures import REPORT_COLUMNS

EXIT_USER_ERROR = 2
#: Statuses of runs that produced final figures; every other status is listed but not plotted.
DONE = "completed"
#: Columns of the per-run table fixed by this module (``speedup_b<N>``, ``ort_speedup_b<N>``,
#: ``eta_b<N>`` and ``ort_eta_b<N>`` columns are added per batch size found in the runs, after
#: ``netscore_count``).
CSV_COLUMNS = [
    "model",
    "dataset",
    "method",
    "variant",
    "ratio",
    "seed",
    "status",
    "error",
    "baseline_kind",
    "top1_dense",
    "top1_before",
    "top1_after",
    "top1_change",
    *REPORT_COLUMNS,  # the final stage's figures (prune_cli.metrics.figures)
    "weights_removed",
    "params_vs_dense",
    "macs_vs_dense",
    "params_dense_ref",
    "macs_dense_ref",
    "netscore_before",
    "params_unit",
    "macs_unit",
    "netscore_count",
    "from_cache",
    "train_s",
    "prune_s",
    "finetune_s",
    "total_s",
    "schedule",
    "analysis",
    "warnings",
    "run_dir",
]
#: Overrides that are columns of their own, or say nothing about the experiment.
_NOT_VARIANT = ("model", "dataset", "method", "ratio", "seed", "resume", "pretrained", "device")
#: Prefixes of the per-batch-size latency columns.
_LATENCY_COLUMNS = ("speedup_", "ort_speedup_", "eta_", "ort_eta_")
PLOTS = ("accuracy_vs_removed.png", "accuracy_vs_macs.png", "netscore_vs_ratio.png")


class ReportError(Exception):
    """A bad command line (missing PATH, no runs found): one line, exit status 2."""


@dataclass
class Run:
    """One run directory and what could be read from it."""

    path: Path
    status: str
    error: str | None
    metrics: dict[str, Any]
    overrides: dict[str, str]


# ------------------------------------------------------------------ discovery and reading
def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Every run directory below ``paths``: those holding ``metrics.json`` or ``.hydra/``.

    A PATH may itself be a run directory or a ``metrics.json`` file. Hydra's ``.hydra`` marks a
    job even when it died before the pipeline wrote anything, so such runs are found too.
    """
    found: dict[Path, None] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise ReportError(f"{root}: no such file or directory")
        if root.is_file():
            if root.name != "metrics.json":
                raise ReportError(f"{root}: not a run directory or metrics.json")
            found[root.resolve().parent] = None
            continue
        for marker in ("metrics.json", ".hydra"):
            if (root / marker).exists():
                found[root.resolve()] = None
            for hit in root.rglob(marker):
                found[hit.resolve().parent] = None
    return list(found)


def _load_overrides(run_dir: Path) -> dict[str, str]:
    """``key -> value`` of the job's command-line overrides (``.hydra/overrides.yaml``)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    try:
        from omegaconf import OmegaConf

        items = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # an unreadable overrides file only loses the variant label
        return out
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _config_identity(run_dir: Path) -> dict[str, Any]:
    """model, dataset, method, ratio, seed from ``.hydra/config.yaml`` (runs with no metrics)."""
    path = run_dir / ".hydra" / "config.yaml"
    out: dict[str, Any] = {}
    if not path.is_file():
        return out
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
    except Exception:
        return out
    for key, node in (
        ("model", "model.name"),
        ("dataset", "dataset.name"),
        ("method", "method.name"),
        ("ratio", "ratio"),
        ("seed", "seed"),
    ):
        try:
            out[key] = OmegaConf.select(cfg, node, default=None)
        except Exception:  # an interpolation that cannot resolve outside Hydra
            out[key] = None
    return out


def read_run(run_dir: Path) -> Run:
    """Read one run directory; never raises for a broken run (it becomes a status)."""
    overrides = _load_overrides(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        return Run(
            run_dir,
            "unfinished",
            "no metrics.json: the job started but the pipeline recorded nothing",
            _config_identity(run_dir),
            overrides,
        )
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Run(
            run_dir,
            "corrupt",
            f"unreadable metrics.json: {detail}",
            _config_identity(run_dir),
            overrides,
        )
    status = str(metrics.get("status") or "unknown")
    error = metrics.get("error")
    if status == "running" and not error:
        error = "no end recorded: still running, or killed"
    return Run(run_dir, status, error, metrics, overrides)


# ------------------------------------------------------------------ rows
def _num(value: Any) -> float | None:
    """``value`` as a finite float, else None (metrics.json writes NaN as null)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _figure(value: Any) -> int | float | None:
    """A stage figure for the table: counts as they are, other numbers through :func:`_num`."""
    return value if isinstance(value, int) and not isinstance(value, bool) else _num(value)


def _variants(runs: Sequence[Run]) -> dict[Path, str]:
    """Per run: the overrides whose values differ across ``runs`` (see the module docstring)."""
    # Runs whose overrides could not be read (no .hydra/) say nothing about what varies.
    known = [r for r in runs if r.overrides]
    names = {k for r in known for k in r.overrides}
    keys = sorted(k for k in names if not k.startswith("hydra") and k not in _NOT_VARIANT)
    varying = [k for k in keys if len({r.overrides.get(k) for r in known}) > 1]
    return {
        r.path: ",".join(f"{k}={r.overrides[k]}" for k in varying if k in r.overrides) for r in runs
    }


def _schedule(metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's pruning schedule record; older dynamic_filter runs hold their rate ramp's
    name (a string) there instead: no schedule."""
    schedule = metrics.get("schedule")
    return schedule if isinstance(schedule, dict) else {}


def make_rows(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat dict per run (keys :data:`CSV_COLUMNS` + ``speedup_b<N>``) and the column list."""
    variants = _variants(runs)
    rows: list[dict[str, Any]] = []
    speedup_keys: set[str] = set()
    for run in runs:
        m = run.metrics
        base = m.get("baseline") or {}
        final = m.get("final") or {}
        # Runs written before the dense reference existed: their baseline was the dense model
        # for every method that does not change training; say where the figures came from.
        dense = m.get("dense_reference") or base
        rel = m.get("relative_to_dense") or {}
        units = m.get("netscore_units") or {}
        timings = m.get("timings") or {}
        before, after = _num(base.get("top1")), _num(final.get("top1"))
        row: dict[str, Any] = {
            "model": m.get("model"),
            "dataset": m.get("dataset"),
            "method": m.get("method"),
            "variant": variants.get(run.path, ""),
            "ratio": m.get("ratio"),
            "seed": m.get("seed"),
            "status": run.status,
            "error": run.error or "",
            "baseline_kind": m.get("baseline_kind", "unknown (older run)"),
            "top1_dense": _num(dense.get("top1")),
            "top1_before": before,
            "top1_after": after,
            "top1_change": None if before is None or after is None else round(after - before, 4),
            **{column: _figure(final.get(key)) for column, key in REPORT_COLUMNS.items()},
            "weights_removed": _num(rel.get("weights_removed")),
            "params_vs_dense": _num(rel.get("params")),
            "macs_vs_dense": _num(rel.get("macs")),
            "params_dense_ref": dense.get("params"),
            "macs_dense_ref": dense.get("macs"),
            "netscore_before": _num(base.get("netscore")),
            "params_unit": units.get("params_unit", ""),
            "macs_unit": units.get("macs_unit", ""),
            "netscore_count": units.get("count", ""),
            "from_cache": (m.get("train") or {}).get("from_cache"),
            "train_s": _num(timings.get("train")),
            "prune_s": _num(timings.get("prune")),
            "finetune_s": _num(timings.get("finetune")),
            "total_s": _num(timings.get("total")),
            "schedule": _schedule(m).get("name", "oneshot"),
            "analysis": m.get("analysis") or "",
            "warnings": "; ".join(m.get("warnings") or []),
            "run_dir": str(run.path),
        }
        latency = m.get("latency") or {}
        for prefix, block in (("", latency), ("ort_", latency.get("onnxruntime") or {})):
            for key, value in (block.get("speedup") or {}).items():
                row[f"{prefix}speedup_{key}"] = _num(value)
                speedup_keys.add(f"{prefix}speedup_{key}")
            for key, value in _efficiency(block).items():
                row[f"{prefix}eta_{key}"] = _num(value)
                speedup_keys.add(f"{prefix}eta_{key}")
        rows.append(row)
    # speedup_b1 before speedup_b64 before eta_b1, PyTorch before ONNX Runtime
    speedups = sorted(speedup_keys, key=lambda k: (k.startswith("ort_"), "eta_" in k, len(k), k))
    at = CSV_COLUMNS.index("netscore_count") + 1
    columns = [*CSV_COLUMNS[:at], *speedups, *CSV_COLUMNS[at:]]
    rows.sort(key=_row_order)
    return rows, columns


def _efficiency(block: dict[str, Any]) -> dict[str, float]:
    """A latency block's ``speedup_efficiency`` (recorded by the run; runs made before it
    existed have none)."""
    return dict(block.get("speedup_efficiency") or {})


def _row_order(row: dict[str, Any]) -> tuple:
    ratio = _num(row["ratio"])
    seed = _num(row["seed"])
    return (
        str(row["model"] or ""),
        str(row["dataset"] or ""),
        str(row["method"] or ""),
        row["variant"],
        ratio if ratio is not None else math.inf,
        seed if seed is not None else math.inf,
        row["run_dir"],
    )


# ------------------------------------------------------------------ statistics
def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (n - 1; None for fewer than 2 values) and n."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return statistics.fmean(vals), sd, len(vals)


def _group_key(row: dict[str, Any]) -> tuple:
    return (row["model"], row["dataset"], row["method"], row["variant"], row["ratio"])


def netscore_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """NetScore grouped by model x dataset x method (x variant) x ratio: mean ± sd over seeds.

    Only completed runs contribute figures; ``runs`` counts them and ``total`` all runs of the
    group, so a group with failures shows e.g. ``2/3``.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[_group_key(row)].append(row)
    out = []
    for key, members in groups.items():
        done = [r for r in members if _plotted(r)]
        entry: dict[str, Any] = dict(zip(("model", "dataset", "method", "variant", "ratio"), key))
        entry["runs"], entry["total"] = len(done), len(members)
        for col in (
            "netscore",
            "netscore_dense",
            "netscore_nonzero",
            "top1_after",
            "weights_removed",
        ):
            entry[col] = mean_sd(r[col] for r in done)
        units = {(r["params_unit"], r["macs_unit"], r["netscore_count"]) for r in done}
        entry["units"] = "; ".join(f"{p}, {m}, headline {c}" for p, m, c in sorted(units))
        out.append(entry)
    out.sort(key=lambda e: _row_order({**e, "seed": None, "run_dir": ""}))
    return out


# ------------------------------------------------------------------ writing
def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_ratio(value: Any) -> str:
    number = _num(value)
    return f"{number:g}" if number is not None else _fmt(value)


def _fmt_count(value: Any, unit: float, suffix: str) -> str:
    return "–" if value is None else f"{value / unit:.3f}{suffix}"


def _fmt_ms(mean: float | None, sd: float | None, digits: int = 2) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in body]
    return lines


def _speedup_header(column: str) -> str:
    """``speedup_b1`` -> ``speedup b1``; ``ort_speedup_b1`` -> ``ORT speedup b1``;
    ``eta_b1`` -> ``η b1``."""
    runtime = "ORT " if column.startswith("ort_") else ""
    what, _, batch = column.removeprefix("ort_").partition("_")
    return f"{runtime}{'η' if what == 'eta' else what} {batch}"


def render_markdown(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    table: Sequence[dict[str, Any]],
    sources: Sequence[Path],
    plots: Sequence[str],
) -> str:
    """``summary.md``: counts by status, the per-run table, the NetScore table, the plots."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["status"]] += 1
    speedups = [c for c in columns if c.startswith(_LATENCY_COLUMNS)]
    has_variant = any(r["variant"] for r in rows)
    lines = ["# prune-report", ""]
    lines.append("Runs from: " + ", ".join(f"`{p}`" for p in sources))
    lines.append("")
    lines.append(
        f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."
    )
    analyses = [r for r in rows if r.get("analysis")]
    if analyses:
        kinds = ", ".join(sorted({r["analysis"] for r in analyses}))
        lines += [
            "",
            f"{len(analyses)} analysis run(s) ({kinds}"
            "): no pruned model, not a compression result; their tables and plots are in their "
            "run directories (e.g. `sensitivity.csv`, `sensitivity.png`), and they are left out "
            "of the figures below.",
        ]
    lines += [
        "",
        "Top-1 on the test split (%): dense = the dense reference (plain dense training of "
        "the same setup), before = the trained model the method pruned (`baseline_kind` in "
        "`summary.csv`: the dense model, or a sparsity-trained, masked or shared one), after = "
        "pruned + fine-tuned. Removed = fraction of the dense reference's conv + linear weights "
        "removed or zero; params and MACs of the final model as nonzero / dense counts. "
        "NetScore = 20·log10(top1² / (√(params/p_unit)·√(MACs/m_unit))) from nonzero and dense "
        "counts, units per run in `summary.csv` (`params_unit`, `macs_unit`). Speedup = dense "
        "reference latency / final latency at batch size N (PyTorch eager; ORT: the exported "
        "ONNX models in ONNX Runtime); η = speedup / MAC reduction (dense reference MACs / "
        "final MACs), 1.0 when latency falls as fast as the MACs.",
        "",
        "## Runs",
        "",
    ]
    header = ["model", "dataset", "method"]
    header += ["variant"] if has_variant else []
    header += ["ratio", "seed", "status", "top1 dense", "top1 before", "top1 after", "Δ top1"]
    header += ["params M (nz/dense)", "MACs M (nz/dense)", "removed %"]
    header += ["NetScore nz", "NetScore dense", "units"]
    header += [_speedup_header(c) for c in speedups] + ["error"]
    body = []
    for r in rows:
        cells = [_fmt(r["model"]), _fmt(r["dataset"]), _fmt(r["method"])]
        cells += [r["variant"] or "–"] if has_variant else []
        removed = None if r["weights_removed"] is None else 100.0 * r["weights_removed"]
        units = f"{r['params_unit']}, {r['macs_unit']}" if r["params_unit"] else "–"
        cells += [_fmt_ratio(r["ratio"]), _fmt(r["seed"]), r["status"], _fmt(r["top1_dense"])]
        cells += [_fmt(r["top1_before"]), _fmt(r["top1_after"]), _fmt(r["top1_change"])]
        cells += [
            f"{_fmt_count(r['params_nonzero'], 1e6, '')} / {_fmt_count(r['params'], 1e6, '')}",
            f"{_fmt_count(r['macs_nonzero'], 1e6, '')} / {_fmt_count(r['macs'], 1e6, '')}",
            _fmt(removed),
            _fmt(r["netscore_nonzero"]),
            _fmt(r["netscore_dense"]),
            units,
        ]
        cells += [_fmt(r.get(c)) for c in speedups] + [r["error"] or ""]
        body.append(cells)
    lines += _md_table(header, body)
    warned = [r for r in rows if r.get("warnings")]
    if warned:
        lines += ["", "## Warnings", "", "What these runs did other than asked:", ""]
        for r in warned:
            what = f"{r['model']}/{r['dataset']}/{r['method']} ratio {_fmt_ratio(r['ratio'])}"
            lines.append(f"- {what} seed {_fmt(r['seed'])}: {r['warnings']}")
    lines += [
        "",
        "## NetScore by model × dataset × method × ratio",
        "",
        "Mean ± sd (n − 1) over the completed runs (seeds) of each group; `runs` = completed / "
        "all runs of the group.",
        "",
    ]
    header = ["model", "dataset", "method"] + (["variant"] if has_variant else [])
    header += ["ratio", "runs", "NetScore", "NetScore nz", "NetScore dense", "top1 after"]
    header += ["removed %", "units"]
    body = []
    for e in table:
        cells = [_fmt(e["model"]), _fmt(e["dataset"]), _fmt(e["method"])]
        cells += [e["variant"] or "–"] if has_variant else []
        sp_mean, sp_sd, _ = e["weights_removed"]
        cells += [_fmt_ratio(e["ratio"]), f"{e['runs']}/{e['total']}"]
        cells += [_fmt_ms(*e[c][:2]) for c in ("netscore", "netscore_nonzero", "netscore_dense")]
        cells += [_fmt_ms(*e["top1_after"][:2])]
        cells += [_fmt_ms(None if sp_mean is None else 100 * sp_mean,
                          None if sp_sd is None else 100 * sp_sd)]  # fmt: skip
        cells += [e["units"] or "–"]
        body.append(cells)
    lines += _md_table(header, body)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plots
def _series_label(row: dict[str, Any], several_setups: bool) -> str:
    label = str(row["method"])
    if row["variant"]:
        label += f" ({row['variant']})"
    if several_setups:
        label = f"{row['model']}/{row['dataset']}/{label}"
    return label


def dense_points(done: Sequence[dict[str, Any]], x_key: str) -> list[tuple[str, float, float]]:
    """The dense reference of every model/dataset among the completed rows ``done``, as plot
    points ``(label, x, top1)``: top-1 of the ``dense_reference`` stage (mean over runs), at 0
    weights removed or at the dense reference's MACs (millions) — never at a pruned model's
    figures, and never a masked or shared baseline's."""
    setups = sorted({(r["model"], r["dataset"]) for r in done}, key=str)
    points = []
    for model, dataset in setups:
        members = [r for r in done if (r["model"], r["dataset"]) == (model, dataset)]
        acc = mean_sd(r["top1_dense"] for r in members)[0]
        if acc is None:
            continue
        if x_key == "weights_removed":
            x: float | None = 0.0
        else:
            x = mean_sd(r["macs_dense_ref"] for r in members)[0]
            x = None if x is None else x / 1e6
        if x is not None:
            label = f"dense {model}/{dataset}" if len(setups) > 1 else "dense reference"
            points.append((label, x, acc))
    return points


def write_plots(rows: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """The three PNG plots (module docstring); returns the file names written.

    Each series (method, or model/dataset/method when the report spans several setups) is one
    line through the per-ratio means of its completed runs, sorted along the x axis; where a
    ratio has several seeds a band shows mean ± sd of the y value. The dense baselines appear as
    reference points. Runs that did not complete are counted in a note on every plot.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in jobs and CI
    import matplotlib.pyplot as plt

    done = [r for r in rows if _plotted(r)]
    left_out = sum(1 for r in rows if r["status"] != DONE)
    setups = {(r["model"], r["dataset"]) for r in done}
    several = len(setups) > 1
    series: dict[str, dict[Any, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in done:
        series[_series_label(r, several)][r["ratio"]].append(r)
    units = sorted({f"{r['params_unit']}, {r['macs_unit']}" for r in done if r["params_unit"]})
    counts = sorted({str(r["netscore_count"]) for r in done if r["netscore_count"]})

    specs = [
        ("accuracy_vs_removed.png", "weights_removed", 100.0, "top1_after",
         "dense reference's conv + linear weights removed or zero (%)",
         "top-1 after fine-tuning (%)", "Accuracy vs. weights removed"),
        ("accuracy_vs_macs.png", "macs_nonzero", 1e-6, "top1_after",
         "MACs of one image, nonzero weights only (millions)", "top-1 after fine-tuning (%)",
         "Accuracy vs. MACs"),
        ("netscore_vs_ratio.png", "ratio", 1.0, "netscore",
         "pruning ratio", f"NetScore ({'; '.join(counts) or 'nonzero'} counts; "
         f"{'; '.join(units) or 'M-params, G-MACs'})", "NetScore vs. ratio"),
    ]  # fmt: skip
    written = []
    for name, x_key, x_scale, y_key, x_label, y_label, title in specs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, by_ratio in sorted(series.items()):
            points = []
            for members in by_ratio.values():
                xm = mean_sd(_num(m[x_key]) for m in members)[0]
                ym, ysd, _ = mean_sd(m[y_key] for m in members)
                if xm is not None and ym is not None:
                    points.append((xm * x_scale, ym, ysd))
            if not points:
                continue
            points.sort()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            (line,) = ax.plot(xs, ys, marker="o", label=label)
            if any(p[2] is not None for p in points):
                lo = [y - (sd or 0.0) for _, y, sd in points]
                hi = [y + (sd or 0.0) for _, y, sd in points]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if y_key == "top1_after":
            for label, x, acc in dense_points(done, x_key):
                ax.scatter([x], [acc], marker="*", s=140, color="black", zorder=5, label=label)
        if left_out:
            ax.text(
                0.01, 0.01, f"{left_out} run(s) not completed, not plotted (see summary.md)",
                transform=ax.transAxes, fontsize=8, color="firebrick", va="bottom",
            )  # fmt: skip
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(title + (" (mean ± sd over seeds)" if _has_repeats(series) else ""))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        atomic_save_figure(fig, out / name)
        plt.close(fig)
        written.append(name)
    return written


def _plotted(row: dict[str, Any]) -> bool:
    """A completed run with a pruned model (analysis runs have none)."""
    return row["status"] == DONE and not row.get("analysis")


def schedule_trajectory(metrics: dict[str, Any]) -> list[tuple[float, float]]:
    """``(parameters removed or zero vs the dense reference, top-1 %)`` along a run's schedule:
    the dense reference, then the stages of every iterative round, or the epoch points of a
    gradual schedule (top-1 on their evaluation split), then ``final``; empty for one shot."""
    schedule = _schedule(metrics)
    dense = metrics.get("dense_reference") or metrics.get("baseline") or {}
    total = _num(dense.get("params"))
    if not schedule or not total or schedule.get("name") == "oneshot":
        return []

    def point(stage: str) -> tuple[float, float] | None:
        fig = metrics.get(stage) or {}
        nonzero, top1 = _num(fig.get("params_nonzero")), _num(fig.get("top1"))
        return None if nonzero is None or top1 is None else (1.0 - nonzero / total, top1)

    points = [point("dense_reference")]
    if schedule.get("name") == "iterative":
        points += [point(s) for entry in schedule.get("points", []) for s in entry["stages"]]
    else:
        pool = _num(
            (((metrics.get("prune_info") or {}).get("rates") or {}).get("weights") or {}).get(
                "total"
            )
        )
        for entry in schedule.get("epochs", []):
            achieved, top1 = _num(entry.get("achieved")), _num(entry.get("eval_top1"))
            if pool and achieved is not None and top1 is not None:
                points.append((achieved * pool / total, top1))
        points.append(point("final"))
    return [p for p in points if p is not None]


def write_schedule_plot(
    runs: Sequence[Run], rows: Sequence[dict[str, Any]], out: Path
) -> list[str]:
    """``schedule_trajectory.png`` when some completed run has a schedule (else nothing)."""
    labels = {r["run_dir"]: r for r in rows}
    lines = []
    for run in runs:
        row = labels.get(str(run.path))
        if row is None or not _plotted(row):
            continue
        points = schedule_trajectory(run.metrics)
        if len(points) > 1:
            label = f"{_series_label(row, False)} seed {row['seed']}"
            lines.append((label, points))
    if not lines:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(lines):
        ax.plot([100 * x for x, _ in points], [y for _, y in points], marker="o", label=label)
    ax.set_xlabel("parameters removed or zero vs the dense reference (%)")
    ax.set_ylabel("top-1 (%): test at stages, evaluation split at gradual epoch ends")
    ax.set_title("Accuracy along the schedule")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    name = "schedule_trajectory.png"
    atomic_save_figure(fig, out / name)
    plt.close(fig)
    return [name]


def _has_repeats(series: dict[str, dict[Any, list[dict[str, Any]]]]) -> bool:
    return any(len(m) > 1 for by_ratio in series.values() for m in by_ratio.values())


# ------------------------------------------------------------------ entry point
def build_report(paths: Sequence[Path], out: Path | None = None, plots: bool = True) -> dict:
    """Read every run below ``paths`` and write the report into ``out`` (default: ``paths[0]``).

    Returns ``{"rows", "columns", "netscore", "files"}``. Raises :class:`ReportError` for a
    missing PATH or when no run directory is found.
    """
    if not paths:
        raise ReportError("give at least one sweep or run directory")
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise ReportError(
            "no run directories (with metrics.json or .hydra/) below "
            + ", ".join(str(p) for p in paths)
        )
    first = Path(paths[0])
    out = Path(out) if out is not None else (first.parent if first.is_file() else first)
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d) for d in run_dirs]
    rows, columns = make_rows(runs)
    table = netscore_table(rows)
    files = ["summary.csv", "summary.md"]
    names = write_plots(rows, out) + write_schedule_plot(runs, rows, out) if plots else []
    write_csv(out / "summary.csv", rows, columns)
    atomic_write_text(
        out / "summary.md", render_markdown(rows, columns, table, [Path(p) for p in paths], names)
    )
    return {"rows": rows, "columns": columns, "netscore": table, "files": files + names}


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``prune-report``."""
    parser = argparse.ArgumentParser(
        prog="prune-report",
        description="Summarise prune-run directories (sweeps or single runs): summary.csv, "
        "summary.md and PNG plots.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="sweeps, run dirs or metrics.json files"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: first PATH)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    try:
        result = build_report(args.paths, args.out, plots=not args.no_plots)
    except ReportError as exc:
        print(f"prune-report: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    rows = result["rows"]
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["status"]] += 1
    out = args.out or (args.paths[0].parent if args.paths[0].is_file() else args.paths[0])
    print(f"{len(rows)} runs (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")")
    for row in rows:
        if row["status"] != DONE:
            error = f": {row['error']}" if row["error"] else ""
            print(f"  {row['status']}: {row['run_dir']}{error}")
    print("wrote " + ", ".join(str(Path(out) / f) for f in result["files"]))


if __name__ == "__main__":
    main()
