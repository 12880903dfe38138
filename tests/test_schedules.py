"""Schedules (oneshot / iterative / gradual), sensitivity analysis and per-layer ratios."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import composed
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods import build_method
from prune_cli.methods.base import PruneContext
from prune_cli.pruning import MaskHold, apply_masks, n_to_remove, prunable_weights
from prune_cli.pruning.channels import mask_channels, restore_channels
from prune_cli.pruning.groups import discover
from prune_cli.pruning.schedules import (
    GradualPruning,
    cubic_sparsity,
    original_keep,
    round_ratios,
)
from prune_cli.schema import validate_config

INPUT = (3, 16, 16)


def _ctx(**kw) -> PruneContext:
    kw.setdefault("data", None)
    return PruneContext(device=torch.device("cpu"), seed=0, input_size=INPUT, **kw)


class _Res(nn.Module):
    """A stem and one residual block: a coupled stream group (stem + conv3) and a single
    group (conv2), small enough for channel discovery to take a moment."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.conv3, self.bn3 = nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(x + self.bn3(self.conv3(y)))
        return self.fc(x.mean(dim=(2, 3)))


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = _Res()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct BN scales and statistics: no ties, a non-trivial function
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.1)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def _zeros(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


# ----------------------------------------------------------------------------- the formulas
def test_cubic_schedule_hand_computed_values() -> None:
    assert cubic_sparsity(0.9, 0, 10) == 0.0
    assert cubic_sparsity(0.9, 5, 10) == pytest.approx(0.9 - 0.9 * 0.5**3)  # 0.7875
    assert cubic_sparsity(0.9, 5, 10, initial=0.2) == pytest.approx(0.9 - 0.7 * 0.125)  # 0.8125
    assert cubic_sparsity(0.9, 0, 10, initial=0.2) == pytest.approx(0.2)
    assert cubic_sparsity(0.9, 10, 10) == 0.9 and cubic_sparsity(0.9, 12, 10) == 0.9


def test_round_ratios_linear_and_geometric() -> None:
    assert round_ratios(0.9, 3, "linear") == pytest.approx([0.3, 0.6, 0.9])
    geo = round_ratios(0.9, 2, "geometric")
    assert geo == pytest.approx([1 - 0.1**0.5, 0.9]) and geo[-1] == 0.9
    assert round_ratios(0.5, 1) == [0.5]


# ----------------------------------------------------------------------------- gradual
def test_gradual_follows_the_cubic_formula_and_ends_exactly_at_ratio(tiny_net) -> None:
    """11 steps (1 epoch), frequency 5: updates at steps 0, 5 and 10 (the end step) to 0,
    0.9 - 0.9·0.5³ = 0.7875 and 0.9; held in between, pruned weights never come back."""
    model = tiny_net
    n = sum(w.numel() for w in prunable_weights(model).values())
    hooks = GradualPruning(
        lambda m: {k: w.detach().abs() for k, w in prunable_weights(m).items()}, 0.9, frequency=5
    )
    hooks.on_fit_start(model, epochs=1, steps_per_epoch=11)
    assert (hooks.start_step, hooks.end_step) == (0, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    seen = {}
    previous = None
    for step in range(11):
        hooks.before_step(model, step, 0)
        if previous is not None:  # every update keeps what the previous one removed
            assert all(bool((hooks.masks[k] <= previous[k]).all()) for k in previous)
        previous = {k: v.clone() for k, v in hooks.masks.items()}
        seen[step] = _zeros(hooks.masks)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        hooks.after_backward(model)
        opt.step()
        hooks.after_step(model)
        zeros_now = sum(int((w == 0).sum()) for w in prunable_weights(model).values())
        assert zeros_now >= seen[step]  # the masked weights stay at zero after the step
    assert seen[0] == 0
    assert seen[5] == n_to_remove(n, 0.7875) == seen[6] == seen[9]
    assert seen[10] == n_to_remove(n, 0.9)  # exactly the ratio at the end step
    assert [u["step"] for u in hooks.updates] == [0, 5, 10]
    assert [u["target"] for u in hooks.updates] == pytest.approx([0.0, 0.7875, 0.9])


def test_gradual_window_and_initial_are_checked() -> None:
    hooks = GradualPruning(lambda m: {}, 0.5, start=0.5, end=1.5, frequency=2, initial=0.1)
    hooks.on_fit_start(nn.Linear(1, 1), epochs=2, steps_per_epoch=10)
    assert (hooks.start_step, hooks.end_step) == (5, 15)
    assert hooks.target(4) == 0.0 and hooks.target(5) == pytest.approx(0.1)
    assert hooks.target(8) == pytest.approx(cubic_sparsity(0.5, 2, 10, 0.1))  # last update: 7
    with pytest.raises(ConfigError, match=r"method.start"):
        GradualPruning(lambda m: {}, 0.5, end=3).on_fit_start(nn.Linear(1, 1), 2, 10)
    with pytest.raises(ConfigError, match=r"method.initial"):
        GradualPruning(lambda m: {}, 0.5, initial=0.6)


# ----------------------------------------------------------------------------- iterative
def _fake_finetune(calls: list[str]):
    """A stand-in for the pipeline's fine-tuning: moves every weight, holds the masks."""

    def finetune(model, masks, stage, epochs=None):
        calls.append(stage)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        MaskHold(model, masks).after_step(model)
        return model

    return finetune


def test_iterative_magnitude_rounds_reach_each_ratio_and_keep_earlier_masks(tiny_net) -> None:
    method = build_method(
        {"name": "magnitude", "schedule": "iterative", "rounds": 3, "scope": "layerwise"}, 0.9
    )
    n = {k: w.numel() for k, w in prunable_weights(tiny_net).items()}
    recorded, calls, per_round = [], [], []

    def record(stage, model):
        recorded.append(stage)
        if not stage.endswith("finetuned"):
            per_round.append({k: (w != 0).clone() for k, w in prunable_weights(model).items()})

    result = method.prune(tiny_net, _ctx(record=record, finetune=_fake_finetune(calls)))
    per_round.append(result.masks)
    assert recorded == ["round_1", "round_1_finetuned", "round_2", "round_2_finetuned"]
    assert calls == ["finetune_round_1", "finetune_round_2"]
    for k, ratio in enumerate((0.3, 0.6, 0.9)):
        for name, size in n.items():  # layerwise: every layer at exactly floor(r·n)
            assert int((~per_round[k][name]).sum()) == n_to_remove(size, ratio)
        if k:  # the new mask is a subset of the previous round's
            assert all(bool((per_round[k][x] <= per_round[k - 1][x]).all()) for x in n)
    points = result.info["schedule"]["points"]
    assert [p["stages"] for p in points][-1] == ["pruned", "final"]
    assert result.info["rates"]["weights"]["target"] == 0.9


@pytest.mark.parametrize("name", ["l1_filter", "network_slimming"])
def test_structured_rounds_end_at_the_one_shot_counts(name: str) -> None:
    """Rounds cut the narrower model again, each to its ratio of the *original* counts: the
    last round keeps as many channels per group as one shot, and the result equals the dense
    model with those channels masked, in eval mode; the checkpoint info rebuilds it from the
    dense model (resume). (The channels themselves may differ: a stream's L1 scores change when
    the columns of an inner group are cut.)"""
    dense = _resnet()
    extra = {"l1_lambda": 1e-4} if name == "network_slimming" else {}
    one = build_method({"name": name, **extra}, 0.5).prune(copy.deepcopy(dense), _ctx())
    method = build_method({"name": name, "schedule": "iterative", "rounds": 3, **extra}, 0.5)
    calls: list[str] = []
    ctx = _ctx(finetune=lambda m, *a, **k: calls.append(1) or m)
    result = method.prune(copy.deepcopy(dense), ctx)
    assert len(calls) == 2
    assert result.info["channels"] == one.info["channels"]
    ratios = [p["achieved"] for p in result.info["schedule"]["points"]]
    assert ratios == sorted(ratios) and ratios[-1] == one.info["rates"]["channels"]["achieved"]
    masked = copy.deepcopy(dense)
    groups = discover(masked, INPUT, result.info["groups"]).groups
    mask_channels(masked, groups, original_keep(result.info))
    x = torch.randn(4, *INPUT)
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(x), masked.eval()(x), atol=1e-5)
    ckpt = {"model": result.model.state_dict(), "info": result.info}
    rebuilt = restore_channels(copy.deepcopy(dense), ckpt, "pruned.pt").eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), result.model(x))


