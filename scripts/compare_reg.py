"""The honest regulariser comparison: the same dynamic_filter run with and without ``method.reg``
over several seeds, reported as mean ± sd, with a Welch t-test against seed noise.

The repository's "+1.47% accuracy" came from one run per setting (and its regulariser is 0,
docs/methods.md §7.6); one run each cannot separate an effect from run-to-run noise. This script
runs ``prune-run -m method=dynamic_filter method.reg=none,<reg> seed=<seeds>`` (one Hydra sweep),
reads every job's ``metrics.json`` and prints, per setting, mean ± sample sd (ddof 1) of:

- ``final_top1``: top-1 (%) of the final model on the test split;
- ``best_top1``: the best test top-1 during training (the repository's "best" accuracy);
- ``sparsity``: fraction of zero conv + linear weights of the final model;
- ``repo_sparsity``: the repository's printed sparsity (% of all weights and biases).

For each metric: the difference of means (reg − none), Welch's t and degrees of freedom, the
two-sided p-value, and the difference in units of the pooled sd. "exceeds seed noise" means
p < alpha (default 0.05); with few seeds the test has little power, so "within seed noise" is
not evidence of no effect.

Quick run on the offline dataset (tiny settings, about 6 short runs)::

    python scripts/compare_reg.py --reg cov --seeds 0,1,2

The repository's setting on CIFAR-10 (long; on a GPU)::

    python scripts/compare_reg.py --full --reg cov_faithful --seeds 0,1,2,3,4 -- \\
        +experiment=dynamic_filter_recipe dataset.root=/data/cifar10

``--from-dir DIR`` only analyses an existing sweep directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TINY = [
    "dataset.train_size=512",
    "dataset.test_size=256",
    "train.epochs=2",
    "train.batch_size=64",
    "finetune.epochs=0",
    "metrics.latency.enabled=false",
    "cache.enabled=false",
]
METRICS = ("final_top1", "best_top1", "sparsity", "repo_sparsity")


# ----------------------------------------------------------------------------- statistics
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; nan for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Numerical Recipes, Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's two-sample t-test of mean(b) − mean(a): ``diff, t, df, p`` (two-sided), and
    ``pooled_sd`` = sqrt((var_a + var_b) / 2) with ``diff_over_sd`` = diff / pooled_sd."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    diff = mb - ma
    out = {"diff": diff, "t": math.nan, "df": math.nan, "p": math.nan}
    out["pooled_sd"] = math.sqrt((sa**2 + sb**2) / 2) if len(a) > 1 and len(b) > 1 else math.nan
    out["diff_over_sd"] = diff / out["pooled_sd"] if out["pooled_sd"] else math.nan
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = sa**2 / len(a), sb**2 / len(b)
    if va + vb == 0:
        out["t"] = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        out["p"] = 1.0 if diff == 0 else 0.0
        return out
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    out.update(t=t, df=df, p=betainc(df / 2, 0.5, df / (df + t * t)))
    return out


# ----------------------------------------------------------------------------- runs
def read_runs(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Completed dynamic_filter runs under ``root``, grouped by ``method.reg``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(root.rglob("metrics.json")):
        m = json.loads(path.read_text())
        if m.get("status") != "completed" or m.get("method") != "dynamic_filter":
            continue
        reg = str(m.get("method_config", {}).get("reg", "none"))
        info = m.get("prune_info", {})
        groups.setdefault(reg, []).append(
            {
                "seed": m.get("seed"),
                "final_top1": m["final"]["top1"],
                "best_top1": m.get("train", {}).get("best_top1_test", math.nan),
                "sparsity": m["final"]["sparsity"],
                "repo_sparsity": info.get("repo_sparsity_percent", math.nan),
            }
        )
    return groups


def report(groups: dict[str, list[dict[str, Any]]], reg: str, alpha: float = 0.05) -> str:
    """The comparison table of ``reg`` against ``none`` (see the module docstring)."""
    lines = []
    for name in ("none", reg):
        runs = groups.get(name, [])
        seeds = ",".join(str(r["seed"]) for r in runs)
        cells = []
        for key in METRICS:
            mean, sd = mean_sd([r[key] for r in runs])
            cells.append(f"{key} {mean:.4f} ± {sd:.4f}")
        lines.append(f"reg={name:<12} n={len(runs)} seeds [{seeds}]  " + "  ".join(cells))
    base, other = groups.get("none", []), groups.get(reg, [])
    for key in METRICS:
        w = welch([r[key] for r in base], [r[key] for r in other])
        verdict = "exceeds seed noise" if w["p"] < alpha else "within seed noise"
        lines.append(
            f"{key:<14} diff {w['diff']:+.4f}  Welch t {w['t']:.3f} df {w['df']:.1f} "
            f"p {w['p']:.4f}  diff/pooled sd {w['diff_over_sd']:+.2f}  -> {verdict} "
            f"(alpha {alpha})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reg", default="cov", help="regulariser compared with none")
    parser.add_argument("--odecay", type=float, default=1e-3, help="its weight (method.odecay)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--out", default="outputs/compare_reg", help="sweep directory")
    parser.add_argument("--full", action="store_true", help="no tiny settings")
    parser.add_argument("--from-dir", help="analyse this sweep directory, run nothing")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("overrides", nargs="*", help="extra prune-run overrides (after --)")
    args = parser.parse_args(argv)

    root = Path(args.from_dir or args.out)
    if not args.from_dir:
        cmd = [
            sys.executable, "-m", "prune_cli.cli", "-m",
            "method=dynamic_filter", f"method.reg=none,{args.reg}",
            f"method.odecay={args.odecay}", f"ratio={args.ratio}", f"seed={args.seeds}",
            f"hydra.sweep.dir={root}",
            *([] if args.full else TINY), *args.overrides,
        ]  # fmt: skip
        print("running:", " ".join(cmd), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            print(f"prune-run failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
    groups = read_runs(root)
    if "none" not in groups or args.reg not in groups:
        print(f"no completed runs for reg=none and reg={args.reg} under {root}", file=sys.stderr)
        return 1
    print(report(groups, args.reg, args.alpha))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
