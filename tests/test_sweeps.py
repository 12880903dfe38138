"""Sweeps through Hydra launchers: joblib (2 parallel workers), submitit's local executor, the
GPU pool (on this CPU machine: its pool with device ids given, and its fallback to joblib), and
Ray against a local Ray instance started and stopped by the test (slow).

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


@needs("cloudpickle")
def test_gpu_pool_gives_each_job_its_own_device_in_a_fresh_process(tmp_path: Path) -> None:
    """Device ids given: the pool hands them out (one job per id at a time), even where torch
    sees no GPU (the runs then resolve device=auto to the CPU, as any run would)."""
    proc = prune_run(
        "-m",
        "hydra/launcher=gpu_pool",
        "hydra.launcher.gpus=[3,5]",
        *TINY,
        "ratio=0.3,1.5",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "GPU pool: 2 jobs on GPUs 3,5 (2 at a time)" in out
    assert proc.returncode == 2
    by_ratio = {str(m["ratio"]): m for m in sweep_metrics(tmp_path)}
    assert by_ratio["0.3"]["status"] == "completed"
    assert by_ratio["1.5"]["status"] == "failed"  # fails alone
    assert by_ratio["1.5"]["error"].startswith("ConfigError: ratio 1.5 is out of range")
    assert {m["cuda_visible_devices"] for m in by_ratio.values()} == {"3", "5"}
    assert "warnings" not in by_ratio["0.3"]
    sweep_dir = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert (sweep_dir / "summary.md").is_file()


@needs("hydra_plugins.hydra_joblib_launcher")
def test_gpu_pool_falls_back_to_joblib_when_no_gpu_is_visible(monkeypatch) -> None:
    """The decision alone (fast): no device -> the joblib launcher with n_jobs, and the note
    in the environment its workers inherit; the environment is restored afterwards."""
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

    from hydra_plugins.prune_cli_launchers import gpu_pool_launcher as pool

    seen = {}

    def fake_launch(self, job_overrides, initial_job_idx):
        seen.update(
            kwargs=self.joblib, jobs=list(job_overrides), note=os.environ[pool.FALLBACK_ENV]
        )
        return ["done"]

    monkeypatch.setattr(JoblibLauncher, "launch", fake_launch)
    monkeypatch.delenv(pool.FALLBACK_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pool.visible_gpus(None) == []
    assert pool.visible_gpus([0, "2"]) == ["0", "2"]  # given ids are used as given
    launcher = pool.GpuPoolLauncher(gpus=None, jobs_per_gpu=1, n_jobs=3)
    launcher.setup(hydra_context=object(), task_function=print, config=object())
    assert launcher.launch([["ratio=0.3"]], 0) == ["done"]
    assert seen["kwargs"] == {"n_jobs": 3, "prefer": "processes"}
    assert seen["jobs"] == [["ratio=0.3"]]
    assert "found no CUDA device" in seen["note"] and "n_jobs=3" in seen["note"]
    assert pool.FALLBACK_ENV not in os.environ
    with pytest.raises(ValueError, match="jobs_per_gpu must be >= 1, got 0"):
        pool.GpuPoolLauncher(jobs_per_gpu=0)


@pytest.mark.slow
@needs("hydra_plugins.hydra_joblib_launcher")
def test_gpu_pool_without_a_gpu_runs_on_the_parallel_launcher_and_says_so(tmp_path: Path) -> None:
    proc = prune_run(
        "-m",
        "hydra/launcher=gpu_pool",
        *TINY,
        "ratio=0.3,0.5",
        cwd=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": ""},  # no GPU, whatever this machine has
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in out
    note = (
        "hydra/launcher=gpu_pool found no CUDA device: the sweep ran on the parallel launcher "
        "(joblib, n_jobs=2) on the CPU"
    )
    metrics = sweep_metrics(tmp_path)
    assert [m["status"] for m in metrics] == ["completed", "completed"]
    assert all(m["warnings"] == [note] for m in metrics)
    assert "GPU pool:" not in out


@pytest.mark.slow
@needs("hydra_plugins.hydra_ray_launcher")
def test_ray_launcher_on_a_local_ray_instance(tmp_path: Path) -> None:
    """``ray start --head`` (a local one-node cluster, started and stopped here), then a sweep
    with ``RAY_ADDRESS`` as on a real cluster: the runs are Ray tasks in the Ray workers'
    processes, the dense model is trained once, the run directories land under the launch
    directory (the workers run elsewhere) and the end-of-sweep summary sees them."""
    import shutil
    import sys
    import tempfile

    # short: Ray's unix sockets live under it (a path limit of ~107 characters)
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = _free_port()
    # no token: a private instance on localhost, started and stopped by this test
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        cwd=ray_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_ray(address, env, head)
        proc = prune_run(
            "-m",
            "hydra/launcher=ray",
            *TINY,
            "ratio=0.3,0.6",
            cwd=tmp_path,
            env={"RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled"},
        )
    finally:
        head.terminate()  # --block: stopping the head process stops the instance it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Connecting to existing Ray cluster at address:" in out  # not a private instance
    assert "(run_job_in_launch_dir pid=" in out  # the runs ran in Ray's worker processes
    metrics = sweep_metrics(tmp_path)
    assert sorted(m["ratio"] for m in metrics) == [0.3, 0.6]
    assert all(m["status"] == "completed" for m in metrics)
    assert sorted(m["train"]["from_cache"] for m in metrics) == [False, True]
    sweep_dir = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert (sweep_dir / "summary.md").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_ray(address: str, env: dict[str, str], head: subprocess.Popen) -> None:
    import sys
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited: {head.stdout.read()[-3000:]}")
        probe = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={address!r}); ray.shutdown()"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        time.sleep(2)
    raise AssertionError("the local Ray instance did not come up within 120 s")


def test_launcher_configs_compose() -> None:
    """Every shipped launcher config composes (Ray only when its plugin is installed)."""
    from hydra import compose, initialize_config_dir

    from prune_cli.cli import CONFIG_DIR

    launchers = {
        "parallel": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "slurm_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "ray": "hydra_plugins.prune_cli_launchers.ray_launcher.RayLauncher",
        "ray_cluster": "hydra_plugins.prune_cli_launchers.ray_launcher.RayLauncher",
        "gpu_pool": "hydra_plugins.prune_cli_launchers.gpu_pool_launcher.GpuPoolLauncher",
    }
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name, target in launchers.items():
            if importlib.util.find_spec(target.rsplit(".", 2)[0]) is None:
                continue
            cfg = compose("config", [f"hydra/launcher={name}"], return_hydra_config=True)
            assert cfg.hydra.launcher._target_ == target, name
            if name == "slurm_local":  # our setting over the plugin default (null)
                assert cfg.hydra.launcher.cpus_per_task == 1
            if name.startswith("ray"):  # the name users typed before stays, with its setting
                assert cfg.hydra.launcher.ray.remote.num_cpus == (4 if name == "ray_cluster" else 1)


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
