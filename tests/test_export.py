"""TorchScript export (prune_cli.export): the traced copy is checked against the model, and a run
whose model cannot be traced finishes and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA, TINY_FINETUNE
from conftest import TinyNet
from custom_models import Gated
from hydra import compose, initialize_config_dir

from prune_cli.cli import CONFIG_DIR
from prune_cli.errors import ExportError
from prune_cli.export import export_torchscript, load_torchscript
from prune_cli.pipeline import Pipeline

INPUT = (3, 8, 8)


def test_the_reloaded_copy_computes_what_the_model_computes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    reloaded = load_torchscript(export_torchscript(model, tmp_path / "m.ts", INPUT))
    x = torch.randn(4, *INPUT)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)


def test_a_forward_that_branches_on_values_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Gated(num_classes=10, in_channels=3, image_size=8)
    with pytest.raises(ExportError, match=r"Gated: the traced copy's logits differ .*"
                       r"export\.torchscript=false"):  # fmt: skip
        export_torchscript(model, tmp_path / "m.ts", INPUT)
    assert not (tmp_path / "m.ts").exists()  # no wrong copy left behind


def test_a_run_whose_model_cannot_be_traced_finishes_and_says_so(tmp_path: Path) -> None:
    tiny = [
        *TINY_DATA,
        *TINY_FINETUNE,
        "model=custom",
        "model._target_=custom_models.Gated",
        "method=magnitude",
        "metrics.latency.enabled=false",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", tiny)
    Pipeline(cfg, tmp_path / "run").run()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert "final" in metrics
    assert "traced copy's logits differ" in metrics["export"]["error"]
    assert any(w.startswith("export skipped: TorchScript export of Gated") for w in
               metrics["warnings"])  # fmt: skip
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "final.ts").exists()
