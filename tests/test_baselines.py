"""What a run claims is what it did (issue 12): the dense reference, warnings, comparable figures.

Every run carries ``dense_reference``: the plain dense model of its training setup. For a method
that does not change training it *is* the baseline; otherwise it is trained plainly through the
cache (once per sweep, shared with ``method=none`` and the plain methods). Anything a run did
other than asked (a missed rate, a skipped stage) is a warning in the log, in ``metrics.json``
and in the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from cli_helpers import FAST, prune_run

from prune_cli.methods import PruneContext, build_method
from prune_cli.models import build_model
from prune_cli.report import build_report


def _metrics(root: Path, run: str) -> dict:
    return json.loads((root / run / "metrics.json").read_text())


def _run(root: Path, run: str, *overrides: str) -> dict:
    proc = prune_run(*FAST, *overrides, f"hydra.run.dir={run}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _metrics(root, run)


def test_dense_reference_is_the_baseline_or_the_plain_model_trained_once(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain", "method=magnitude")
    assert "warnings" not in plain  # an exact run has nothing to say
    assert plain["baseline_kind"] == "dense"
    assert plain["stages"][:2] == ["baseline", "dense_reference"]
    ref = plain["dense_reference"]
    assert ref["source"] == "baseline"
    assert {k: v for k, v in ref.items() if k != "source"} == plain["baseline"]
    assert set(plain["latency"]) == {
        "dense_reference", "final", "speedup", "dense_source", "mac_reduction",
        "speedup_efficiency", "precision",
    }  # fmt: skip
    assert plain["latency"]["precision"] == "fp32"  # metrics.precision's default
    # weights removed against the dense reference, by hand: conv weights pruned, fc kept
    final = plain["final"]
    expected = 1 - final["weights_nonzero"] / ref["weights"]
    assert plain["relative_to_dense"]["weights_removed"] == round(expected, 6)
    assert 0.45 < expected < 0.5  # half the conv weights; fc (640 of 270k) is not pruned
    assert plain["relative_to_dense"]["params"] == round(final["params_nonzero"] / ref["params"], 6)

    slim = _run(tmp_path, "slim", "method=network_slimming")
    assert slim["baseline_kind"].startswith("sparsity-trained: L1 1e-05")
    ref = slim["dense_reference"]
    assert ref["source"] == "trained plainly (cache)"
    # trained once: the plain run trained it, the slimming run loaded it from the cache
    assert slim["dense_reference_train"]["from_cache"] is True
    assert slim["dense_reference_train"]["cache_entry"] == plain["train"]["cache_entry"]
    assert ref["top1"] == plain["baseline"]["top1"] and ref["macs"] == plain["baseline"]["macs"]
    # its test evaluation and latency, measured by the plain run, came from the cache entry
    assert slim["latency"]["dense_source"] == "cached"
    assert slim["latency"]["dense_reference"] == plain["latency"]["dense_reference"]
    assert slim["final"]["macs"] < ref["macs"]
    assert (tmp_path / "slim" / "checkpoints" / "dense_reference.pt").is_file()
    assert slim["relative_to_dense"]["macs"] < 1


def test_a_missed_rate_and_a_skipped_stage_are_said(tmp_path: Path) -> None:
    # min_channels 0.9 keeps 90% of every group: 10% removed where 50% was asked for
    guarded = _run(tmp_path, "guarded", "method=l1_filter", "method.min_channels=0.9")
    rate = guarded["prune_info"]["rates"]["channels"]
    assert rate["target"] == 0.5 and rate["achieved"] < 0.2
    assert any("not the 0.5000 asked for" in w for w in guarded["warnings"])
    log = (tmp_path / "guarded" / "prune-run.log").read_text()
    assert "not the 0.5000 asked for" in log
    # double pruning on a model without BN: slimming cannot run, magnitude pruning only
    no_bn = _run(tmp_path, "no_bn", "method=double_pruning", "model=squeezenet1_1")
    assert no_bn["prune_info"]["slimming"].startswith("skipped")
    assert any("slimming skipped" in w for w in no_bn["warnings"])
    build_report([tmp_path], plots=False)
    md = (tmp_path / "summary.md").read_text()
    assert "## Warnings" in md and "slimming skipped" in md and "asked for" in md


def test_sharing_measures_no_latency_when_latency_is_off() -> None:
    method = build_method({"name": "soft_sharing", "templates_per_stage": 1}, 0.5)
    model = method.prepare(build_model("resnet20", num_classes=10, in_channels=3, image_size=32))
    ctx = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=(3, 32, 32))
    off = method.prune(model, PruneContext(**{**ctx.__dict__, "latency": False}))
    assert off.info["latency_b1_ms"] is None
    on = method.prune(model, ctx)
    assert set(on.info["latency_b1_ms"]) == {"shared", "materialized"}
