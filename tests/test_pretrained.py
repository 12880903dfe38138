"""``pretrained=PATH`` with a library's weights file, and model names end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from cli_helpers import FAST
from cli_helpers import prune_run as _prune_run
from safetensors.torch import save_file

from prune_cli.engine import load_checkpoint, save_checkpoint
from prune_cli.engine.checkpoint import load_pretrained
from prune_cli.errors import CheckpointError
from prune_cli.models import build_model
from prune_cli.models.traits import stem_and_classifier
from prune_cli.report import build_report


def prune_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _prune_run(*args, cwd=cwd, threads=2)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("prune-run: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory) -> Path:
    """torchvision's resnet18 as its ImageNet weights file looks (1000 classes, 3 channels)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    return path


def _load(path: Path, *, num_classes: int, in_channels: int, image_size: int, **kwargs):
    model = build_model(
        "torchvision-resnet18",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
    )
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    record = load_pretrained(
        model,
        path,
        expect_arch="torchvision-resnet18",
        replaceable=stem_and_classifier(model, num_classes),
        **kwargs,
    )
    return model, fresh, record


def _assert_loaded_except(model, fresh, path: Path, layers: set[str]) -> None:
    file = load_checkpoint(path)
    file = file.get("state_dict", file)
    for key, value in model.state_dict().items():
        if key.split(".")[0] in layers:
            assert torch.equal(value, fresh[key]), key  # kept at its fresh init
        else:
            assert torch.equal(value, file[key]), key


def test_small_input_replaces_classifier_and_adapted_stem(imagenet_resnet18: Path) -> None:
    model, fresh, record = _load(imagenet_resnet18, num_classes=10, in_channels=3, image_size=32)
    weights = record["pretrained_weights"]
    assert record["pretrained"] == str(imagenet_resnet18) and weights["format"] == "state_dict"
    assert weights["replaced"]["classifier"]["layer"] == "fc"
    assert weights["replaced"]["classifier"]["keys"] == ["fc.bias", "fc.weight"]
    assert "(1000, 512) in the file, (10, 512) in the model" in json.dumps(weights["replaced"])
    assert weights["replaced"]["stem"]["layer"] == "conv1"  # the CIFAR 3x3 stem
    assert weights["tensors_loaded"] == weights["tensors_in_model"] - 3
    _assert_loaded_except(model, fresh, imagenet_resnet18, {"fc", "conv1"})


def test_imagenet_input_loads_everything(imagenet_resnet18: Path) -> None:
    model, fresh, record = _load(imagenet_resnet18, num_classes=1000, in_channels=3, image_size=64)
    # 64 px still gets the small-input stem; 224 px keeps torchvision's: every tensor loads.
    assert set(record["pretrained_weights"]["replaced"]) == {"stem"}
    model, fresh, record = _load(imagenet_resnet18, num_classes=1000, in_channels=3, image_size=224)
    assert record["pretrained_weights"]["replaced"] == {}
    _assert_loaded_except(model, fresh, imagenet_resnet18, set())


def test_grayscale_replaces_only_the_stem_and_classifier(imagenet_resnet18: Path) -> None:
    model, fresh, record = _load(imagenet_resnet18, num_classes=7, in_channels=1, image_size=224)
    assert set(record["pretrained_weights"]["replaced"]) == {"stem", "classifier"}
    assert (
        "conv1.weight is (64, 3, 7, 7) in the file, (64, 1, 7, 7) in the model"
        in (record["pretrained_weights"]["replaced"]["stem"]["reason"])
    )
    _assert_loaded_except(model, fresh, imagenet_resnet18, {"fc", "conv1"})


def test_safetensors_and_wrapped_state_dicts(imagenet_resnet18: Path, tmp_path: Path) -> None:
    state = torch.load(imagenet_resnet18, weights_only=True)
    safe = tmp_path / "model.safetensors"
    save_file(state, safe)
    model, fresh, record = _load(safe, num_classes=10, in_channels=3, image_size=32)
    assert record["pretrained_weights"]["format"] == "safetensors"
    _assert_loaded_except(model, fresh, imagenet_resnet18, {"fc", "conv1"})
    wrapped = tmp_path / "train_checkpoint.pth.tar"  # timm's training script layout
    torch.save({"epoch": 3, "state_dict": state}, wrapped)
    model, fresh, _ = _load(wrapped, num_classes=10, in_channels=3, image_size=32)
    _assert_loaded_except(model, fresh, imagenet_resnet18, {"fc", "conv1"})


