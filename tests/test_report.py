"""prune-report on hand-made run directories: rows, statuses, mean ± sd, NetScore table, files."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from prune_cli.report import (
    build_report,
    dense_points,
    find_run_dirs,
    make_rows,
    mean_sd,
    netscore_table,
    read_run,
)

UNITS = {"params_unit": "M-params", "macs_unit": "G-MACs", "count": "nonzero", "formula": "f"}


def stage(top1: float, sparsity: float, params_nz: int, macs_nz: int, ns: float) -> dict:
    return {
        "top1": top1,
        "top5": 100.0,
        "loss": 1.0,
        "params": 1_000_000,
        "params_nonzero": params_nz,
        "macs": 1_000_000_000,
        "macs_nonzero": macs_nz,
        "sparsity": sparsity,
        "netscore": ns,
        "netscore_dense": ns - 1.0,
        "netscore_nonzero": ns,
    }


def make_run(
    root: Path,
    name: str,
    *,
    method: str = "magnitude",
    ratio: float = 0.5,
    seed: int = 0,
    top1: float = 90.0,
    status: str = "completed",
    overrides: tuple[str, ...] = (),
    model: str = "resnet20",
) -> Path:
    """A run directory as prune-run leaves it: .hydra/overrides.yaml and metrics.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    over = [f"method={method}", f"ratio={ratio}", f"seed={seed}", f"model={model}", *overrides]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in over))
    m: dict = {
        "status": status,
        "error": None if status == "completed" else "NonFiniteLossError: loss became nan",
        "model": model,
        "dataset": "shapes",
        "method": method,
        "ratio": ratio,
        "seed": seed,
        "netscore_units": UNITS,
        "stages": [],
        "timings": {"train": 10.0, "prune": 1.0, "finetune": 5.0, "total": 17.0},
    }
    if status == "completed":
        m["baseline"] = stage(92.0, 0.0, 1_000_000, 1_000_000_000, 78.0)
        m["final"] = stage(top1, ratio, int(1e6 * (1 - ratio)), int(1e9 * (1 - ratio)), top1 - 10)
        m["latency"] = {"speedup": {"b1": 1.25, "b64": 2.0}}
        m["train"] = {"from_cache": seed > 0}
    (run / "metrics.json").write_text(json.dumps(m))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two methods x two ratios x two seeds, plus one failed, one unfinished, one corrupt run."""
    root = tmp_path / "sweep"
    k = 0
    for method, base in (("magnitude", 90.0), ("random", 80.0)):
        for ratio in (0.3, 0.7):
            for seed in (0, 1):
                # seed 0 and 1 differ by 2 points: mean base - 10*ratio + 1, sd sqrt(2)
                top1 = base - 10 * ratio + 2 * seed
                make_run(root, f"{k}_job", method=method, ratio=ratio, seed=seed, top1=top1)
                k += 1
    make_run(root, "8_job", method="magnitude", ratio=0.9, status="failed")
    unfinished = root / "9_job"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_text(
        "model:\n  name: vgg16\ndataset:\n  name: shapes\nmethod:\n  name: random\n"
        "  ratio: ${ratio}\nratio: 0.5\nseed: 3\n"
    )
    corrupt = make_run(root, "10_job", method="random", ratio=0.9)
    (corrupt / "metrics.json").write_text('{"status": "comp')
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_mean_sd_is_the_sample_sd() -> None:
    mean, sd, n = mean_sd([1.0, 2.0, 3.0, None])
    assert (mean, n) == (2.0, 3)
    assert sd == pytest.approx(1.0)  # sqrt(((1-2)^2 + 0 + (3-2)^2) / (3 - 1))
    assert mean_sd([5.0]) == (5.0, None, 1)
    assert mean_sd([]) == (None, None, 0)


def test_every_run_is_a_row_with_its_status(sweep: Path) -> None:
    result = build_report([sweep], plots=False)
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == len(result["rows"]) == 11
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    assert by_status == {"completed": 8, "failed": 1, "unfinished": 1, "corrupt": 1}
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "NonFiniteLossError: loss became nan"
    assert (failed["method"], failed["ratio"]) == ("magnitude", "0.9")
    unfinished = next(r for r in rows if r["status"] == "unfinished")
    # identity taken from .hydra/config.yaml when there is no metrics.json
    identity = (unfinished["model"], unfinished["method"], unfinished["seed"])
    assert identity == ("vgg16", "random", "3")
    corrupt = next(r for r in rows if r["status"] == "corrupt")
    assert corrupt["error"].startswith("unreadable metrics.json")
    md = (sweep / "summary.md").read_text()
    assert "11 runs: 8 completed, 1 corrupt, 1 failed, 1 unfinished." in md
    assert "NonFiniteLossError: loss became nan" in md


def test_row_figures_come_from_baseline_and_final(sweep: Path) -> None:
    build_report([sweep], plots=False)
    rows = read_csv(sweep / "summary.csv")
    r = next(r for r in rows if (r["method"], r["ratio"], r["seed"]) == ("random", "0.7", "1"))
    assert float(r["top1_before"]) == 92.0
    assert float(r["top1_after"]) == pytest.approx(80.0 - 7.0 + 2.0)
    assert float(r["top1_change"]) == pytest.approx(75.0 - 92.0)
    assert int(r["params_nonzero"]) == 300_000 and int(r["params"]) == 1_000_000
    assert int(r["macs_nonzero"]) == 300_000_000 and int(r["macs"]) == 1_000_000_000
    assert float(r["sparsity"]) == 0.7
    assert float(r["netscore_nonzero"]) == pytest.approx(65.0)
    assert float(r["netscore_dense"]) == pytest.approx(64.0)
    assert (r["params_unit"], r["macs_unit"], r["netscore_count"]) == ("M-params", "G-MACs",
                                                                      "nonzero")  # fmt: skip
    assert (float(r["speedup_b1"]), float(r["speedup_b64"])) == (1.25, 2.0)
    assert r["from_cache"] == "True"
    header = (sweep / "summary.csv").read_text().splitlines()[0].split(",")
    assert header.index("speedup_b1") < header.index("speedup_b64")


def test_netscore_table_groups_seeds_with_mean_and_sd(sweep: Path) -> None:
    result = build_report([sweep], plots=False)
    table = {(e["method"], e["ratio"]): e for e in result["netscore"] if e["method"]}
    mag = table[("magnitude", 0.3)]
    # top1 = 87 and 89 -> NetScore (top1 - 10) = 77 and 79: mean 78, sd sqrt(2)
    assert (mag["runs"], mag["total"]) == (2, 2)
    assert mag["netscore"][0] == pytest.approx(78.0)
    assert mag["netscore"][1] == pytest.approx(math.sqrt(2))
    assert mag["top1_after"][0] == pytest.approx(88.0)
    failed_group = table[("magnitude", 0.9)]
    assert (failed_group["runs"], failed_group["total"]) == (0, 1)
    assert failed_group["netscore"] == (None, None, 0)
    md = (sweep / "summary.md").read_text()
    assert "| resnet20 | shapes | magnitude | 0.3 | 2/2 | 78.00 ± 1.41 |" in md
    assert "| resnet20 | shapes | magnitude | 0.9 | 0/1 | – |" in md


def test_overrides_that_vary_become_a_variant(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for i, scope in enumerate(("global", "layerwise")):
        make_run(root, f"{i}", overrides=(f"method.scope={scope}", "train.epochs=1"))
    result = build_report([root], plots=False)
    assert sorted(r["variant"] for r in result["rows"]) == [
        "method.scope=global",
        "method.scope=layerwise",
    ]  # train.epochs=1 is common to all runs: not a variant
    assert len(netscore_table(result["rows"])) == 2  # not averaged together


def test_plots_are_pngs_and_nothing_temporary_is_left(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = build_report([sweep], out)
    names = ["accuracy_vs_removed.png", "accuracy_vs_macs.png", "netscore_vs_ratio.png"]
    assert result["files"] == ["summary.csv", "summary.md", *names]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.csv", "summary.md", *names])
    assert not (sweep / "summary.csv").exists()  # --out given: the sweep is left untouched


def test_several_paths_and_a_metrics_file(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", "run", ratio=0.3)
    b = make_run(tmp_path / "b", "run", ratio=0.6)
    runs = find_run_dirs([tmp_path / "a", b / "metrics.json", a])  # a listed twice: one row
    assert sorted(runs) == sorted([a.resolve(), b.resolve()])
    result = build_report([tmp_path / "a", b / "metrics.json"], plots=False)
    assert [r["ratio"] for r in result["rows"]] == [0.3, 0.6]
    assert (tmp_path / "a" / "summary.csv").is_file()  # default --out: the first PATH


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prune_cli.report", *args], capture_output=True, text=True
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = _report(str(tmp_path / "missing"))
    assert proc.returncode == 2
    expected = f"prune-report: error: {tmp_path / 'missing'}: no such file or directory"
    assert proc.stderr.strip() == expected
    proc = _report(str(tmp_path))
    assert proc.returncode == 2
    assert "no run directories (with metrics.json or .hydra/) below" in proc.stderr


def test_cli_lists_runs_that_did_not_complete(sweep: Path) -> None:
    proc = _report(str(sweep), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("11 runs (8 completed, 1 corrupt, 1 failed, 1 unfinished)")
    assert "failed: " in proc.stdout and "8_job: NonFiniteLossError" in proc.stdout


def _structured_run(root: Path, name: str, method: str, baseline_top1: float, kind: str) -> Path:
    """A run whose final model is narrower than its dense reference and whose baseline is not
    the dense model (sparsity-trained, masked, shared): the report must use the reference."""
    run = make_run(root, name, method=method, ratio=0.5, top1=85.0)
    m = json.loads((run / "metrics.json").read_text())
    m["baseline"] = {**stage(baseline_top1, 0.0, 700_000, 700_000_000, 70.0), "params": 700_000,
                     "macs": 700_000_000}  # fmt: skip
    m["baseline_kind"] = kind
    m["dense_reference"] = {**stage(91.0, 0.0, 1_000_000, 1_000_000_000, 80.0),
                            "weights": 990_000, "source": "trained plainly (cache)"}  # fmt: skip
    m["final"] = {**stage(85.0, 0.0, 400_000, 250_000_000, 60.0), "params": 400_000,
                  "macs": 250_000_000, "weights_nonzero": 396_000}  # fmt: skip
    m["relative_to_dense"] = {"weights_removed": 0.6, "params": 0.4, "macs": 0.25}
    m["warnings"] = ["double_pruning: slimming skipped (no BN): magnitude pruning only"]
    (run / "metrics.json").write_text(json.dumps(m))
    return run


def test_dense_point_is_the_dense_reference_not_a_pruned_or_masked_baseline(
    tmp_path: Path,
) -> None:
    root = tmp_path / "s"
    _structured_run(root, "dpf", "dynamic_filter", 80.0, "masked: filters pruned ...")
    _structured_run(root, "share", "soft_sharing", 84.0, "shared: convs generated ...")
    rows, _ = make_rows([read_run(p) for p in find_run_dirs([root])])
    for r in rows:
        assert r["top1_dense"] == 91.0 and r["top1_before"] in (80.0, 84.0)
        assert r["macs_dense_ref"] == 1_000_000_000 and r["macs"] == 250_000_000
        assert r["weights_removed"] == 0.6 and r["params_vs_dense"] == 0.4
        assert r["baseline_kind"].split(":")[0] in ("masked", "shared")
    # One dense point at the dense reference's MACs (1000 M), not at the final MACs (250 M)
    # nor at a baseline's (700 M); at 0 weights removed on the other plot.
    assert dense_points(rows, "macs_nonzero") == [("dense reference", 1000.0, 91.0)]
    assert dense_points(rows, "weights_removed") == [("dense reference", 0.0, 91.0)]
    build_report([root], plots=False)
    md = (root / "summary.md").read_text()
    assert "## Warnings" in md and "slimming skipped (no BN)" in md
    assert "slimming skipped" in read_csv(root / "summary.csv")[0]["warnings"]


def test_older_runs_without_a_dense_reference_fall_back_to_their_baseline(sweep: Path) -> None:
    rows, _ = make_rows([read_run(p) for p in find_run_dirs([sweep])])
    done = [r for r in rows if r["status"] == "completed"]
    assert {r["top1_dense"] for r in done} == {92.0}
    assert {r["baseline_kind"] for r in done} == {"unknown (older run)"}


def test_schedules_and_distillation_arms_stay_side_by_side(tmp_path: Path) -> None:
    """Issue 13's sweep (`-m method.schedule=oneshot,gradual,iterative finetune.kd.alpha=0,0.5`):
    six arms, each its own row, group and plotted series, labelled by schedule and KD weight."""
    root = tmp_path / "s"
    k = 0
    for schedule in ("oneshot", "gradual", "iterative"):
        for alpha in ("0", "0.5"):
            over = (f"method.schedule={schedule}", f"finetune.kd.alpha={alpha}")
            run = make_run(root, f"{k}", ratio=0.9, top1=50.0 + k, overrides=over)
            m = json.loads((run / "metrics.json").read_text())
            if schedule != "oneshot":
                m["schedule"] = {"name": schedule}
            (run / "metrics.json").write_text(json.dumps(m))
            k += 1
    result = build_report([root], tmp_path / "report")
    arms = {(r["schedule"], r["variant"]) for r in result["rows"]}
    assert len(arms) == 6
    assert ("gradual", "finetune.kd.alpha=0.5,method.schedule=gradual") in arms
    assert len(netscore_table(result["rows"])) == 6  # no two arms averaged together
    summary = (tmp_path / "report" / "summary.md").read_text()
    for alpha in ("0", "0.5"):
        assert summary.count(f"finetune.kd.alpha={alpha},method.schedule=") >= 3


def test_a_dynamic_filter_run_s_rate_schedule_name_is_not_a_pruning_schedule(
    tmp_path: Path,
) -> None:
    """Older dynamic_filter runs stored their rate ramp's name under ``schedule``: the report
    reads them as one-shot runs instead of failing."""
    run = make_run(tmp_path / "s", "0", method="dynamic_filter")
    m = json.loads((run / "metrics.json").read_text())
    m["schedule"] = "constant"
    (run / "metrics.json").write_text(json.dumps(m))
    result = build_report([tmp_path / "s"], tmp_path / "report")
    assert [r["schedule"] for r in result["rows"]] == ["oneshot"]
