"""Export (prune_cli.export): ONNX (the default) and TorchScript copies are checked against the
model, and a run whose model does not export finishes and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA, TINY_FINETUNE, run_in_process
from conftest import TinyNet
from custom_models import Gated

from prune_cli.errors import ExportError
from prune_cli.export import export_onnx, export_torchscript, load_torchscript, onnx_bytes

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


def test_the_onnx_copy_is_checked_in_onnx_runtime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    data = onnx_bytes(model, INPUT)
    assert export_onnx(model, tmp_path / "m.onnx", INPUT, data=data).read_bytes() == data
    gated = Gated(num_classes=10, in_channels=3, image_size=8)
    with pytest.raises(ExportError, match=r"ONNX export of Gated: .*export\.onnx=false"):
        export_onnx(gated, tmp_path / "g.onnx", INPUT)
    assert not (tmp_path / "g.onnx").exists()
    # bytes made before (for the latency) are checked too: another model's graph is refused
    with pytest.raises(ExportError, match="ONNX export of TinyNet"):
        export_onnx(TinyNet().eval(), tmp_path / "other.onnx", INPUT, data=data)


@pytest.mark.parametrize("latency", ["onnxruntime", "off"])
def test_a_run_whose_model_does_not_export_finishes_and_says_so(
    tmp_path: Path, latency: str
) -> None:
    tiny = [
        *TINY_DATA,
        *TINY_FINETUNE,
        "model=custom",
        "model._target_=custom_models.Gated",
        "method=magnitude",
        "export.torchscript=true",
        f"cache.dir={tmp_path / 'cache'}",
        *(["metrics.latency.backends=[onnxruntime]", "metrics.latency.batch_sizes=[1]",
           "metrics.latency.repeats=1", "metrics.latency.warmup=0"]
          if latency == "onnxruntime" else ["metrics.latency.enabled=false"]),
    ]  # fmt: skip
    run_in_process(tmp_path / "run", tiny)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert "final" in metrics
    error = metrics["export"]["error"]
    assert "exported graph's logits differ" in error and "traced copy's logits differ" in error
    for fmt in ("ONNX", "TorchScript"):
        assert any(w.startswith(f"export skipped: {fmt} export of Gated") for w in
                   metrics["warnings"])  # fmt: skip
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "final.pt").is_file()
    assert not (checkpoints / "final.ts").exists() and not (checkpoints / "final.onnx").exists()


def test_the_exported_onnx_is_the_graph_whose_latency_was_measured(tmp_path: Path) -> None:
    tiny = [
        *TINY_DATA,
        *TINY_FINETUNE,
        "metrics.latency.backends=[onnxruntime]",
        "metrics.latency.batch_sizes=[1]",
        "metrics.latency.repeats=1",
        "metrics.latency.warmup=0",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    pipeline = run_in_process(tmp_path / "run", tiny)
    metrics = pipeline.metrics
    assert "final" in metrics["latency"]["onnxruntime"]
    exported = Path(metrics["export"]["onnx"])
    assert exported == tmp_path / "run" / "checkpoints" / "final.onnx"
    assert exported.read_bytes() == pipeline.final_onnx  # made once, for both
    assert "torchscript" not in metrics["export"]  # opt-in since PyTorch deprecates it
    assert metrics["timings"]["export"] < metrics["timings"]["total"]
