"""Pruned models that run as fast as they are small (issue 26, Section 2).

- speedup efficiency (eta = measured speedup / MAC reduction) computed from the measured numbers,
  recorded per backend and batch size, and shown by the report;
- ``round_to`` (an int or ``auto``): kept counts are multiples, the model stays exact (pruned ==
  masked in eval) and the achieved ratio is recorded exactly;
- ``allocation=latency``: the greedy knapsack on fake latency tables (the solver's promises), the
  table's prediction and cache, and one real end-to-end cut of a small model.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from test_channels import assert_equals_masked, registered
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.counting import count_macs
from prune_cli.metrics.efficiency import add_speedup_efficiency, speedup_efficiency
from prune_cli.metrics.layer_latency import LatencyTable, LayerShape, table_setting
from prune_cli.pruning.allocation import (
    Layer,
    candidate_widths,
    kept_values,
    latency_cut,
    model_layers,
    solve,
)
from prune_cli.pruning.channels import allowed_width, channel_prune, rebuild, rounded_keep
from prune_cli.pruning.groups import channel_groups
from prune_cli.pruning.importance import FilterNorm
from prune_cli.report import make_rows, read_run, render_markdown

INPUT = (3, 32, 32)
SMALL = (3, 8, 8)


class SmallResNet(nn.Module):
    """A stem, one residual block on a 32-channel stream, a 64-channel conv, a classifier:
    three channel groups (the stream, the block's inner channels, the last conv's)."""

    def __init__(self) -> None:
        super().__init__()
        cbr = lambda i, o, s=1: [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o)]  # noqa: E731
        self.stem = nn.Sequential(*cbr(3, 32), nn.ReLU())
        self.block = nn.Sequential(*cbr(32, 32), nn.ReLU(), *cbr(32, 32))
        self.head = nn.Sequential(*cbr(32, 64, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(self.head(x).flatten(1))


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return SmallResNet().eval()


@pytest.fixture(scope="module")
def table_cache(tmp_path_factory: pytest.TempPathFactory):
    """One latency cache for the tests of this module: the first measures, the others reuse."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("latency")
        mp.setenv("PRUNE_CLI_LATENCY_CACHE", str(path))
        yield path


# ----------------------------------------------------------------------------- eta
def _lat(**ms: float) -> dict:
    return {k: {"batch": int(k[1:]), "latency_ms": v} for k, v in ms.items()}


def test_eta_is_speedup_over_mac_reduction() -> None:
    dense, final = _lat(b1=10.0, b64=400.0), _lat(b1=5.0, b64=100.0)
    # speedups 2 and 4 at 4x fewer MACs: eta 0.5 and 1.0
    assert speedup_efficiency(dense, final, 4_000, 1_000) == {"b1": 0.5, "b64": 1.0}
    # a batch size measured for one model only is left out; no MAC reduction: eta = speedup
    assert speedup_efficiency(_lat(b1=3.0), _lat(b1=2.0, b8=1.0), 7, 7) == {"b1": 1.5}
    with pytest.raises(ValueError, match="MAC counts must be positive"):
        speedup_efficiency(dense, final, 100, 0)
    with pytest.raises(ValueError, match="latencies must be positive"):
        speedup_efficiency(_lat(b1=0.0), final, 2, 1)


def test_eta_is_added_to_both_backends_but_not_to_a_skipped_one() -> None:
    latency = {
        "dense_reference": _lat(b1=6.0),
        "final": _lat(b1=4.0),
        "speedup": {"b1": 1.5},
        "onnxruntime": {"dense_reference": _lat(b1=3.0), "final": _lat(b1=1.0)},
    }
    add_speedup_efficiency(latency, 300, 100)
    assert latency["mac_reduction"] == 3.0
    assert latency["speedup_efficiency"] == {"b1": 0.5}
    assert latency["onnxruntime"]["speedup_efficiency"] == {"b1": 1.0}
    skipped = {"onnxruntime": {"skipped": "onnxruntime is not installed"}}
    add_speedup_efficiency(skipped, 300, 100)
    assert skipped == {"onnxruntime": {"skipped": "onnxruntime is not installed"}}


