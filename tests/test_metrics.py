"""Tests of parameter/MAC/sparsity counting, NetScore and latency (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from prune_cli.metrics.counting import count_macs, count_params, prunable_layers, sparsity
from prune_cli.metrics.latency import compare_latency, measure_latency
from prune_cli.metrics.netscore import netscore, unit_label
from prune_cli.models import MODELS

# ---------------------------------------------------------------------------------------------
# MACs


def test_conv_macs_methods_doc_example() -> None:
    # docs/methods.md §2.2: 3 -> 16 channels, 3x3 kernel, 32x32 output: 3*3*3*16*32*32 = 442,368.
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    macs = count_macs(conv, (3, 32, 32))
    assert macs.dense == 442_368
    assert macs.nonzero == 442_368
    assert macs.per_layer == {"": (442_368, 442_368)}


def test_nonzero_macs_after_zeroing_half_the_filters() -> None:
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[:8] = 0.0  # 8 of 16 filters: 216 of 432 weights remain
    macs = count_macs(conv, (3, 32, 32))
    assert macs.dense == 442_368
    assert macs.nonzero == 216 * 32 * 32 == 221_184


def test_strided_and_grouped_conv_and_linear_with_leading_dims() -> None:
    # stride 2, padding 1 on 32 px -> 16x16 output: 3*3*3*16*16*16 = 110,592.
    assert count_macs(nn.Conv2d(3, 16, 3, stride=2, padding=1), (3, 32, 32)).dense == 110_592
    # groups 2: each output sees 4/2 = 2 input channels: 3*3*2*8*6*6 = 5,184.
    assert count_macs(nn.Conv2d(4, 8, 3, padding=1, groups=2), (4, 6, 6)).dense == 5_184
    # Linear(6 -> 5) on a (1, 3, 2, 6) input: 6*5 MACs for each of the 3*2 leading positions.
    assert count_macs(nn.Linear(6, 5), (3, 2, 6)).dense == 180


class _Net(nn.Module):
    """conv(3->4, 3x3, pad 1) -> BN -> ReLU -> maxpool 2 -> conv again(shared) -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv(x))))  # 8x8 -> 4x4
        x = self.conv2(x)
        x = self.conv2(x) + x  # called twice; the addition is free
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_macs_per_layer_and_free_ops_and_repeated_calls() -> None:
    model = _Net()
    macs = count_macs(model, (3, 8, 8))
    conv = 3 * 3 * 3 * 4 * 8 * 8  # 6,912
    conv2 = 3 * 3 * 4 * 4 * 4 * 4  # 2,304 per call
    fc = 4 * 2
    assert macs.per_layer == {"conv": (conv, conv), "conv2": (2 * conv2, 2 * conv2), "fc": (fc, fc)}
    assert macs.dense == conv + 2 * conv2 + fc == 11_528


def test_count_macs_restores_mode_and_counts_functional_convs_with_their_weight() -> None:
    class MaskedConv(nn.Conv2d):
        """A custom layer that convolves with weight * mask (as masked-pruning layers do)."""

        def __init__(self) -> None:
            super().__init__(1, 2, 3, bias=False)
            self.register_buffer("mask", torch.ones_like(self.weight))
            self.mask[1] = 0.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight * self.mask)

    model = nn.Sequential(MaskedConv()).train()
    macs = count_macs(model, (1, 5, 5))  # 3x3 output
    assert model.training
    assert macs.dense == 9 * 2 * 9 == 162
    assert macs.nonzero == 9 * 1 * 9 == 81
    assert macs.per_layer == {"0": (162, 81)}


def _flop_counter_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros((1, *input_size)))
    return counter.get_total_flops() // 2


INPUTS = {"cifar": ((3, 32, 32), 10), "fer": ((1, 48, 48), 7), "imagenet": ((3, 224, 224), 1000)}
# Wide ResNets are CIFAR models (no downsampling stem): at 224 px WRN-28-10 is 250 GMACs a pass.
MAC_CASES = [
    pytest.param(name, *INPUTS[data], id=f"{name}-{data}")
    for name in MODELS.names()
    for data in INPUTS
    if not (name.startswith("wrn") and data == "imagenet")
]


