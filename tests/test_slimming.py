"""Network slimming with physical channel removal, l1_filter, and export (docs/methods.md §3, §6).

Behaviour checked on every supported architecture: the pruned model runs, has exactly the channel
counts the global threshold implies, fewer params and MACs, and in eval mode gives the logits of
the dense model with γ = β = 0 on the removed channels (the mask implementation), to which it is
mathematically equal because every removed channel reaches its consumers as exactly 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA, TINY_FINETUNE, run_in_process
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.export import export_onnx, export_torchscript, load_torchscript, run_onnx
from prune_cli.methods import PruneContext, build_method
from prune_cli.methods.network_slimming import NetworkSlimming
from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.models import build_model
from prune_cli.models.vgg import CifarVGG
from prune_cli.pruning.channels import (
    channel_prune,
    global_keep,
    guard_keep,
    remove_channels,
    zero_pruned_bn,
)
from prune_cli.pruning.groups import channel_groups
from prune_cli.pruning.importance import BNScale, FilterNorm

INPUT = (3, 32, 32)
SUPPORTED = [
    "resnet20",
    "resnet56",
    "resnet18",
    "resnet50",
    "vgg11",
    "vgg16",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "mnasnet1_0",
    "wrn16_4",  # pre-activation: the BN after each block's conv1 leads its group
]


def _model(name: str, seed: int = 0) -> nn.Module:
    """A model with random BN affine and running statistics, so every BN matters."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _ctx() -> PruneContext:
    return PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=INPUT)


def slim(
    model: nn.Module, input_size: tuple, ratio: float, grouping: str = "single", **kw
) -> tuple[nn.Module, dict]:
    """Slimming's removal step: BN-γ importance, one global threshold."""
    pruned = channel_prune(
        model, BNScale(), ratio, input_size=input_size, scope="global", grouping=grouping, **kw
    )
    return pruned.model, pruned.info


def _leader(model: nn.Module, group) -> nn.Module:
    """The ranking BN of a single group (the BN after its producer, followed by an activation)."""
    modules = dict(model.named_modules())
    return modules[next(m.module for m in group.bns if m.nonlinear and not m.after_depthwise)]