def test_the_report_shows_eta_after_the_speedups(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    metrics = {
        "status": "completed", "model": "resnet20", "dataset": "shapes", "method": "l1_filter",
        "ratio": 0.5, "seed": 0, "final": {"top1": 50.0, "macs": 100},
        "dense_reference": {"top1": 60.0, "macs": 200},
        "latency": {
            "speedup": {"b1": 1.2, "b64": 1.8}, "speedup_efficiency": {"b1": 0.6, "b64": 0.9},
            "onnxruntime": {"speedup": {"b1": 1.7}, "speedup_efficiency": {"b1": 0.85}},
        },
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows, columns = make_rows([read_run(run)])
    at = columns.index("netscore_count") + 1
    assert columns[at : at + 6] == [
        "speedup_b1", "speedup_b64", "eta_b1", "eta_b64", "ort_speedup_b1", "ort_eta_b1"
    ]  # fmt: skip
    assert (rows[0]["eta_b64"], rows[0]["ort_eta_b1"]) == (0.9, 0.85)
    md = render_markdown(rows, columns, [], [run], [])
    assert "| speedup b1 | speedup b64 | η b1 | η b64 | ORT speedup b1 | ORT η b1 |" in md
    assert "| 1.80 | 0.60 | 0.90 | 1.70 | 0.85 |" in md


# ----------------------------------------------------------------------------- round_to
def test_auto_rounding_is_16_for_groups_of_more_than_16_channels() -> None:
    # what oneDNN's and ONNX Runtime's blocked convolutions want on an AVX-512 CPU
    assert [rounded_keep(k, 64, "auto") for k in (3, 15, 16, 17, 40, 63)] == [
        16, 16, 16, 32, 48, 64,
    ]  # fmt: skip
    assert [rounded_keep(k, 16, "auto") for k in (3, 11)] == [3, 11]  # narrow: any count
    assert rounded_keep(12, 24, "auto") == 16 and rounded_keep(20, 24, "auto") == 24
    assert [rounded_keep(k, 64, 8) for k in (1, 8, 9)] == [8, 8, 16]
    assert not allowed_width(12, 64, "auto") and allowed_width(12, 16, "auto")
    assert allowed_width(24, 24, "auto") and allowed_width(24, 64, 8)
    for bad in (0, -2, "fast", True):
        with pytest.raises(ConfigError, match="round_to"):
            rounded_keep(5, 16, bad)


def test_rounding_keeps_the_model_exact_and_records_the_ratio() -> None:
    round_to = "auto"  # (integer round_to: tests/test_channels.py, tests/test_slimming.py)
    dense = registered("resnet20")
    pruned = channel_prune(
        dense, FilterNorm(), 0.3, input_size=INPUT, scope="layerwise", round_to=round_to
    )
    info = pruned.info
    for kept, total in info["channels"].values():
        assert allowed_width(kept, total, round_to)
        # rounding only adds channels back: at least what ratio 0.3 keeps
        assert kept >= total - math.floor(0.3 * total)
    # the achieved ratio is the exact count of removed channels over the ranked ones
    kept = sum(k for k, _ in info["channels"].values())
    total = sum(t for _, t in info["channels"].values())
    assert info["rates"]["channels"] == {
        "target": 0.3, "achieved": round((total - kept) / total, 6), "total": total
    }  # fmt: skip
    assert info["rates"]["channels"]["achieved"] < 0.3  # rounding kept more than asked
    assert info["round_to"] == round_to
    assert_equals_masked(dense, pruned.model, info)
    # and the structure is rebuilt exactly from the record (resume, reload)
    again = rebuild(dense, info)
    assert [p.shape for p in again.parameters()] == [p.shape for p in pruned.model.parameters()]


def test_round_to_auto_is_a_method_option_and_a_bad_one_is_one_line() -> None:
    method = build_method({"name": "l1_filter", "round_to": "auto"}, 0.5)
    assert method.opts.round_to == "auto"
    with pytest.raises(ConfigError) as err:
        build_method({"name": "l1_filter", "round_to": "fast"}, 0.5)
    assert "method.round_to" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the solver
def _chain(widths: dict[str, int], cost_per_mac: dict[str, float]) -> tuple[list[Layer], dict]:
    """A chain of 1x1 convs: layer i reads group i-1 and writes group i (group "g0" reads the
    3 image channels); ``cost_per_mac`` prices each group's producer."""
    layers, prev = [], None
    names = list(widths)
    for i, g in enumerate(names):
        cin = 3 if prev is None else widths[prev]
        shape = LayerShape("conv", cin, widths[g], hw=(8, 8))
        layer = Layer(f"conv{i}", shape, macs=float(cin * widths[g] * 64))
        layer.outs[g] = 1.0
        if prev is not None:
            layer.ins[prev] = 1.0
        else:
            layer.in_fixed = 3
        layers.append(layer)
        prev = g
    rates = {layer.name: cost_per_mac[g] for layer, g in zip(layers, names)}

    def cost(layer: Layer, a: float, b: float) -> float:
        return rates[layer.name] * a * b

    return layers, cost


def _solve(widths: dict[str, int], cost_per_mac: dict[str, float], budget: float, **kw):
    layers, cost = _chain(widths, cost_per_mac)
    candidates = {g: candidate_widths(n, **kw) for g, n in widths.items()}
    values = {g: kept_values(torch.ones(n), sum(x.macs for x in layers if g in x.groups))
              for g, n in widths.items()}  # fmt: skip
    dense = sum(x.macs for x in layers)
    return solve(layers, widths, candidates, values, cost, budget * dense), layers


def test_when_latency_follows_the_macs_the_allocation_is_uniform() -> None:
    widths = {"g0": 16, "g1": 16, "g2": 16, "g3": 16}
    chosen, layers = _solve(widths, dict.fromkeys(widths, 1.0), budget=0.5)
    assert chosen.reached and chosen.macs <= 0.5 * sum(x.macs for x in layers)
    kept = [chosen.kept[g] for g in ("g1", "g2")]  # the inner groups are alike
    assert abs(kept[0] - kept[1]) <= 1 and 8 <= min(kept) <= max(kept) <= 13


def test_latency_expensive_layers_are_cut_more_at_the_same_macs() -> None:
    widths = {"g0": 16, "g1": 16, "g2": 16, "g3": 16}
    even, _ = _solve(widths, dict.fromkeys(widths, 1.0), budget=0.5)
    # g1's producer costs 3x per MAC: the allocation cuts g1 deeper, and the latency falls more
    # for the same MAC budget than an allocation priced by MACs alone
    rates = {**dict.fromkeys(widths, 1.0), "g1": 3.0}
    skewed, layers = _solve(widths, rates, budget=0.5)
    assert skewed.reached
    assert skewed.kept["g1"] < even.kept["g1"]
    _, cost = _chain(widths, rates)
    lat = lambda kept: sum(cost(x, *x.widths(kept)) for x in layers)  # noqa: E731
    assert lat(skewed.kept) < lat(even.kept)
    assert min(skewed.kept.values()) >= 2  # the log utility never empties a group


def test_the_budget_is_met_closely_and_widths_respect_round_to() -> None:
    widths = {"g0": 64, "g1": 64, "g2": 32}
    chosen, layers = _solve(widths, dict.fromkeys(widths, 1.0), budget=0.4, round_to=8)
    dense = sum(x.macs for x in layers)
    assert chosen.reached and 0.3 * dense < chosen.macs <= 0.4 * dense  # refilled up to it
    assert all(k % 8 == 0 for k in chosen.kept.values())
    # an unreachable budget is reported, not met silently
    tight, _ = _solve(widths, dict.fromkeys(widths, 1.0), budget=1e-6, min_channels=16)
    assert not tight.reached


def test_candidates_are_multiples_from_min_channels_to_the_size() -> None:
    assert candidate_widths(16) == list(range(1, 17))
    assert candidate_widths(64) == list(range(4, 65, 4))
    assert candidate_widths(64, min_channels=0.5, round_to=16) == [32, 48, 64]
    assert candidate_widths(2048)[:2] == [128, 256] and candidate_widths(2048)[-1] == 2048
    assert candidate_widths(30, round_to=16) == [16, 30]
    assert candidate_widths(64, round_to="auto") == [16, 32, 48, 64]
    assert candidate_widths(16, round_to="auto") == list(range(1, 17))


# ----------------------------------------------------------------------------- the table
def test_the_table_predicts_from_measured_points_and_caches_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNE_CLI_LATENCY_CACHE", str(tmp_path))  # an empty cache of its own
    shape = LayerShape("conv", 8, 8, kernel=(3, 3), padding=(1, 1), hw=(4, 4))
    table = LatencyTable(table_setting("torch"))
    table.entries[shape.key()] = {"b1": {"dense": 4.0, "in": {"4": 2.0}, "out": {"4": 3.0}}}
    assert table.predict(shape, 1, 8, 8) == 4.0
    assert table.predict(shape, 1, 4, 4) == pytest.approx(2.0 * 3.0 / 4.0)  # independent dims
    assert table.predict(shape, 1, 6, 8) == pytest.approx(3.0)  # interpolated
    assert table.predict(shape, 1, 2, 8) == pytest.approx(1.0)  # proportional below
    # a real measurement of the missing widths, saved and found again
    table.measure(shape, 2, [2, 4], [4], warmup=0, repeats=1)
    assert table.measured == 4  # dense, in 2, in 4, out 4
    table.save()
    again = LatencyTable.load("torch")
    assert again.path == table.path and again.path.parent == tmp_path
    assert again.missing(shape, 2, [2, 4], [4]) == ([], [], False)
    assert again.predict(shape, 2, 4, 4) > 0


def test_model_layers_follow_the_groups() -> None:
    dense = registered("resnet20")
    groups = channel_groups(dense, INPUT, verify=False)
    layers = {x.name: x for x in model_layers(dense, groups, INPUT)}
    full = {g.name: g.size for g in groups}
    for x in layers.values():  # at the dense widths every layer has its own channel counts
        assert x.widths(full) == (x.shape.in_channels, x.shape.out_channels)
    assert sum(x.macs_at(full) for x in layers.values()) <= count_macs(dense, INPUT).dense
    conv = layers["layer1.0.conv1"]
    assert conv.shape.kind == "conv" and conv.shape.hw == (32, 32)
    half = {n: s // 2 for n, s in full.items()}
    assert conv.widths(half) == (8, 8) and conv.macs_at(half) == conv.macs / 4


def test_latency_cut_reaches_the_mac_budget_and_rebuilds(table_cache: Path) -> None:
    """One real (small) measurement: a small residual net on 8x8 images, batch 1."""
    dense = small_resnet()
    pruned, record = latency_cut(
        dense, FilterNorm(), SMALL, ratio=0.5, macs_reduction=2.0, batch_sizes=[1],
        round_to="auto",
    )  # fmt: skip
    macs = count_macs(pruned.model, SMALL).dense
    assert record["reached"] and count_macs(dense, SMALL).dense / macs >= 2.0
    assert record["macs"] == macs and record["predicted_ms"]["b1"] > 0
    assert record["table"]["measured"] > 0 and Path(record["table"]["file"]).is_file()
    assert Path(record["table"]["file"]).parent == table_cache
    info = pruned.info
    assert info["rates"]["channels"]["target"] == info["rates"]["channels"]["achieved"]
    assert all(allowed_width(k, t, "auto") for k, t in info["channels"].values())
    again = rebuild(dense, info)
    again.load_state_dict(pruned.model.state_dict())
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), pruned.model.eval()(x))
    # the second cut measures nothing: the table came from the cache
    _, second = latency_cut(
        copy.deepcopy(dense), FilterNorm(), SMALL, ratio=0.5, macs_reduction=2.0,
        batch_sizes=[1], round_to="auto",
    )  # fmt: skip
    assert second["table"]["measured"] == 0


def test_l1_filter_allocation_latency_records_it_and_refuses_schedules(table_cache: Path) -> None:
    dense = small_resnet()
    ctx = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=SMALL)
    cfg = {"name": "l1_filter", "allocation": "latency", "latency_batch_sizes": [1]}
    result = build_method(cfg, 0.5).prune(dense, ctx)
    alloc = result.info["allocation"]
    assert alloc["name"] == "latency" and alloc["budget_from"] == "the uniform cut at ratio 0.5"
    assert result.info["round_to"] == "auto"  # a MAC budget: the fast kernels' multiples
    uniform = build_method({"name": "l1_filter"}, 0.5).prune(dense, ctx)
    assert uniform.info["allocation"] == {"name": "uniform"}
    # the default auto keeps a ratio's exact counts, and says why
    assert uniform.info["round_to"] == 1
    assert uniform.info["round_to_rule"]["requested"] == "auto"
    assert "a ratio sets the cut" in uniform.info["round_to_rule"]["why"]
    # the budget is the MACs of the uniform cut (rounded as the allocation rounds)
    budget = channel_prune(
        dense, FilterNorm(), 0.5, input_size=SMALL, scope="layerwise", round_to="auto"
    ).model
    assert alloc["macs"] <= count_macs(budget, SMALL).dense
    assert any("allocation=latency" in w for w in result.info["warnings"])
    with pytest.raises(ConfigError, match="one shot"):
        build_method({**cfg, "schedule": "iterative"}, 0.5)
    with pytest.raises(ConfigError, match="allocation"):
        build_method({"name": "l1_filter", "allocation": "greedy"}, 0.5)
    with pytest.raises(ConfigError, match=r"does not take method\.allocation=latency"):
        build_method({**cfg, "layer_ratios": {"stem.0": 0.5}}, 0.5)
    glob = build_method({"name": "l1_filter", "allocation": "global"}, 0.5).prune(dense, ctx)
    assert glob.info["scope"] == "global" and glob.info["allocation"] == {"name": "global"}


def test_a_conv_in_a_plain_sequence_is_priced_by_both_its_groups() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()  # fmt: skip
    groups = channel_groups(model, (3, 8, 8))
    layers = {x.name: x for x in model_layers(model, groups, (3, 8, 8))}
    assert set(layers["3"].ins) == {"0"} and set(layers["3"].outs) == {"3"}
    assert layers["1"].shape.kind == "bn" and layers["8"].shape.kind == "linear"


def test_a_mac_budget_that_rounding_overshoots_is_said() -> None:
    """The small net's 32-channel groups keep 16 or 32 with round_to=auto: no uniform ratio
    lands near 2x fewer MACs, and the run says how far it went."""
    ctx = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=SMALL)
    cfg = {"name": "l1_filter", "macs_reduction": 2.0}
    result = build_method(cfg, 0.5).prune(small_resnet(), ctx)
    reached = result.info["macs_reduction"]["achieved"]
    assert reached > 2.1
    assert any(f"overshot: {reached:.3f}x" in w for w in result.info["warnings"])
    exact = build_method({**cfg, "round_to": 1}, 0.5).prune(small_resnet(), ctx)
    assert exact.info["macs_reduction"]["achieved"] < 2.1
    assert not any("overshot" in w for w in exact.info["warnings"])
