"""prune-run end to end: the default pipeline, sweeps sharing one training, resume, bad input.

These run the real console entry point in a subprocess (as a user would), on the offline
``shapes`` dataset shrunk to a few hundred images.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import FAST, SHORT_SUBDIR
from cli_helpers import prune_run as _prune_run

from prune_cli import cli
from prune_cli.data import build_dataset
from prune_cli.engine import evaluate, load_checkpoint
from prune_cli.models import build_model

STAGE_KEYS = {"top1", "top5", "params", "params_nonzero", "macs", "macs_nonzero", "sparsity",
              "netscore"}  # fmt: skip


def prune_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _prune_run(*args, cwd=cwd, threads=2)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """One magnitude run at ratio 0.6 through the CLI, shared by several tests."""
    cwd = tmp_path_factory.mktemp("default")
    # PYTHONPROFILEIMPORTTIME: the run's imports, for the start-up test below
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    proc = _prune_run(*FAST, "ratio=0.6", "hydra.run.dir=run", cwd=cwd, threads=2, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imports = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    (cwd / "imports.txt").write_text("\n".join(imports))
    return cwd / "run"


def test_default_run_does_not_import_torchvision(default_run: Path) -> None:
    """Importing torchvision adds ~0.5 s to the start of every run; the default run (a CIFAR
    ResNet on in-memory data) never needs it."""
    imports = (default_run.parent / "imports.txt").read_text().splitlines()
    assert len(imports) > 100  # the import log was recorded (torch alone is hundreds)
    modules = {line.rsplit("|", 1)[1].strip() for line in imports}
    assert "prune_cli.pipeline" in modules
    assert "torchvision" not in modules


def test_default_run_writes_complete_metrics(default_run: Path) -> None:
    m = json.loads((default_run / "metrics.json").read_text())
    assert m["status"] == "completed" and m["error"] is None
    assert (m["model"], m["dataset"], m["method"], m["ratio"], m["seed"]) == (
        "resnet20", "shapes", "magnitude", 0.6, 0)  # fmt: skip
    for stage in ("baseline", "pruned", "final"):
        assert set(m[stage]) >= STAGE_KEYS, stage
    assert m["stages"] == ["baseline", "dense_reference", "pruned", "final"]
    assert {"train", "prune", "finetune", "evaluate", "total"} <= set(m["timings"])
    assert m["netscore_units"]["params_unit"] == "M-params"
    assert m["netscore_units"]["macs_unit"] == "G-MACs"
    assert set(m["latency"]["speedup"]) == {"b1", "b4"}
    assert m["latency"]["dense_source"] == "measured"  # the first job on this checkpoint
    # eta = speedup / MAC reduction, from the recorded latencies and the dense MAC counts (the
    # structure is unchanged by magnitude pruning: no MAC reduction, eta is the speedup)
    lat = m["latency"]
    assert lat["mac_reduction"] == round(m["dense_reference"]["macs"] / m["final"]["macs"], 4)
    for key in ("b1", "b4"):
        speedup = lat["dense_reference"][key]["latency_ms"] / lat["final"][key]["latency_ms"]
        eta = speedup * m["final"]["macs"] / m["dense_reference"]["macs"]
        assert lat["speedup_efficiency"][key] == round(eta, 4)
    # pruning halves nothing structurally: dense counts equal, nonzero counts drop
    assert m["final"]["params"] == m["baseline"]["params"]
    assert m["final"]["params_nonzero"] < m["baseline"]["params_nonzero"]
    assert m["final"]["macs_nonzero"] < m["baseline"]["macs"] == m["final"]["macs"]
    assert m["final"]["netscore_nonzero"] > m["final"]["netscore_dense"]
    assert (default_run / ".hydra" / "config.yaml").is_file()
    history = (default_run / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in history[1:]] == ["train", "finetune"]


def test_default_run_holds_exactly_60_percent_of_conv_weights_at_zero(default_run: Path) -> None:
    ckpt_dir = default_run / "checkpoints"
    pruned = load_checkpoint(ckpt_dir / "pruned.pt")
    final = load_checkpoint(ckpt_dir / "final.pt")
    convs = [k for k, v in final["model"].items() if k.endswith("weight") and v.dim() == 4]
    n = sum(final["model"][k].numel() for k in convs)
    zeros = sum(int((final["model"][k] == 0).sum()) for k in convs)
    assert zeros == int(0.6 * n)  # exact mode: floor(0.6 N)
    for k in convs:  # the same weights are zero before and after fine-tuning ...
        assert torch.equal(pruned["model"][k] == 0, final["model"][k] == 0), k
    changed = [k for k in convs if not torch.equal(pruned["model"][k], final["model"][k])]
    assert changed  # ... while the others were fine-tuned
    m = json.loads((default_run / "metrics.json").read_text())
    fc = final["model"]["fc.weight"].numel()
    assert m["final"]["sparsity"] == pytest.approx(zeros / (n + fc), abs=1e-6)


def test_baseline_figures_are_the_trained_checkpoint_evaluated_again(default_run: Path) -> None:
    """The baseline's test figures come from the training's last-epoch evaluation (no second
    pass over the test split): they must be what evaluating the saved model gives."""
    data = build_dataset({"name": "shapes", "train_size": 384, "test_size": 128})
    model = build_model("resnet20", num_classes=data.num_classes, in_channels=3, image_size=32)
    model.load_state_dict(load_checkpoint(default_run / "checkpoints" / "trained.pt")["model"])
    again = evaluate(model, data.loader("test", 128, train=False))
    baseline = json.loads((default_run / "metrics.json").read_text())["baseline"]
    assert baseline["top1"] == round(again.top1, 4) and baseline["top5"] == round(again.top5, 4)
    assert baseline["loss"] == pytest.approx(again.loss, abs=2e-6)


# slow (63 s): training once through the cache is also tested in the default suite by
# tests/test_baselines.py (two runs, one training) and tests/test_sweeps.py (a joblib sweep), and
# measured on the basic launcher by scripts/bench_sweep.py
@pytest.mark.slow
def test_sweep_trains_the_dense_model_once(tmp_path: Path) -> None:
    sweep = ["method=magnitude,random,l1_filter", SHORT_SUBDIR]
    proc = prune_run("-m", *FAST, *sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(tmp_path / "outputs" / "multirun")
    assert len(runs) == 3
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert all(m["status"] == "completed" for m in metrics)
    assert sorted(m["train"]["from_cache"] for m in metrics) == [False, True, True]
    entries = list((tmp_path / "outputs" / "cache").iterdir())
    assert len(entries) == 1  # one trained checkpoint shared by all three jobs
    baselines = {m["baseline"]["top1"] for m in metrics}
    assert len(baselines) == 1
    # the dense model's test evaluation and latency were measured once and reused (issue 15)
    figures = sorted(p.name for p in (entries[0] / "figures").iterdir())
    assert len(figures) == 2 and all(f.endswith(".json") for f in figures)
    sources = sorted(m["latency"]["dense_source"] for m in metrics)
    assert sources == ["cached", "cached", "measured"]
    assert len({json.dumps(m["latency"]["dense_reference"]) for m in metrics}) == 1


# slow: a failing job in a sweep is also tested with the joblib and submitit launchers
# (tests/test_sweeps.py); this is the basic launcher's case
@pytest.mark.slow
def test_bad_ratio_in_a_sweep_fails_alone(tmp_path: Path) -> None:
    # (and the dense latency measured interleaved with the final model's, as before issue 15)
    args = ("-m", *FAST, "ratio=0.5,1.5", "metrics.latency.dense=interleaved", SHORT_SUBDIR)
    proc = prune_run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "ratio 1.5 is out of range; valid: 0 <= ratio < 1" in proc.stderr
    by_ratio = {}
    for r in run_dirs(tmp_path / "outputs" / "multirun"):
        m = json.loads((r / "metrics.json").read_text())
        by_ratio[str(m["ratio"])] = m["status"]
        if m["status"] == "completed":
            assert m["latency"]["dense_source"] == "interleaved"
    assert by_ratio == {"0.5": "completed", "1.5": "failed"}


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("prune-run: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=resnet57", "unknown model 'resnet57'; choose one of: "),
        ("dataset=cifar11", "unknown dataset 'cifar11'; choose one of: "),
        ("method=magnitud", "unknown method 'magnitud'; choose one of: "),
    ],
)
def test_unknown_names_are_one_line_errors(tmp_path: Path, override: str, expected: str) -> None:
    proc = prune_run(override, cwd=tmp_path)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert expected in line
    group = override.split("=")[0]
    assert {"model": "resnet20", "dataset": "shapes", "method": "magnitude"}[group] in line


def test_missing_dataset_names_directory_and_files(tmp_path: Path) -> None:
    proc = prune_run("dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert str(tmp_path / "nowhere") in line and "data_batch_1" in line


# slow: five CLI runs; corrupt and missing files are also tested in tests/test_failures.py
@pytest.mark.slow
def test_pretrained_missing_corrupt_and_foreign(tmp_path: Path, default_run: Path) -> None:
    proc = prune_run(*FAST, f"pretrained={tmp_path / 'none.pt'}", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in _error_line(proc)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    proc = prune_run(*FAST, f"pretrained={corrupt}", cwd=tmp_path)
    assert proc.returncode == 2 and "corrupt" in _error_line(proc)
    trained = default_run / "checkpoints" / "trained.pt"
    proc = prune_run(*FAST, "model=resnet32", f"pretrained={trained}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "is for model 'resnet20', not 'resnet32'" in _error_line(proc)
    # and the right one is used as is: no training
    proc = prune_run(*FAST, f"pretrained={trained}", "hydra.run.dir=pre", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert m["train"] == {"pretrained": str(trained)}
    base = json.loads((default_run / "metrics.json").read_text())["baseline"]["top1"]
    assert m["baseline"]["top1"] == base


# slow (50 s, three CLI runs): resuming is also tested in the default suite end to end by
# tests/test_double_pruning.py (resume=<dir> after the final results are lost), tests/test_cache.py
# (resume without the cache), and per stage in tests/test_engine.py
@pytest.mark.slow
def test_resume_a_run_directory(tmp_path: Path) -> None:
    proc = prune_run(*FAST, "cache.enabled=false", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    first = json.loads((run / "metrics.json").read_text())
    # resume=true on a completed run (a resumed sweep) does nothing and keeps its results
    args = (*FAST, "cache.enabled=false", "hydra.run.dir=run", "resume=true")
    proc = prune_run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text()) == first
    assert "already completed: nothing to resume" in (run / "prune-run.log").read_text()
    # Pretend the run died during fine-tuning: final results are gone.
    (run / "checkpoints" / "final.pt").unlink()
    (run / "metrics.json").unlink()
    proc = prune_run(f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((run / "metrics.json").read_text())
    assert again["status"] == "completed"
    assert again["baseline"]["top1"] == first["baseline"]["top1"]
    assert again["pruned"]["top1"] == first["pruned"]["top1"]
    assert again["final"]["top1"] == first["final"]["top1"]
    assert "loaded from" in (run / "prune-run.log").read_text()


def test_the_program_exit_runs_exit_hooks_and_waits_for_threads(tmp_path: Path) -> None:
    """``prune-run`` leaves with ``os._exit`` (no interpreter teardown): what a normal exit
    runs first must still run, and the status and the error line must be the usual ones."""
    script = "\n".join(
        [
            "import atexit, sys, threading, time",
            "from prune_cli import cli",
            "atexit.register(lambda: open('atexit.txt', 'w').write('ran'))",
            "def late(): time.sleep(0.3); open('thread.txt', 'w').write('done')",
            "threading.Thread(target=late).start()",
            "sys.argv = ['prune-run', 'model=nope']",
            "cli.entry()",
            "open('after.txt', 'w').write('entry returned')",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("prune-run: error: unknown model 'nope'")
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "thread.txt").read_text() == "done"
    assert not (tmp_path / "after.txt").exists()


def test_exit_statuses_are_those_of_sys_exit(capsys) -> None:
    assert [cli._exit_status(code) for code in (None, 0, 2, 130)] == [0, 0, 2, 130]
    assert cli._exit_status("prune-run: broken") == 1
    assert capsys.readouterr().err == "prune-run: broken\n"


def test_garbage_collection_resumes_after_the_imports() -> None:
    was = gc.isenabled()
    try:
        gc.disable()
        cli._gc_paused = True
        cli._imports_done()
        assert gc.isenabled() and cli._gc_paused is False
        gc.disable()
        cli._imports_done()  # only the pause entry() made is undone
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
