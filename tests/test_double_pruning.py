"""double_pruning (docs/methods.md §5.2): slimming, fine-tune, magnitude pruning, fine-tune.

The unit tests drive the method with a recording context; the end-to-end test runs the real
``prune-run`` on the offline dataset shrunk to a few hundred images, then resumes it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from test_cli import FAST, prune_run
from torch import nn

from prune_cli.engine import load_checkpoint
from prune_cli.errors import ConfigError
from prune_cli.methods import PruneContext, build_method
from prune_cli.models import build_model
from prune_cli.pruning import MaskHold

INPUT = (3, 32, 32)


def _conv_zero_fraction(model: nn.Module) -> tuple[int, int]:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


class Recorder:
    """A PruneContext whose callbacks log what the method asked for (no real training)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def ctx(self) -> PruneContext:
        def finetune(model, masks, stage, epochs=None):
            self.calls.append(("finetune", stage, epochs, len(masks)))
            return model

        def record(stage, model):
            self.calls.append(("record", stage, sum(p.numel() for p in model.parameters())))

        return PruneContext(
            data=None,
            device=torch.device("cpu"),
            seed=0,
            input_size=INPUT,
            finetune=finetune,
            record=record,
        )


def _trained_like(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    return model


def test_stages_run_in_order_and_weight_ratio_is_exact_and_held() -> None:
    model = _trained_like("resnet20")
    dense_params = sum(p.numel() for p in model.parameters())
    method = build_method(
        {"name": "double_pruning", "channel_ratio": 0.5, "weight_ratio": 0.7,
         "slim_finetune_epochs": 3},
        0.6,
    )  # fmt: skip
    method.prepare(model)
    rec = Recorder()
    result = method.prune(model, rec.ctx())
    slim_params = sum(p.numel() for p in result.model.parameters())
    assert rec.calls == [
        ("record", "slimmed", slim_params),
        ("finetune", "finetune_slim", 3, 0),  # no masks while fine-tuning the slimmed model
        ("record", "slimmed_finetuned", slim_params),
    ]
    assert slim_params < dense_params
    # # Exactly floor(0.7 * N) of the N remaining conv weights are zero (exact mode,
    # docs/methods.md §2.1).
    zeros, total = _conv_zero_fraction(result.model)
    assert zeros == math.floor(0.7 * total) == result.info["weights_pruned"]
    assert total == result.info["weights_total"]
    assert result.info["channel_ratio"] == 0.5 and result.info["weight_ratio"] == 0.7
    assert result.info["slimming"] == "done"
    # Fine-tuning with momentum and weight decay keeps the same zeros (MaskHold).
    net = result.model.train()
    hold = MaskHold(net, result.masks)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if n in result.masks}
    for _ in range(3):
        opt.zero_grad()
        x = torch.randn(8, *INPUT, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        nn.functional.cross_entropy(net(x), y).backward()
        hold.after_backward(net)
        opt.step()
        hold.after_step(net)
    assert _conv_zero_fraction(net) == (zeros, total)
    after = dict(net.named_parameters())
    for name, mask in result.masks.items():
        assert torch.all(after[name][~mask] == 0)
        assert not torch.equal(after[name][mask], before[name][mask])


def test_ratios_default_to_the_top_level_ratio() -> None:
    method = build_method({"name": "double_pruning"}, 0.4)
    assert method.channel_ratio == method.weight_ratio == 0.4


def test_no_slim_finetune_and_squeezenet_without_bn() -> None:
    rec = Recorder()
    method = build_method({"name": "double_pruning", "slim_finetune_epochs": 0}, 0.5)
    method.prepare(_trained_like("vgg11"))
    method.prune(_trained_like("vgg11"), rec.ctx())
    assert [c[:2] for c in rec.calls] == [("record", "slimmed")]
    rec = Recorder()
    model = _trained_like("squeezenet1_1")
    method = build_method({"name": "double_pruning"}, 0.5)
    method.prepare(model)
    result = method.prune(model, rec.ctx())
    assert rec.calls == [] and result.info["slimming"].startswith("skipped")
    zeros, total = _conv_zero_fraction(result.model)
    assert zeros == math.floor(0.5 * total)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"channel_ratio": 1.0}, "method.channel_ratio 1.0 is out of range"),
        ({"weight_ratio": -0.1}, "method.weight_ratio -0.1 is out of range"),
        ({"weight_scope": "local"}, "unknown method.weight_scope 'local'"),
    ],
)
def test_bad_values_are_config_errors(override: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_method({"name": "double_pruning", **override}, 0.5)


def test_end_to_end_reports_every_stage_and_resumes(tmp_path: Path) -> None:
    args = [*FAST, "method=double_pruning", "ratio=0.6", "export.onnx=true", "hydra.run.dir=run"]
    proc = prune_run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["stages"] == [
        "baseline",
        "dense_reference",
        "slimmed",
        "slimmed_finetuned",
        "pruned",
        "final",
    ]
    base, slimmed, final = metrics["baseline"], metrics["slimmed"], metrics["final"]
    assert slimmed["params"] < base["params"] and slimmed["macs"] < base["macs"]
    assert final["params"] == slimmed["params"]  # magnitude pruning zeroes, does not remove
    assert final["params_nonzero"] < final["params"]
    assert final["netscore_nonzero"] >= final["netscore_dense"]
    info = metrics["prune_info"]
    assert all(kept <= total for kept, total in info["channels"].values())
    assert info["channels_kept"] < info["channels_total"]
    assert set(metrics["latency"]["speedup"]) == {"b1", "b4"}
    assert "finetune_slim" in metrics and metrics["finetune_slim"]["epochs"] == 1
    # The final weights: the pruned structure, 60% of conv weights zero.
    final_ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    convs = [v for k, v in final_ckpt["model"].items() if v.dim() == 4]
    zeros, total = sum(int((w == 0).sum()) for w in convs), sum(w.numel() for w in convs)
    assert zeros == math.floor(0.6 * total)
    # The ONNX export (the default) runs without prune-cli's classes, in ONNX Runtime.
    exported = run / "checkpoints" / "final.onnx"
    assert metrics["export"] == {"onnx": str(exported)}
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": np.zeros((2, *INPUT), dtype=np.float32)})
    assert logits.shape == (2, 10)
    # Resume rebuilds the narrower model from pruned.pt (method.restore) and completes.
    (run / "metrics.json").unlink()
    proc = prune_run(f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["final"]["params"] == final["params"]
    assert resumed["final"]["top1"] == final["top1"]


@pytest.mark.parametrize(
    "experiment",
    [
        "double_pruning_paper",
        "double_pruning_stages",
        "double_pruning_grid",
        "double_pruning_smoke",
    ],
)
def test_experiment_configs_compose_into_valid_sweeps(experiment: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    configs = Path(__file__).resolve().parents[1] / "configs"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        cfg = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = dict(cfg.hydra.sweeper.params)
    assert params, experiment
    for group in ("model", "dataset", "method"):
        for name in str(params.get(group, "")).split(","):
            if name:
                assert (configs / group / f"{name}.yaml").is_file(), (group, name)
    if experiment == "double_pruning_paper":
        assert cfg.method.name == "double_pruning" and cfg.train.epochs == 160
        assert len(params["model"].split(",")) == 10
        assert params["dataset"] == "cifar10,fer2013,ferplus"
    if experiment == "double_pruning_stages":
        assert params["method"] == "none,network_slimming,magnitude,double_pruning"


def test_resnet50_gets_its_offline_budget_and_nothing_else_does() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    configs = Path(__file__).resolve().parents[1] / "configs"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        headline = compose("config", overrides=["model=resnet50", "method=double_pruning"])
        default = compose("config")
        real = compose("config", overrides=["model=resnet50", "dataset=cifar10"])
        mine = compose("config", overrides=["model=resnet50", "model.stem=auto"])
    GlobalHydra.instance().clear()
    assert headline.model.stem == "imagenet" and headline.model.zero_init_residual is True
    assert (headline.train.optimizer, headline.finetune.optimizer) == ("adamw", "adamw")
    assert (default.train.optimizer, default.finetune.optimizer) == ("sgd", "sgd")
    assert real.model.zero_init_residual is False and real.model.stem == "auto"  # the defaults
    assert real.train.optimizer == "sgd" and real.train.lr == 0.1
    assert mine.model.stem == "auto"  # the command line wins over the budget
