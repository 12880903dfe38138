"""Experiment trackers (``logger=``, prune_cli.tracking): TensorBoard and MLflow with the real
packages, offline; W&B through a stand-in module (never the network); a failing tracker never
loses the run; the config group, its schema and the command-line spelling of several loggers."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import prune_run
from hydra import compose, initialize_config_dir

from prune_cli.cli import CONFIG_DIR, check_overrides, group_choices, several_loggers
from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.errors import ConfigError
from prune_cli.options import parse
from prune_cli.pipeline import Pipeline
from prune_cli.schema import validate_config
from prune_cli.tracking import (
    RunInfo,
    Tracker,
    Trackers,
    WandbOptions,
    WandbTracker,
    build_trackers,
    final_figures,
    flatten,
    param_text,
)

OFFLINE = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "WANDB_MODE": "offline"}


def wandb_options(**given: Any) -> WandbOptions:
    """``logger.wandb`` typed, the keys not given from configs/logger/wandb.yaml."""
    defaults = group_defaults("logger", "wandb")["wandb"]
    return parse(WandbOptions, with_defaults(defaults, given), "logger.wandb.")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


TINY = [
    "dataset.train_size=16",
    "dataset.test_size=8",
    "dataset.image_size=8",
    "dataset.crop_padding=1",
    "train.epochs=2",
    "train.batch_size=8",
    "finetune.epochs=1",
    "finetune.batch_size=8",
    "metrics.latency.enabled=false",
    "export.onnx=false",
]


# ----------------------------------------------------------------------------- end to end
def test_tensorboard_and_mlflow_see_the_whole_run(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="in the dev install: pip install -e '.[dev]'")
    pytest.importorskip("tensorboard", reason="in the dev install: pip install -e '.[dev]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = prune_run(
        "logger=tensorboard,mlflow",  # the spelling: both trackers
        "method=l1_filter",
        *TINY,
        "metrics.latency.enabled=true",
        "metrics.latency.batch_sizes=[1,2]",
        "metrics.latency.warmup=0",
        "metrics.latency.repeats=1",
        cwd=tmp_path,
        threads=2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*/*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tracking = metrics["tracking"]
    assert tracking["loggers"] == ["tensorboard", "mlflow"]
    assert tracking["tensorboard"]["status"] == "finished"
    assert tracking["mlflow"]["status"] == "finished"
    store = tmp_path / "outputs" / "mlflow"
    assert tracking["mlflow"]["tracking_uri"] == f"sqlite:///{store / 'mlflow.db'}"

    # TensorBoard: per-epoch curves of every training stage, every stage's figures
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/train_loss", "train/eval_top1", "finetune/lr", "baseline/top1",
            "pruned/params", "final/top1", "latency/onnxruntime_speedup_b2"} <= scalars  # fmt: skip
    assert [e.step for e in events.Scalars("train/train_loss")] == [1, 2]
    assert events.Scalars("final/top1")[0].value == pytest.approx(metrics["final"]["top1"])
    # baseline 0, dense_reference 1, pruned 2, final 3
    assert [e.step for e in events.Scalars("final/top1")] == [3]
    assert [e.step for e in events.Scalars("dense_reference/top1")] == [1]

    # MLflow: params, curves, stage figures, final figures, artifacts, status
    client = MlflowClient(tracking_uri=tracking["mlflow"]["tracking_uri"])
    run = client.get_run(tracking["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == run_dir.name
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["method.name"] == "l1_filter"
    assert run.data.params["metrics.latency.backends"] == "['torch', 'onnxruntime']"
    assert run.data.tags["method"] == "l1_filter"
    curve = client.get_metric_history(run.info.run_id, "train/eval_top1")
    assert [m.step for m in curve] == [1, 2]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2 + 1  # header, 2 training epochs, 1 fine-tuning epoch
    assert run.data.metrics["final/params"] == metrics["final"]["params"]
    assert run.data.metrics["latency/speedup_b1"] == metrics["latency"]["speedup"]["b1"]
    assert run.data.metrics["latency/onnxruntime_speedup_b1"] == pytest.approx(
        metrics["latency"]["onnxruntime"]["speedup"]["b1"]
    )
    assert run.data.metrics["timings/train"] > 0
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.csv", "checkpoints", ".hydra", "tensorboard"} <= top
    saved = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/final.safetensors" in saved and "checkpoints/final.json" in saved
    assert not any(p.endswith(("_last.pt", "_best.pt")) for p in saved)  # resume-only files
    uploaded = [p for p in run_dir.rglob("*") if p.is_file() and "_last." not in p.name
                and "_best." not in p.name]  # fmt: skip
    assert tracking["mlflow"]["artifacts"] == len(uploaded)


class Broken(Tracker):
    """A tracker that works until its ``fail_at``-th metrics call."""

    name = "tensorboard"

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.calls, self.finished = fail_at, 0, None

    def start(self, run: RunInfo) -> dict[str, Any]:
        return {"where": "nowhere"}

    def log_params(self, params: Any) -> None:
        pass

    def log_metrics(self, values: Any, step: int) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("tracking server went away\nretry later")

    def finish(self, status: str) -> None:
        self.finished = status


def test_a_failing_tracker_does_not_lose_the_run(tmp_path: Path, monkeypatch, caplog) -> None:
    broken = Broken(fail_at=2)
    monkeypatch.setattr(
        "prune_cli.record.build_trackers", lambda cfg: Trackers([broken], ["tensorboard"])
    )
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", [*TINY, f"cache.dir={tmp_path / 'cache'}"])
    metrics = Pipeline(cfg, tmp_path / "run").run()
    assert metrics["status"] == "completed"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["tracking"]["tensorboard"] == {
        "status": "failed",
        "where": "nowhere",
        "during": "train epoch 2",
        "error": "ConnectionError: tracking server went away",
    }
    assert broken.finished == "failed" and broken.calls == 2  # closed, then left out
    assert "logger tensorboard failed during train epoch 2" in caplog.text


def test_the_other_trackers_go_on() -> None:
    calls: list[tuple[str, int]] = []

    class Fine(Broken):
        name = "mlflow"

        def log_metrics(self, values: Any, step: int) -> None:
            calls.append((sorted(values)[0], step))

    broken, fine = Broken(fail_at=1), Fine(fail_at=0)
    trackers = Trackers([broken, fine], ["tensorboard", "mlflow"])
    trackers.start(RunInfo(Path("/tmp/run"), Path("/tmp"), {"train": {"lr": 0.1}}))
    trackers.log_epoch("train", {"stage": "train", "epoch": 1, "lr": 0.1, "eval_top1": 50.0})
    trackers.log_stage("baseline", {"top1": 50.0, "layer_sparsity": {"a": 0.5}})
    trackers.log_stage("final", {"top1": 40.0})
    records = trackers.finish({"status": "completed", "timings": {"total": 3.0}}, Path("/tmp"))
    assert records["tensorboard"]["status"] == "failed"
    assert records["mlflow"] == {"status": "finished", "where": "nowhere"}
    assert calls == [("train/eval_top1", 1), ("baseline/top1", 0), ("final/top1", 1),
                     ("timings/total", 0)]  # fmt: skip
    assert fine.finished == "completed"


# ----------------------------------------------------------------------------- W&B
class FakeRun:
    def __init__(self, **kwargs: Any) -> None:
        self.init, self.id, self.logged, self.artifacts = kwargs, "abc123", [], []
        self.config, self.summary, self.exit_code = types.SimpleNamespace(), {}, None
        self.config.update = lambda values, allow_val_change: self.__dict__.setdefault(
            "params", dict(values)
        )

    def log(self, values: dict[str, Any]) -> None:
        self.logged.append(values)

    def log_artifact(self, artifact: Any) -> None:
        self.artifacts.append(artifact)

    def finish(self, exit_code: int) -> None:
        self.exit_code = exit_code


class FakeArtifact:
    def __init__(self, name: str, type: str) -> None:
        self.name, self.type, self.files = name, type, []

    def add_file(self, path: str, name: str) -> None:
        self.files.append(name)


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    module = types.SimpleNamespace(init=init, Artifact=FakeArtifact)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_is_offline_unless_logged_in(tmp_path: Path, monkeypatch, fake_wandb) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert WandbTracker(wandb_options()).mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert WandbTracker(wandb_options()).mode() == "online"
    assert WandbTracker(wandb_options(mode="offline")).mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own switch wins
    assert WandbTracker(wandb_options(mode="online")).mode() == "disabled"


def test_wandb_gets_config_curves_figures_and_the_run_directory(tmp_path, fake_wandb) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("metrics.json", "checkpoints/final.safetensors", "checkpoints/train_last.pt"):
        (run_dir / name).write_text("x")
    trackers = Trackers([WandbTracker(wandb_options(tags=["demo"]))], ["wandb"])
    info = RunInfo(run_dir, tmp_path, {"seed": 0, "train": {"lr": 0.1}}, {"method": "l1_filter"})
    trackers.start(info)
    trackers.log_epoch("train", {"stage": "train", "epoch": 1, "train_loss": 2.0})
    trackers.log_stage("final", {"top1": 40.0, "params": 100})
    records = trackers.finish({"status": "completed"}, run_dir)
    (run,) = fake_wandb
    assert run.init["mode"] == "offline" and run.init["name"] == "run"
    assert run.init["tags"] == ["demo", "method=l1_filter"]
    assert run.init["dir"] == str(run_dir)
    assert run.params == {"seed": "0", "train.lr": "0.1"}
    assert run.logged == [{"train/train_loss": 2.0, "step": 1},
                          {"final/top1": 40.0, "final/params": 100.0, "step": 0}]  # fmt: skip
    (artifact,) = run.artifacts
    assert artifact.type == "run-directory"
    assert sorted(artifact.files) == ["checkpoints/final.safetensors", "metrics.json"]
    assert run.summary == {"status": "completed"} and run.exit_code == 0
    assert records["wandb"]["status"] == "finished" and records["wandb"]["artifacts"] == 2


# ----------------------------------------------------------------------------- config
def _composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", ["cache.dir=/tmp/cache", *overrides])


def test_every_logger_config_validates_and_csv_is_the_default() -> None:
    assert group_choices("logger") == ["csv", "mlflow", "tensorboard", "wandb"]
    assert validate_config(_composed()).resolved["logger"] == {"csv": {}}
    for name in group_choices("logger"):
        assert list(validate_config(_composed(f"logger={name}")).resolved["logger"]) == [name]
    both = validate_config(_composed("logger=[tensorboard,mlflow]"))
    assert list(both.resolved["logger"]) == ["tensorboard", "mlflow"]
    assert both.logger.mlflow.experiment == "prune-cli" and both.logger.wandb is None


def test_logger_keys_are_checked_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_composed("logger=tensorboard", "+logger.tensorboard.flush=1"))
    assert str(err.value) == (
        "unknown key logger.tensorboard.flush; valid keys of logger.tensorboard: flush_secs, "
        "log_dir"
    )
    with pytest.raises(ConfigError, match=r"^unknown logger.wandb.mode 'cloud'; choose one of: "):
        validate_config(_composed("logger=wandb", "logger.wandb.mode=cloud"))


def test_a_missing_package_is_refused_before_any_work(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError) as err:
        build_trackers({"tensorboard": {}, "mlflow": {}})
    assert str(err.value) == (
        "logger=mlflow needs the mlflow package: pip install -e '.[tracking]' (or pip install "
        "mlflow)"
    )


def test_several_loggers_on_the_command_line() -> None:
    assert several_loggers(["logger=tensorboard,mlflow", "ratio=0.3,0.5"]) == [
        "logger=[tensorboard,mlflow]",
        "ratio=0.3,0.5",
    ]
    for kept in ("logger=[tensorboard,mlflow]", "logger=choice(csv,mlflow)", "logger=mlflow"):
        assert several_loggers([kept]) == [kept]
    check_overrides(["logger=[tensorboard,mlflow]", "logger=csv,wandb", "logger=[]"])
    with pytest.raises(ConfigError) as err:
        check_overrides(["logger=[tensorbord,mlflow]"])
    assert str(err.value) == (
        "unknown logger 'tensorbord'; choose one of: csv, mlflow, tensorboard, wandb"
    )


def test_what_is_logged_is_plain() -> None:
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}
    assert [param_text(v) for v in (None, True, 0.5, "x" * 600)] == [
        "null", "true", "0.5", "x" * 497 + "...",
    ]  # fmt: skip
    figures = final_figures(
        {
            "latency": {
                "speedup": {"b1": 1.5},
                "onnxruntime": {"speedup": {"b1": 2.0}, "provider": "CPUExecutionProvider"},
            },
            "timings": {"total": 3.0, "bad": float("nan")},
        }
    )
    assert figures == {
        "latency/speedup_b1": 1.5,
        "latency/onnxruntime_speedup_b1": 2.0,
        "timings/total": 3.0,
    }
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # the autouse fixture's
