"""Training precision and memory format: what ``auto`` picks, what is refused, and the recorded
fallback of a model that cannot run channels-last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import TINY_DATA, TINY_FINETUNE, run_in_process
from conftest import TinyNet
from torch import nn

from prune_cli.engine import precision as prec
from prune_cli.engine.precision import (
    channels_last_failure,
    choose_memory_format,
    resolve_precision,
)
from prune_cli.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ())


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ("amx_bf16",))


def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(native_bf16: None) -> None:
    p = resolve_precision("auto", CPU)
    assert (p.name, p.dtype, p.native) == ("bf16", torch.bfloat16, True)
    assert p.record() == {
        "requested": "auto",
        "used": "bf16",
        "why": "CPU with native bf16 (amx_bf16)",
        "cpu_bf16": ["amx_bf16"],
    }
    assert p.grad_scaler() is None  # bf16 has fp32's range: no loss scaling


def test_auto_is_fp32_without_native_bf16_and_explicit_bf16_says_it_is_emulated(
    no_bf16: None,
) -> None:
    p = resolve_precision("auto", CPU)
    assert p.name == "fp32" and p.dtype is None and "no native bf16" in p.why
    p = resolve_precision("bf16", CPU)
    assert p.name == "bf16" and not p.native and "emulated" in p.why


def test_fp16_on_a_cpu_and_unknown_names_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="on a CPU choose one of: auto, fp32, bf16"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision 'half'; choose one of"):
        resolve_precision("half", CPU)


class ViewNet(TinyNet):
    """A user model that reshapes an activation with ``.view`` across the channel dimension:
    fine in NCHW, an error on a channels-last tensor (channels are its innermost dimension)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        n, c, h, w = x.shape
        rows = x.view(n, c * h, w)  # merges C and H: needs NCHW strides
        return self.fc(rows.view(n, c, h * w).mean(-1))


def test_channels_last_check_keeps_the_model_as_it_was(tiny_net: nn.Module) -> None:
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    batch = torch.randn(4, 3, 8, 8)
    fp32 = resolve_precision("fp32", CPU)
    assert channels_last_failure(tiny_net, batch, fp32) is None
    assert tiny_net.training and all(p.grad is None for p in tiny_net.parameters())
    for key, value in tiny_net.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics untouched
        assert value.is_contiguous()
    torch.manual_seed(0)
    view = ViewNet()
    assert "view" in channels_last_failure(view, batch, fp32)
    on, note = choose_memory_format("auto", view, batch, fp32)
    assert not on and note.startswith("memory_format auto: training contiguous (NCHW)")
    with pytest.raises(ConfigError, match="memory_format channels_last: the model fails"):
        choose_memory_format("channels_last", view, batch, fp32)
    assert choose_memory_format("contiguous", tiny_net, batch, fp32) == (False, None)


def test_a_run_records_its_numerics_and_the_memory_format_fallback(tmp_path: Path) -> None:
    factory = "test_precision.view_net"
    run_in_process(
        tmp_path / "run",
        [
            *TINY_DATA,
            *TINY_FINETUNE,
            "model=custom",
            f"model._target_={factory}",
            "metrics.latency.enabled=false",
            "export.onnx=false",
            f"cache.dir={tmp_path / 'cache'}",
        ],
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    for stage in ("train", "finetune"):
        numerics = metrics[stage]["numerics"]
        assert numerics["requested"] == "auto" and numerics["eval_precision"] == "fp32"
        assert numerics["memory_format"] == {"requested": "auto", "used": "contiguous"}
    assert any("training contiguous (NCHW)" in w for w in metrics["warnings"])


def view_net(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A ``model=custom`` factory for the run above."""
    del image_size
    torch.manual_seed(0)
    return ViewNet(in_channels, num_classes)


def test_latency_runs_in_the_metrics_precision_and_says_which(tiny_net: nn.Module) -> None:
    """metrics.precision reaches the latency measurement: the forwards run under its autocast,
    the block records the precision used, and the cached dense figures of another precision
    are not reused (the key differs; fp32 keeps the key of the figures stored before)."""
    from prune_cli.metrics.versus import dense_vs_final

    seen: list[torch.dtype] = []
    probe = nn.Sequential(tiny_net, nn.Flatten())
    probe.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    keys: list[dict] = []

    def cached(key: dict, compute: Any) -> tuple[dict, str]:
        keys.append(dict(key))
        return dict(compute()), "measured"

    setting = {
        "input_size": (3, 8, 8),
        "batch_sizes": [2],
        "device": torch.device("cpu"),
        "warmup": 0,
        "repeats": 1,
        "compile": False,
        "interleaved": False,
        "cached": cached,
    }
    fp32 = dense_vs_final("torch", probe, probe, **setting)
    assert fp32["precision"] == "fp32" and set(seen) == {torch.float32}
    seen.clear()
    bf16 = dense_vs_final("torch", probe, probe, **setting, precision="bf16")
    assert bf16["precision"] == "bf16" and set(seen) == {torch.bfloat16}
    assert "precision" not in keys[0] and keys[1]["precision"] == "bf16"
    assert bf16["speedup"].keys() == {"b2"}
