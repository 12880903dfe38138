"""Training loop, schedules, checkpoints: resume, NaN guard, accuracy bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TinyNet

from prune_cli.data import build_dataset
from prune_cli.engine import (
    FitSettings,
    StageFiles,
    TrainHooks,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from prune_cli.engine.checkpoint import load_state_into
from prune_cli.engine.optim import build_optimizer, lr_factor, param_groups
from prune_cli.errors import CheckpointError, ConfigError, NonFiniteLossError

CFG = {
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "eval_batch_size": 64,
    # fp32 NCHW unless a test asks otherwise (the run's default is auto: configs/train)
    "precision": "fp32",
    "memory_format": "contiguous",
}


@pytest.fixture(scope="module")
def data():
    return build_dataset({"name": "shapes", "train_size": 128, "test_size": 64, "seed": 0})


def test_lr_schedules_by_hand() -> None:
    multistep = {"schedule": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}
    assert [lr_factor(multistep, e, 8) for e in (0, 3, 4, 5, 6, 7)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert lr_factor({"schedule": "multistep", "milestones": [2]}, 2, 10) == pytest.approx(0.1)
    cosine = {"schedule": "cosine"}
    assert lr_factor(cosine, 0, 10) == 1.0
    assert lr_factor(cosine, 5, 10) == pytest.approx(0.5)
    assert lr_factor(cosine, 10, 10) == pytest.approx(0.0)
    assert lr_factor({"schedule": "constant", "warmup_epochs": 1}, 0, 10) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"unknown train.schedule 'linear'"):
        lr_factor({"schedule": "linear"}, 0, 10)


def test_sgd_nesterov_and_no_decay_group() -> None:
    model = TinyNet()
    model.register_parameter("coefficients", torch.nn.Parameter(torch.ones(2)))
    groups = param_groups(model, 1e-4)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"][0] is model.coefficients
    opt = build_optimizer(model, {"lr": 0.1, "momentum": 0.9, "nesterov": True})
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_schedule_every_step_follows_the_cosine_at_each_step(data, tmp_path, monkeypatch) -> None:
    """128 images / batch 32 = 4 steps per epoch, 2 epochs, warm-up of 1 epoch, cosine: step i
    of epoch e runs at 0.05 * factor(e + i/4), by hand; per epoch, the rate is constant."""
    seen: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    cfg = {**CFG, "warmup_epochs": 1, "schedule_every": "step"}
    fit(TinyNet(), data, cfg, device=torch.device("cpu"), files=StageFiles("s", tmp_path / "a"))
    warm = [(t + 1) / 2 for t in (0, 0.25, 0.5, 0.75)]  # (epoch + 1) / (warmup + 1)
    cos = [0.5 * (1 + math.cos(math.pi * (t - 1))) for t in (1, 1.25, 1.5, 1.75)]  # span 1
    assert seen == pytest.approx([0.05 * f for f in warm + cos])
    seen.clear()
    fit(TinyNet(), data, {**cfg, "schedule_every": "epoch"}, device=torch.device("cpu"),
        files=StageFiles("e", tmp_path / "b"))  # fmt: skip
    assert seen == pytest.approx([0.025] * 4 + [0.05] * 4)
    with pytest.raises(ConfigError, match=r"unknown train.schedule_every 'batch'; choose one of"):
        fit(TinyNet(), data, {**cfg, "schedule_every": "batch"}, device=torch.device("cpu"),
            files=StageFiles("x", tmp_path / "c"))  # fmt: skip


def test_adamw_takes_the_configured_lr_and_decoupled_decay_and_bad_names_fail() -> None:
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model, {"lr": 2e-3, "weight_decay": 0.05, "optimizer": "adamw"})
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 2e-3
    assert opt.param_groups[0]["weight_decay"] == 0.05
    before = model.weight.detach().clone()
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.zeros_like(model.bias)
    opt.step()  # zero gradient: only the decoupled decay moves the weights, by lr * wd * w
    assert torch.allclose(model.weight, before * (1 - 2e-3 * 0.05))
    with pytest.raises(ConfigError, match=r"nesterov=true needs optimizer sgd"):
        build_optimizer(model, {"lr": 0.1, "optimizer": "adamw", "nesterov": True})
    with pytest.raises(ConfigError, match=r"unknown train.optimizer 'adam'; choose one of: sgd,"):
        build_optimizer(model, {"lr": 0.1, "optimizer": "adam"})


def test_evaluate_top1_top5_by_hand() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :6]  # logits are the first row of the image

    logits = torch.tensor(
        [[6, 5, 4, 3, 2, 1], [1, 6, 5, 4, 3, 2], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1.0]]
    )
    # top-1 hits row 1 only; top-5 also row 3 (rank 5); rows 2 and 4 rank their label 6th
    labels = torch.tensor([0, 0, 1, 5])
    x = logits[:, None, None, :]
    res = evaluate(Fixed(), [(x, labels)])
    assert res.top1 == 25.0 and res.top5 == 50.0 and res.n == 4
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert res.loss == pytest.approx(expected)


def test_fit_trains_writes_history_and_checkpoints(data, tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    before = evaluate(model, data.loader("test", 64, train=False)).loss
    res = fit(
        model,
        data,
        {**CFG, "epochs": 3},
        device=torch.device("cpu"),
        files=StageFiles("train", tmp_path, history_csv=tmp_path / "history.csv"),
    )
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("stage,epoch,lr,train_loss") and len(lines) == 4
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    assert res.history[0]["lr"] == pytest.approx(0.05)
    assert res.select_split == "test" and res.best_epoch in (1, 2, 3)
    assert res.best_top1 == max(r["eval_top1"] for r in res.history)
    assert (tmp_path / "train_last.pt").is_file() and (tmp_path / "train_best.pt").is_file()
    after = evaluate(model, data.loader("test", 64, train=False))
    assert after.loss < before
    # the last epoch's evaluation is the returned model's, exactly as evaluated again
    assert res.last_eval == after and res.eval_batch_size == 64


class _Interrupt(TrainHooks):
    """Simulates Ctrl-C at the first step of epoch ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_step(self, model, step, epoch):
        if epoch == self.at:
            raise KeyboardInterrupt