def test_structured_rounds_with_finetuning_keep_the_one_shot_counts() -> None:
    dense = _resnet()
    one = build_method({"name": "l1_filter"}, 0.6).prune(copy.deepcopy(dense), _ctx())
    method = build_method({"name": "l1_filter", "schedule": "iterative", "steps": "geometric"}, 0.6)
    result = method.prune(copy.deepcopy(dense), _ctx(finetune=_fake_finetune([])))
    counts = {g: kept for g, (kept, _) in result.info["channels"].items()}
    assert counts == {g: kept for g, (kept, _) in one.info["channels"].items()}


# ----------------------------------------------------------------------------- errors
def test_a_method_without_schedules_names_the_ones_that_have_them() -> None:
    with pytest.raises(ConfigError) as err:
        build_method({"name": "optimized", "schedule": "iterative"}, 0.5)
    message = str(err.value)
    assert "\n" not in message and "'optimized'" in message and "iterative" in message
    assert "magnitude" in message and "l1_filter" in message and "double_pruning" in message
    with pytest.raises(ConfigError, match=r"dynamic_filter.*gradual"):
        build_method({"name": "dynamic_filter", "schedule": "gradual"}, 0.5)
    with pytest.raises(ConfigError, match=r"l1_filter.*gradual.*iterative"):
        build_method({"name": "l1_filter", "schedule": "gradual"}, 0.5)
    with pytest.raises(ConfigError, match=r"method.schedule"):
        build_method({"name": "magnitude", "schedule": "twice"}, 0.5)


