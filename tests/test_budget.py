"""Pruning to a published row: a MAC budget (``method.macs_reduction``) and a paper's per-layer
ratios (``method.layer_ratios`` inline), checked against hand-computed counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA, run_in_process
from torch import nn

from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.models import build_model
from prune_cli.pruning.budget import ratio_for_macs_reduction
from prune_cli.pruning.channels import channel_prune
from prune_cli.pruning.importance import FilterNorm

SIZE = (3, 32, 32)
CTX = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=SIZE)


def _resnet(depth: int, shortcut: str = "A") -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        f"resnet{depth}", num_classes=10, in_channels=3, image_size=32, shortcut=shortcut
    )


def test_ratio_for_a_mac_budget_is_the_smallest_that_reaches_it() -> None:
    model = _resnet(20, "B")
    importance = FilterNorm(p=1, mean=True)

    def cut(ratio: float) -> nn.Module:
        return channel_prune(model, importance, ratio, input_size=SIZE, scope="global").model

    ratio, record = ratio_for_macs_reduction(model, cut, 2.0, SIZE)
    dense = count_macs(model, SIZE).dense
    assert record["reached"] and record["dense_macs"] == dense
    assert dense / count_macs(cut(ratio), SIZE).dense >= 2.0
    assert dense / count_macs(cut(ratio - 2e-3), SIZE).dense < 2.0  # no smaller ratio would do
    assert record["achieved"] == pytest.approx(dense / count_macs(cut(ratio), SIZE).dense, 1e-3)


def test_l1_filter_to_a_mac_budget_records_it_and_says_when_it_cannot() -> None:
    method = build_method(
        {"name": "l1_filter", "scope": "global", "groups": "coupled", "macs_reduction": 2.13},
        0.5,
    )
    result = method.prune(_resnet(20), CTX)
    info = result.info
    assert info["macs_reduction"]["reached"] and info["macs_reduction"]["achieved"] >= 2.13
    dense = count_macs(_resnet(20), SIZE).dense
    assert dense / count_macs(result.model, SIZE).dense == pytest.approx(
        info["macs_reduction"]["achieved"], rel=1e-3
    )
    assert info["rates"]["channels"]["target"] == info["macs_reduction"]["ratio"]
    assert any("ratio 0.5 not used" in w for w in info["warnings"])
    unreachable = build_method({"name": "l1_filter", "macs_reduction": 1000.0}, 0.5)
    info = unreachable.prune(_resnet(20), CTX).info
    assert not info["macs_reduction"]["reached"]
    assert any("not reached" in w for w in info["warnings"])


#: Li et al. 2017 (Table 1), ResNet-56-pruned-B: the first conv of every block pruned, 60% /
#: 30% / 10% of the filters per stage, skipping their layers 16, 18, 20, 34, 38 and 54.
PRUNED_B = {
    **{f"layer1.{b}.conv1": 0.6 for b in range(7)},
    **{f"layer2.{b}.conv1": 0.3 for b in (1, 2, 3, 4, 5, 6, 8)},
    **{f"layer3.{b}.conv1": 0.1 for b in range(1, 8)},
}


def test_li2017_pruned_b_has_the_papers_flops_and_params() -> None:
    """With the paper's counts (floor(p*C) + 1 filters removed: mode reference), the pruned
    ResNet-56 has the 9.09e7 FLOPs and 7.3e5 params of Li et al.'s Table 1. By hand: a filter
    removed from block conv1 saves 9*C*H*W MACs there and 9*C*H*W in conv2 (C = 16, 32, 64;
    H = W = 32, 16, 8), and 9*C*2 + 2 parameters (two conv slices and its BN)."""
    cfg = {"name": "l1_filter", "groups": "single", "mode": "reference"}
    method = build_method({**cfg, "layer_ratios": PRUNED_B}, 0.5)
    model = _resnet(56)
    dense_macs, dense_params = count_macs(model, SIZE).dense, count_params(model)[0]
    pruned = method.prune(model, CTX).model
    removed = {16: 10, 32: 10, 64: 7}  # floor(0.6*16)+1, floor(0.3*32)+1, floor(0.1*64)+1
    side = {16: 32, 32: 16, 64: 8}
    macs_saved = sum(7 * removed[c] * 2 * 9 * c * side[c] ** 2 for c in removed)
    params_saved = sum(7 * removed[c] * (2 * 9 * c + 2) for c in removed)
    assert count_macs(pruned, SIZE).dense == dense_macs - macs_saved == 90_907_264
    assert count_params(pruned)[0] == dense_params - params_saved == 735_712
    assert round(1 - 90_907_264 / dense_macs, 3) == 0.276  # the paper's -27.6%
    assert round(1 - 735_712 / dense_params, 3) == 0.138  # the paper's -13.7% of 8.5e5


def test_inline_layer_ratios_name_unknown_layers() -> None:
    method = build_method({"name": "l1_filter", "layer_ratios": {"layer9.conv1": 0.5}}, 0.5)
    with pytest.raises(Exception, match=r"unknown layer 'layer9.conv1' in the inline mapping"):
        method.prune(_resnet(20), CTX)


def test_slimming_from_pretrained_weights_runs_its_sparsity_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3, image_size=8)
    path = tmp_path / "dense.pt"
    torch.save(model.state_dict(), path)
    run_in_process(
        tmp_path / "run",
        [
            *TINY_DATA,
            "method=network_slimming",
            f"pretrained={path}",
            "finetune.epochs=0",
            "metrics.latency.enabled=false",
            "export.onnx=false",
            f"cache.dir={tmp_path / 'cache'}",
        ],
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["train"]["started_from"]["pretrained"] == str(path)
    assert metrics["train"]["epochs"] == 1  # the sparsity training ran, from the file
    assert metrics["baseline_kind"].startswith("sparsity-trained")
    assert metrics["dense_reference"]["source"] == f"pretrained: {path}"
