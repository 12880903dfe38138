"""The reproduction page (``docs/reproduce.md``) and its raw CSV, from the runs of
``scripts/reproduce.py``.

For every row: the published figure and its source, ours as mean ± sd over seeds (n), the MAC and
parameter reduction prune-cli measured on the final model, the fine-tuning budget next to the
paper's, the command, and the wall time on this machine. A row with a published pruned accuracy
counts as reproduced when our mean is within :data:`TOLERANCE` points of it (above counts too);
a row that misses says by how much. Claims without published figures (the seed papers') are
tested as in ``docs/results.md`` (``scripts/study_report.py``: paired or Welch t-tests over seeds).

    python scripts/reproduce_report.py                      # outputs/reproduce -> docs/reproduce.md
    python scripts/reproduce_report.py RUNS --out docs/reproduce.md
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_report import (  # a sibling script, not a package
    _ms,
    claims,
    claims_table,
    mean_sd,
    runs_of,
    setup_table,
)

ROOT = Path(__file__).resolve().parents[1]
#: A row is reproduced when our mean top-1 is at most this many points below the published one.
TOLERANCE = 1.0


@dataclass(frozen=True)
class Published:
    """A published row: baseline and pruned top-1 (percent), MAC reduction (dense / pruned),
    parameter reduction (fraction removed), the fine-tuning schedule, and where it is from."""

    base: float
    pruned: float
    macs_reduction: float | None
    params_removed: float | None
    schedule: str
    source: str


#: Row -> (title, published figures or None (a claim without figures), our command).
ROWS: dict[str, tuple[str, Published | None, str]] = {
    "depgraph": (
        "ResNet-56, coupled L1 channel pruning at DepGraph's 2.13x fewer MACs",
        Published(
            93.53,
            93.77,
            2.13,
            None,
            "100 epochs, SGD lr 0.01, x0.1 at 60 and 80, wd 5e-4",
            "Fang et al., DepGraph, CVPR 2023, ResNet-56 / CIFAR-10 table (with group sparse "
            "learning); the same code base's plain group L1: 93.53 -> 92.93 at 2.12x "
            "(Torch-Pruning reproduce/readme.md)",
        ),
        "prune-run -m experiment=repro_depgraph_resnet56 seed=0,1,2",
    ),
    "li2017_b": (
        "ResNet-56-pruned-B, L1 filter pruning (Li et al.)",
        Published(
            93.04,
            93.06,
            1.25e8 / 9.09e7,
            0.137,
            "40 epochs, lr 0.001 constant",
            "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017, Table 1 "
            "(FLOPs 9.09e7, -27.6%; params 7.3e5, -13.7%)",
        ),
        "prune-run -m experiment=repro_li2017_resnet56_b seed=0,1,2",
    ),
    "dpf_resnet56_90": (
        "ResNet-56, DPF unstructured at 90% sparsity",
        Published(
            93.97,
            93.73,
            None,
            0.9,
            "300 epochs from scratch, lr 0.2 Nesterov, x0.1 at 150 and 225",
            "INCHEON-CHO/Dynamic_Model_Pruning_with_Feedback README (an unofficial DPF "
            "reproduction; Lin et al., ICLR 2020)",
        ),
        "prune-run experiment=repro_dpf_resnet56_90 seed=0",
    ),
}

#: Claim rows (no published figures to match; the claim's direction is tested).
CLAIM_ROWS: dict[str, tuple[str, str, str]] = {
    "optimized_vs_magnitude": (
        "Optimised retention vs magnitude pruning, ResNet-20 at 90% unstructured",
        "NTNU thesis (2021): keeping searched small weights beats keeping only the large ones "
        "at the same rate (no figures public); magnitude: Han et al. 2015",
        "prune-run -m experiment=repro_optimized_vs_magnitude_resnet20 seed=0,1,2",
    ),
    "dpf_reg": (
        "DPF with vs without decorrelation regularisation, ResNet-20 at rate 0.6",
        "heehehe/pruning-decorrelation README: +1.47% top-1 (82.28 vs 80.81, its ResNet-56 at "
        "0.6; its reg_cov is zero as coded, so the differentiable `cov` is tested)",
        "prune-run -m experiment=repro_dpf_resnet20 method.reg=none,cov seed=0,1,2",
    ),
    "slimming_vs_double": (
        "Network slimming vs double pruning at 0.5, equal fine-tuning budgets, ResNet-20",
        "Lee et al. 2020 (double pruning): NetScore above the dense model's and above "
        "slimming alone's",
        "prune-run -m experiment=repro_slimming_resnet20,repro_double_pruning_resnet20 seed=0,1,2",
    ),
}


# ----------------------------------------------------------------------------- reading
def metrics_of(folder: Path) -> list[dict[str, Any]]:
    """The metrics.json of every completed run below ``folder`` (with ``_path``)."""
    out = []
    for path in sorted(folder.rglob("metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if m.get("status") == "completed":
            out.append({**m, "_path": str(path.parent)})
    return out


def macs_reduction(m: dict[str, Any]) -> float | None:
    """Dense MACs of the dense reference over the final model's, counting only nonzero weights
    for masked methods (``macs_nonzero``): what the cut saves in arithmetic."""
    dense = (m.get("dense_reference") or {}).get("macs")
    final = (m.get("final") or {}).get("macs_nonzero")
    return dense / final if dense and final else None


def params_removed(m: dict[str, Any]) -> float | None:
    rel = (m.get("relative_to_dense") or {}).get("params")
    return None if rel is None else 1.0 - float(rel)


def epochs_of(m: dict[str, Any]) -> str:
    """The training this run did after loading the published weights."""
    parts = []
    train = m.get("train") or {}
    if train.get("epochs"):
        parts.append(f"{train['epochs']} training epochs")
    slim = (m.get("method_config") or {}).get("slim_finetune_epochs")
    if "slimmed_finetuned" in m and slim:  # double pruning's fine-tune between its two cuts
        parts.append(f"{slim} fine-tuning epochs after slimming")
    if (m.get("finetune") or {}).get("epochs"):
        parts.append(f"{m['finetune']['epochs']} fine-tuning epochs (final)")
    return ", ".join(parts) or "none"


def numerics_of(m: dict[str, Any]) -> str:
    for stage in ("finetune", "train"):
        numerics = (m.get(stage) or {}).get("numerics")
        if numerics:
            fmt = numerics.get("memory_format", {}).get("used", "?")
            return f"{numerics.get('used')} {fmt.replace('_', '-')}"
    return "–"


# ----------------------------------------------------------------------------- tables
def published_table(out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [
        "| row | published: base → pruned | ours: dense → pruned (n) | ours − published | "
        "verdict | MACs ÷ | params removed | fine-tuning (ours / paper) | wall per run | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    csv_rows = []
    for row, (title, pub, command) in ROWS.items():
        assert pub is not None
        published = f"{pub.base:.2f} → **{pub.pruned:.2f}**"
        if pub.macs_reduction:
            published += f" ({pub.macs_reduction:.2f}x MACs)"
        folder = out / row
        arms = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if not any(metrics_of(folder / arm) for arm in arms):
            lines.append(
                f"| {title} | {published} | not run yet | – | – | – | – | – / {pub.schedule} | "
                f"– | `{command}` |"
            )
            continue
        for arm in arms:
            runs = metrics_of(folder / arm)
            csv_rows += [csv_row(row, m) for m in runs]
            if runs:
                name = title if arm == "run" else f"{title}; {arm}"
                lines.append(_published_line(name, published, pub, command, runs))
    sources = [f"- {ROWS[r][0]}: {ROWS[r][1].source}." for r in ROWS if ROWS[r][1]]
    return [*lines, "", *_budget_notes(out), "Sources:", "", *sources, ""], csv_rows


#: How far a run's MAC reduction may be from its row's budget before the page says so.
BUDGET_TOLERANCE = 0.02


def _budget_notes(out: Path) -> list[str]:
    """A sentence for every arm whose runs missed their row's MAC budget (a row is comparable
    at its MACs only), with the rounding those runs used."""
    notes = []
    for row, (title, pub, _) in ROWS.items():
        folder = out / row
        if pub is None or not pub.macs_reduction or not folder.is_dir():
            continue
        for arm in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            runs = metrics_of(folder / arm)
            if not runs:
                continue
            reached = statistics.fmean(macs_reduction(m) for m in runs)
            if abs(reached / pub.macs_reduction - 1) <= BUDGET_TOLERANCE:
                continue
            cfg = runs[0].get("method_config") or {}
            notes.append(
                f"**MAC budget ({title}; {arm}).** These runs reached {reached:.2f}x fewer MACs, "
                f"not {pub.macs_reduction:.2f}x: with `scope={cfg.get('scope')}` one ratio sets "
                "every layer's width (and `round_to="
                f"{cfg.get('round_to')}` its steps), so same-size groups change together and the "
                "reachable reductions come in steps; the smallest at or above the budget is the "
                "one reached (`method.allocation=latency` sets each group's width for the budget "
                "instead). Their accuracy is that of a smaller model than the row's."
            )
    return [*notes, ""] if notes else []


def _published_line(
    title: str, published: str, pub: Published, command: str, runs: list[dict[str, Any]]
) -> str:
    top1 = mean_sd(m["final"]["top1"] for m in runs)
    dense = mean_sd(m["dense_reference"]["top1"] for m in runs)
    gap = top1[0] - pub.pruned
    verdict = "reproduced" if gap >= -TOLERANCE else f"missed by {-gap:.2f}"
    seeds = len(runs)
    note = "" if seeds >= 3 else f" ({seeds} seed{'s' if seeds > 1 else ''} only)"
    return (
        f"| {title}{note} | {published} | {dense[0]:.2f} → **{_ms(top1)}** | {gap:+.2f} | "
        f"**{verdict}** | {_ms(mean_sd(macs_reduction(m) for m in runs), 1, 2)} | "
        f"{_ms(mean_sd(params_removed(m) for m in runs), 100, 1)}% | "
        f"{epochs_of(runs[0])} ({numerics_of(runs[0])}) / {pub.schedule} | "
        f"{_ms(mean_sd(m['timings']['total'] for m in runs), 1 / 60, 1)} min | "
        f"`{command}` |"
    )


def claim_sections(out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    csv_rows = []
    for row, (title, claim, command) in CLAIM_ROWS.items():
        lines += [f"### {title}", "", f"Claim: {claim}. Command: `{command}`.", ""]
        metrics = metrics_of(out / row)
        for m in metrics:
            csv_rows.append(csv_row(row, m))
        runs = runs_of(out / row) if metrics else []
        if not runs:
            lines += ["Not run yet.", ""]
            continue
        budget = sorted({f"{m['method']}: {epochs_of(m)} ({numerics_of(m)})" for m in metrics})
        wall = mean_sd(m["timings"]["total"] for m in metrics)
        lines += [
            f"Budget: {'; '.join(budget)}; {_ms(wall, 1 / 60, 1)} min of wall time per run.",
            "",
            *claims_table(claims(runs)),
            "",
        ]
        by_method: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            by_method.setdefault(r["variant"], []).append(r)
        for variant, rs in sorted(by_method.items()):
            lines.append(
                f"- {variant}: top-1 {_ms(mean_sd(r['final'].get('top1') for r in rs))}, "
                f"NetScore {_ms(mean_sd(r['final'].get('netscore') for r in rs))}, MACs "
                f"{_ms(mean_sd(r['relative'].get('macs') for r in rs), 100, 1)}% and params "
                f"{_ms(mean_sd(r['relative'].get('params') for r in rs), 100, 1)}% of dense "
                f"({_ms(mean_sd(r['dense'].get('top1') for r in rs))} dense)."
            )
        lines.append("")
    return lines, csv_rows


def parity_section(out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """bf16 against fp32 fine-tuning: mean top-1 and seconds per epoch, per method."""
    lines = [
        "| method | ratio | fp32 top-1 (n) | bf16 top-1 (n) | bf16 − fp32 | within 0.3 | "
        "fine-tuning s/epoch fp32 / bf16 |",
        "|---|---|---|---|---|---|---|",
    ]
    csv_rows = []
    for row in ("parity_magnitude", "parity_l1_filter"):
        arms = {arm: metrics_of(out / row / arm) for arm in ("fp32", "bf16")}
        for ms in arms.values():
            csv_rows += [csv_row(row, m) for m in ms]
        if not all(arms.values()):
            lines.append(f"| {row.removeprefix('parity_')} | – | not run yet | | | | |")
            continue
        top = {a: mean_sd(m["final"]["top1"] for m in ms) for a, ms in arms.items()}
        speed = {
            a: statistics.fmean(m["finetune"]["seconds"] / m["finetune"]["epochs"] for m in ms)
            for a, ms in arms.items()
        }
        diff = top["bf16"][0] - top["fp32"][0]
        first = arms["fp32"][0]
        lines.append(
            f"| {first['method']} | {first['ratio']} | {_ms(top['fp32'])} | {_ms(top['bf16'])} | "
            f"{diff:+.2f} | {'yes' if abs(diff) <= 0.3 else '**no**'} | "
            f"{speed['fp32']:.0f} / {speed['bf16']:.0f} ({speed['fp32'] / speed['bf16']:.2f}x) |"
        )
    return [*lines, ""], csv_rows


def _epochs_said(rows: list[dict[str, Any]], key: str, text: str) -> str:
    """``text`` with the epochs the runs used (several values: all of them; none: "the
    configured epochs")."""
    values = sorted({int(r[key]) for r in rows if r.get(key) not in (None, "")})
    if not values:
        return text.format("the configured", "s")
    shown = "/".join(str(v) for v in values)
    return text.format(shown, "" if values == [1] else "s")


def study_section(out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    folder = out / "study"
    metrics = metrics_of(folder) if folder.is_dir() else []
    runs = runs_of(folder) if metrics else []
    if not runs:
        return ["Not run yet.", ""], []
    lines = []
    for setup in sorted({r["setup"] for r in runs}):
        lines += setup_table(runs, setup)
    lines += ["Claims at this setup:", "", *claims_table(claims(runs)), ""]
    return lines, [csv_row("study", m) for m in metrics]


# ----------------------------------------------------------------------------- CSV
CSV_FIELDS = (
    "row",
    "model",
    "method",
    "variant",
    "ratio",
    "seed",
    "dense_top1",
    "pruned_top1",
    "final_top1",
    "final_netscore",
    "macs_dense",
    "macs_final",
    "macs_final_nonzero",
    "params_dense",
    "params_final_nonzero",
    "macs_reduction",
    "params_removed",
    "budget",
    "train_epochs",
    "finetune_epochs",
    "numerics",
    "speedup_b1",
    "speedup_b64",
    "seconds_total",
    "run_dir",
)


def csv_row(row: str, m: dict[str, Any]) -> dict[str, Any]:
    dense, final = m.get("dense_reference") or {}, m.get("final") or {}
    cfg = m.get("method_config") or {}
    variant = m["method"] + (f" + {cfg['reg']}" if cfg.get("reg") not in (None, "none") else "")
    speedup = (m.get("latency") or {}).get("speedup") or {}
    return {
        "row": row,
        "model": m.get("model"),
        "method": m.get("method"),
        "variant": variant,
        "ratio": m.get("ratio"),
        "seed": m.get("seed"),
        "dense_top1": dense.get("top1"),
        "pruned_top1": (m.get("pruned") or {}).get("top1"),
        "final_top1": final.get("top1"),
        "final_netscore": final.get("netscore"),
        "macs_dense": dense.get("macs"),
        "macs_final": final.get("macs"),
        "macs_final_nonzero": final.get("macs_nonzero"),
        "params_dense": dense.get("params"),
        "params_final_nonzero": final.get("params_nonzero"),
        "macs_reduction": _round(macs_reduction(m)),
        "params_removed": _round(params_removed(m)),
        "budget": epochs_of(m),
        "train_epochs": (m.get("train") or {}).get("epochs"),
        "finetune_epochs": (m.get("finetune") or {}).get("epochs"),
        "numerics": numerics_of(m),
        "speedup_b1": speedup.get("b1"),
        "speedup_b64": speedup.get("b64"),
        "seconds_total": (m.get("timings") or {}).get("total"),
        "run_dir": str(Path(m["_path"]).relative_to(m["_path"].split("/outputs/")[0]))
        if "/outputs/" in m["_path"]
        else m["_path"],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    order = sorted(rows, key=lambda r: (r["row"], r["variant"], r["ratio"] or 0, r["seed"]))
    writer.writerows(order)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


# ----------------------------------------------------------------------------- page
def page(out: Path, csv_path: Path, rel_csv: str) -> str:
    published, rows_a = published_table(out)
    claimed, rows_b = claim_sections(out)
    parity, rows_c = parity_section(out)
    study, rows_d = study_section(out)
    parity_epochs = _epochs_said(rows_c, "finetune_epochs", "fine-tuned {} epoch{}")
    study_epochs = _epochs_said(rows_d, "train_epochs", "{} training epoch{}")
    all_rows = rows_a + rows_b + rows_c + rows_d
    write_csv(csv_path, all_rows)
    hours = sum(float(r["seconds_total"] or 0) for r in all_rows) / 3600
    # The code the runs were made with: the checkout their folder lies in (a study is often run
    # from a snapshot of the repository while work goes on), else this one.
    commit = _git("rev-parse", "--short", "HEAD", cwd=out) if out.is_dir() else "unknown"
    if commit == "unknown":
        commit = _git("rev-parse", "--short", "HEAD")
    lines = [
        "# Reproduction: published rows, side by side, on a CPU",
        "",
        "Generated by `python scripts/reproduce_report.py` from the runs of "
        "`python scripts/reproduce.py --jobs 2` (two lanes of one thread on 2 CPU cores; the "
        "row's command is below each row) at prune-cli commit "
        f"`{commit}`, {platform.machine()} CPU, Python {platform.python_version()}. "
        f"{len(all_rows)} completed runs, {hours:.1f} h of run time in all (sum of "
        f"`timings.total`, two at a time). Raw figures of every run: [{rel_csv}]({rel_csv}).",
        "",
        "Every row starts from a published checkpoint, not from a model trained here: the "
        "CIFAR-10 ResNet-20 (91.73%) and ResNet-56 (93.39%) of akamaster/pytorch_resnet_cifar10 "
        "(BSD-2-Clause), loaded as their users download them (`weights=resnet20_cifar10_akamaster`"
        ", `weights=resnet56_cifar10_akamaster`), evaluated on the full 10,000-image test set. "
        "The dense model is never retrained; pruning and fine-tuning run on the full 50,000 "
        "training images. Fine-tuning budgets are a few epochs where the papers use 40-300 "
        "(each row says which): a row that misses its published figure is first a shorter "
        "schedule. Training runs in bf16 autocast with channels-last (`precision=auto` on this "
        "CPU, which has native bf16: avx512_bf16 and AMX), after the parity check below; every "
        "evaluation is fp32 (`metrics.precision`). MACs ÷ = the dense model's MACs over the "
        "final model's (nonzero weights only for masked methods); mean ± sd (n) over seeds.",
        "",
        "## Published rows",
        "",
        f"`reproduced` = our mean top-1 at most {TOLERANCE:g} point below the published pruned "
        "accuracy.",
        "",
        *published,
        "Notes. **Zero-padding shortcuts.** The published CIFAR ResNets use option-A shortcuts "
        "(parameter-free: subsample and zero-pad), which pin the residual streams' channel "
        "positions; prune-cli keeps those streams whole and prunes the blocks' inner channels, "
        "so a MAC budget is reached with a larger cut of the inner convs than on the projection-"
        "shortcut ResNet-56 that Torch-Pruning prunes (its log: stem and streams cut to 14 of 16 "
        "channels). **Baselines.** Our dense models are the published checkpoints (93.39% and "
        "91.73%), the papers' their own (93.53%, 93.04%, 93.97%): compare the drops too.",
        "",
        "## The seed papers' claims from published weights",
        "",
        "A = the reference side, B = the side the claim favours; `confirmed` needs the claimed "
        "direction and p < 0.05 (paired t-test over seeds where the runs share a model, Welch "
        "otherwise).",
        "",
        *claimed,
        "## Every method at 0.3 and 0.6 from the published ResNet-20",
        "",
        "`scripts/study.sh`'s pretrained setup (`SETUPS=resnet20:cifar10`): every method of "
        "prune-cli at ratios 0.3 and 0.6 from `weights=resnet20_cifar10_akamaster`, fine-tuned "
        f"as `scripts/study.sh` sets it (sparsity training and DPF: {study_epochs} from the "
        "published weights). Template reuse and soft sharing train their templates from scratch, "
        "so they have no place in a table that starts from published weights, and no "
        "pretrained ShuffleNetV2 for CIFAR exists here: the sharing methods stay at the study's "
        "scale (`docs/results.md`).",
        "",
        *study,
        "## bf16 costs no accuracy",
        "",
        f"The same pruned ResNet-20 {parity_epochs} in fp32 and in bf16 autocast (both "
        "channels-last), 3 seeds each asked (n says how many ran), evaluated in fp32 "
        "(`experiment=precision_parity_resnet20`):",
        "",
        *parity,
        "## At the papers' length (GPU)",
        "",
        "Each row's full schedule is its own config: `experiment=repro_depgraph_resnet56_paper`, "
        "`repro_li2017_resnet56_b_paper`, `repro_optimized_vs_magnitude_resnet20_paper`, "
        "`repro_slimming_resnet20_paper`, `repro_dpf_resnet56_90_paper` (DPF from scratch; "
        "`dynamic_filter_recipe` is the decorrelation repository's 300-epoch recipe). No GPU was "
        "lent to the session that made this page, so none has run here.",
        "",
    ]
    return "\n".join(lines)


def _git(*args: str, cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="?", default=ROOT / "outputs" / "reproduce")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reproduce.md")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        print(f"reproduce_report: {args.runs} is not a directory of runs", file=sys.stderr)
        return 2
    csv_path = args.out.parent / args.out.stem / "runs.csv"
    rel_csv = str(csv_path.relative_to(args.out.parent))
    text = page(args.runs, csv_path, rel_csv)
    args.out.write_text(text)
    print(f"wrote {args.out} and {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