def test_gradual_without_finetuning_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"finetune.epochs 0"):
        validate_config(composed("method.schedule=gradual", "finetune.epochs=0"))
    with pytest.raises(ConfigError, match=r"method.end"):
        validate_config(composed("method.schedule=gradual", "method.end=5", "finetune.epochs=2"))


def test_the_schema_accepts_the_schedule_keys() -> None:
    plan = validate_config(composed("method.schedule=iterative", "method.rounds='2'"))
    assert plan.method.rounds == 2


# ----------------------------------------------------------------------------- sensitivity
class _Data:
    """Four well-separated classes (one-hot 1x1 images), 25 of each: chance is 25%. The same
    images in every split; ``used`` lists the splits that were read."""

    def __init__(self, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        y = torch.arange(4).repeat(25)
        self.x = nn.functional.one_hot(y, 4).float()[:, :, None, None] * 3 + 0.1
        self.y = y
        self.splits = {name: y for name in splits}
        self.used: set[str] = set()

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def loader(self, split, batch_size, train=False, device=None):
        self.used.add(split)
        return [(self.x, self.y)]


def _perfect() -> nn.Module:
    """Identity 1x1 convs: classifies _Data perfectly."""
    model = nn.Sequential(
        nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False), nn.Flatten()
    )
    with torch.no_grad():
        for conv in (model[0], model[1]):
            conv.weight.copy_(torch.eye(4)[:, :, None, None] + 0.01 * torch.rand(4, 4, 1, 1))
    return model


