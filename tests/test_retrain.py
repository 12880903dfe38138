"""Distillation, rewinding and from-scratch controls of the fine-tune stage (issue 13 part B):
prune_cli.engine.distill, prune_cli.retrain, the rewind points of prune_cli.cache."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import FAST, TINY_DATA, TINY_FINETUNE, composed, prune_run, run_in_process
from conftest import TinyNet
from omegaconf import OmegaConf

from prune_cli.cache import (
    RewindSaver,
    load_rewind_point,
    rewind_point_path,
    save_rewind_point,
    saved_rewind_points,
)
from prune_cli.data import build_dataset
from prune_cli.engine.distill import Distiller, kd_loss
from prune_cli.engine.hooks import CompositeHooks, TrainHooks
from prune_cli.engine.loop import StageFiles, fit
from prune_cli.engine.optim import build_optimizer, build_scheduler, lr_factor
from prune_cli.engine.settings import train_options
from prune_cli.errors import ConfigError
from prune_cli.methods import build_method
from prune_cli.pruning import magnitude_masks
from prune_cli.pruning.channels import channel_prune
from prune_cli.pruning.importance import FilterNorm
from prune_cli.retrain import load_start_weights, scratch_seed, scratch_steps, stage_settings
from prune_cli.schema import FinetuneOptions, check_plan, finetune_options, validate_config

CFG = {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
       "schedule": "cosine", "eval_batch_size": 64, "select_best": False, "precision": "fp32",
       "memory_format": "contiguous"}  # fmt: skip


def ft(**finetune) -> FinetuneOptions:
    """``finetune.*`` typed, the keys not given from configs/finetune/default.yaml."""
    return finetune_options(finetune)


@pytest.fixture(scope="module")
def data():
    return build_dataset(
        {"name": "shapes", "train_size": 96, "test_size": 32, "image_size": 8, "seed": 0}
    )


# ----------------------------------------------------------------------------- distillation
def test_kd_with_alpha_0_is_exactly_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    labels = torch.tensor([0, 3, 1, 1, 2])
    for smoothing in (0.0, 0.1):
        got = kd_loss(student, teacher, labels, 0.0, 3.0, smoothing)
        assert torch.equal(got, F.cross_entropy(student, labels, label_smoothing=smoothing))


def test_kd_with_alpha_1_is_the_hand_computed_kl_times_t_squared() -> None:
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0, 1.0]])
    t = 2.0

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    p, q = softmax([0.0, 3.0, 1.0]), softmax([1.0, 2.0, 0.0])  # teacher, student
    by_hand = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = kd_loss(student, teacher, torch.tensor([0]), 1.0, t)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)
    # a mix is the weighted sum of the two terms
    ce = F.cross_entropy(student, torch.tensor([0])).item()
    mixed = kd_loss(student, teacher, torch.tensor([0]), 0.25, t).item()
    assert mixed == pytest.approx(0.75 * ce + 0.25 * by_hand, rel=1e-6)


def test_the_teacher_is_never_updated_while_the_student_learns_from_it(data, tmp_path) -> None:
    torch.manual_seed(0)
    teacher, student = TinyNet(), TinyNet()
    teacher.train()  # whatever mode it comes in, its BN statistics must not move
    before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    distiller = Distiller(teacher, alpha=0.7, temperature=3.0)
    files = StageFiles("finetune", tmp_path)
    fit(student, data, CFG, device=torch.device("cpu"), files=files, criterion=distiller)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit, buffers too
    assert not all(torch.equal(student_before[k], v) for k, v in student.state_dict().items())


# ----------------------------------------------------------------------------- rewinding
def _trained(model: torch.nn.Module) -> torch.nn.Module:
    """Stand-in for dense training: every weight and BN statistic moves away from its init."""
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v))
    return model


def test_rewind_to_init_restores_the_kept_weights_bit_for_bit_masked(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    save_rewind_point(tmp_path, "init", model)
    init = load_rewind_point(tmp_path, "init", torch.device("cpu"))
    dense = copy.deepcopy(_trained(model))
    masks = magnitude_masks(model, 0.6, "global", "exact", False)
    load_start_weights(model, dense, init, {}, masks)
    state = model.state_dict()
    for name, value in init.items():
        if name in masks:
            keep = masks[name].bool()
            assert torch.equal(state[name][keep], value[keep])
            assert bool((state[name][~keep] == 0).all())
        else:
            assert torch.equal(state[name], value)


def test_rewind_to_init_slices_the_kept_channels_bit_for_bit_structured() -> None:
    torch.manual_seed(0)
    dense = TinyNet()
    init = copy.deepcopy(dense.state_dict())
    _trained(dense)
    pruned = channel_prune(dense, FilterNorm(), 0.5, input_size=(3, 8, 8), scope="layerwise")
    k1 = torch.tensor(pruned.info["keep"]["conv1"])
    k2 = torch.tensor(pruned.info["keep"]["conv2"])
    model = pruned.model
    load_start_weights(model, dense, init, pruned.info, {})
    got = model.state_dict()
    want = {
        "conv1.weight": init["conv1.weight"][k1],
        "conv2.weight": init["conv2.weight"][k2][:, k1],
        "fc.weight": init["fc.weight"][:, k2],
        "fc.bias": init["fc.bias"],
    }
    for bn, keep in (("bn1", k1), ("bn2", k2)):
        for part in ("weight", "bias", "running_mean", "running_var"):
            want[f"{bn}.{part}"] = init[f"{bn}.{part}"][keep]
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_rewind_points_are_saved_at_epoch_k_and_listed(data, tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    save_rewind_point(tmp_path, "init", model)
    seen: dict[int, dict] = {}

    class Spy(TrainHooks):
        def on_epoch_end(self, model, epoch):
            seen[epoch + 1] = copy.deepcopy(model.state_dict())

    hooks = CompositeHooks([Spy(), RewindSaver(tmp_path, [1])])
    fit(model, data, CFG, device=torch.device("cpu"), files=StageFiles("t", tmp_path), hooks=hooks)
    assert saved_rewind_points(tmp_path) == ["init", "epoch:1"]
    assert rewind_point_path(tmp_path, "epoch:1").name == "rewind_epoch1.pt"
    saved = load_rewind_point(tmp_path, "epoch:1", torch.device("cpu"))
    assert all(torch.equal(saved[k], v) for k, v in seen[1].items())
    assert not all(torch.equal(saved[k], v) for k, v in seen[2].items())


def test_lr_and_late_rewinding_follow_the_training_schedule_from_the_rewind_point() -> None:
    train = train_options({"epochs": 10, "lr": 0.1, "schedule": "cosine", "batch_size": 8})
    finetune = {"epochs": 3, "lr": 0.001, "schedule": "constant", "batch_size": 8}
    for rewind, start, epochs in (("lr", 7, 3), ("epoch:4", 4, 6), ("init", 0, 10)):
        settings = stage_settings(ft(**finetune, rewind=rewind), train, "fp32")
        assert settings.epochs == epochs and settings.options is train
        opt = build_optimizer(torch.nn.Linear(2, 2), settings.options)
        span = {"schedule_epochs": settings.schedule_epochs, "schedule_start": start}
        assert settings.schedule_start == start
        sched = build_scheduler(opt, settings.options, settings.epochs, **span)
        lrs = []
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        want = [0.1 * lr_factor(train, e, 10) for e in range(start, 10)]
        assert lrs == pytest.approx(want)
    plain = stage_settings(ft(**finetune), train, "fp32")
    assert plain.options == ft(**finetune) and plain.epochs == 3 and plain.schedule_start == 0


# ----------------------------------------------------------------------------- from scratch
def test_scratch_b_trains_the_steps_of_the_mac_budget_formula(data, tmp_path) -> None:
    steps_per_epoch = math.ceil(96 / 32)
    steps = scratch_steps(2, steps_per_epoch, dense_macs=1000, pruned_macs=370)
    assert steps == round(2 * 3 * 1000 / 370) == 16  # 16.2 -> 16, inside the 6th epoch
    assert scratch_steps(2, 3, 1000, 1000) == 6  # never fewer than the dense training's
    assert scratch_steps(1, 3, 1000, 400) == 8  # 7.5 rounds half up

    class Count(TrainHooks):
        n = 0

        def after_step(self, model):
            Count.n += 1

    cfg = {**CFG, "epochs": math.ceil(steps / steps_per_epoch), "max_steps": steps}
    result = fit(TinyNet(), data, cfg, device=torch.device("cpu"),
                 files=StageFiles("scratch", tmp_path), hooks=Count())  # fmt: skip
    assert Count.n == steps and len(result.history) == 6


def test_scratch_seed_differs_from_the_run_seed() -> None:
    assert scratch_seed(0) not in (0, 1) and scratch_seed(0) == scratch_seed(0)
    assert scratch_seed(0) != scratch_seed(1)


# ----------------------------------------------------------------------------- bad values
def _config(**finetune) -> dict:
    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(root), version_base=None):
        cfg = compose("config", overrides=["cache.dir=/tmp/x"])
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, value in finetune.items():  # a group merged key by key, as Hydra merges
        node = raw["finetune"]
        node[key] = {**node[key], **value} if isinstance(value, dict) else value
    return raw


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        ({"rewind": "epoch:x"}, "finetune.rewind 'epoch:x' has no epoch number K >= 1; valid: "
                                "none, init, lr, or epoch:K (K an integer >= 1)"),
        ({"rewind": "late"}, "finetune.rewind 'late' is not a rewind point; valid: "),
        ({"from_scratch": "twice"}, "unknown finetune.from_scratch 'twice'; choose one of: "
                                    "none, same_epochs, same_budget"),
        ({"kd": {"alpha": 1.5}}, "finetune.kd.alpha 1.5 is out of range; valid: a number in"),
        ({"kd": {"temperature": 0}}, "finetune.kd.temperature 0 is out of range; valid: "),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_errors(finetune: dict, message: str) -> None:
    raw = _config(**finetune)
    raw["cache"]["dir"] = "/tmp/x"
    with pytest.raises(ConfigError) as err:
        validate_config(OmegaConf.create(raw))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def _check(plan: FinetuneOptions, method: str = "magnitude", **kw) -> None:
    m = build_method({"name": method}, 0.5)
    args = {"train_epochs": 4, "pretrained": False, **kw}
    check_plan(plan, method_name=m.name, no_weight_reset=m.no_weight_reset, **args)


@pytest.mark.parametrize(
    ("plan", "method", "kw", "message"),
    [
        (ft(rewind="init"), "soft_sharing", {},
         "finetune.rewind=init is unsound for method 'soft_sharing': it shares weights"),
        (ft(from_scratch="same_epochs"), "template_reuse", {},
         "finetune.from_scratch=same_epochs is unsound for method 'template_reuse'"),
        (ft(rewind="epoch:2"), "dynamic_filter", {},
         "finetune.rewind=epoch:2 is unsound for method 'dynamic_filter'"),
        (ft(rewind="init", from_scratch="same_budget"), "magnitude", {},
         "finetune.rewind=init and finetune.from_scratch=same_budget exclude each other"),
        (ft(rewind="epoch:4"), "magnitude", {},
         "finetune.rewind=epoch:4 leaves nothing to retrain (train.epochs=4); valid: epoch:1"),
        (ft(rewind="init"), "l1_filter", {"pretrained": True},
         "finetune.rewind=init needs the weights saved during dense training"),
        (ft(rewind="lr", epochs=0), "magnitude", {},
         "finetune.rewind=lr replays the last finetune.epochs=0 epochs"),
        # gradual pruning happens during the retraining: no pruned model before it
        (ft(rewind="init"), "magnitude", {"schedule": "gradual"},
         "finetune.rewind=init with method.schedule=gradual would choose the masks from the "
         "rewound weights"),
        (ft(rewind="epoch:2"), "random", {"schedule": "gradual"},
         "finetune.rewind=epoch:2 with method.schedule=gradual"),
        (ft(from_scratch="same_budget"), "magnitude", {"schedule": "gradual"},
         "finetune.from_scratch=same_budget with method.schedule=gradual has no pruned "
         "architecture"),
        (ft(from_scratch="same_epochs"), "double_pruning", {"schedule": "gradual"},
         "finetune.from_scratch=same_epochs with method.schedule=gradual"),
    ],
)  # fmt: skip
def test_unsound_combinations_are_one_line_errors(plan, method, kw, message) -> None:
    with pytest.raises(ConfigError) as err:
        _check(plan, method, **kw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_sound_combinations_pass() -> None:
    for method in ("magnitude", "random", "l1_filter", "network_slimming", "double_pruning"):
        _check(ft(kd={"alpha": 0.5}, rewind="init"), method)
        _check(ft(rewind="epoch:3"), method)
        _check(ft(from_scratch="same_budget"), method)
    _check(ft(kd={"alpha": 1.0}), "soft_sharing")  # kd alone: the run warns, nothing fails
    _check(ft(rewind="lr"), "l1_filter", pretrained=True)
    _check(ft(rewind="lr"), "magnitude", schedule="gradual")  # the learning rate only
    _check(ft(rewind="init"), "magnitude", schedule="iterative")


def test_gradual_with_rewinding_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"^finetune.rewind=init with method.schedule=gradual"):
        validate_config(composed("method.schedule=gradual", "finetune.rewind=init"))


# ----------------------------------------------------------------------------- end to end
def test_cli_distils_and_rewinds_to_init_and_refuses_a_missing_rewind_point(
    tmp_path: Path,
) -> None:
    args = [*FAST, "finetune.kd.alpha=0.5", "finetune.rewind=init", "export.onnx=false"]
    proc = prune_run(*args, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "completed"
    kd = m["finetune"]["kd"]
    assert (kd["alpha"], kd["temperature"], kd["teacher_source"]) == (0.5, 4.0, "baseline")
    rewind = m["finetune"]["rewind"]
    assert rewind["to"] == "init" and Path(rewind["source"]).name == "rewind_init.pt"
    assert m["finetune"]["epochs"] == 1  # train.epochs: retrained with the training recipe
    # the teacher was loaded, not trained: only the dense training and the retraining ran
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["train", "finetune"]
    # an entry without the rewind point (trained before they were saved) is refused, clearly
    Path(rewind["source"]).unlink()
    proc = prune_run(*args, "hydra.run.dir=run2", cwd=tmp_path)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("prune-run: error: finetune.rewind=init: the trained model in ")
    assert "has no saved init weights (saved there: none;" in error and "delete" in error


@pytest.mark.slow
def test_a_sweep_over_none_and_late_rewinding_trains_the_epoch_k_entry_itself(
    tmp_path: Path,
) -> None:
    fast = [a for a in FAST if not a.startswith("train.epochs")]
    proc = prune_run("-m", *fast, "train.epochs=2", "export.onnx=false",
                     "finetune.rewind=none,epoch:1,init", "hydra.sweep.subdir=${hydra.job.num}",
                     cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for path in (tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"):
        m = json.loads(path.read_text())
        assert m["status"] == "completed", m["error"]
        runs[m["finetune"].get("rewind", {}).get("to", "none")] = m
    assert sorted(runs) == ["epoch:1", "init", "none"]
    late = runs["epoch:1"]["finetune"]
    assert Path(late["rewind"]["source"]).name == "rewind_epoch1.pt"
    assert late["epochs"] == 1 and late["rewind"]["schedule"] == "train.* schedule, epochs 2..2"
    # the epoch:1 run trained its own entry; none and init share the plain one
    entries = {runs[k]["train"]["cache_entry"] for k in runs}
    assert (
        len(entries) == 2
        and runs["none"]["train"]["cache_entry"] == runs["init"]["train"]["cache_entry"]
    )


TINY = [*TINY_DATA, *TINY_FINETUNE, "metrics.latency.enabled=false", "export.onnx=false"]


@pytest.mark.parametrize("method", ["magnitude", "l1_filter"])
def test_iterative_pruning_rewinds_before_every_round(tmp_path: Path, method: str) -> None:
    """Iterative pruning with rewinding (Frankle & Carbin): every round's retraining starts
    from the rewound weights with the training recipe, not only the last one."""
    overrides = [
        *TINY,
        "train.epochs=2",
        f"method={method}",
        "method.schedule=iterative",
        "method.rounds=2",
        "finetune.rewind=epoch:1",
        f"cache.dir={tmp_path / 'c'}",
    ]
    metrics = run_in_process(tmp_path / "run", overrides).metrics  # fmt: skip
    assert metrics["status"] == "completed"
    for stage in ("finetune_round_1", "finetune"):
        rewind = metrics[stage]["rewind"]
        assert rewind["to"] == "epoch:1" and Path(rewind["source"]).name == "rewind_epoch1.pt"
        assert rewind["schedule"] == "train.* schedule, epochs 2..2"
        assert metrics[stage]["epochs"] == 1  # train.epochs - K
    assert "every round" in metrics["finetune"]["rewind"]["rounds"]
    assert metrics["schedule"]["points"][0]["stages"] == [
        "round_1", "round_1_finetuned"]  # fmt: skip


def test_slimming_retrained_after_rewinding_says_it_has_no_sparsity_term(tmp_path: Path) -> None:
    overrides = [*TINY, "method=network_slimming", "finetune.rewind=init",
                 f"cache.dir={tmp_path / 'c'}"]  # fmt: skip
    metrics = run_in_process(tmp_path / "run", overrides).metrics
    assert metrics["status"] == "completed"
    assert metrics["finetune"]["rewind"]["method_training"] == "not applied: train.* alone"
    (warning,) = [w for w in metrics["warnings"] if w.startswith("finetune.rewind=init")]
    assert "without what network_slimming adds to dense training (sparsity-trained" in warning
