"""Run the reproduction table (``docs/reproduce.md``): published rows, side by side, from the
published CIFAR-10 ResNets on the full CIFAR-10, on a CPU.

Every row is a set of runs pinned by ``configs/experiment/repro_*.yaml`` (the row's protocol)
plus its arms (e.g. the regulariser on and off) and seeds. Each run has its own directory
``<out>/<row>/<arm>/seed<s>`` and is started with ``resume=true``, so running the script again
skips what completed and continues what was interrupted: the table can be built over several
sessions. Jobs are dealt to ``--jobs`` lanes of ``--threads`` threads each (two lanes of one
thread on 2 cores: two small models train faster side by side than one on both cores).

    python scripts/reproduce.py --jobs 2                 # everything (hours on 2 CPU cores)
    python scripts/reproduce.py --rows depgraph,li2017_b --seeds 0
    python scripts/reproduce.py --list                   # the jobs and their state
    python scripts/reproduce_report.py                   # docs/reproduce.md from the runs

Row ``study`` is ``scripts/study.sh`` on its pretrained setup (every method at 0.3 and 0.6 from
the published ResNet-20), one seed per job. The data and checkpoints are looked up under
``--data`` / ``--models`` (default ``$PRUNE_CLI_DATA`` / ``$PRUNE_CLI_MODELS``, else
``../shared/data`` and ``../shared/models`` beside the repository), which every job gets as
``$PRUNE_CLI_DATA`` / ``$PRUNE_CLI_MODELS``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _folder(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else default


#: Where the full CIFAR-10 (``cifar10/``) and the published checkpoints (``cifar10/*.th``) are.
DATA = _folder("PRUNE_CLI_DATA", ROOT.parent / "shared" / "data")
MODELS = _folder("PRUNE_CLI_MODELS", ROOT.parent / "shared" / "models")


@dataclass(frozen=True)
class Row:
    """One row of the table: ``arms`` maps an arm's name to its overrides (after the row's)."""

    name: str
    overrides: tuple[str, ...]
    arms: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"run": ()})
    seeds: tuple[int, ...] = (0, 1, 2)
    study: bool = False  # the row is scripts/study.sh's pretrained setup
    #: Arms run with fewer seeds than the row (a side arm that does not fit the budget).
    arm_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Rows of a lower priority start after every job of the higher ones (0 first).
    priority: int = 0

    def seeds_of(self, arm: str) -> tuple[int, ...]:
        return self.arm_seeds.get(arm, self.seeds)


#: The rows, in the order their jobs are started.
ROWS: tuple[Row, ...] = (
    Row(
        "depgraph",
        ("experiment=repro_depgraph_resnet56",),
        {"layerwise": ("method.scope=layerwise",), "global": ("method.scope=global",)},
        arm_seeds={"global": (0,)},
    ),
    Row("li2017_b", ("experiment=repro_li2017_resnet56_b",)),
    Row(
        "parity_magnitude",
        ("experiment=precision_parity_resnet20", "method=magnitude", "ratio=0.6"),
        {"fp32": ("finetune.precision=fp32",), "bf16": ("finetune.precision=bf16",)},
    ),
    Row(
        "parity_l1_filter",
        ("experiment=precision_parity_resnet20", "method=l1_filter", "ratio=0.5"),
        {"fp32": ("finetune.precision=fp32",), "bf16": ("finetune.precision=bf16",)},
    ),
    Row("optimized_vs_magnitude", ("experiment=repro_optimized_vs_magnitude_resnet20",)),
    Row(
        "dpf_reg",
        ("experiment=repro_dpf_resnet20",),
        {"plain": ("method.reg=none",), "cov": ("method.reg=cov",)},
    ),
    Row(
        "slimming_vs_double",
        (),
        {
            "network_slimming": ("experiment=repro_slimming_resnet20",),
            "double_pruning": ("experiment=repro_double_pruning_resnet20",),
        },
    ),
    Row("study", (), seeds=(0,), study=True, priority=1),
    Row("dpf_resnet56_90", ("experiment=repro_dpf_resnet56_90",), seeds=(0,), priority=2),
)


@dataclass(frozen=True)
class Job:
    row: Row
    arm: str
    seed: int
    out: Path

    @property
    def run_dir(self) -> Path:
        return self.out / self.row.name / self.arm / f"seed{self.seed}"

    def command(self) -> list[str]:
        if self.row.study:
            return ["bash", str(ROOT / "scripts" / "study.sh")]
        return [
            sys.executable,
            "-m",
            "prune_cli.cli",
            *self.row.overrides,
            *self.row.arms[self.arm],
            f"seed={self.seed}",
            "resume=true",
            f"hydra.run.dir={self.run_dir}",
        ]

    def env(self, threads: int) -> dict[str, str]:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        if self.row.study:
            env.update(
                SETUPS="resnet20:cifar10",
                SEEDS=str(self.seed),
                STUDY=str(self.out / "study"),
                REPORT="0",
                JOBS="1",
            )
        return env

    def state(self) -> str:
        """``completed``, ``failed``, ``running``/``interrupted`` or ``todo`` (study: ``-``)."""
        if self.row.study:
            return "-"
        try:
            return json.loads((self.run_dir / "metrics.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            return "todo"


def jobs_of(rows: Sequence[Row], seeds: Sequence[int] | None, out: Path) -> list[Job]:
    """Every job of ``rows``: by priority, then seed by seed across the rows (seed 0 of every
    row and arm before any seed 1), so that one seed of every row is there early."""
    jobs = []
    for priority in sorted({row.priority for row in rows}):
        level = [row for row in rows if row.priority == priority]
        for seed in sorted({s for row in level for s in row.seeds}):
            if seeds is not None and seed not in seeds:
                continue
            for row in level:
                arms = [arm for arm in row.arms if seed in row.seeds_of(arm)]
                jobs += [Job(row, arm, seed, out) for arm in arms]
    return jobs


def run_lanes(jobs: Sequence[Job], lanes: int, threads: int) -> int:
    """Run the jobs not yet completed on ``lanes`` workers; returns how many failed."""
    todo: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        if job.state() != "completed":
            todo.put(job)
    failed = []
    lock = threading.Lock()

    def worker(lane: int) -> None:
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            name = f"{job.row.name}/{job.arm}/seed={job.seed}"
            log = job.run_dir.with_suffix(".log") if not job.row.study else None
            target = job.out / "study" / f"seed{job.seed}.log" if job.row.study else log
            target.parent.mkdir(parents=True, exist_ok=True)
            tic = time.time()
            print(f"[lane {lane}] start {name}", flush=True)
            with open(target, "a") as f:
                code = subprocess.call(
                    job.command(), cwd=ROOT, env=job.env(threads), stdout=f, stderr=f
                )
            state = "done" if code == 0 else f"FAILED (exit {code}, log {target})"
            print(f"[lane {lane}] {state} {name} ({time.time() - tic:.0f} s)", flush=True)
            if code != 0:
                with lock:
                    failed.append(name)

    threads_ = [threading.Thread(target=worker, args=(i,)) for i in range(max(1, lanes))]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    if failed:
        print(f"reproduce: {len(failed)} job(s) failed: {', '.join(failed)}", flush=True)
    return len(failed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [row.name for row in ROWS]
    parser.add_argument("--rows", default=",".join(names), help=f"of: {', '.join(names)}")
    parser.add_argument("--seeds", default=None, help="e.g. 0 or 0,1 (default: each row's)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproduce")
    parser.add_argument("--jobs", type=int, default=2, help="lanes run side by side")
    parser.add_argument("--threads", type=int, default=1, help="threads of each lane")
    parser.add_argument("--list", action="store_true", help="list the jobs and their state")
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="folder holding cifar10/ (the full CIFAR-10, cifar-10-batches-py inside); default "
        f"$PRUNE_CLI_DATA, else ../shared/data beside the repository (now: {DATA})",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=MODELS,
        help="folder holding cifar10/resnet20-12fca82f.th and cifar10/resnet56-4bfd9763.th; "
        f"default $PRUNE_CLI_MODELS, else ../shared/models beside the repository (now: {MODELS})",
    )
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; choose from: {', '.join(names)}")
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    rows = [row for row in ROWS if row.name in wanted]
    jobs = jobs_of(rows, seeds, args.out.resolve())
    if args.list:
        for job in jobs:
            print(f"{job.state():>11}  {job.row.name}/{job.arm}/seed={job.seed}")
        return 0
    missing = missing_inputs(args.data, args.models)
    if missing:
        print(f"reproduce.py: error: {missing}", file=sys.stderr)
        return 2
    # Every job (prune-run, study.sh) finds them through the variables the configs read.
    os.environ["PRUNE_CLI_DATA"] = str(args.data.resolve())
    os.environ["PRUNE_CLI_MODELS"] = str(args.models.resolve())
    return 1 if run_lanes(jobs, args.jobs, args.threads) else 0


def missing_inputs(data: Path, models: Path) -> str | None:
    """One line naming the option to fix when the data or the checkpoints are not there."""
    if not (data / "cifar10").is_dir():
        return (
            f"no folder {data / 'cifar10'} (the full CIFAR-10); pass --data DIR or set "
            "PRUNE_CLI_DATA"
        )
    if not (models / "cifar10").is_dir():
        return (
            f"no folder {models / 'cifar10'} (the published checkpoints); pass --models DIR or "
            "set PRUNE_CLI_MODELS"
        )
    return None


if __name__ == "__main__":
    raise SystemExit(main())