def test_sensitivity_table_plot_and_layer_ratios(tmp_path: Path) -> None:
    method = build_method(
        {"name": "sensitivity", "ratios": [0.25, 1.0], "granularity": "filter", "max_drop": 5},
        0.5,
    )
    model = _perfect()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _Data()
    result = method.prune(model, _ctx(data=data, run_dir=tmp_path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored
    # the ratios are chosen on the validation split, never on test (they steer later runs)
    assert data.used == {"val"} and result.info["split"] == "val"
    assert result.info["val_images"] == 100
    rows = list(csv.DictReader((tmp_path / "sensitivity.csv").open()))
    assert [(r["layer"], float(r["ratio"])) for r in rows] == [
        ("0", 0.25), ("0", 1.0), ("1", 0.25), ("1", 1.0)]  # fmt: skip
    table = {(r["layer"], float(r["ratio"])): r for r in rows}
    for layer in ("0", "1"):
        assert float(table[(layer, 1.0)]["top1"]) == pytest.approx(25.0)  # all zero: chance
        assert float(table[(layer, 0.25)]["top1"]) == pytest.approx(75.0)  # one class lost
        assert int(table[(layer, 1.0)]["params"]) == 16
    assert result.info["dense"]["top1"] == 100.0 and result.info["analysis"] == "sensitivity"
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    chosen = json.loads((tmp_path / "layer_ratios.json").read_text())
    assert chosen == {"0": 0.0, "1": 0.0}  # a 25-point drop is beyond max_drop 5
    with pytest.raises(ConfigError, match=r"^method=sensitivity evaluates on a validation split"):
        method.prune(_perfect(), _ctx(data=_Data(("train", "test")), run_dir=tmp_path))


def test_a_sensitivity_run_holds_a_validation_split_out_of_training(tmp_path: Path) -> None:
    from cli_helpers import TINY_DATA, run_in_process

    overrides = [*TINY_DATA, "method=sensitivity", "method.ratios=[0.5]", "export.onnx=false",
                 "metrics.latency.enabled=false", f"cache.dir={tmp_path / 'cache'}"]  # fmt: skip
    metrics = run_in_process(tmp_path / "run", overrides).metrics
    assert metrics["status"] == "completed"
    holdout = metrics["data_holdout"]
    assert holdout["val_size"] == 0.1 and holdout["val_images"] == 2  # 10% of 16 images
    assert metrics["sensitivity"]["split"] == "val" and metrics["sensitivity"]["val_images"] == 2
    assert metrics["train"]["selected_on"] == "val"  # training never saw them


def test_layer_ratios_file_sets_magnitude_per_layer_rates(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "ratios.json"
    path.write_text(json.dumps({"conv1": 0.5, "conv2": 0.25}))
    method = build_method({"name": "magnitude", "layer_ratios": str(path)}, 0.9)
    result = method.prune(tiny_net, _ctx())
    assert int((~result.masks["conv1.weight"]).sum()) == n_to_remove(8 * 3 * 9, 0.5)
    assert int((~result.masks["conv2.weight"]).sum()) == n_to_remove(16 * 8 * 9, 0.25)
    assert "ratio 0.9 not used" in result.info["warnings"][0]
    path.write_text("conv1: 0.5\nconv9: 0.1\n")  # YAML too; an unknown layer is named
    with pytest.raises(ConfigError, match=r"unknown layer 'conv9'.*valid: conv1, conv2") as err:
        method.prune(tiny_net, _ctx())
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"one shot"):
        build_method({"name": "magnitude", "layer_ratios": "x", "schedule": "iterative"}, 0.5)


def test_layer_ratios_file_sets_l1_filter_group_rates(tmp_path: Path) -> None:
    dense = _resnet()
    path = tmp_path / "ratios.yaml"
    path.write_text("conv2: 0.5\nconv3: 0.25\nconv1: 0.5\n")
    # round_to 1: the exact counts (the default rounds a 24-channel group's 12 up to 16)
    cfg = {"name": "l1_filter", "layer_ratios": str(path), "round_to": 1}
    method = build_method(cfg, 0.9)
    result = method.prune(dense, _ctx())
    channels = result.info["channels"]
    # conv2 alone; the stream (conv1 + conv3): the smallest ratio of its producers
    assert channels == {"conv1": [12, 16], "conv2": [12, 24]}
    path.write_text("conv2: 0.5\n")
    channels = method.prune(_resnet(), _ctx()).info["channels"]
    assert channels == {"conv1": [16, 16], "conv2": [12, 24]}  # unlisted groups stay whole


def test_apply_masks_of_gradual_random_is_a_growing_subset(tiny_net) -> None:
    method = build_method({"name": "random", "schedule": "gradual"}, 0.5)
    scores = method.gradual_scores(tiny_net)
    again = method.gradual_scores(tiny_net)
    assert all(torch.equal(scores[k], again[k]) for k in scores)  # fixed across updates
    hooks = method.finetune_hooks(tiny_net, {})
    hooks.on_fit_start(tiny_net, 1, 4)
    hooks.before_step(tiny_net, 3, 0)
    apply_masks(tiny_net, hooks.masks)
    assert hooks.updates[-1]["target"] == 0.5


# ----------------------------------------------------------------------------- end to end
# slow: one minute of CLI sweep; the schedules' mechanics are tested in-process above
@pytest.mark.slow
def test_cli_sweep_over_schedules_and_the_report(tmp_path: Path) -> None:
    """The issue's sweep, tiny: one dense training shared (cache), every schedule's stages in
    metrics.json, and prune-report's schedule plot."""
    from cli_helpers import FAST, prune_run

    from prune_cli.report import build_report

    args = ["-m", "method=magnitude", "method.schedule=oneshot,gradual,iterative", "ratio=0.9"]
    args += ["method.rounds=2", "method.frequency=2", "metrics.latency.enabled=false"]
    args += [
        "export.onnx=false",
        "hydra.sweep.dir=sweep",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    fast = [a.replace("train_size=384", "train_size=256") for a in FAST]  # 3 jobs: fewer images
    proc = prune_run("-m", *fast, *args[1:], cwd=tmp_path, threads=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for path in (tmp_path / "sweep").rglob("metrics.json"):
        m = json.loads(path.read_text())
        runs[m["method_config"]["schedule"]] = m
    assert set(runs) == {"oneshot", "gradual", "iterative"}
    assert all(m["status"] == "completed" for m in runs.values())
    assert runs["oneshot"]["stages"] == ["baseline", "dense_reference", "pruned", "final"]
    assert "schedule" not in runs["oneshot"]
    stages = ["baseline", "dense_reference", "round_1", "round_1_finetuned", "pruned", "final"]
    assert runs["iterative"]["stages"] == stages
    assert runs["iterative"]["round_1"]["sparsity"] < runs["iterative"]["final"]["sparsity"]
    gradual = runs["gradual"]["schedule"]
    assert gradual["updates"][-1]["target"] == 0.9 and gradual["epochs"][-1]["eval_top1"] >= 0
    assert runs["gradual"]["pruned"]["sparsity"] == 0.0  # pruned while fine-tuning, not before
    for m in runs.values():  # exactly the ratio of the conv weights at the end, every schedule
        rate = m["prune_info"]["rates"]["weights"]
        assert rate["achieved"] == pytest.approx(0.9, abs=1e-5) and not m.get("warnings")
    trained = [m["train"].get("from_cache") for m in runs.values()]
    assert trained.count(False) <= 1  # the dense model is trained once
    report = build_report([tmp_path / "sweep"])
    assert "schedule_trajectory.png" in report["files"]
    assert sorted(r["schedule"] for r in report["rows"]) == ["gradual", "iterative", "oneshot"]


@pytest.mark.slow  # two CLI runs, 21 layer evaluations: ~1-2 min on a loaded CPU
def test_cli_sensitivity_run_then_layer_ratios(tmp_path: Path) -> None:
    """method=sensitivity writes its table, plot and layer_ratios.json and no final model;
    magnitude then reads the file; prune-report keeps the analysis out of its figures."""
    from cli_helpers import FAST, prune_run

    from prune_cli.report import build_report

    quiet = ["metrics.latency.enabled=false", "export.onnx=false"]
    quiet += ["dataset.image_size=16", "dataset.test_size=64"]  # 21 layers x 1 ratio: quick
    proc = prune_run(
        *FAST, *quiet, "method=sensitivity", "method.ratios=[0.9]", "method.max_drop=100",
        "hydra.run.dir=sens", cwd=tmp_path, threads=2,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "sens" / "metrics.json").read_text())
    assert m["status"] == "completed" and m["analysis"] == "sensitivity"
    assert m["sensitivity"]["split"] == "val" and m["data_holdout"]["val_images"] == 38
    assert "final" not in m and "pruned" not in m and set(m["skipped_stages"]) == {
        "finetune", "evaluate"}  # fmt: skip
    assert not (tmp_path / "sens" / "checkpoints" / "final.pt").exists()
    rows = list(csv.DictReader((tmp_path / "sens" / "sensitivity.csv").open()))
    assert len(rows) == m["sensitivity"]["layers"] == 21  # resnet20: 19 3x3 convs + 2 shortcuts
    chosen = json.loads((tmp_path / "sens" / "layer_ratios.json").read_text())
    assert set(chosen.values()) == {0.9}  # max_drop 100: every layer takes the largest ratio
    proc = prune_run(
        *FAST, *quiet, "method.layer_ratios=sens/layer_ratios.json", "hydra.run.dir=lr",
        cwd=tmp_path, threads=2,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lr = json.loads((tmp_path / "lr" / "metrics.json").read_text())
    assert lr["prune_info"]["rates"]["weights"]["achieved"] == pytest.approx(0.9, abs=1e-3)
    report = build_report([tmp_path / "sens", tmp_path / "lr"], out=tmp_path / "rep")
    by_method = {r["method"]: r for r in report["rows"]}
    assert by_method["sensitivity"]["analysis"] == "sensitivity"
    assert "1 analysis run(s) (sensitivity)" in (tmp_path / "rep" / "summary.md").read_text()
