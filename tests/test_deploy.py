"""Latency where models are deployed (prune_cli.metrics.deploy): the exported ONNX models in ONNX
Runtime beside PyTorch eager, in metrics.json, the report and the config schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import TINY_DATA, run_in_process
from conftest import TinyNet
from hydra import compose, initialize_config_dir
from torch import nn

from prune_cli.cli import CONFIG_DIR
from prune_cli.errors import ConfigError
from prune_cli.export import onnx_bytes
from prune_cli.metrics import deploy
from prune_cli.metrics.deploy import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    choose_provider,
    onnxruntime_latency,
)
from prune_cli.report import build_report
from prune_cli.schema import validate_config

ort = pytest.importorskip("onnxruntime")


class Narrow(TinyNet):
    """TinyNet with a quarter of the channels: what channel pruning leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)


def test_dense_and_pruned_are_timed_in_onnx_runtime() -> None:
    torch.manual_seed(0)
    out = onnxruntime_latency(
        {"baseline": TinyNet(), "final": Narrow()}, (3, 16, 16), [1, 8], warmup=1, repeats=3
    )
    assert out["provider"] == CPU_PROVIDER
    assert out["threads"] == torch.get_num_threads()
    assert out["version"] == ort.__version__
    for name in ("baseline", "final"):
        assert sorted(out[name]) == ["b1", "b8"]
        entry = out[name]["b8"]
        assert entry["batch"] == 8 and entry["latency_ms"] > 0
        assert entry["throughput"] == pytest.approx(8 / (entry["latency_ms"] / 1e3))
    ratio = out["baseline"]["b1"]["latency_ms"] / out["final"]["b1"]["latency_ms"]
    assert out["speedup"]["b1"] == pytest.approx(ratio, rel=1e-3)


def test_the_session_computes_what_the_model_computes() -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    session = deploy._session(onnx_bytes(model, (3, 16, 16)), CPU_PROVIDER, 1)
    x = torch.randn(5, 3, 16, 16)
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-5)


def test_rounds_are_interleaved() -> None:
    calls: list[str] = []
    runners = {name: (lambda n=name: calls.append(n)) for name in ("a", "b")}
    seconds = deploy.time_interleaved(runners, warmup=1, repeats=3)
    assert calls == ["a", "b", *["a", "b"] * 3]
    assert set(seconds) == {"a", "b"}


def test_provider_follows_the_device() -> None:
    assert choose_provider("cpu", [CUDA_PROVIDER, CPU_PROVIDER]) == (CPU_PROVIDER, None)
    assert choose_provider("cuda", [CUDA_PROVIDER, CPU_PROVIDER]) == (CUDA_PROVIDER, None)
    provider, note = choose_provider(torch.device("cuda", 0), [CPU_PROVIDER])
    assert provider == CPU_PROVIDER and "pip install onnxruntime-gpu" in note


def test_a_model_that_does_not_export_is_skipped_and_said(monkeypatch, caplog) -> None:
    def refuse(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX is not supported")

    monkeypatch.setattr(deploy, "onnx_bytes", refuse)
    out = onnxruntime_latency({"baseline": TinyNet(), "final": Narrow()}, (3, 8, 8), [1])
    assert out == {
        "skipped": "ONNX export or session failed: RuntimeError: Exporting the operator "
        "'aten::foo' to ONNX is not supported"
    }
    assert "latency: onnxruntime skipped" in caplog.text


def test_without_onnxruntime_it_is_skipped(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    out = onnxruntime_latency({"final": TinyNet()}, (3, 8, 8), [1])
    assert out == {"skipped": "onnxruntime is not installed (pip install onnxruntime)"}


def test_backends_are_checked_in_one_line() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", ["cache.dir=/tmp", "metrics.latency.backends=[torch,tensorrt]"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == (
        "unknown metrics.latency.backends[1] 'tensorrt'; choose one of: torch, onnxruntime"
    )


def test_a_run_records_onnx_runtime_latency_and_the_report_shows_it(tmp_path: Path) -> None:
    tiny = [
        *TINY_DATA,
        "finetune.epochs=0",
        "export.onnx=false",
        "method=l1_filter",
        "metrics.latency.batch_sizes=[1,4]",
        "metrics.latency.warmup=1",
        "metrics.latency.repeats=2",
        "metrics.latency.backends=[onnxruntime]",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    run_in_process(tmp_path / "run", tiny)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    latency = metrics["latency"]
    assert set(latency) == {"onnxruntime"}  # only the backend asked for
    runtime = latency["onnxruntime"]
    assert runtime["provider"] == CPU_PROVIDER
    assert sorted(runtime["speedup"]) == ["b1", "b4"]
    assert runtime["final"]["b4"]["batch"] == 4
    # eta from ONNX Runtime's own latencies and the dense MAC counts of the two models
    reduction = metrics["dense_reference"]["macs"] / metrics["final"]["macs"]
    assert reduction > 1.5  # l1_filter at ratio 0.5 removes channels physically
    for key in ("b1", "b4"):
        speedup = (
            runtime["dense_reference"][key]["latency_ms"] / runtime["final"][key]["latency_ms"]
        )
        assert runtime["speedup_efficiency"][key] == round(speedup / reduction, 4)

    # the report: ORT speedups after PyTorch's, one column per batch size
    latency["speedup"] = {"b1": 1.5, "b4": 2.5}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    build_report([tmp_path / "run"], plots=False)
    header = (tmp_path / "run" / "summary.csv").read_text().splitlines()[0].split(",")
    at = header.index("netscore_count") + 1
    assert header[at : at + 6] == [
        "speedup_b1", "speedup_b4", "ort_speedup_b1", "ort_speedup_b4", "ort_eta_b1", "ort_eta_b4"
    ]  # fmt: skip
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| speedup b1 | speedup b4 | ORT speedup b1 | ORT speedup b4 | ORT η b1 |" in md
    assert f"| {runtime['speedup']['b4']:.2f} |" in md
