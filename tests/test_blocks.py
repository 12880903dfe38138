"""Whole residual blocks removed (``method.remove_blocks``, prune_cli.pruning.blocks): which blocks
are removable, removal equals the masked dense model exactly, the MAC budget stays the dense
model's, the record rebuilds the structure, and requests it cannot meet are said."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import FAST, run_in_process
from test_channels import keep_from, registered
from torch import nn

import prune_cli
from prune_cli.errors import ConfigError
from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.counting import count_macs
from prune_cli.models.cifar_resnet import BasicBlock
from prune_cli.pruning.blocks import (
    block_scores,
    drop_blocks,
    lowest,
    removable_blocks,
    zero_blocks,
)
from prune_cli.pruning.channels import rebuild
from prune_cli.pruning.groups import channel_groups
from prune_cli.pruning.removal import mask_channels

INPUT = (3, 32, 32)
CTX = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=INPUT)
TIMM = importlib.util.find_spec("timm") is not None
NEEDS_TIMM = pytest.mark.skipif(not TIMM, reason="the optional timm extra is not installed")


def _x() -> torch.Tensor:
    return torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("resnet20", 7),  # 9 blocks less the first of stages 2 and 3 (they downsample)
        ("resnet56", 25),
        ("wrn16_4", 3),  # 6 blocks; the first of each stage changes width or stride
        ("mobilenet_v2", 10),  # the inverted residuals with use_res_connect
        ("resnet50", 12),  # 16 bottlenecks less one downsampling block per stage
    ],
)
def test_removable_blocks_are_the_identity_shortcut_blocks(name: str, count: int) -> None:
    assert len(removable_blocks(registered(name))) == count


@NEEDS_TIMM
def test_a_timm_resnet_with_another_activation_keeps_its_blocks() -> None:
    """relu(x + 0) = x holds for a ReLU only: a SiLU ResNet's blocks are not removable."""
    from prune_cli.models import build_model

    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    assert len(removable_blocks(build_model("timm-resnet18", **kwargs))) == 5
    silu = build_model("timm-resnet18", act_layer="silu", **kwargs)
    assert removable_blocks(silu) == []


def test_a_subclass_is_not_recognised() -> None:
    class Custom(BasicBlock):  # may compute something else
        pass

    model = nn.Sequential(Custom(8, 8, 1, "A"))
    assert removable_blocks(model) == []


@pytest.mark.parametrize(
    "name",
    [
        "resnet20",
        "wrn16_4",
        "mobilenet_v2",
        "resnet50",
        "torchvision-resnet18",
        "torchvision-mobilenet_v3_small",
        pytest.param("timm-resnet18", marks=NEEDS_TIMM),
        pytest.param("timm-mobilenetv3_small_100", marks=NEEDS_TIMM),
        pytest.param("timm-efficientnet_b0", marks=NEEDS_TIMM),
    ],
)
def test_a_removed_block_equals_its_zeroed_branch_exactly(name: str) -> None:
    dense = registered(name).eval()
    names = [b.name for b in removable_blocks(dense)][::2]
    dropped = drop_blocks(dense, names)
    zeroed = copy.deepcopy(dense)
    zeroed_params = sum(p.numel() for p in zeroed.parameters())
    zero_blocks(zeroed, names)
    with torch.no_grad():
        want, got = zeroed(_x()), dropped.eval()(_x())
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert sum(p.numel() for p in dropped.parameters()) < zeroed_params
    assert count_macs(dropped, INPUT).dense < count_macs(dense, INPUT).dense


def test_the_lowest_scored_blocks_go_first() -> None:
    dense = registered("resnet20")
    blocks = removable_blocks(dense)
    with torch.no_grad():  # make one branch's last BN tiny
        dense.get_submodule(blocks[3].last).weight.mul_(1e-3)
    scores = block_scores(dense, blocks)
    assert min(scores, key=scores.get) == blocks[3].name
    assert lowest(scores, 1) == [blocks[3].name]
    chosen = lowest(scores, 3)
    assert len(chosen) == 3 and chosen == sorted(chosen, key=list(scores).index)


