"""Sweep benchmark (issues 7, 15): does a ratio sweep cost one training plus the per-ratio work?

Runs ``prune-run -m ratio=r1,...,r5`` on the default setup (ResNet-20, the offline ``shapes``
dataset, default training and fine-tuning) from an empty cache:

1. sequentially (Hydra's basic launcher), side by side: first as before issue 15 (``before``:
   ``cache.figures=false metrics.latency.dense=interleaved``, every job evaluates the dense
   model and measures its latency again), then with the defaults (``after``: the dense model's
   test evaluation and latency are measured once per trained checkpoint and reused). Each wall
   time is compared with the **ideal** ``1 training + 5 x (prune + fine-tune + final
   evaluation)``, taken from the runs' own ``metrics.json`` timings (``timings.train`` of the
   one job that trained, ``timings.prune`` and ``timings.finetune`` of every job) and, for the
   final evaluation (test evaluation and latency of the final model alone), the median
   ``timings.evaluate`` of the ``after`` jobs whose dense latency came from the cache
   (``latency.dense_source == "cached"``: their evaluate stage does nothing else). Target:
   wall / ideal <= 1.05. The rest is broken down into evaluation beyond the final model's
   (the dense model's test evaluation and latency), the test evaluation of the pruned model
   (``timings.evaluate_pruned``: the ``pruned`` stage's figures), the export of the final
   model (``timings.export``: ``final.onnx``), the other in-pipeline time (building the
   dataset and model, loading the cached checkpoint, saving checkpoints), and what lies
   outside the pipeline (interpreter start, imports, Hydra);
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
import statistics
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


def final_evaluation(metrics: list[dict[str, Any]]) -> float | None:
    """Seconds of one final evaluation (test split + latency of the final model alone): the
    median evaluate stage of the jobs whose dense latency was reused from the cache."""
    alone = [
        m["timings"]["evaluate"]
        for m in metrics
        if m.get("latency", {}).get("dense_source") == "cached"
    ]
    return statistics.median(alone) if alone else None


def breakdown(wall: float, metrics: list[dict[str, Any]], final_eval: float) -> dict[str, float]:
    """Ideal cost, evaluation beyond the final model's, other in-pipeline time and
    out-of-pipeline time, in seconds."""
    trainers = [m for m in metrics if not m["train"].get("from_cache")]
    if len(trainers) != 1:
        sys.exit(f"expected exactly one job to train the dense model, got {len(trainers)}")
    timings = [m["timings"] for m in metrics]
    train = trainers[0]["timings"]["train"]
    prune_finetune = sum(t.get("prune", 0.0) + t.get("finetune", 0.0) for t in timings)
    finals = final_eval * len(metrics)
    ideal = train + prune_finetune + finals
    in_pipeline = sum(t["total"] for t in timings)
    extra_eval = sum(t.get("evaluate", 0.0) for t in timings) - finals
    pruned_eval = sum(t.get("evaluate_pruned", 0.0) for t in timings)
    export = sum(t.get("export", 0.0) for t in timings)
    return {
        "ideal": ideal,
        "train": train,
        "prune+finetune": prune_finetune,
        "final evaluation": finals,
        "more evaluation": extra_eval,
        "pruned evaluation": pruned_eval,
        "export": export,
        "other in pipeline": in_pipeline - ideal - extra_eval - pruned_eval - export,
        "outside pipeline": wall - in_pipeline,
    }


def report(label: str, wall: float, parts: dict[str, float], n: int) -> None:
    ideal = parts["ideal"]
    print(f"\n{label}: {wall:.1f} s")
    print(f"  ideal 1 training + {n} x (prune + fine-tune + final evaluation): {ideal:.1f} s")
    print(f"    (train {parts['train']:.1f} s + prune/fine-tune {parts['prune+finetune']:.1f} s"
          f" + final evaluation {parts['final evaluation']:.1f} s)")  # fmt: skip
    print(f"  wall / ideal: {wall / ideal:.3f}  (target <= 1.05)")
    keys = ("more evaluation", "pruned evaluation", "export", "other in pipeline",
            "outside pipeline")  # fmt: skip
    for key in keys:
        share = 100.0 * parts[key] / wall
        print(f"  {key:<18} {parts[key]:7.1f} s  ({share:4.1f}% of wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default=RATIOS, help=f"sweep values (default {RATIOS})")
    parser.add_argument("--workers", type=int, default=2, help="jobs at once (default 2)")
    parser.add_argument("--launcher", default="parallel", choices=sorted(LAUNCHERS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra prune-run override, repeatable")  # fmt: skip
    parser.add_argument("--skip-parallel", action="store_true", help="sequential sweeps only")
    parser.add_argument("--skip-before", action="store_true",
                        help="no sweep as before issue 15 (dense figures per job)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="keep the sweeps here")
    opts = parser.parse_args()

    base = Path(opts.workdir or tempfile.mkdtemp(prefix="bench_sweep_"))
    sweep = [f"ratio={opts.ratios}", *opts.set]
    n = len(opts.ratios.split(","))
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"sweep: prune-run -m {' '.join(sweep)}  ({n} jobs, OMP_NUM_THREADS={threads})")
    print(f"work directory: {base}")

    before = ["cache.figures=false", "metrics.latency.dense=interleaved"]
    wall_before, metrics_before = (
        (None, None) if opts.skip_before else run_sweep(base / "before", [*sweep, *before])
    )
    wall_seq, metrics = run_sweep(base / "sequential", sweep)
    final_eval = final_evaluation(metrics)
    if final_eval is None:
        sys.exit("no job reused the cached dense latency (metrics.latency.dense=reuse?)")
    parts = breakdown(wall_seq, metrics, final_eval)
    if wall_before is not None:
        report(f"before issue 15 ({' '.join(before)})", wall_before,
               breakdown(wall_before, metrics_before, final_eval), n)  # fmt: skip
    report("sequential sweep (basic launcher, defaults)", wall_seq, parts, n)
    if opts.skip_parallel:
        return
    launcher = [f"hydra/launcher={opts.launcher}"]
    launcher += [s.format(n=opts.workers) for s in LAUNCHERS[opts.launcher]]
    wall_par, metrics_par = run_sweep(base / opts.launcher, [*launcher, *sweep])
    # (checks that the parallel jobs also trained only once)
    breakdown(wall_par, metrics_par, final_eval)
    print(f"\n{' '.join(launcher)}: {wall_par:.1f} s")
    print(f"  speedup vs sequential: {wall_seq / wall_par:.2f}x")


if __name__ == "__main__":
    main()
