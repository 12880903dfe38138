"""Published checkpoints as their users have them: other code bases' key layouts, the one-line
refusal of a file that does not fit, the ``weights=`` configs, and the expected-accuracy check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA, run_in_process
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from prune_cli.cli import CONFIG_DIR, group_choices, group_selection
from prune_cli.engine.checkpoint import load_pretrained
from prune_cli.errors import CheckpointError, ConfigError
from prune_cli.metrics.expected import check_expected_accuracy
from prune_cli.models import build_model
from prune_cli.models.base import key_map_of
from prune_cli.schema import validate_config

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _composed(*overrides: str) -> DictConfig:
    """The job config ``prune-run`` would compose (``${hydra:...}`` resolvable)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _model(name: str = "resnet20", shortcut: str = "A", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=3, image_size=32, shortcut=shortcut)


def _foreign_layout(model: torch.nn.Module) -> dict:
    """``model``'s weights as akamaster/pytorch_resnet_cifar10 saves them: a DataParallel
    ``module.`` prefix, the classifier named ``linear``, an option-B projection named
    ``shortcut``, no BatchNorm ``num_batches_tracked`` (PyTorch < 0.4.1), wrapped with a
    non-tensor entry."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("fc.", "linear.").replace(".downsample.", ".shortcut.")
        state[f"module.{key}"] = value.clone()
    return {"state_dict": state, "best_prec1": 91.78}


def _load(path: Path, model: torch.nn.Module, name: str = "resnet20") -> dict:
    return load_pretrained(model, path, expect_arch=name, key_map=key_map_of(name))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_foreign_layout_loads_exactly(tmp_path: Path, shortcut: str) -> None:
    source = _model(shortcut=shortcut, seed=1)
    path = tmp_path / "resnet20-foreign.th"
    torch.save(_foreign_layout(source), path)
    target = _model(shortcut=shortcut, seed=2)
    record = _load(path, target)
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    weights = record["pretrained_weights"]
    assert weights["prefixes_stripped"] == ["module."]
    assert weights["weights_key"] == "state_dict"
    assert weights["ignored_entries"] == ["best_prec1"]
    assert weights["key_map"]["renamed"] == (2 if shortcut == "A" else 12)
    assert weights["bn_counters_missing"] == (19 if shortcut == "A" else 21)
    assert weights["replaced"] == {}


def test_file_of_the_other_shortcut_is_refused_in_one_line_naming_keys(tmp_path: Path) -> None:
    path = tmp_path / "option_a.th"
    torch.save(_foreign_layout(_model(shortcut="A")), path)
    with pytest.raises(CheckpointError) as err:
        _load(path, _model(shortcut="B"))
    message = str(err.value)
    assert "\n" not in message
    assert "10 missing keys (layer2.0.downsample.0.weight" in message
    assert "needs model.shortcut=A" in message
    path = tmp_path / "option_b.th"
    torch.save(_foreign_layout(_model(shortcut="B")), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(layer2\.0\.shortcut\.0\.weight"):
        _load(path, _model(shortcut="A"))


def test_unmatched_keys_are_named_and_nothing_is_guessed(tmp_path: Path) -> None:
    checkpoint = _foreign_layout(_model())
    checkpoint["state_dict"]["module.classifier.weight"] = checkpoint["state_dict"].pop(
        "module.linear.weight"
    )
    path = tmp_path / "renamed_head.th"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as err:
        _load(path, _model())
    message = str(err.value)
    assert "1 missing keys (fc.weight)" in message
    assert "1 unexpected keys (classifier.weight)" in message
    # A deeper file into a shallower model: the extra blocks are named, with the hint.
    path = tmp_path / "resnet32.th"
    torch.save(_foreign_layout(_model("resnet32")), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys .*check the model's depth"):
        _load(path, _model())


def test_key_map_needs_a_declared_family(tmp_path: Path) -> None:
    """Without the family's key map (a model that declares none) nothing is renamed."""
    path = tmp_path / "foreign.th"
    torch.save(_foreign_layout(_model()), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(linear\.weight"):
        load_pretrained(_model(), path, expect_arch="resnet20", key_map=None)


@pytest.mark.parametrize("name", group_choices("weights"))
def test_weights_configs_validate_and_pin_what_the_file_needs(name: str) -> None:
    cfg = validate_config(_composed(f"weights={name}"))
    weights = cfg.weights
    assert weights.name == name and cfg.model.name == weights.model
    assert cfg.pretrained == weights.file and Path(weights.file).suffix in (".th", ".pt", ".pth")
    assert 0 < weights.top1 <= 100 and weights.test_images >= 1
    assert weights.source and weights.license
    for key in ("mean", "std"):
        assert len(getattr(cfg.dataset, key)) == 3


def test_weights_config_refuses_another_model_or_file() -> None:
    other_model = _composed("weights=resnet20_cifar10_akamaster", "model=resnet56")
    other_file = _composed("weights=resnet20_cifar10_akamaster", "pretrained=x.th")
    with pytest.raises(ConfigError, match="is for model 'resnet20', not 'resnet56'"):
        validate_config(other_model)
    with pytest.raises(ConfigError, match="drop one of the two"):
        validate_config(other_file)


def test_group_spellings() -> None:
    assert group_selection(["experiment=a", "+weights=b", "weights=c", "+experiment=d"]) == [
        "+experiment=a",
        "weights=b",
        "weights=c",
        "+experiment=d",
    ]


def test_expected_accuracy_check() -> None:
    weights = {"name": "w", "top1": 91.73, "test_images": 10000, "tolerance": 0.5}
    record, warning = check_expected_accuracy(weights, 91.5, 10000)
    assert warning is None and record["gap"] == pytest.approx(-0.23) and record["comparable"]
    record, warning = check_expected_accuracy(weights, 83.85, 10000)
    assert not record["within_tolerance"]
    assert "-7.88 points from the published 91.73%" in warning
    assert "dataset.mean" in warning
    record, warning = check_expected_accuracy(weights, 90.0, 2000)
    assert record["comparable"] is False and "this test split has 2000" in warning


def test_run_says_when_the_pretrained_model_misses_its_published_accuracy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mine.th"
    torch.save(_foreign_layout(_model()), path)  # untrained: near chance on any data
    overrides = [
        *TINY_DATA,
        "method=none",
        "model.shortcut=A",
        f"pretrained={path}",
        "+weights.top1=91.73",
        "metrics.latency.enabled=false",
        "export.onnx=false",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    pipeline = run_in_process(tmp_path / "run", overrides)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    record = metrics["weights"]
    assert record["expected_top1"] == 91.73 and not record["within_tolerance"]
    assert any("points from the published 91.73%" in w for w in metrics["warnings"])
    assert pipeline.metrics["train"]["pretrained_weights"]["key_map"]["renamed"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "models").is_dir(), reason="../shared/models is not here")
@pytest.mark.parametrize(
    ("name", "top1"), [("resnet20_cifar10_akamaster", 91.73), ("resnet56_cifar10_akamaster", 93.39)]
)
def test_published_checkpoints_score_their_published_accuracy(
    tmp_path: Path, name: str, top1: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNE_CLI_MODELS", str(SHARED / "models"))
    monkeypatch.setenv("PRUNE_CLI_DATA", str(SHARED / "data"))
    overrides = [f"weights={name}", "method=none", "metrics.latency.enabled=false"]
    run_in_process(tmp_path / "run", [*overrides, "export.onnx=false", f"cache.dir={tmp_path}"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert abs(metrics["dense_reference"]["top1"] - top1) <= 0.05
    assert metrics["weights"]["within_tolerance"] and "warnings" not in metrics
