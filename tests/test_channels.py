"""Coupled channel groups (issue 11): discovery, removal, and equality with the masked model.

The central property: a physically pruned model computes, in eval mode, exactly what the dense
model computes with the removed channels' consumer columns set to zero
(:func:`~prune_cli.pruning.channels.mask_channels`) — for residual streams, concatenations,
grouped convolutions, squeeze-and-excitation gates and ShuffleNetV2's shuffled streams alike. BN
statistics and affine parameters are randomised so that no channel hides behind a zero.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.export import export_torchscript, load_torchscript
from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.models import build_model
from prune_cli.models.shufflenet import ShuffleUnit
from prune_cli.pruning.channels import (
    channel_prune,
    guard_members,
    layerwise_keep,
    mask_channels,
    rebuild,
    remove_channels,
)
from prune_cli.pruning.groups import ChannelRemovalError, channel_groups, discover
from prune_cli.pruning.importance import BNScale, FilterNorm

INPUT = (3, 32, 32)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def registered(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomise(build_model(name, num_classes=10, in_channels=3, image_size=32))


def torchvision_model(arch: str) -> nn.Module:
    """``model=torchvision model.arch=<arch>`` at 32 px (small-input stem)."""
    return registered(f"torchvision-{arch}")


def keep_from(info: dict, groups) -> dict[str, torch.Tensor]:
    sizes = {g.name: g.size for g in groups}
    keep = {}
    for name, kept in info["keep"].items():
        mask = torch.zeros(sizes[name], dtype=torch.bool)
        mask[kept] = True
        keep[name] = mask
    return keep


def assert_equals_masked(dense: nn.Module, pruned: nn.Module, info: dict) -> None:
    groups = channel_groups(dense, INPUT, info["groups"], verify=False)
    masked = copy.deepcopy(dense)
    mask_channels(masked, groups, keep_from(info, groups))
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = masked.eval()(x), pruned.eval()(x)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-4 * scale + 1e-5


# The cheap representative subset of torchvision (issue 11, section 4) and coupling they exercise.
TORCHVISION = {
    "resnet18": "residual",
    "densenet121": "concat",
    "squeezenet1_1": "concat",
    "googlenet": "concat",
    "mobilenet_v3_small": "residual",
    "efficientnet_b0": "residual",
    "regnet_x_400mf": "residual",
    "shufflenet_v2_x0_5": "shuffle",
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_torchvision_coupled_pruning_equals_the_masked_model(arch: str) -> None:
    dense = torchvision_model(arch)
    pruned = channel_prune(dense, FilterNorm(), 0.3, input_size=INPUT, scope="layerwise")
    info = pruned.info
    assert info["discovery"]["coupling"].get(TORCHVISION[arch], 0) > 0, info["discovery"]
    assert info["discovery"]["skipped"] == 0, info["discovery"]
    assert count_params(pruned.model)[0] < count_params(dense)[0]
    assert count_macs(pruned.model, INPUT).dense < count_macs(dense, INPUT).dense
    assert_equals_masked(dense, pruned.model, info)


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "wrn16_4", "mobilenet_v2", "mnasnet1_0"])
def test_registered_coupled_pruning_equals_the_masked_model(name: str) -> None:
    dense = registered(name)
    pruned = channel_prune(dense, FilterNorm(), 0.5, input_size=INPUT, scope="layerwise")
    assert_equals_masked(dense, pruned.model, pruned.info)


def _resnet56_macs(widths: tuple[int, int, int], classes: int = 10) -> int:
    """MACs of a CIFAR ResNet-56 (shortcut B) with stage widths ``widths`` at 32x32, by hand."""
    n, macs, cin, side = 9, 3 * 3 * 3 * widths[0] * 32 * 32, widths[0], 32
    for stage, w in enumerate(widths):
        for block in range(n):
            if stage > 0 and block == 0:
                side //= 2
                macs += 3 * 3 * cin * w * side * side + 1 * 1 * cin * w * side * side
            else:
                macs += 3 * 3 * cin * w * side * side
            macs += 3 * 3 * w * w * side * side
            cin = w
    return macs + widths[-1] * classes


def test_resnet56_coupled_halves_every_width_and_reaches_torch_pruning() -> None:
    """Channel ratio 0.5 with coupled groups halves every stage width, residual streams
    included: MACs fall ~4x, as with Torch-Pruning (3.99x, issue 11); single groups only halve
    the inner convs (~2x)."""
    dense = registered("resnet56")
    assert count_macs(dense, INPUT).dense == _resnet56_macs((16, 32, 64))
    coupled = channel_prune(dense, FilterNorm(), 0.5, input_size=INPUT, scope="layerwise")
    assert count_macs(coupled.model, INPUT).dense == _resnet56_macs((8, 16, 32))
    reduction = _resnet56_macs((16, 32, 64)) / _resnet56_macs((8, 16, 32))
    assert reduction >= 3.98  # Torch-Pruning: 3.99 (rounded) at the same ratio
    single = channel_prune(
        dense, FilterNorm(), 0.5, input_size=INPUT, scope="layerwise", grouping="single"
    )
    single_reduction = count_macs(dense, INPUT).dense / count_macs(single.model, INPUT).dense
    assert 1.9 < single_reduction < 2.1
    streams = [n for n, (kept, total) in single.info["channels"].items() if kept == total]
    assert single.info["discovery"]["coupling"] == {"single": 27}
    assert not streams  # in single mode every found group is an inner conv, all halved


def test_shufflenet_streams_are_pruned_through_every_shuffle() -> None:
    dense = registered("shufflenet_v2_x0_5")
    found = discover(dense, INPUT)
    streams = [g for g in found.groups if "shuffle" in g.coupling]
    # one stream group per stride-2 branch1 and per unit's branch2 output: 3 + 16
    assert len(streams) == 19
    pruned = channel_prune(dense, FilterNorm(), 0.5, input_size=INPUT, scope="layerwise")
    model = pruned.model
    assert all(
        isinstance(u, ShuffleUnit)
        for s in ("stage2", "stage3", "stage4")
        for u in getattr(model, s)
    )
    assert model.conv5[0].in_channels < dense.conv5[0].in_channels
    assert_equals_masked(dense, model, pruned.info)
    # single groups leave the streams whole and keep torchvision's units
    single = channel_prune(
        dense, FilterNorm(), 0.5, input_size=INPUT, scope="layerwise", grouping="single"
    )
    assert single.model.conv5[0].in_channels == dense.conv5[0].in_channels
    assert not any(isinstance(m, ShuffleUnit) for m in single.model.modules())
    assert count_macs(model, INPUT).dense < count_macs(single.model, INPUT).dense


def test_pruned_shufflenet_rebuilds_exports_and_prunes_again(tmp_path) -> None:
    dense = registered("shufflenet_v2_x0_5")
    pruned = channel_prune(dense, FilterNorm(), 0.4, input_size=INPUT, scope="global")
    fresh = build_model("shufflenet_v2_x0_5", num_classes=10, in_channels=3, image_size=32)
    rebuilt = rebuild(fresh, pruned.info)
    rebuilt.load_state_dict(pruned.model.state_dict())
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        want = pruned.model.eval()(x)
        assert torch.equal(rebuilt.eval()(x), want)
    reloaded = load_torchscript(export_torchscript(pruned.model, tmp_path / "m.ts", INPUT))
    with torch.no_grad():
        assert torch.allclose(reloaded(x), want, atol=1e-5)
    # A second round of pruning starts from the explicit maps of the pruned units.
    again = channel_prune(pruned.model, FilterNorm(), 0.3, input_size=INPUT, scope="layerwise")
    assert_equals_masked(pruned.model, again.model, again.info)


def test_member_guard_keeps_every_layer_alive() -> None:
    """Remove every channel of every group: each group keeps one (min_channels), and a consumer
    that would be left without input (a ShuffleNetV2 unit's branch2, fed by several stream
    groups) gets one back."""
    dense = registered("shufflenet_v2_x0_5")
    groups = channel_groups(dense, INPUT)
    scores = FilterNorm()(dense, groups)
    keep = layerwise_keep(scores, 0.999, groups={g.name: g for g in groups})
    keep = guard_members(groups, keep, scores)
    pruned = remove_channels(dense, groups, keep)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels >= 1 and m.out_channels >= 1
    with torch.no_grad():
        assert pruned(torch.zeros(1, *INPUT)).shape == (1, 10)


def test_grouped_convolutions_remove_the_same_positions_in_every_group() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(8)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.g(torch.relu(self.bn(self.a(x))))
            return self.head(x.mean((2, 3)))

    model = randomise(Grouped())
    groups = {g.name: g for g in channel_groups(model, (3, 8, 8))}
    assert sorted(groups["a"].ties) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    pruned = channel_prune(model, FilterNorm(), 0.5, input_size=(3, 8, 8), scope="layerwise")
    assert pruned.model.a.out_channels == 4 and pruned.model.g.in_channels == 4
    kept = pruned.info["keep"]["a"]
    assert {c % 4 for c in kept} == {c for c in kept if c < 4} and len(kept) == 4
    x = torch.randn(2, 3, 8, 8)
    masked = copy.deepcopy(model)
    mask_channels(masked, list(groups.values()), keep_from(pruned.info, groups.values()))
    with torch.no_grad():
        assert torch.allclose(pruned.model.eval()(x), masked.eval()(x), atol=1e-5)


def test_linear_bns_are_never_ranked_by_slimming() -> None:
    """MobileNetV2: the BN after a projection (features.1.conv.2, features.17.conv.3) and the
    BNs of the residual streams feed no activation: slimming leaves those groups whole."""
    dense = registered("mobilenet_v2")
    groups = channel_groups(dense, INPUT)
    scores = BNScale()(dense, groups)
    assert "features.1.conv.1" not in scores and "features.17.conv.2" not in scores
    assert not any(g.name in scores for g in groups if "residual" in g.coupling)
    pruned = channel_prune(dense, BNScale(), 0.6, input_size=INPUT, scope="global")
    channels = pruned.info["channels"]
    for name in ("features.1.conv.1", "features.17.conv.2"):
        assert channels[name][0] == channels[name][1]
    assert pruned.info["groups_unranked"] >= 2


def test_coupled_guards_act_per_group() -> None:
    dense = registered("resnet56")
    pruned = channel_prune(
        dense, FilterNorm(), 0.9, input_size=INPUT, scope="layerwise", min_channels=3, round_to=4
    )
    for kept, total in pruned.info["channels"].values():
        # floor(0.9 * total) removed, at least 3 kept, rounded up to a multiple of 4
        assert kept == 4 * math.ceil(max(total - math.floor(0.9 * total), 3) / 4)
    streams = [g for g in channel_groups(dense, INPUT) if "residual" in g.coupling]
    # the three residual streams (16, 32, 64 channels) keep 4, 4 and 8
    assert sorted(pruned.info["channels"][g.name][0] for g in streams) == [4, 4, 8]


def test_zero_padding_shortcuts_are_verified_not_trusted() -> None:
    """ResNet with option-A shortcuts pads the channel dimension, which Torch-Pruning maps as if
    channels kept their positions: the verification drops the groups whose removal would not
    reproduce the masked model, and the rest prune exactly."""
    torch.manual_seed(0)
    dense = randomise(
        build_model("resnet20", num_classes=10, in_channels=3, image_size=32, shortcut="A")
    )
    found = discover(dense, INPUT)
    assert found.skipped, "the padded streams must not pass verification"
    assert all("masked model" in r or "fails" in r or "shape" in r for r in found.skipped.values())
    pruned = channel_prune(dense, FilterNorm(), 0.5, input_size=INPUT, scope="layerwise")
    assert_equals_masked(dense, pruned.model, pruned.info)


def test_a_users_own_model_with_residuals_and_concatenation() -> None:
    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.left = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.right = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.mix = nn.Conv2d(16, 16, 1)
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            y = torch.cat([self.left(x), self.right(x)], dim=1)
            x = torch.relu(x + self.mix(y))
            return self.head(x.mean((2, 3)))

    model = randomise(Mine())
    size = (3, 16, 16)
    found = discover(model, size)
    assert {"residual", "concat"} <= set(found.summary()["coupling"])
    pruned = channel_prune(model, FilterNorm(), 0.5, input_size=size, scope="layerwise")
    groups = channel_groups(model, size, verify=False)
    masked = copy.deepcopy(model)
    mask_channels(masked, groups, keep_from(pruned.info, groups))
    x = torch.randn(3, *size)
    with torch.no_grad():
        assert torch.allclose(pruned.model(x), masked(x), atol=1e-5)
    assert pruned.model.mix.in_channels == 8 and pruned.model.mix.out_channels == 8


def test_models_without_prunable_groups_fail_in_one_line() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    with pytest.raises(ChannelRemovalError, match="Sequential has no channel group") as err:
        channel_prune(model, FilterNorm(), 0.5, input_size=(3, 4, 4))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown method\.groups 'some'"):
        channel_prune(registered("resnet20"), FilterNorm(), 0.5, input_size=INPUT, grouping="some")


def test_global_scope_counts_channels_over_all_groups() -> None:
    dense = registered("resnet20")
    pruned = channel_prune(dense, FilterNorm(mean=True), 0.4, input_size=INPUT, scope="global")
    total = pruned.info["channels_total"]
    assert total - pruned.info["channels_kept"] == math.floor(0.4 * total)


def test_random_filter_control_removes_what_l1_filter_removes_at_random() -> None:
    """``random`` with ``granularity: filter`` is l1_filter's control (docs/methods.md §6): the same
    groups and counts, channels chosen from the seed instead of by norm."""
    ctx = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=INPUT)
    dense = registered("resnet20")
    l1 = build_method({"name": "l1_filter"}, 0.5).prune(copy.deepcopy(dense), ctx)
    cfg = {"name": "random", "granularity": "filter", "scope": "layerwise"}
    rand = build_method(cfg, 0.5, seed=3).prune(copy.deepcopy(dense), ctx)
    again = build_method(cfg, 0.5, seed=3).prune(copy.deepcopy(dense), ctx)
    other = build_method(cfg, 0.5, seed=4).prune(copy.deepcopy(dense), ctx)
    assert rand.info["channels"] == l1.info["channels"]  # the same kept counts per group
    assert rand.info["keep"] == again.info["keep"]  # the seed fixes the choice
    assert rand.info["keep"] != other.info["keep"] and rand.info["keep"] != l1.info["keep"]
    assert rand.info["importance"] == "random" and rand.masks == {}
    assert count_params(rand.model)[0] == count_params(l1.model)[0]


# slow: the CLI with torchvision models runs in tests/test_pretrained.py; DenseNet's
# coupled groups are checked in-process above
@pytest.mark.slow
def test_prune_run_prunes_a_torchvision_densenet_with_one_command(tmp_path) -> None:
    """The issue's user command: any torchvision model, coupled groups, end to end."""
    import json

    from cli_helpers import prune_run

    proc = prune_run(
        "model=torchvision", "model.arch=densenet121", "method=l1_filter", "ratio=0.3",
        "dataset.train_size=64", "dataset.test_size=32", "train.epochs=1", "finetune.epochs=1",
        "train.batch_size=32", "finetune.batch_size=32", "metrics.latency.enabled=false",
        "export.onnx=false", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["model"] == "torchvision-densenet121" and m["status"] == "completed"
    discovery = m["prune_info"]["discovery"]
    assert discovery["coupling"]["concat"] > 0 and discovery["skipped"] == 0
    assert "warnings" not in m  # every group cut at the asked rate
    assert m["final"]["macs"] < 0.6 * m["baseline"]["macs"]


def test_swin_is_refused_at_once_in_one_line() -> None:
    """Swin and MaxViT are not traced in reasonable time: a clean refusal, not a hang."""
    model = build_model("torchvision-swin_t", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ChannelRemovalError) as err:
        discover(model, (3, 32, 32))
    assert str(err.value).startswith("SwinTransformer cannot be pruned structurally")
    assert "\n" not in str(err.value)
