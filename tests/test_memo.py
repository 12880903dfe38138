"""A test evaluation is made once per weights (prune_cli.engine.memo): the final stage takes the
fine-tune's last-epoch evaluation when the weights and the setting are the same, and evaluates
again whenever anything its forward depends on differs."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA, TINY_FINETUNE, run_in_process
from conftest import TinyNet

from prune_cli.engine.memo import EvalMemo, state_fingerprint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_fingerprint_follows_every_bit_hooks_and_layers_not_the_memory_format() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    base = state_fingerprint(model)
    assert state_fingerprint(copy.deepcopy(model)) == base
    assert state_fingerprint(copy.deepcopy(model).to(memory_format=torch.channels_last)) == base

    nudged = copy.deepcopy(model)
    with torch.no_grad():  # one weight, one ulp
        w = next(nudged.parameters()).view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
    assert state_fingerprint(nudged) != base

    hooked = copy.deepcopy(model)
    handle = hooked.conv1.register_forward_hook(lambda m, i, o: o * 0)
    assert state_fingerprint(hooked) != base
    handle.remove()
    assert state_fingerprint(hooked) == base

    buffers = copy.deepcopy(model)  # a BatchNorm statistic is state too
    buffers.bn1.running_mean += 1.0
    assert state_fingerprint(buffers) != base

    swapped = copy.deepcopy(model)  # the same weights, another layer
    swapped.fc = torch.nn.Sequential(torch.nn.Dropout(0.5), swapped.fc)
    swapped.fc[1].load_state_dict(model.fc.state_dict())
    assert state_fingerprint(swapped) != base


def test_the_memo_keys_by_setting() -> None:
    memo = EvalMemo()
    memo.add("abc", ("test", 128, "fp32"), {"top1": 50.0}, "here")
    assert memo.get("abc", ("test", 128, "fp32")) == ({"top1": 50.0}, "here")
    assert memo.get("abc", ("test", 64, "fp32")) is None
    assert memo.get("abc", ("test", 128, "bf16")) is None
    assert memo.get("abd", ("test", 128, "fp32")) is None


def _count_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch the pipeline's test evaluation to count its passes over the test split."""
    import prune_cli.pipeline as pipeline

    calls: list[str] = []
    real = pipeline.evaluate

    def counted(*args, **kwargs):
        calls.append("test")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", counted)
    return calls


def _last_finetune_eval(run_dir: Path) -> float:
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return float([r for r in rows if r["stage"] == "finetune"][-1]["eval_top1"])


def test_the_final_figures_are_the_finetunes_last_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_evaluations(monkeypatch)
    overrides = [*TINY_DATA, *TINY_FINETUNE, "metrics.latency.enabled=false", "export.onnx=false"]
    overrides += [f"cache.dir={tmp_path / 'cache'}"]
    run = run_in_process(tmp_path / "run", overrides)
    final = run.metrics["final"]
    assert run.metrics["finetune"]["selected_on"] == "test"
    assert final["top1"] == pytest.approx(_last_finetune_eval(tmp_path / "run"), abs=1e-4)
    # the pruned stage is evaluated; the final stage is not evaluated again
    assert calls == ["test"]

    # and the figures are what a fresh evaluation of the final model gives
    from prune_cli.engine import evaluate

    loader = run.data.loader("test", run.plan.train.eval_batch_size, train=False)
    fresh = evaluate(run.model, loader, "cpu", precision="fp32")
    assert final["top1"] == pytest.approx(fresh.top1, abs=1e-4)
    assert final["loss"] == pytest.approx(fresh.loss, rel=1e-6)


def test_changed_weights_are_evaluated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights changed after the last epoch's evaluation mean a fresh test evaluation of the
    final model."""
    from prune_cli.retrain import Retrainer

    calls = _count_evaluations(monkeypatch)
    real = Retrainer.stage

    def stage_then_nudge(self, model, *args, **kwargs):
        masks = real(self, model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1e-3
        return masks

    monkeypatch.setattr(Retrainer, "stage", stage_then_nudge)
    overrides = [*TINY_DATA, *TINY_FINETUNE, "metrics.latency.enabled=false", "export.onnx=false"]
    overrides += [f"cache.dir={tmp_path / 'cache'}"]
    run_in_process(tmp_path / "run", overrides)
    assert calls == ["test", "test"]


def test_a_validation_evaluation_is_never_taken_for_a_test_one(tmp_path: Path) -> None:
    """With a validation split the fine-tune evaluates on it: the final test figures are those a
    fresh test evaluation gives, not the last epoch's validation figures."""
    overrides = [*TINY_DATA, *TINY_FINETUNE, "metrics.latency.enabled=false", "export.onnx=false"]
    overrides += ["dataset.val_size=8", "dataset.train_size=24", f"cache.dir={tmp_path / 'c'}"]
    run = run_in_process(tmp_path / "run", overrides)
    assert run.metrics["finetune"]["selected_on"] == "val"
    from prune_cli.engine import evaluate

    loader = run.data.loader("test", run.plan.train.eval_batch_size, train=False)
    fresh = evaluate(run.model, loader, "cpu", precision="fp32")
    final = run.metrics["final"]
    assert final["top1"] == pytest.approx(fresh.top1, abs=1e-4)
    assert final["loss"] == pytest.approx(fresh.loss, rel=1e-6)
