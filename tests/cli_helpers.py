"""Running ``prune-run`` in a subprocess, as a user would, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Overrides that shrink the default run to a few seconds (tiny data, one epoch per stage).
FAST = [
    "dataset.train_size=384",
    "dataset.test_size=128",
    "train.epochs=1",
    "train.batch_size=64",
    "finetune.epochs=1",
    "finetune.batch_size=64",
    "metrics.latency.batch_sizes=[1,4]",
    "metrics.latency.warmup=1",
    "metrics.latency.repeats=2",
    # ONNX Runtime latency (two ONNX exports per run) is tested in test_deploy.py/test_tracking.py,
    # the export (final.onnx) in test_export.py and test_double_pruning.py
    "metrics.latency.backends=[torch]",
    "export.onnx=false",
]
#: A pipeline of well under a second per stage, for in-process runs: 16 training images of 8 px
#: and one training epoch (add ``TINY_FINETUNE`` or ``finetune.epochs=0``).
TINY_DATA = [
    "dataset.train_size=16",
    "dataset.test_size=8",
    "dataset.image_size=8",
    "dataset.crop_padding=1",
    "train.epochs=1",
    "train.batch_size=8",
]
TINY_FINETUNE = ["finetune.epochs=1", "finetune.batch_size=8"]
#: For sweeps with FAST: Hydra's default job directory name lists every override, which with all
#: of FAST exceeds the 255-character limit of a file name.
SHORT_SUBDIR = "hydra.sweep.subdir=${hydra.job.num}"


def prune_run(
    *args: str, cwd: Path, threads: int = 1, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m prune_cli.cli ARGS`` in ``cwd``; output captured as text; ``env`` is added
    to this process's environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "prune_cli.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def composed(*overrides: str) -> dict[str, Any]:
    """The job config ``prune-run`` would see for ``overrides`` (``hydra`` node removed), resolved;
    Hydra's global state is left as it was (a later test's launch directory is its own)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from prune_cli.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", list(overrides), return_hydra_config=True)
    hydra = HydraConfig.instance()
    before = hydra.cfg
    hydra.set_config(cfg)  # for ${hydra:runtime.cwd}
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    finally:
        hydra.cfg = before


def run_in_process(run_dir: Path, overrides: Sequence[str]) -> Any:
    """Compose the config with ``overrides`` and run the pipeline in this process into
    ``run_dir``; returns the :class:`~prune_cli.pipeline.Pipeline` (its ``metrics`` etc.)."""
    from hydra import compose, initialize_config_dir

    from prune_cli.cli import CONFIG_DIR
    from prune_cli.pipeline import Pipeline

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", list(overrides))
    pipeline = Pipeline(cfg, run_dir)
    pipeline.run()
    return pipeline