@pytest.mark.parametrize(("name", "input_size", "num_classes"), MAC_CASES)
def test_dense_macs_equal_torch_flop_counter(
    name: str, input_size: tuple[int, int, int], num_classes: int
) -> None:
    # The factory directly (not build_model): this test is about counting, not the fit check.
    model = MODELS.get(name)(num_classes, input_size[0], input_size[1]).eval()
    assert count_macs(model, input_size).dense == _flop_counter_macs(model, input_size)


# ---------------------------------------------------------------------------------------------
# params and sparsity


def _hand_model() -> nn.Sequential:
    """conv 3->4 3x3 no bias (108) + BN(4) (8) + flatten-free linear 4->2 (8 + 2): 126 params."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # no accidental zeros (BN bias starts at 0)
        model[0].weight[0] = 0.0  # 27 of 108 conv weights
        model[4].weight[0, :2] = 0.0  # 2 of 8 linear weights
        model[4].bias[1] = 0.0  # biases are params but not prunable weights
    return model


def test_count_params_total_and_nonzero() -> None:
    assert count_params(_hand_model()) == (126, 126 - 27 - 2 - 1)


def test_count_params_counts_tied_parameters_once() -> None:
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    b.weight = a.weight
    assert count_params(nn.Sequential(a, b)) == (9, 9)


def test_count_params_and_sparsity_respect_torch_prune_masks() -> None:
    model = _hand_model()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    prune.custom_from_mask(model[0], "weight", mask=(torch.arange(108) < 54).reshape(4, 3, 3, 3))
    total, nonzero = count_params(model)
    assert total == 126  # weight_orig counts once; the mask is a buffer
    assert nonzero == 126 - 54 - 2 - 1
    assert sparsity(model)[1]["0"] == 0.5


def test_sparsity_global_and_per_layer() -> None:
    model = _hand_model()
    global_sparsity, per_layer = sparsity(model)
    assert per_layer == {"0": 27 / 108, "4": 2 / 8}
    assert global_sparsity == pytest.approx((27 + 2) / (108 + 8))
    conv_only, per_conv = sparsity(model, include_linear=False)
    assert per_conv == {"0": 0.25}
    assert conv_only == pytest.approx(0.25)


def test_prunable_layers_in_module_order() -> None:
    model = _Net()
    assert [n for n, _ in prunable_layers(model)] == ["conv", "conv2", "fc"]
    assert [n for n, _ in prunable_layers(model, include_linear=False)] == ["conv", "conv2"]


# ---------------------------------------------------------------------------------------------
# NetScore


@pytest.mark.parametrize(
    ("acc", "params", "macs", "m_unit", "expected"),
    [
        (93.0, 1e6, 0.1e9, 1e9, 88.7393),
        (93.0, 1e6, 0.1e9, 1e6, 58.7393),
        (100.0, 1e6, 1e9, 1e9, 80.0),
        (90.0, 0.5e6, 50e6, 1e9, 94.1903),
        (71.8, 3.47e6, 0.300e9, 1e9, 74.0705),  # MobileNetV2
        (75.2, 25.6e6, 3.86e9, 1e9, 55.1004),  # ResNet-50
    ],
)
def test_netscore_table(acc: float, params: float, macs: float, m_unit: float, expected: float):
    assert netscore(acc, params, macs, m_unit=m_unit) == pytest.approx(expected, abs=1e-4)


def test_netscore_properties() -> None:
    base = netscore(80.0, 2e6, 3e8)
    assert netscore(80.0, 2e6, 3e8, m_unit=1e6) - base == pytest.approx(-30.0, abs=1e-9)
    assert netscore(80.0, 4e6, 3e8) - base == pytest.approx(-20 * 0.5 * math.log10(2), abs=1e-9)
    assert netscore(80.0, 4e6, 3e8) - base == pytest.approx(-3.0103, abs=1e-4)
    assert netscore(40.0, 2e6, 3e8) - base == pytest.approx(-12.0412, abs=1e-4)
    assert netscore(0.0, 1e6, 1e9) == -math.inf


@pytest.mark.parametrize(
    "args", [(-1.0, 1e6, 1e9), (101.0, 1e6, 1e9), (90.0, 0.0, 1e9), (90.0, 1e6, -5.0)]
)
def test_netscore_rejects_invalid_inputs(args: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="NetScore"):
        netscore(*args)


def test_unit_label() -> None:
    assert [unit_label(u) for u in (1, 1e3, 1e6, 1e9, 1e12)] == ["", "K", "M", "G", "T"]
    assert unit_label(1e5) == "100000"
    with pytest.raises(ValueError):
        unit_label(0)


# ---------------------------------------------------------------------------------------------
# latency


def test_measure_latency_keys_and_positive_numbers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).train()
    result = measure_latency(model, (3, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=3)
    assert set(result) == {"b1", "b4"}
    for key, batch in (("b1", 1), ("b4", 4)):
        entry = result[key]
        assert set(entry) == {"batch", "latency_ms", "throughput"}
        assert entry["batch"] == batch
        assert entry["latency_ms"] > 0 and entry["throughput"] > 0
        assert entry["throughput"] == pytest.approx(batch / (entry["latency_ms"] / 1e3))
    assert model.training  # measured on a copy: the caller's model is untouched
    nhwc = measure_latency(model, (3, 8, 8), batch_sizes=(2,), repeats=1, channels_last=True)
    assert nhwc["b2"]["latency_ms"] > 0


@pytest.mark.parametrize(
    "kwargs", [{"batch_sizes": ()}, {"batch_sizes": (0,)}, {"repeats": 0}, {"warmup": -1}]
)
def test_measure_latency_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        measure_latency(nn.Linear(2, 2), (1, 1, 2), **kwargs)


def test_compiled_latency_compiles_copies_and_never_times_the_compilation(monkeypatch) -> None:
    # The "eager" backend: Dynamo without inductor's C++ build (minutes on a small CPU).
    compiled: list[nn.Module] = []
    calls: list[int] = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        compiled.append(module)
        net = real_compile(module, backend="eager", **kwargs)
        original = net.forward

        def counted(x):
            calls.append(len(x))
            return original(x)

        net.forward = counted
        return net

    monkeypatch.setattr(torch, "compile", eager_compile)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    result = measure_latency(model, (3, 8, 8), batch_sizes=(1, 2), warmup=0, repeats=2,
                             compile=True)  # fmt: skip
    assert len(compiled) == 1 and compiled[0] is not model  # a copy is compiled
    assert set(result) == {"b1", "b2"} and result["b2"]["latency_ms"] > 0
    # warmup=0 still runs one untimed (compiling) forward per batch size before the 2 timed ones
    assert calls == [1, 1, 1, 2, 2, 2]


def test_compare_latency_measures_every_model_at_every_batch_size() -> None:
    small, large = nn.Conv2d(3, 4, 3), nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1)] * 8)
    result = compare_latency(
        {"small": small, "large": large}, (3, 16, 16), batch_sizes=(1, 8), warmup=0, repeats=2
    )
    assert set(result) == {"small", "large"}
    for lat in result.values():
        assert set(lat) == {"b1", "b8"}
        assert lat["b8"]["batch"] == 8
        assert lat["b8"]["throughput"] == pytest.approx(8 / (lat["b8"]["latency_ms"] / 1e3))
    assert small.training and large.training  # measured on copies: the callers' modes are kept


def test_stage_figures_are_declared_once() -> None:
    """metrics.json, the log line, the trackers and prune-report take the stage figures from
    one table (prune_cli.metrics.figures): adding a figure is one entry there."""
    from prune_cli import report, tracking
    from prune_cli.metrics.figures import REPORT_COLUMNS, STAGE_FIGURES, log_line
    from prune_cli.metrics.report import stage_metrics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    units = {"p_unit": 1e6, "m_unit": 1e9, "count": "nonzero"}
    figures = stage_metrics(model, {"top1": 50.0, "top5": 100.0, "loss": 0.7}, (3, 8, 8), units)
    assert list(figures) == [f.key for f in STAGE_FIGURES]
    assert tuple(f.key for f in STAGE_FIGURES if f.tracked) == tracking.STAGE_KEYS
    assert set(REPORT_COLUMNS) <= set(report.CSV_COLUMNS)
    assert figures["netscore"] == figures["netscore_nonzero"]
    params, macs = figures["params"], figures["macs"]
    assert log_line("final", figures) == (
        f"final: top1 50.00%  params {params} (nonzero {params})  MACs {macs} (nonzero {macs})"
        f"  sparsity 0.0000  NetScore {figures['netscore']:.2f}"
    )