@pytest.mark.parametrize("name", SUPPORTED)
def test_slimming_removes_the_threshold_channels_and_keeps_the_function(name: str) -> None:
    ratio = 0.5
    dense = _model(name)
    groups = channel_groups(dense, INPUT, "single")
    ranked = [g for g in groups if any(m.nonlinear and not m.after_depthwise for m in g.bns)]
    assert ranked, name
    # Expected counts, computed independently: the floor(N*ratio) smallest |γ| over all ranking
    # BNs go (values are distinct), then every group keeps at least one channel.
    gammas = torch.cat([_leader(dense, g).weight.detach().abs() for g in ranked])
    n_total = gammas.numel()
    cut = gammas.sort().values[math.floor(n_total * ratio) - 1]
    expected = {}
    for g in ranked:
        kept = int((_leader(dense, g).weight.detach().abs() > cut).sum())
        expected[g.name] = max(kept, 1)

    pruned, info = slim(dense, INPUT, ratio)
    assert {k: v[0] for k, v in info["channels"].items() if k in expected} == expected
    new_modules = dict(pruned.named_modules())
    for g in ranked:
        assert new_modules[g.name].out_channels == expected[g.name]
        for bn in g.bns:
            assert new_modules[bn.module].num_features == expected[g.name]
        for dw in g.depthwise:
            assert new_modules[dw.module].groups == expected[g.name]
    assert count_params(pruned)[0] < count_params(dense)[0]
    assert count_macs(pruned, INPUT).dense < count_macs(dense, INPUT).dense

    masked = dense  # channel_prune copied the model: mask the original the same way
    keep = global_keep(BNScale()(dense, groups), ratio)
    zero_pruned_bn(masked, groups, keep)
    x = torch.randn(3, *INPUT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_logits, logits = masked(x), pruned.eval()(x)
    assert torch.allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_resnet_residual_stream_is_never_pruned() -> None:
    dense = _model("resnet20")
    pruned, _ = slim(dense, INPUT, 0.7)
    for (name, before), after in zip(dense.named_modules(), pruned.modules(), strict=True):
        if name.endswith(("conv2", "bn2", "downsample.0")) or name in ("conv1", "bn1", "fc"):
            assert before.weight.shape[0] == after.weight.shape[0], name
        if name.endswith("conv1") and name != "conv1":
            assert after.out_channels < before.out_channels, name


def test_default_slimming_keeps_residual_streams_whole_even_with_the_smallest_gammas() -> None:
    """The default ``groups`` is the paper's ``single``: with one global γ threshold a coupled
    stream whose BNs have the smallest γ (as after short sparsity training) would be emptied;
    the default never ranks it. ``groups=coupled`` is the opt-in that does."""
    dense = _model("resnet20")
    with torch.no_grad():
        for module_name, module in dense.named_modules():
            if module_name.startswith("layer3") and module_name.endswith("bn2"):
                module.weight.mul_(1e-3)  # the stage-3 stream BNs: the smallest γ of the model
    cfg = {"name": "network_slimming"}
    stream = "layer3.0.conv2"

    def channels(method) -> dict:
        info = method.prune(method.prepare(dense), _ctx()).info
        return info["channels"]

    default = build_method(cfg, 0.3)
    assert default.opts.groups == "single"
    assert build_method({"name": "double_pruning"}, 0.3).opts.groups == "single"  # same call
    kept = channels(default)
    assert stream not in kept or kept[stream][0] == 64
    assert channels(build_method({**cfg, "groups": "coupled"}, 0.3))[stream][0] < 32


def test_mobilenet_v3_se_block_follows_its_producer() -> None:
    dense = _model("mobilenet_v3_small")
    pruned, info = slim(dense, INPUT, 0.5)
    modules = dict(pruned.named_modules())
    # features.4: expand 1x1 -> dw -> SE(fc1, fc2) -> project; hidden width 96.
    kept, total = info["channels"]["features.4.block.0.0"]
    assert total == 96 and kept < 96
    assert modules["features.4.block.1.0"].groups == kept
    assert modules["features.4.block.2.fc1"].in_channels == kept
    assert modules["features.4.block.2.fc2"].out_channels == kept
    assert modules["features.4.block.2.fc1"].out_channels == 24  # squeeze width kept
    assert modules["features.4.block.3.0"].in_channels == kept


@pytest.fixture(scope="module")
def vgg19() -> nn.Module:
    return _model("vgg19")


def test_vgg19_threshold_matches_methods_md(vgg19: nn.Module) -> None:
    """5504 BN channels; 0.7 removes 3852 in exact mode, 3853 in reference mode
    (docs/methods.md §2.1, §3)."""
    dense = vgg19
    groups = channel_groups(dense, INPUT, "single")
    assert sum(g.size for g in groups) == 5504
    _, exact = slim(dense, INPUT, 0.7, mode="exact")
    _, reference = slim(dense, INPUT, 0.7, mode="reference")
    assert exact["channels_total"] - exact["channels_kept"] == 3852
    assert reference["channels_total"] - reference["channels_kept"] == 3853


def test_rebuilt_vgg_has_the_parameter_count_of_its_cfg(vgg19: nn.Module) -> None:
    dense = vgg19
    pruned, info = slim(dense, INPUT, 0.7)
    kept = [v[0] for v in info["channels"].values()]
    cfg, it = [], iter(kept)
    for v in [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4]:
        cfg.append(v if v == "M" else next(it))
    assert count_params(pruned)[0] == count_params(CifarVGG(cfg, 10, 3))[0]
    # Full VGG-19 on CIFAR-10: the reference README's 20.04M (docs/methods.md §3).
    assert count_params(dense)[0] == 20_035_018


def test_guards_min_channels_and_round_to() -> None:
    scores = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.05, 0.8, 0.4, 0.7])
    nothing = torch.zeros(8, dtype=torch.bool)
    # min_channels = 2: the two best channels come back (0.9 at 0, 0.8 at 5).
    assert guard_keep(nothing, scores, min_channels=2).nonzero().flatten().tolist() == [0, 5]
    # A fraction: ceil(8 * 0.3) = 3 channels.
    assert int(guard_keep(nothing, scores, min_channels=0.3).sum()) == 3
    # round_to = 4 with 5 kept: 8; with 3 kept: 4.
    five = scores > 0.25
    assert int(guard_keep(five, scores, round_to=4).sum()) == 8
    three = scores > 0.5
    assert guard_keep(three, scores, round_to=4).nonzero().flatten().tolist() == [0, 5, 6, 7]
    # A whole layer with tiny γ keeps min_channels instead of collapsing.
    dense = _model("vgg11")
    with torch.no_grad():
        dense.feature[5].weight.fill_(1e-6)  # the BN of the second conv (128 channels)
    pruned, info = slim(dense, INPUT, 0.5, min_channels=3, round_to=8)
    assert info["channels"]["feature.4"][0] == 8  # 3 rounded up to 8
    assert all(v[0] % 8 == 0 for v in info["channels"].values())
    assert pruned.feature[4].out_channels == 8


