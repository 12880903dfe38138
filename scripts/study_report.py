"""The study's results page: tables with spreads, the source papers' claims tested, plots.

Reads every run below a study directory (``scripts/study.sh``), groups them by setup (model x
dataset), method variant and ratio, and writes a Markdown page (default ``docs/results.md``) with

- per setup: the dense reference, and for every method and ratio mean ± sd over seeds (n) of the
  final top-1, the fraction of the dense reference's weights removed, params and MACs relative to
  it, and NetScore;
- the claims table: each claim of the source papers restated, the test, the numbers and the
  verdict at this scale (``confirmed`` needs the direction claimed *and* p < 0.05; with 3 seeds a
  test has little power, so ``not shown`` is not evidence against the claim);
- the plots of ``prune-report`` per setup (``docs/results/<setup>/*.png``);
- the command, the commit, the budget and the machine.

Tests: Welch's t-test for two independent groups, the paired t-test where runs share a trained
model and a seed (optimized vs its own magnitude mask, double pruning vs slimming and vs the
dense reference), both two-sided, from scipy.stats.

    python scripts/study_report.py outputs/study/issue12 --out docs/results.md
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prune_cli.report import build_report, find_run_dirs, read_run

ALPHA = 0.05


# ----------------------------------------------------------------------------- reading
def runs_of(study: Path) -> list[dict[str, Any]]:
    """One flat record per completed run: identity, variant, figures, prune_info."""
    out = []
    for path in find_run_dirs([study]):
        run = read_run(path)
        if run.status != "completed":
            continue
        m = run.metrics
        cfg = m.get("method_config") or {}
        out.append(
            {
                "setup": f"{m['model']} / {m['dataset']}",
                "model": m["model"],
                "dataset": m["dataset"],
                "method": m["method"],
                "variant": variant_of(m["method"], cfg),
                "ratio": m.get("ratio") if m["method"] not in NO_RATIO else None,
                "seed": m.get("seed"),
                "final": m.get("final") or {},
                "dense": m.get("dense_reference") or m.get("baseline") or {},
                "relative": m.get("relative_to_dense") or {},
                "info": m.get("prune_info") or {},
                "warnings": m.get("warnings") or [],
                "path": str(path),
                "seconds": (m.get("timings") or {}).get("total"),
            }
        )
    return out


#: Methods whose size is not set by ``ratio`` (templates, or nothing pruned).
NO_RATIO = ("none", "soft_sharing", "template_reuse")


def variant_of(method: str, cfg: dict[str, Any]) -> str:
    """The method as the tables name it: the options that tell the study's variants apart."""
    if method == "random":
        return f"random ({cfg.get('granularity', 'weight')})"
    if method == "dynamic_filter" and cfg.get("reg", "none") != "none":
        return f"dynamic_filter + {cfg['reg']}"
    if method in ("soft_sharing", "template_reuse"):
        return f"{method} k={cfg.get('templates_per_stage')}"
    return method


# ----------------------------------------------------------------------------- statistics
def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Welch t-test of mean(b) - mean(a)."""
    from scipy import stats

    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "p": None, "test": "Welch (too few runs)"}
    res = stats.ttest_ind(b, a, equal_var=False)
    return {"diff": diff, "t": float(res.statistic), "p": _p(res.pvalue), "test": "Welch t"}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided paired t-test of b - a (pairs: same setup, ratio and seed)."""
    from scipy import stats

    diffs = [y - x for x, y in zip(a, b, strict=True)]
    diff = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"diff": diff, "p": None, "test": "paired (too few pairs)"}
    if len(set(diffs)) == 1:  # no spread: the t statistic is undefined
        return {"diff": diff, "p": None, "test": "paired (identical differences)"}
    res = stats.ttest_rel(b, a)
    return {"diff": diff, "t": float(res.statistic), "p": _p(res.pvalue), "test": "paired t"}


def _p(value: float) -> float | None:
    return None if value is None or math.isnan(float(value)) else float(value)


