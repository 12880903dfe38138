"""Sweeps through Hydra launchers: joblib (2 parallel workers) and submitit's local executor.

Each sweep runs the real console entry point in a subprocess on a tiny ``shapes`` dataset, with
one job that fails (a NaN loss, a bad ratio). Checked: the other jobs complete, the dense model is
trained once across the parallel jobs (one cache entry, exactly one job trained it), the failed
job is recorded as failed, and ``prune-report`` lists it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import prune_run

from prune_cli.report import build_report

TINY = [
    "dataset.train_size=128",
    "dataset.test_size=64",
    "train.epochs=1",
    "train.batch_size=64",
    "finetune.epochs=1",
    "finetune.batch_size=64",
    "metrics.latency.enabled=false",
]


def sweep_metrics(cwd: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cwd / "outputs").rglob("metrics.json"))]


def needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} not installed (pip install -e '.[dev]')",
    )


@needs("hydra_plugins.hydra_joblib_launcher")
def test_joblib_two_workers_train_once_and_a_nan_job_fails_alone(tmp_path: Path) -> None:
    proc = prune_run(
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "ratio=0.5",
        "finetune.lr=0.01,1e30",  # the second job's fine-tuning diverges to NaN
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    # The failure happened in a worker process; the end-of-sweep summary still reports it.
    assert proc.returncode == 2
    assert "prune-run: error: 1 of 2 jobs did not complete (see " in proc.stderr
    metrics = sweep_metrics(tmp_path)
    assert len(metrics) == 2
    by_status = {m["status"]: m for m in metrics}
    assert sorted(by_status) == ["completed", "failed"]
    assert by_status["failed"]["error"].startswith("NonFiniteLossError: finetune: training loss")
    assert "finetune.lr=0.01" in by_status["completed"]["run_dir"]
    # Both jobs started at once; the cache lock let exactly one of them train.
    assert sorted(m["train"]["from_cache"] for m in metrics) == [False, True]
    assert len(list((tmp_path / "outputs" / "cache").iterdir())) == 1
    assert len({m["baseline"]["top1"] for m in metrics}) == 1

    sweep_dir = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert (sweep_dir / "summary.md").is_file()  # written at the end of the sweep
    report = build_report([sweep_dir], plots=False)
    assert sorted(r["status"] for r in report["rows"]) == ["completed", "failed"]
    md = (sweep_dir / "summary.md").read_text()
    assert "NonFiniteLossError: finetune: training loss became nan" in md


@needs("hydra_plugins.hydra_submitit_launcher")
def test_submitit_local_runs_jobs_and_a_bad_ratio_fails_alone(tmp_path: Path) -> None:
    proc = prune_run("-m", "hydra/launcher=slurm_local", *TINY, "ratio=0.3,1.5", cwd=tmp_path)
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    assert proc.returncode == 2
    sweep_dir = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert (sweep_dir / ".submitit").is_dir()  # the jobs really went through submitit
    by_ratio = {str(m["ratio"]): m for m in sweep_metrics(tmp_path)}
    assert by_ratio["0.3"]["status"] == "completed"
    assert by_ratio["0.3"]["train"]["from_cache"] is False
    assert by_ratio["1.5"]["status"] == "failed"
    assert by_ratio["1.5"]["error"] == (
        "ConfigError: ratio 1.5 is out of range; valid: 0 <= ratio < 1"
    )
    report = build_report([sweep_dir], plots=False)
    assert [(r["ratio"], r["status"]) for r in report["rows"]] == [
        (0.3, "completed"),
        (1.5, "failed"),
    ]


def test_launcher_configs_compose() -> None:
    """Every shipped launcher config composes (Ray only when its plugin is installed)."""
    from hydra import compose, initialize_config_dir

    from prune_cli.cli import CONFIG_DIR

    launchers = {
        "parallel": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "slurm_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "ray_cluster": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
    }
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name, target in launchers.items():
            if importlib.util.find_spec(target.rsplit(".", 2)[0]) is None:
                continue
            cfg = compose("config", [f"hydra/launcher={name}"], return_hydra_config=True)
            assert cfg.hydra.launcher._target_ == target, name
            if name == "slurm_local":  # our setting over the plugin default (null)
                assert cfg.hydra.launcher.cpus_per_task == 1


RUN_SH = Path(__file__).resolve().parents[1] / "scripts" / "run.sh"


def run_sh(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(RUN_SH)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_sh_names_only_configs_that_exist(tmp_path: Path) -> None:
    """Every config name in scripts/run.sh's sweeps is one prune-run accepts."""
    from prune_cli.cli import CHECKED_GROUPS, group_choices

    proc = run_sh({"DRY_RUN": "1", "SECTIONS": "all", "OUT": "study"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    commands = [line[2:].split() for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 5
    for words in commands:
        assert words[:2] == ["prune-run", "-m"]
        assert words[2].startswith("hydra.sweep.dir=study/")
        for word in words[3:]:
            key, _, value = word.partition("=")
            key = key.lstrip("+")
            if key in CHECKED_GROUPS:
                assert set(value.split(",")) <= set(group_choices(key)), word


def test_run_sh_rejects_an_unknown_section(tmp_path: Path) -> None:
    proc = run_sh({"DRY_RUN": "1", "SECTIONS": "demo nope"}, tmp_path)
    assert proc.returncode == 2
    assert "run.sh: unknown section 'nope'; choose from: demo" in proc.stderr
