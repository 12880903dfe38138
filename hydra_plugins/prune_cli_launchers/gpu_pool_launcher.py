"""``hydra/launcher=gpu_pool``: a sweep on one machine with several GPUs, each job on its own GPU.

``prune-run -m hydra/launcher=gpu_pool ratio=0.3,0.5,0.7,0.9`` on a 4-GPU machine runs four jobs
at once, each in its own process that sees one device (``CUDA_VISIBLE_DEVICES``), and starts
the next job on whichever GPU frees up first. Settings (``configs/hydra/launcher/gpu_pool.yaml``):

- ``gpus``: the devices to use (ids as ``nvidia-smi`` or ``CUDA_VISIBLE_DEVICES`` name them);
  null = every GPU this process sees. Given explicitly, they are used as given;
- ``jobs_per_gpu``: jobs sharing one GPU at once (small models that leave a GPU idle);
- ``n_jobs``: with no GPU at all, the sweep runs on the parallel launcher (joblib) with this many
  jobs at once. That fallback is logged and recorded in every run's ``metrics.json``
  (``warnings``), so a sweep meant for GPUs never runs on CPUs unnoticed.

Why not joblib with an environment variable per job: joblib (loky) reuses worker processes, and
a process keeps the device it first initialised CUDA with, so a reused worker would ignore the
next job's ``CUDA_VISIBLE_DEVICES``. Here every job gets a fresh process (``spawn``) whose device
is set before anything imports torch; each slot (a GPU, ``jobs_per_gpu`` times) runs one job at
a time. The job itself is Hydra's ``run_job``, as in the other launchers; the task and its
context are sent with cloudpickle (as joblib and submitit do), since Hydra's task function is not
importable by name.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

#: Set in every job of the CPU fallback; the run records it as a warning (metrics.json).
FALLBACK_ENV = "PRUNE_CLI_LAUNCHER_NOTE"


def visible_gpus(gpus: Sequence[Any] | None) -> list[str]:
    """The device ids the pool hands out: ``gpus`` as given, else every GPU this process sees
    (``CUDA_VISIBLE_DEVICES`` when set, so a pool inside an allocation stays inside it)."""
    if gpus is not None:
        return [str(g) for g in gpus]
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


def _run_in_slot(payload: bytes, device: str, idx: int, overrides: Sequence[str]) -> bytes:
    """One job in a fresh process: pin the device, then Hydra's ``run_job`` (as joblib's)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device  # before anything initialises CUDA here
    import cloudpickle

    hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    return cloudpickle.dumps(ret)


def _slot_main(payload: bytes, device: str, idx: int, overrides: list[str], out: Any) -> None:
    """Process entry: the job's pickled ``JobReturn``, or the error that kept it from one."""
    try:
        out.put((idx, device, _run_in_slot(payload, device, idx, overrides), None))
    except BaseException as exc:  # reported to the parent, which fails that job alone
        out.put((idx, device, None, f"{type(exc).__name__}: {exc}"))


class GpuPoolLauncher(Launcher):
    """One job per GPU at a time, each in a fresh process (module docstring)."""

    def __init__(
        self, gpus: Sequence[Any] | None = None, jobs_per_gpu: int = 1, n_jobs: int = 2
    ) -> None:
        if int(jobs_per_gpu) < 1:
            raise ValueError(f"hydra.launcher.jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
        if OmegaConf.is_config(gpus):
            gpus = OmegaConf.to_container(gpus)
        self.gpus = None if gpus is None else list(gpus)
        self.jobs_per_gpu = int(jobs_per_gpu)
        self.n_jobs = int(n_jobs)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        devices = visible_gpus(self.gpus)
        if not devices:
            return self._cpu_fallback(job_overrides, initial_job_idx)
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = [d for d in devices for _ in range(self.jobs_per_gpu)]
        log.info(
            "GPU pool: %d jobs on GPUs %s (%d at a time), sweep output dir: %s",
            len(job_overrides),
            ",".join(devices),
            len(slots),
            sweep_dir,
        )
        return self._run_pool(job_overrides, initial_job_idx, slots)

    def _run_pool(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, slots: list[str]
    ) -> list[JobReturn]:
        import cloudpickle

        payload = cloudpickle.dumps(
            (self.hydra_context, self.config, self.task_function, Singleton.get_state())
        )
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        pending = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        free = list(slots)
        running: dict[int, Any] = {}
        results: dict[int, JobReturn] = {}
        while pending or running:
            while pending and free:
                idx, overrides = pending.pop(0)
                device = free.pop(0)
                log.info("\t#%d on GPU %s : %s", idx, device, " ".join(filter_overrides(overrides)))
                proc = ctx.Process(target=_slot_main, args=(payload, device, idx, overrides, out))
                proc.start()
                running[idx] = (proc, device)
            try:
                idx, device, ret, error = out.get(timeout=1.0)
            except queue.Empty:
                for idx, (proc, device) in list(running.items()):
                    if not proc.is_alive() and proc.exitcode != 0:  # died without a word
                        results[idx] = _failed(f"job process exited with {proc.exitcode}")
                        del running[idx]
                        free.append(device)
                continue
            if idx in running:  # else: already counted as dead; the word came late
                proc, _ = running.pop(idx)
                proc.join()
                free.append(device)
            results[idx] = cloudpickle.loads(ret) if ret is not None else _failed(error)
        return [results[initial_job_idx + i] for i in range(len(job_overrides))]

    def _cpu_fallback(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """No GPU: the parallel launcher (joblib) runs the sweep, and every run says so."""
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

        note = (
            f"hydra/launcher=gpu_pool found no CUDA device: the sweep ran on the parallel "
            f"launcher (joblib, n_jobs={self.n_jobs}) on the CPU"
        )
        log.warning(note)
        launcher = JoblibLauncher(n_jobs=self.n_jobs, prefer="processes")
        launcher.setup(
            hydra_context=self.hydra_context, task_function=self.task_function, config=self.config
        )
        previous = os.environ.get(FALLBACK_ENV)
        os.environ[FALLBACK_ENV] = note  # the joblib workers inherit it
        try:
            return launcher.launch(job_overrides, initial_job_idx)
        finally:
            if previous is None:
                os.environ.pop(FALLBACK_ENV, None)
            else:
                os.environ[FALLBACK_ENV] = previous


def _failed(message: str | None) -> JobReturn:
    """The ``JobReturn`` of a job whose process failed before Hydra could report on it."""
    from hydra.core.utils import JobStatus

    ret = JobReturn()
    ret.status = JobStatus.FAILED
    ret.return_value = RuntimeError(f"gpu_pool: {message}")
    return ret