def test_any_other_mismatch_is_the_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(tvm.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        _load(path, num_classes=10, in_channels=3, image_size=32)
    message = str(info.value)
    assert "does not fit model 'torchvision-resnet18'" in message and "unexpected keys" in message
    assert "\n" not in message
    state = tvm.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:32]  # a pruned file
    pruned = tmp_path / "pruned.pth"
    torch.save(state, pruned)
    with pytest.raises(CheckpointError) as info:
        _load(pruned, num_classes=1000, in_channels=3, image_size=224)
    assert "shape mismatches (e.g. layer1.0.conv1.weight: (32, 64, 3, 3)" in str(info.value)


def test_own_checkpoints_are_checked_by_arch(tmp_path: Path) -> None:
    model = build_model("torchvision-resnet18", num_classes=10, in_channels=3, image_size=32)
    path = tmp_path / "trained.pt"
    save_checkpoint(path, {"model": model.state_dict(), "arch": "torchvision-resnet18"})
    record = load_pretrained(model, path, expect_arch="torchvision-resnet18")
    assert record == {"pretrained": str(path)}
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, path, expect_arch="torchvision-resnet34")
    assert "pass model=torchvision model.arch=resnet18 or another checkpoint" in str(info.value)


# ----------------------------------------------------------------------------- end to end
def test_prune_run_torchvision_model_from_imagenet_weights(
    imagenet_resnet18: Path, tmp_path: Path
) -> None:
    proc = prune_run(
        *FAST, "model=torchvision", "model.arch=resnet18", f"pretrained={imagenet_resnet18}",
        "method=none", "finetune.epochs=0", "hydra.run.dir=run",
        # ResNet-18 at 32 px is 0.56 GMACs an image: keep the evaluation small.
        "dataset.test_size=32", "metrics.latency.enabled=false", "export.onnx=false",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    log = (run / "prune-run.log").read_text()
    assert "pretrained: classifier fc replaced (kept at its fresh initialisation)" in log
    assert "pretrained: stem conv1 replaced" in log
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == "torchvision-resnet18" and m["status"] == "completed"
    assert set(m["train"]["pretrained_weights"]["replaced"]) == {"classifier", "stem"}
    final = load_checkpoint(run / "checkpoints" / "final.pt")
    assert final["arch"] == "torchvision-resnet18"
    file = torch.load(imagenet_resnet18, weights_only=True)
    assert torch.equal(final["model"]["layer1.0.conv1.weight"], file["layer1.0.conv1.weight"])
    assert torch.equal(final["model"]["layer4.1.bn2.running_var"], file["layer4.1.bn2.running_var"])


TINYNETS = """
from torch import nn


def small_cnn(num_classes, in_channels, image_size, width=8):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
"""


def test_custom_model_name_everywhere(tmp_path: Path) -> None:
    # A factory in the directory prune-run starts in: no package, no install.
    (tmp_path / "tinynets.py").write_text(TINYNETS)
    proc = prune_run(
        *FAST, "model=custom", "model._target_=tinynets.small_cnn", "+model.width=6", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = "custom-tinynets.small_cnn"
    (run,) = [p.parent for p in (tmp_path / "outputs" / "runs").rglob("metrics.json")]
    assert run.name.endswith(f"_{name}_shapes_magnitude")
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == name and m["final"]["params"] > 0
    (entry,) = (tmp_path / "outputs" / "cache").iterdir()
    assert entry.name.startswith(f"{name}_shapes_")
    trained = run / "checkpoints" / "trained.pt"
    assert load_checkpoint(trained)["arch"] == name
    assert build_report([run], tmp_path / "report", plots=False)["rows"][0]["model"] == name
    # The report reads the name from the config of a run that wrote no metrics.json.
    broken = tmp_path / "broken"
    shutil.copytree(run / ".hydra", broken / ".hydra")
    assert build_report([broken], tmp_path / "report2", plots=False)["rows"][0]["model"] == name
    # A checkpoint of one architecture is refused for another, with the overrides to use.
    proc = prune_run(
        *FAST, "model=torchvision", "model.arch=resnet18", f"pretrained={trained}", cwd=tmp_path
    )
    assert proc.returncode == 2
    line = _error_line(proc)
    assert f"is for model '{name}', not 'torchvision-resnet18'" in line
    assert "pass model=custom model._target_=tinynets.small_cnn" in line


def test_missing_arch_and_unlisted_options_are_one_line(tmp_path: Path) -> None:
    proc = prune_run("model=torchvision", cwd=tmp_path)
    assert proc.returncode == 2
    assert "model=torchvision needs model.arch=..." in _error_line(proc)
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()
    proc = prune_run("model=custom", "model.arch=x", cwd=tmp_path)
    assert "model=custom needs model._target_=..." in _error_line(proc)
    proc = prune_run(
        "model=torchvision", "model.arch=densenet121", "model.drop_rate=0.2", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "pass it as +model.drop_rate=0.2" in _error_line(proc)
