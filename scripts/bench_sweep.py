"""Sweep benchmark (issue 7): does a ratio sweep cost one training plus the per-ratio work?

Runs ``prune-run -m ratio=r1,...,r5`` on the default setup (ResNet-20, the offline ``shapes``
dataset, default training and fine-tuning) from an empty cache, twice:

1. sequentially (Hydra's basic launcher). Its wall time is compared with the **ideal**
   ``1 training + 5 x (prune + fine-tune)``, taken from the runs' own ``metrics.json`` timings
   (``timings.train`` of the one job that trained, ``timings.prune`` and ``timings.finetune`` of
   every job). Target: wall / ideal <= 1.10. The rest is broken down into evaluation (test-set
   evaluation of the baseline, pruned and final models plus latency measurement), the other
   in-pipeline time (building the dataset and model, loading the cached checkpoint), and what
   lies outside the pipeline (interpreter start, imports, Hydra);
2. with a parallel launcher and ``--workers`` jobs at once, wall time against the sequential
   sweep: ``--launcher parallel`` (joblib, the default), ``ray`` (a private local Ray instance,
   ``--workers`` CPUs, one per run: ``pip install -e '.[ray]'``) or ``gpu_pool`` (one job per GPU;
   on a machine without GPUs it runs as ``parallel``, and says so).

    python scripts/bench_sweep.py                         # the issue's benchmark (minutes)
    python scripts/bench_sweep.py --workers 4 --set train.epochs=2
    python scripts/bench_sweep.py --set dataset.train_size=1000 --skip-parallel
    python scripts/bench_sweep.py --launcher ray --ratios 0.3,0.7 --set train.epochs=1

Threads: each sequential job uses PyTorch's default intra-op threads (or ``OMP_NUM_THREADS``);
joblib's loky workers get ``cores // workers`` threads each. Numbers depend on machine load:
run it on a quiet machine and compare rounds taken back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATIOS = "0.1,0.3,0.5,0.7,0.9"
#: ``--launcher`` -> its overrides for ``--workers`` jobs at once
LAUNCHERS = {
    "parallel": ["hydra.launcher.n_jobs={n}"],
    "gpu_pool": ["hydra.launcher.n_jobs={n}"],  # n_jobs: its CPU fallback; on GPUs one per GPU
    "ray": ["+hydra.launcher.ray.init.num_cpus={n}"],  # a private instance with n CPUs
}


def run_sweep(cwd: Path, args: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """Run one sweep in ``cwd`` (its own empty cache); wall seconds and every job's metrics."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "prune_cli.cli", "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = [json.loads(p.read_text()) for p in sorted(cwd.rglob("metrics.json"))]
    bad = [m for m in metrics if m["status"] != "completed"]
    if bad:
        sys.exit(f"{len(bad)} job(s) did not complete: {bad[0].get('error')}")
    return wall, metrics


def breakdown(wall: float, metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Ideal cost, evaluation, other in-pipeline time and out-of-pipeline time, in seconds."""
    trainers = [m for m in metrics if not m["train"].get("from_cache")]
    if len(trainers) != 1:
        sys.exit(f"expected exactly one job to train the dense model, got {len(trainers)}")
    timings = [m["timings"] for m in metrics]
    train = trainers[0]["timings"]["train"]
    prune_finetune = sum(t.get("prune", 0.0) + t.get("finetune", 0.0) for t in timings)
    ideal = train + prune_finetune
    in_pipeline = sum(t["total"] for t in timings)
    evaluation = sum(t.get("evaluate", 0.0) for t in timings)
    return {
        "ideal": ideal,
        "train": train,
        "prune+finetune": prune_finetune,
        "evaluate": evaluation,
        "other in pipeline": in_pipeline - ideal - evaluation,
        "outside pipeline": wall - in_pipeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default=RATIOS, help=f"sweep values (default {RATIOS})")
    parser.add_argument("--workers", type=int, default=2, help="jobs at once (default 2)")
    parser.add_argument("--launcher", default="parallel", choices=sorted(LAUNCHERS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra prune-run override, repeatable")  # fmt: skip
    parser.add_argument("--skip-parallel", action="store_true", help="sequential sweep only")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the sweeps here")
    opts = parser.parse_args()

    base = Path(opts.workdir or tempfile.mkdtemp(prefix="bench_sweep_"))
    sweep = [f"ratio={opts.ratios}", *opts.set]
    n = len(opts.ratios.split(","))
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"sweep: prune-run -m {' '.join(sweep)}  ({n} jobs, OMP_NUM_THREADS={threads})")
    print(f"work directory: {base}")

    wall_seq, metrics = run_sweep(base / "sequential", sweep)
    parts = breakdown(wall_seq, metrics)
    ideal = parts["ideal"]
    print(f"\nsequential sweep (basic launcher): {wall_seq:.1f} s")
    train, work = parts["train"], parts["prune+finetune"]
    print(f"  ideal 1 training + {n} x (prune + fine-tune): {ideal:.1f} s")
    print(f"    (train {train:.1f} s + prune/fine-tune {work:.1f} s)")
    print(f"  wall / ideal: {wall_seq / ideal:.3f}  (target <= 1.10)")
    for key in ("evaluate", "other in pipeline", "outside pipeline"):
        share = 100.0 * parts[key] / wall_seq
        print(f"  {key:<18} {parts[key]:7.1f} s  ({share:4.1f}% of wall)")
    if opts.skip_parallel:
        return
    launcher = [f"hydra/launcher={opts.launcher}"]
    launcher += [s.format(n=opts.workers) for s in LAUNCHERS[opts.launcher]]
    wall_par, metrics_par = run_sweep(base / opts.launcher, [*launcher, *sweep])
    breakdown(wall_par, metrics_par)  # checks that the parallel jobs also trained only once
    print(f"\n{' '.join(launcher)}: {wall_par:.1f} s")
    print(f"  speedup vs sequential: {wall_seq / wall_par:.2f}x")


if __name__ == "__main__":
    main()