def test_resume_continues_from_last_epoch_and_matches_uninterrupted_run(data, tmp_path) -> None:
    cfg = {**CFG, "epochs": 3}
    torch.manual_seed(1)
    init = TinyNet().state_dict()

    def fresh() -> torch.nn.Module:
        model = TinyNet()
        model.load_state_dict(init)
        return model

    cpu = torch.device("cpu")
    straight = fresh()
    fit(straight, data, cfg, device=cpu, files=StageFiles("t", tmp_path / "a"), seed=3)
    interrupted = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, data, cfg, device=cpu, files=StageFiles("t", tmp_path / "b"), seed=3,
            hooks=_Interrupt(at=2))  # fmt: skip
    assert load_checkpoint(tmp_path / "b" / "t_last.pt")["epoch"] == 2
    resumed = fresh()  # a new process: weights come from the checkpoint, not from memory
    res = fit(resumed, data, cfg, device=cpu, files=StageFiles("t", tmp_path / "b"), seed=3)
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    # Same batches, same RNG stream, same optimizer state: bit-identical, BN statistics included.
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_stage_files_extra_state_and_no_resume(data, tmp_path) -> None:
    cpu = torch.device("cpu")
    mask = {"conv1.weight": torch.ones(8, 3, 3, 3)}
    files = StageFiles("ft", tmp_path, extra_state={"masks": mask})
    assert files.last == tmp_path / "ft_last.pt" and files.best == tmp_path / "ft_best.pt"
    fit(TinyNet(), data, {**CFG, "epochs": 1}, device=cpu, files=files)
    last = load_checkpoint(files.last)
    assert last["epoch"] == 1 and torch.equal(last["masks"]["conv1.weight"], mask["conv1.weight"])
    # resume=False starts again from epoch 1 although a finished checkpoint is there
    again = StageFiles("ft", tmp_path, resume=False)
    res = fit(TinyNet(), data, {**CFG, "epochs": 2}, device=cpu, files=again)
    assert [r["epoch"] for r in res.history] == [1, 2]
    assert "masks" not in load_checkpoint(files.last)