def test_l1_penalty_moves_gamma_by_lr_lambda_sign() -> None:
    """One plain SGD step with zero loss gradient: γ -> γ - η·λ·sign(γ) (docs/methods.md §3)."""
    model = _model("vgg11")
    method = NetworkSlimming({"name": "network_slimming", "l1_lambda": 1e-3}, 0.5)
    method.prepare(model)
    bn = model.feature[1]
    with torch.no_grad():
        bn.weight[:2] = torch.tensor([0.3, -0.3])
    before = bn.weight.detach().clone()
    beta_before = bn.bias.detach().clone()
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    opt.zero_grad()
    (model(torch.randn(2, *INPUT)).sum() * 0.0).backward()
    method.after_backward(model)
    opt.step()
    assert torch.allclose(bn.weight[:2], torch.tensor([0.3 - lr * 1e-3, -0.3 + lr * 1e-3]))
    assert torch.allclose(bn.weight, before - lr * 1e-3 * torch.sign(before))
    assert torch.equal(bn.bias.detach(), beta_before)  # β is not penalised: grad 0, unchanged


def test_lambda_by_family_and_training_signature() -> None:
    vgg = NetworkSlimming({"name": "network_slimming"}, 0.5)
    vgg.prepare(build_model("vgg11", num_classes=10, in_channels=3, image_size=32))
    res = NetworkSlimming({"name": "network_slimming", "bn_init": 0.5}, 0.5)
    model = res.prepare(build_model("resnet20", num_classes=10, in_channels=3, image_size=32))
    assert vgg.sparsity.lam == 1e-4 and res.sparsity.lam == 1e-5
    assert vgg.training_signature() != res.training_signature()
    assert res.training_signature() == {"bn_l1_lambda": 1e-5, "bn_init": 0.5}
    assert all(torch.all(m.weight == 0.5) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"mode": "approx"}, "unknown method.mode 'approx'"),
        ({"l1_lambda": "big"}, "method.l1_lambda 'big'"),
        ({"min_channels": 0}, r"method\.min_channels 0 is out of range"),
        ({"round_to": 0}, r"method\.round_to 0 is out of range"),
    ],
)
def test_bad_options_are_one_line_config_errors(override: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_method({"name": "network_slimming", **override}, 0.5)


def test_squeezenet_has_no_bn_to_slim_but_l1_filter_prunes_it() -> None:
    model = _model("squeezenet1_1")
    with pytest.raises(ConfigError, match="can be ranked by bn_gamma"):
        slim(model, INPUT, 0.5)
    result = build_method({"name": "l1_filter"}, 0.5).prune(model, _ctx())
    assert count_params(result.model)[0] < count_params(model)[0]
    result.model(torch.zeros(1, *INPUT))


def test_l1_filter_layerwise_removes_the_smallest_filters_of_each_layer() -> None:
    dense = _model("vgg11")
    groups = channel_groups(dense, INPUT)
    norms = FilterNorm()(dense, groups)
    result = build_method({"name": "l1_filter"}, 0.25).prune(dense, _ctx())
    for kept, total in result.info["channels"].values():
        assert kept == total - math.floor(0.25 * total)
    # conv 0: the kept filters are the ones with the largest L1 norm, in their original order.
    keep = norms["feature.0"].argsort(descending=True)[: result.info["channels"]["feature.0"][0]]
    expected = dense.feature[0].weight[keep.sort().values]
    assert torch.equal(result.model.feature[0].weight, expected)
    manual = (dense.feature[0].weight.abs().sum(dim=(1, 2, 3)), norms["feature.0"])
    assert torch.allclose(*manual)


def test_restore_rebuilds_the_pruned_structure() -> None:
    dense = _model("mobilenet_v2")
    method = build_method({"name": "network_slimming"}, 0.6)
    method.prepare(dense)
    result = method.prune(dense, _ctx())
    checkpoint = {"model": result.model.state_dict(), "info": result.info}
    fresh = _model("mobilenet_v2", seed=5)
    restored = method.restore(fresh, checkpoint, "pruned.pt").eval()
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        assert torch.equal(restored(x), result.model.eval()(x))


def test_remove_channels_rejects_an_empty_layer() -> None:
    dense = _model("resnet20")
    groups = channel_groups(dense, INPUT)
    with pytest.raises(ValueError, match="keeps no channel"):
        remove_channels(dense, groups, {groups[0].name: torch.zeros(groups[0].size, dtype=bool)})


@pytest.mark.parametrize("name", ["resnet20", "shufflenet_v2_x0_5"])
def test_export_round_trip_torchscript_and_onnx(name: str, tmp_path) -> None:
    pruned, _ = slim(_model(name), INPUT, 0.5)
    pruned.eval()
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        expected = pruned(x)
    ts = export_torchscript(pruned, tmp_path / "m.ts", INPUT)
    reloaded = load_torchscript(ts)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), expected, atol=1e-5)
    if name == "resnet20":  # ONNX's pure-Python reference evaluator is slow: one model
        onnx_path = export_onnx(pruned, tmp_path / "m.onnx", INPUT)
        assert torch.allclose(torch.from_numpy(run_onnx(onnx_path, x)), expected, atol=1e-4)