def verdict(result: dict[str, Any], direction: int = 1) -> str:
    """``confirmed``: the claimed direction (``direction`` * diff > 0) and p < ALPHA;
    ``opposite``: significant the other way; else ``not shown``."""
    p, diff = result.get("p"), result["diff"]
    if p is not None and p < ALPHA:
        return "confirmed" if direction * diff > 0 else "opposite"
    return "not shown"


# ----------------------------------------------------------------------------- claims
def _by(runs: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    return [r for r in runs if all(r.get(k) == v for k, v in want.items())]


def _pairs(
    left: list[dict[str, Any]], right: list[dict[str, Any]], key: Callable[[dict], Any]
) -> tuple[list[float], list[float]]:
    """Values of ``key`` for runs of ``left`` and ``right`` with the same seed."""
    by_seed = {r["seed"]: r for r in right}
    a, b = [], []
    for r in sorted(left, key=lambda r: r["seed"]):
        other = by_seed.get(r["seed"])
        if other is None:
            continue
        x, y = key(r), key(other)
        if x is not None and y is not None:
            a.append(float(x))
            b.append(float(y))
    return a, b


def majority_rate(run_dir: str) -> float | None:
    """Top-1 (%) of always answering the test split's most frequent class, from the run's saved
    dataset config; None if the data cannot be read here."""
    try:
        import torch
        from omegaconf import OmegaConf

        from prune_cli.data import build_dataset

        cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
        labels = build_dataset(OmegaConf.to_container(cfg.dataset, resolve=True)).splits["test"]
        counts = torch.bincount(torch.as_tensor(labels.labels).long())
        return float(100.0 * counts.max() / counts.sum())
    except Exception:  # a label only: the tables stand without it
        return None


def _recipe(stage: Any) -> str:
    optimizer = "AdamW" if str(stage.get("optimizer", "sgd")) == "adamw" else "SGD"
    every = "per step" if str(stage.get("schedule_every", "epoch")) == "step" else "per epoch"
    warmup = stage.get("warmup_epochs") or 0
    return (
        f"{stage.epochs} epoch(s), {optimizer} lr {float(stage.lr):g}, batch {stage.batch_size}, "
        f"weight decay {float(stage.weight_decay):g}, {stage.schedule} {every}"
        + (f" after {warmup} warm-up epoch(s)" if warmup else "")
    )


def budget_of(run_dir: str) -> str | None:
    """The training budget of a run, from its saved config: dense training and fine-tuning
    (epochs, optimizer, rate, batch, schedule); None if the config cannot be read."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
        return f"dense training {_recipe(cfg.train)}; fine-tuning {_recipe(cfg.finetune)}"
    except Exception:  # a label only: the tables stand without it
        return None


#: A setup whose dense reference is within this many points of the majority-class rate has
#: learnt nothing to prune: its comparisons are not tests of anything.
CHANCE_MARGIN = 2.0


def majority_rates(runs: list[dict[str, Any]]) -> dict[str, float]:
    """``setup -> majority-class rate`` of its test split, for the setups whose data is here."""
    out = {}
    for setup in sorted({r["setup"] for r in runs}):
        first = _by(runs, setup=setup)[0]
        rate = majority_rate(first["path"]) if first.get("path") else None
        if rate is not None:
            out[setup] = rate
    return out


def chance_setups(
    runs: list[dict[str, Any]], rates: Mapping[str, float] | None = None
) -> dict[str, float]:
    """``setup -> majority-class rate`` for the setups whose dense reference is at chance."""
    rates = majority_rates(runs) if rates is None else rates
    out = {}
    for setup, rate in rates.items():
        dense = mean_sd(r["dense"].get("top1") for r in _by(runs, setup=setup))[0]
        if dense is not None and dense <= rate + CHANCE_MARGIN:
            out[setup] = rate
    return out


def claims(
    runs: list[dict[str, Any]],
    at_chance: Iterable[str] = (),
    rates: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Each source-paper claim tested per setup (and ratio where it has one); setups in
    ``at_chance`` (dense model no better than the majority class) are marked untestable, and
    so is a top-1 comparison whose two sides are both at their setup's majority rate
    (``rates``): a pruned model that learnt nothing tests no claim about accuracy."""
    rows: list[dict[str, Any]] = []
    setups = sorted({r["setup"] for r in runs})
    ratios = sorted({r["ratio"] for r in runs if r["ratio"] is not None})
    top1 = lambda r: r["final"].get("top1")  # noqa: E731
    netscore = lambda r: r["final"].get("netscore")  # noqa: E731
    for setup in setups:
        for ratio in ratios:
            plain = _by(runs, setup=setup, ratio=ratio, variant="dynamic_filter")
            cov = _by(runs, setup=setup, ratio=ratio, variant="dynamic_filter + cov")
            a = [top1(r) for r in plain if top1(r) is not None]
            b = [top1(r) for r in cov if top1(r) is not None]
            if a and b:
                res = welch(a, b)
                rows.append(_claim("decorrelation", setup, ratio, res, "top-1 (pp)", a, b))
            opt = _by(runs, setup=setup, ratio=ratio, method="optimized")
            a, b = [], []
            for r in sorted(opt, key=lambda r: r["seed"]):
                mag = (r["info"].get("magnitude") or {}).get("finetuned_test_top1")
                if mag is not None and top1(r) is not None:
                    a.append(float(mag))
                    b.append(float(top1(r)))
            if a:
                res = paired(a, b)
                rows.append(_claim("optimized", setup, ratio, res, "top-1 (pp)", a, b))
            double = _by(runs, setup=setup, ratio=ratio, method="double_pruning")
            slim = _by(runs, setup=setup, ratio=ratio, method="network_slimming")
            if double:
                a = [r["dense"].get("netscore") for r in double]
                b = [netscore(r) for r in double]
                pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                if pairs:
                    xs, ys = zip(*pairs)
                    res = paired(list(xs), list(ys))
                    rows.append(_claim("double_vs_dense", setup, ratio, res, "NetScore", xs, ys))
            if double and slim:
                xs, ys = _pairs(slim, double, netscore)
                if xs:
                    res = paired(xs, ys)
                    rows.append(_claim("double_vs_slim", setup, ratio, res, "NetScore", xs, ys))
        dense = _by(runs, setup=setup, method="none")
        for k in sorted({r["variant"] for r in runs if r["method"] == "template_reuse"}):
            shared = _by(runs, setup=setup, variant=k)
            if not shared or not dense:
                continue
            a = [top1(r) for r in dense if top1(r) is not None]
            b = [top1(r) for r in shared if top1(r) is not None]
            res = welch(a, b)
            reduction = mean_sd(r["info"].get("param_reduction") for r in shared)[0]
            row = _claim("template_reuse", setup, None, res, "top-1 (pp)", a, b)
            row["variant"] = k
            row["reduction"] = reduction
            in_band = reduction is not None and 0.15 <= reduction <= 0.35
            small_drop = res["diff"] > -2.0  # "a small accuracy drop": at most 2 points
            row["verdict"] = (
                "confirmed"
                if in_band and small_drop
                else "parameters outside 15–35%"
                if not in_band
                else "drop > 2 points"
            )
            rows.append(row)
    chance = set(at_chance)
    for row in rows:
        rate = (rates or {}).get(row["setup"])
        if row["setup"] in chance:
            row["verdict"] = "untestable: dense model at chance"
        elif rate is not None and row["unit"] == "top-1 (pp)" and _both_at(row, rate):
            row["verdict"] = "untestable: both sides at chance"
    return rows


def _both_at(row: Mapping[str, Any], rate: float) -> bool:
    means = (row["a"][0], row["b"][0])
    return all(m is not None and m <= rate + CHANCE_MARGIN for m in means)


CLAIMS = {
    "decorrelation": (
        "Decorrelation regularisation adds +1.47% top-1 over plain DPF (heehehe README)",
        "dynamic_filter + cov (differentiable penalty, odecay 1e-3) − dynamic_filter, final "
        "top-1, Welch",
    ),
    "optimized": (
        "Optimised retention beats magnitude pruning at the same ratio (NTNU thesis)",
        "optimized − its own magnitude mask fine-tuned identically, test top-1 after "
        "fine-tuning, paired by seed",
    ),
    "double_vs_dense": (
        "Double pruning raises NetScore over the dense model (Lee et al. 2020)",
        "double_pruning final − dense reference, NetScore (nonzero counts), paired by seed",
    ),
    "double_vs_slim": (
        "Double pruning raises NetScore over slimming alone (Lee et al. 2020)",
        "double_pruning − network_slimming at the same ratio, NetScore, paired by seed",
    ),
    "template_reuse": (
        "Template reuse saves 15–35% of ShuffleNetV2's parameters for a small accuracy drop "
        "(Kim & Kang 2020)",
        "parameter reduction in [15%, 35%] and top-1 − dense (method=none) > −2 points, Welch",
    ),
}


def _claim(
    name: str,
    setup: str,
    ratio: float | None,
    res: dict[str, Any],
    unit: str,
    a: Sequence[float],
    b: Sequence[float],
) -> dict[str, Any]:
    return {
        "claim": name,
        "setup": setup,
        "ratio": ratio,
        "unit": unit,
        "a": mean_sd(a),
        "b": mean_sd(b),
        **res,
        "verdict": verdict(res),
    }


# ----------------------------------------------------------------------------- the page
def _ms(value: tuple[float | None, float | None, int], scale: float = 1.0, digits: int = 2) -> str:
    mean, sd, n = value
    if mean is None:
        return "–"
    text = f"{mean * scale:.{digits}f}"
    if sd is not None:
        text += f" ± {sd * scale:.{digits}f}"
    return f"{text} ({n})"


def setup_table(
    runs: list[dict[str, Any]], setup: str, chance: dict[str, float] | None = None
) -> list[str]:
    members = _by(runs, setup=setup)
    dense = mean_sd(r["dense"].get("top1") for r in members)
    lines = [
        f"### {setup}",
        "",
        f"Dense reference top-1: {_ms(dense)} (mean ± sd (n) over every run's reference: "
        "the same model per seed, so n counts runs, the spread is over seeds). Seeds: "
        + ", ".join(str(x) for x in sorted({r["seed"] for r in members}))
        + ".",
        "",
    ]
    budget = budget_of(members[0]["path"]) if members[0].get("path") else None
    if budget:
        lines += [f"Budget: {budget}.", ""]
    if chance and setup in chance:
        lines += [
            f"**At chance:** the dense model does not beat always answering the most frequent "
            f"class ({chance[setup]:.2f}% of the test split) by {CHANCE_MARGIN:g} points: at "
            "this budget it has learnt nothing to prune, so nothing below compares methods. "
            "Give this setup more training (`EPOCHS=`) before reading it.",
            "",
        ]
    lines += [
        "| method | ratio | top-1 after | weights removed % | params % of dense | "
        "MACs % of dense | NetScore | warnings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in members:
        groups[(r["variant"], r["ratio"])].append(r)
    for (variant, ratio), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        warned = sum(1 for r in rs if r["warnings"])
        lines.append(
            f"| {variant} | {'–' if ratio is None else ratio} | "
            f"{_ms(mean_sd(r['final'].get('top1') for r in rs))} | "
            f"{_ms(mean_sd(r['relative'].get('weights_removed') for r in rs), 100, 1)} | "
            f"{_ms(mean_sd(r['relative'].get('params') for r in rs), 100, 1)} | "
            f"{_ms(mean_sd(r['relative'].get('macs') for r in rs), 100, 1)} | "
            f"{_ms(mean_sd(r['final'].get('netscore') for r in rs))} | "
            f"{warned or ''} |"
        )
    return [*lines, ""]


def claims_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| claim | setup | ratio | A | B | B − A | test | p | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        title = CLAIMS[row["claim"]][0]
        if row["claim"] == "template_reuse":
            title += f" — {row['variant']}, params −{100 * (row['reduction'] or 0):.1f}%"
        p = "–" if row.get("p") is None else f"{row['p']:.3f}"
        lines.append(
            f"| {title} | {row['setup']} | {row['ratio'] if row['ratio'] is not None else '–'} | "
            f"{_ms(row['a'])} | {_ms(row['b'])} | {row['diff']:+.2f} {row['unit']} | "
            f"{row['test']} | {p} | **{row['verdict']}** |"
        )
    return lines


def in_plain_words(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per claim: its verdicts counted over the setups (and ratios) it was tested in,
    and the range of the measured differences."""
    lines = []
    for name, (title, _) in CLAIMS.items():
        tested = [r for r in rows if r["claim"] == name]
        if not tested:
            lines.append(f"- **{title}**: not tested (no runs of the methods it compares).")
            continue
        counts = defaultdict(int)
        for r in tested:
            counts[r["verdict"]] += 1
        diffs = [r["diff"] for r in tested]
        tally = ", ".join(f"{v} in {n}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        unit = tested[0]["unit"]
        lines.append(
            f"- **{title}**: {tally} of {len(tested)} comparisons (setup x ratio); B − A from "
            f"{min(diffs):+.2f} to {max(diffs):+.2f} {unit}."
        )
    return lines


def page(study: Path, runs: list[dict[str, Any]], plots: dict[str, list[str]]) -> str:
    commit = _git("rev-parse", "HEAD")
    seeds = sorted({r["seed"] for r in runs})
    compute_h = sum(r.get("seconds") or 0.0 for r in runs) / 3600
    rates = majority_rates(runs)
    chance = chance_setups(runs, rates)
    claim_rows = claims(runs, chance, rates)
    lines = [
        f"# Results: every method on real data, {len(seeds)} seeds",
        "",
        f"Generated by `python scripts/study_report.py {study}` from the runs of "
        "`JOBS=2 bash scripts/study.sh` (see that script for every override), prune-cli commit "
        f"`{commit}`, {platform.machine()} CPU ({_cpus()} cores), Python "
        f"{platform.python_version()}. {len(runs)} completed runs, seeds {seeds}; their "
        f"pipelines took {compute_h:.2f} h in all (sum of `timings.total`; dense trainings are "
        "counted in the first run that needed each).",
        "",
        "Scale: short budgets on 2 CPU cores: dense training and fine-tuning as set in "
        "`scripts/study.sh` (each setup's Budget line below); absolute accuracies are "
        "far below the papers' (hundreds of epochs on GPUs) and only *differences at equal "
        "budget* are meaningful. Mean ± sample sd (n) over seeds. Definitions: "
        "[docs/metrics.md](metrics.md) (weights removed, params and MACs relative to the dense "
        "reference; NetScore with nonzero counts, M-params and G-MACs).",
        "",
        "## The source papers' claims at this scale",
        "",
        "A = the reference side, B = the side the claim favours; `confirmed` needs the claimed "
        f"direction and p < {ALPHA}; with 3 seeds a test has little power, so `not shown` means "
        "the difference did not exceed seed noise here, not that the claim is false.",
        "",
        *in_plain_words(claim_rows),
        "",
        *claims_table(claim_rows),
        "",
        "Tests: "
        + "; ".join(f"{CLAIMS[k][0].split(' (')[0]}: {CLAIMS[k][1]}" for k in CLAIMS)
        + ".",
        "",
        "## Every method, per setup",
        "",
    ]
    for setup in sorted({r["setup"] for r in runs}):
        lines += setup_table(runs, setup, chance)
        for name in plots.get(setup, []):
            lines.append(f"![{setup} {name}]({name})")
        lines.append("")
    return "\n".join(lines) + "\n"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpus() -> str:
    import os

    return str(os.cpu_count() or "?")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    runs = runs_of(args.study)
    if not runs:
        print(f"study_report: no completed runs below {args.study}", file=sys.stderr)
        return 2
    plots: dict[str, list[str]] = {}
    if not args.no_plots:
        for setup in sorted({r["setup"] for r in runs}):
            model, dataset = (part.strip() for part in setup.split("/"))
            folder = args.out.parent / args.out.stem / f"{model}_{dataset}"
            paths = sorted({str(Path(r["path"]).parent.parent) for r in _by(runs, setup=setup)})
            result = build_report([Path(p) for p in paths], folder)
            plots[setup] = [
                str((folder / f).relative_to(args.out.parent))
                for f in result["files"]
                if f.endswith(".png")
            ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page(args.study, runs, plots))
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
