"""The configs are found from any directory, installed editable (this checkout) or not (a wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_checkout_finds_top_level_configs() -> None:
    from prune_cli.cli import CONFIG_DIR, group_choices

    assert CONFIG_DIR.resolve() == (ROOT / "configs").resolve()
    assert "resnet56" in group_choices("model") and "shapes" in group_choices("dataset")


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree")
def test_wheel_ships_configs_and_runs_from_elsewhere(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheel_dir), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheel_dir.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "prune_cli/configs/config.yaml" in names
    assert "prune_cli/configs/model/resnet56.yaml" in names
    for source in ("torchvision", "timm", "custom"):
        assert f"prune_cli/configs/model/{source}.yaml" in names
    # prune-cli's Hydra launchers, in Hydra's namespace package (no __init__.py of its own)
    assert "hydra_plugins/prune_cli_launchers/gpu_pool_launcher.py" in names
    assert "hydra_plugins/__init__.py" not in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import prune_cli.cli as c; print(c.CONFIG_DIR)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == str(site / "prune_cli" / "configs")
    job = subprocess.run(
        [sys.executable, "-m", "prune_cli.cli", "model=vgg16", "--cfg", "job"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert "name: vgg16" in job.stdout