@pytest.mark.parametrize("method", ["network_slimming", "double_pruning"])
def test_pretrained_weights_start_the_sparsity_training_and_the_run_says_so(
    tmp_path: Path, method: str
) -> None:
    """With ``pretrained=``, slimming's sparsity training runs from the file's weights (γ the L1
    term drove apart is what it ranks), and metrics.json records that and where it started."""
    tiny = [*TINY_DATA, *TINY_FINETUNE, "metrics.latency.enabled=false", "export.onnx=false",
            f"cache.dir={tmp_path / 'cache'}"]  # fmt: skip
    dense = run_in_process(tmp_path / "dense", [*tiny, "method=none"]).metrics
    assert dense["status"] == "completed"
    file = tmp_path / "dense" / "checkpoints" / "trained.pt"
    metrics = run_in_process(tmp_path / "run", [*tiny, f"method={method}", f"pretrained={file}"])
    metrics = metrics.metrics
    assert metrics["status"] == "completed"
    train = metrics["train"]
    assert train["started_from"]["pretrained"] == str(file)
    assert train["epochs"] == 1 and train["training"].startswith("sparsity-trained: L1 1e-05")
    assert train["training"].endswith("from the pretrained weights (train.*)")
    assert metrics["baseline_kind"].startswith("sparsity-trained: L1 1e-05 on BN gamma")
    assert metrics["prune_info"]["l1_lambda"] == 1e-5
    assert metrics["dense_reference"]["source"] == f"pretrained: {file}"
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    assert rows and rows[0].startswith("train,1,")