def test_a_bad_block_name_is_one_line() -> None:
    with pytest.raises(ValueError) as err:
        drop_blocks(registered("resnet20"), ["layer2.0"])  # downsamples: not removable
    assert "layer2.0" in str(err.value) and "removable:" in str(err.value)
    assert "\n" not in str(err.value)


def _pruned(name: str, **options):
    dense = registered(name)
    cfg = {"name": "l1_filter", "groups": "coupled", **options}
    return dense, build_method(cfg, 0.5).prune(dense, CTX)


def test_l1_filter_removes_blocks_then_cuts_channels_to_the_dense_budget() -> None:
    dense, result = _pruned("resnet20", remove_blocks=3, macs_reduction=2.0)
    info = result.info
    blocks = info["blocks"]
    assert blocks["requested"] == 3 and len(blocks["removed"]) == 3 and blocks["removable"] == 7
    assert blocks["macs_before"] == count_macs(dense, INPUT).dense
    total = count_macs(dense, INPUT).dense / count_macs(result.model, INPUT).dense
    assert total >= 2.0 and total == pytest.approx(blocks["macs_reduction_total"], abs=1e-3)
    assert any("after the removed blocks" in w for w in info["warnings"])
    # the pruned model equals the dense one with the blocks zeroed and the channels masked
    masked = copy.deepcopy(dense)
    zero_blocks(masked, blocks["removed"])
    groups = channel_groups(drop_blocks(dense, blocks["removed"]), INPUT, "coupled", verify=False)
    mask_channels(masked, groups, keep_from(info, groups))
    with torch.no_grad():
        want, got = masked.eval()(_x()), result.model.eval()(_x())
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-5
    # and the record rebuilds the structure (resume, load_pruned)
    again = rebuild(dense, info)
    again.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(_x()), got)


def test_blocks_that_meet_the_budget_alone_cut_no_channel_and_say_so() -> None:
    dense, result = _pruned("resnet20", remove_blocks=7, macs_reduction=1.2)
    assert "channels" not in result.info and len(result.info["blocks"]["removed"]) == 7
    assert any("no channel was cut" in w for w in result.info["warnings"])
    again = rebuild(dense, result.info)
    assert [p.shape for p in again.parameters()] == [p.shape for p in result.model.parameters()]


def test_more_blocks_than_the_model_has_is_said() -> None:
    _, result = _pruned("resnet20", remove_blocks=50)
    assert len(result.info["blocks"]["removed"]) == 7
    assert any("remove_blocks=50" in w and "removed 7" in w for w in result.info["warnings"])
    # a ratio applies to the channels left
    assert result.info["rates"]["channels"]["target"] == 0.5


def test_remove_blocks_is_refused_with_layer_ratios_and_schedules() -> None:
    with pytest.raises(ConfigError, match="one shot"):
        build_method({"name": "l1_filter", "remove_blocks": 2, "schedule": "iterative"}, 0.5)
    with pytest.raises(ConfigError, match="remove_blocks=2") as err:
        build_method({"name": "l1_filter", "remove_blocks": 2, "layer_ratios": {"conv1": 0.5}}, 0.5)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"method\.remove_blocks"):
        build_method({"name": "l1_filter", "remove_blocks": -1}, 0.5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_run_with_removed_blocks_records_them_and_reloads(tmp_path: Path) -> None:
    overrides = [*FAST, "method=l1_filter", "method.remove_blocks=2", f"cache.dir={tmp_path}/c"]
    run = run_in_process(tmp_path / "run", overrides)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert len(metrics["prune_info"]["blocks"]["removed"]) == 2
    structure = json.loads((tmp_path / "run" / "checkpoints" / "final.json").read_text())
    assert structure["version"] == 2
    assert (
        structure["structure"]["channels"]["blocks"]["removed"]
        == (metrics["prune_info"]["blocks"]["removed"])
    )
    loaded = prune_cli.load_pruned(tmp_path / "run")
    x = torch.randn(2, *run.input_size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), run.model.eval().cpu()(x), atol=1e-6)
