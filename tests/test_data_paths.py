"""Data and checkpoints live outside the repository: every script that reads them says where in
its ``--help`` and takes the place as an argument or an environment variable, and a user
without them gets one line naming the setting to fix, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import prune_run
from omegaconf import OmegaConf

from prune_cli.cli import setting_hint
from prune_cli.errors import CheckpointError, DataNotFoundError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("cmd", "names"),
    [
        (
            ["bash", str(SCRIPTS / "study.sh"), "--help"],
            ["DATA", "PRUNE_CLI_DATA", "PRUNE_CLI_MODELS"],
        ),
        (["bash", str(SCRIPTS / "retrain_study.sh"), "--help"], ["DATA", "PRUNE_CLI_DATA"]),
        (
            [sys.executable, str(SCRIPTS / "reproduce.py"), "--help"],
            ["--data", "--models", "PRUNE_CLI_DATA", "PRUNE_CLI_MODELS"],
        ),
    ],
    ids=["study.sh", "retrain_study.sh", "reproduce.py"],
)
def test_the_help_says_where_the_data_comes_from(cmd: list[str], names: list[str]) -> None:
    done = _run(cmd, {})
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in names), done.stdout


def _one_line_naming(done: subprocess.CompletedProcess, *names: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


def test_the_scripts_without_their_data_fail_in_one_line(tmp_path: Path) -> None:
    nothing = str(tmp_path / "nothing")
    unset = {"PRUNE_CLI_DATA": nothing, "PRUNE_CLI_MODELS": nothing, "DATA": nothing}
    study = _run(["bash", str(SCRIPTS / "study.sh")], {**unset, "STUDY": str(tmp_path / "s")})
    _one_line_naming(study, "DATA", nothing)
    retrain = _run(["bash", str(SCRIPTS / "retrain_study.sh")], unset)
    _one_line_naming(retrain, "DATA", nothing)
    repro = _run([sys.executable, str(SCRIPTS / "reproduce.py"), "--data", nothing], {})
    _one_line_naming(repro, "--data", "PRUNE_CLI_DATA")
    # data there, checkpoints not: the line names the checkpoints' setting
    data = tmp_path / "data"
    for folder in ("cifar10", "cifar10-mini", "fer2013-mini"):
        (data / folder).mkdir(parents=True)
    study = _run(["bash", str(SCRIPTS / "study.sh")], {**unset, "DATA": str(data)})
    _one_line_naming(study, "PRUNE_CLI_MODELS", "resnet20-12fca82f.th")
    repro = _run([sys.executable, str(SCRIPTS / "reproduce.py"), "--data", str(data)], unset)
    _one_line_naming(repro, "--models", "PRUNE_CLI_MODELS")


def test_prune_run_without_its_data_names_dataset_root(tmp_path: Path) -> None:
    nothing = tmp_path / "nothing"
    done = prune_run("dataset=cifar10", cwd=tmp_path, env={"PRUNE_CLI_DATA": str(nothing)})
    line = _one_line_naming(done, str(nothing / "cifar10"), "dataset.root")
    assert line.endswith("(default: $PRUNE_CLI_DATA/cifar10)")


def test_the_hint_names_the_setting_that_points_at_missing_inputs() -> None:
    cfg = OmegaConf.create(
        {"dataset": {"name": "cifar10"}, "weights": {"name": "resnet20_cifar10_akamaster"}}
    )
    data = setting_hint(DataNotFoundError("cifar10: no CIFAR-10 batches in /x"), cfg)
    assert data == "; point dataset.root=DIR at it (default: $PRUNE_CLI_DATA/cifar10)"
    missing = CheckpointError("checkpoint '/m/cifar10/resnet20-12fca82f.th' does not exist")
    assert "$PRUNE_CLI_MODELS" in setting_hint(missing, cfg)
    assert "pretrained=PATH" in setting_hint(missing, cfg)
    # a checkpoint of the user's own (no weights=), or another failure: no hint
    assert setting_hint(missing, OmegaConf.create({"dataset": {"name": "cifar10"}})) == ""
    assert setting_hint(CheckpointError("checkpoint is corrupt"), cfg) == ""