def test_fit_settings_are_typed_and_bad_values_are_one_line_errors() -> None:
    s = FitSettings.from_cfg({**CFG, "precision": "bf16", "select_best": False})
    o = s.options
    assert (s.epochs, o.batch_size, o.eval_batch_size) == (2, 32, 64)
    assert o.precision == "bf16" and o.memory_format == "contiguous"
    assert not o.select_best and o.label_smoothing == 0.0
    assert s.options.lr == 0.05 and FitSettings.from_cfg(s) is s
    # the keys a mapping leaves out are those of configs/train/default.yaml
    defaults = FitSettings.from_cfg({"epochs": 1})
    o = defaults.options
    assert (o.eval_batch_size, o.batch_size, o.precision) == (128, 128, "auto")
    assert defaults.eval_precision == "fp32"  # metrics.precision of configs/config.yaml
    for key, value in [("epochs", "ten"), ("epochs", 0), ("batch_size", 0), ("epochs", True)]:
        with pytest.raises(ConfigError, match=rf"^train.{key} .* valid: an integer >= 1$"):
            FitSettings.from_cfg({**CFG, key: value})


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(data, tmp_path) -> None:
    class NanAtEpoch2(TrainHooks):
        epoch = 0

        def before_step(self, model, step, epoch):
            self.epoch = epoch

        def extra_loss(self, model):
            return torch.tensor(float("nan")) if self.epoch == 1 else None

    with pytest.raises(NonFiniteLossError) as err:
        fit(TinyNet(), data, {**CFG, "epochs": 3}, device=torch.device("cpu"),
            files=StageFiles("train", tmp_path), hooks=NanAtEpoch2())  # fmt: skip
    message = str(err.value)
    assert "\n" not in message and "nan" in message and "epoch 2" in message
    assert "last good checkpoint" in message
    good = load_checkpoint(tmp_path / "train_last.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_checkpoint_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)
    path = tmp_path / "ok.pt"
    save_checkpoint(path, {"model": TinyNet().state_dict(), "arch": "tiny"})
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is for model 'tiny', not 'resnet20'"):
        load_state_into(TinyNet(), ckpt, str(path), expect_arch="resnet20")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e\.g\. fc\.weight"):
        load_state_into(TinyNet(num_classes=7), ckpt, str(path))
    load_state_into(TinyNet(), ckpt, str(path), expect_arch="tiny")


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.ones(2)})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"x": torch.zeros(2)})
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


class _SeesModel(TrainHooks):
    """Records the module every hook call gets."""

    def __init__(self) -> None:
        self.seen: set[type] = set()

    def before_step(self, model, step, epoch):
        self.seen.add(type(model))

    def after_step(self, model):
        self.seen.add(type(model))


def test_compile_trains_the_same_model_hooks_and_checkpoints_see_it(data, tmp_path, monkeypatch):
    # The "eager" backend: Dynamo captures the graphs as for inductor, without building C++
    # (minutes on a small CPU); what is tested is prune-cli's wiring, not inductor.
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = {**CFG, "epochs": 1}
    torch.manual_seed(2)
    init = TinyNet().state_dict()
    plain, fast = TinyNet(), TinyNet()
    plain.load_state_dict(init)
    fast.load_state_dict(init)
    cpu = torch.device("cpu")
    fit(plain, data, cfg, device=cpu, files=StageFiles("t", tmp_path / "a"), seed=3)
    hooks = _SeesModel()
    fit(fast, data, {**cfg, "compile": True}, device=cpu, files=StageFiles("t", tmp_path / "b"),
        seed=3, hooks=hooks)  # fmt: skip
    assert compiled == [fast] and hooks.seen == {TinyNet}
    for (k, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k  # the same training, only compiled
    saved = load_checkpoint(tmp_path / "b" / "t_last.pt")["model"]
    assert list(saved) == list(plain.state_dict())  # no "_orig_mod." prefixes
    # a model changed in structure since (here: narrower) is compiled afresh by its own stage
    fast.conv2, fast.bn2, fast.fc = (
        torch.nn.Conv2d(8, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.Linear(4, 10),
    )
    fit(fast, data, {**cfg, "compile": True}, device=cpu, files=StageFiles("f", tmp_path / "b"))
    assert len(compiled) == 2 and compiled[1] is fast
    assert not any("_orig_mod" in k for k in fast.state_dict())
