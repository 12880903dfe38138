"""``method=dynamic_filter`` and its regularisers (docs/methods.md §7.7), plus one CLI run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import FAST, prune_run
from torch import nn

from prune_cli.engine.checkpoint import load_checkpoint
from prune_cli.errors import ConfigError
from prune_cli.methods import PruneContext, build_method
from prune_cli.methods.dynamic_filter import filter_counts, repo_sparsity
from prune_cli.metrics.counting import count_params, sparsity
from prune_cli.models import build_model
from prune_cli.pruning import MaskHold
from prune_cli.pruning.importance import filter_scores
from prune_cli.pruning.regularizers import (
    cov,
    cov_faithful,
    cov_penalty,
    decorr_zhu,
    group_lasso,
    ortho,
    srip_sigma,
    zhu_correlation,
)
from prune_cli.pruning.reparam import attach_mask, masked_convs
from prune_cli.pruning.schedules import cubic_sparsity


def method(**cfg) -> object:
    return build_method({"name": "dynamic_filter", **cfg}, float(cfg.get("rate", 0.5)))


def ctx(input_size: tuple[int, int, int] = (3, 8, 8)) -> PruneContext:
    return PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=input_size)


@pytest.fixture(scope="module")
def resnet56() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet56", num_classes=10, in_channels=3, image_size=32)


# ----------------------------------------------------------------------------- masked forward
def test_masked_forward_is_conv_with_masked_weight(tiny_net: nn.Module) -> None:
    m = method(rate=0.5, scope="layerwise")
    net = m.prepare(tiny_net)
    m.update_masks(net, 0.5)
    x = torch.randn(2, 3, 8, 8)
    conv = net.conv1
    expected = F.conv2d(x, conv.weight_orig * conv.weight_mask, padding=1)
    assert torch.equal(conv(x), expected)
    assert int((conv.weight_mask.reshape(8, -1) == 0).all(dim=1).sum()) == 4


class ConvHead(nn.Module):
    """conv -> global mean -> linear: every filter's output reaches the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("feedback", [True, False])
def test_straight_through_gradient_reaches_pruned_weights(feedback: bool) -> None:
    torch.manual_seed(0)
    net = ConvHead()
    m = method(rate=0.5, feedback=feedback)
    m.prepare(net)
    m.update_masks(net, 0.5)
    conv = net.conv
    pruned = conv.weight_mask == 0
    assert int(pruned.reshape(4, -1).all(dim=1).sum()) == 2
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    # The gradient w.r.t. the weight actually applied (W ⊙ M), computed without any mask.
    applied = (conv.weight_orig * conv.weight_mask).detach().requires_grad_(True)
    ref_loss = F.cross_entropy(net.fc(F.conv2d(x, applied).mean(dim=(2, 3))), y)
    (ref_grad,) = torch.autograd.grad(ref_loss, applied)
    F.cross_entropy(net(x), y).backward()
    grad = conv.weight_orig.grad
    before = conv.weight_orig.detach().clone()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    moved = conv.weight_orig.detach() != before
    if feedback:  # DPF: the dense weight gets the full gradient g(W ⊙ M), pruned entries too
        assert torch.allclose(grad, ref_grad)
        assert bool(grad[pruned].abs().gt(0).all())
        assert bool(moved[pruned].all())
    else:  # static: gradient times mask, pruned weights frozen
        assert torch.allclose(grad, ref_grad * conv.weight_mask)
        assert not bool(moved[pruned].any())
    assert bool(moved[~pruned].all())


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize(("mode", "expected"), [("exact", 1276), ("reference", 1277)])
def test_resnet56_global_filter_mask_count(resnet56: nn.Module, mode: str, expected: int) -> None:
    net = copy.deepcopy(resnet56)
    m = method(rate=0.6, threshold_mode=mode)
    m.prepare(net)
    m.update_masks(net, 0.6)
    pruned, total = filter_counts(net)
    assert (pruned, total) == (expected, 2128)
    rows = 0
    for _, conv in masked_convs(net):
        flat = conv.weight_mask.reshape(conv.weight_mask.shape[0], -1)
        # every filter is wholly kept or wholly pruned over [in, kh, kw]
        assert bool(((flat == 0).all(dim=1) | (flat == 1).all(dim=1)).all())
        rows += flat.shape[0]
    assert rows == 2128
    # the mask counts as zero weights, and buffers add no parameters
    assert count_params(net)[0] == 855_770
    assert sparsity(net, include_linear=False)[0] > 0.6


def test_resnet56_repo_sparsity_denominator_and_cov_faithful_zero(resnet56: nn.Module) -> None:
    net = copy.deepcopy(resnet56)
    m = method(rate=0.6)
    m.prepare(net)
    assert repo_sparsity(net) == (855_770, 0, 0.0)
    m.update_masks(net, 0.6)
    denom, zeros, pct = repo_sparsity(net)
    assert denom == 855_770 and zeros > 0 and pct == pytest.approx(100 * zeros / 855_770)
    value = cov_faithful(net)  # 3x3 and 1x1 kernels, FC rows: nothing has length 2
    assert value.item() == 0.0 and not value.requires_grad


def test_importance_is_mean_abs_per_filter() -> None:
    small = torch.full((1, 1, 3, 3), 0.1)
    large = torch.full((1, 64, 3, 3), 0.1)
    assert filter_scores(small, "l1_mean").item() == pytest.approx(0.1)
    assert filter_scores(large, "l1_mean").item() == pytest.approx(0.1)
    assert filter_scores(large, "l1").item() == pytest.approx(57.6)
    assert filter_scores(small, "l2").item() == pytest.approx(0.3)
    assert filter_scores(small, "l2_mean").item() == pytest.approx(0.01)


def test_update_hook_fires_49_times_per_epoch_until_stop_epoch(tiny_net: nn.Module) -> None:
    m = method(rate=0.5, freq=4, stop_epoch=225)
    net = m.prepare(tiny_net)
    m.on_fit_start(net, 300, 196)
    counts = {}
    for epoch in (0, 225, 226, 299):
        before = m.updates
        for i in range(196):
            m.before_step(net, epoch * 196 + i, epoch)
        counts[epoch] = m.updates - before
    assert counts == {0: 49, 225: 49, 226: 0, 299: 0}


def test_mask_stops_changing_after_stop_epoch(tiny_net: nn.Module) -> None:
    m = method(rate=0.5, freq=1, stop_epoch=0, scope="layerwise")
    net = m.prepare(tiny_net)
    m.on_fit_start(net, 2, 2)

    def reverse_ranking() -> None:
        # Scale the filters so that the importance order of conv1 is reversed.
        with torch.no_grad():
            w = net.conv1.weight_orig
            imp = w.abs().reshape(8, -1).mean(dim=1)
            w.mul_((1.0 / imp**2).reshape(-1, 1, 1, 1))

    m.before_step(net, 0, 0)
    first = net.conv1.weight_mask.clone()
    reverse_ranking()
    m.before_step(net, 1, 0)  # still epoch 0 <= stop_epoch: the mask follows the weights
    second = net.conv1.weight_mask.clone()
    assert torch.equal(second, 1 - first)
    reverse_ranking()
    m.before_step(net, 2, 1)  # epoch 1 > stop_epoch: frozen
    m.before_step(net, 3, 1)
    assert torch.equal(net.conv1.weight_mask, second)


def test_cubic_schedule_values() -> None:
    total = 225 * 196
    values = [cubic_sparsity(0.9, t, total) for t in (0, total / 4, total / 2, 3 * total / 4)]
    assert values == pytest.approx([0.0, 0.5203, 0.7875, 0.8859], abs=1e-4)
    assert cubic_sparsity(0.9, total, total) == 0.9
    assert cubic_sparsity(0.9, 2 * total, total) == 0.9
    m = method(rate=0.9, schedule="cubic", stop_epoch=225)
    m.on_fit_start(nn.Identity(), 300, 196)
    assert m.target_sparsity(total // 2) == pytest.approx(0.7875, abs=1e-4)
    assert method(rate=0.9).target_sparsity(0) == 0.9  # constant: the rate at once


# ----------------------------------------------------------------------------- regularisers
def test_cov_hand_values_and_gradient() -> None:
    k = torch.tensor([[1.0, 2.0, 3.0]] * 3).reshape(1, 1, 3, 3)
    assert cov_penalty(k).item() == pytest.approx(6.0)  # Cov = all ones, i <= j: 6 entries
    assert cov_penalty(k, include_diag=False).item() == pytest.approx(3.0)
    assert cov_penalty(torch.full((2, 2, 3, 3), 0.7)).item() == 0.0
    assert cov_penalty(torch.ones(4, 4, 1, 1)).item() == 0.0  # 1x1: no covariance
    w = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cov_penalty(w).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_cov_on_model_reads_dense_weights_and_method_scales_by_odecay() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 3, bias=False), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]] * 3).reshape(1, 1, 3, 3))
    assert cov(net).item() == pytest.approx(6.0)
    m = method(rate=0.5, reg="cov", odecay=0.5, cov_include_diag=False)
    m.prepare(net)
    assert "0.weight_orig" in dict(net.named_parameters())
    assert m.extra_loss(net).item() == pytest.approx(1.5)
    assert method(rate=0.5).extra_loss(net) is None


def test_cov_faithful_counts_length_two_slices_without_gradient() -> None:
    conv = nn.Conv2d(1, 1, (2, 3), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]).reshape(1, 1, 2, 3))
    # np.cov of rows [1,2,3], [2,4,6]: var 1 and 4, covariance 2; triu sum = 1 + 2 + 4
    expected = float(np.absolute(np.triu(np.cov([[1, 2, 3], [2, 4, 6]]))).sum())
    assert expected == pytest.approx(7.0)
    value = cov_faithful(nn.Sequential(conv))
    assert value.item() == pytest.approx(7.0) and not value.requires_grad


def test_decorr_zhu_hand_values_and_gradient() -> None:
    same = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(2, 1, 2, 2).clone()
    assert zhu_correlation(same).item() == pytest.approx(math.sqrt(2) / 2)
    orthogonal = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    assert zhu_correlation(orthogonal).item() == pytest.approx(0.0, abs=1e-7)
    tiny = orthogonal.clone()
    tiny[1] = 1e-6  # below tau: out of S, a single filter left
    assert zhu_correlation(tiny).item() == 0.0
    w = torch.zeros(2, 2, 1, 1)
    w[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    # filter-wise norms 5 + 0, channel-wise 3 + 4: (5 + 7) / 2
    assert group_lasso(w).item() == pytest.approx(6.0)
    net = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(same)
    expected = 5e-4 * same.norm().item() + 1e-3 * group_lasso(same).item() + 5 * math.sqrt(2) / 2
    assert decorr_zhu(net).item() == pytest.approx(expected)
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    decorr_zhu(nn.Sequential(nn.Conv2d(3, 4, 3))).backward()  # whole-model path runs
    zhu_correlation(w).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_ortho_hand_values_and_gradient() -> None:
    w = (2 * torch.eye(3)).requires_grad_(True)  # W^T W - I = 3 I: sigma = 3 for any start
    sigma = srip_sigma(w, torch.Generator().manual_seed(0))
    assert sigma.item() == pytest.approx(3.0)
    (sigma**2).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2)))[0]
    assert srip_sigma(q).item() == pytest.approx(0.0, abs=1e-5)
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(2 * torch.eye(3))
    assert ortho(nn.Sequential(lin)).item() == pytest.approx(9.0)


@pytest.mark.parametrize(("rows", "cols"), [(2, 5), (5, 2), (3, 3)])
def test_ortho_and_srip_on_non_square_weights(rows: int, cols: int) -> None:
    """``ortho`` (the repository's reg_ortho) uses the fan-in Gram W^T W: on a wide matrix
    (rows < cols) it is rank-deficient and sigma >= 1 whatever the weights; ``srip`` uses the
    smaller Gram and is 0 for orthonormal rows (wide) or columns (tall)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=gen))[0]
    w = q if rows >= cols else q.t()  # orthonormal columns (tall) or rows (wide)
    assert w.shape == (rows, cols)
    fan_in = srip_sigma(w, torch.Generator().manual_seed(0), "fan_in").abs().item()
    smaller = srip_sigma(w, torch.Generator().manual_seed(0), "smaller").abs().item()
    assert smaller == pytest.approx(0.0, abs=1e-5)
    if rows < cols:
        assert fan_in == pytest.approx(1.0, abs=1e-4)  # the floor: eigenvalue -1 of W^T W - I
    else:
        assert fan_in == pytest.approx(0.0, abs=1e-5)
    # a scaled wide matrix: srip sees sigma(W W^T - I) = s^2 - 1 exactly
    if rows < cols:
        sigma = srip_sigma(2 * w, torch.Generator().manual_seed(0), "smaller").item()
        assert sigma == pytest.approx(3.0, rel=1e-4)


# ----------------------------------------------------------------------------- prune / export
def test_unstructured_mode_prunes_exact_weight_fraction(tiny_net: nn.Module) -> None:
    m = method(rate=0.5, type="unstructured")
    net = m.prepare(tiny_net)
    m.update_masks(net, 0.5)
    result = m.prune(net, ctx())
    model = result.model
    assert not [n for n, _ in model.named_parameters() if n.endswith("_orig")]
    n_conv = 8 * 3 * 9 + 16 * 8 * 9
    zeros = sum(int((model.get_submodule(c).weight == 0).sum()) for c in ("conv1", "conv2"))
    assert zeros == n_conv // 2
    assert set(result.masks) == {"conv1.weight", "conv2.weight"}
    assert result.info["masks_from"] == "training"
    # its rate ramp is not a pruning schedule record (the pipeline copies "schedule" to metrics)
    assert result.info["rate_schedule"] == m.rate_schedule and "schedule" not in result.info
    MaskHold(model, result.masks)  # the masks fit the exported model


def test_structured_prune_removes_filters_and_keeps_function_with_mask_bn(
    tiny_net: nn.Module,
) -> None:
    m = method(rate=0.5, scope="layerwise", mask_bn=True)
    net = m.prepare(tiny_net)
    with torch.no_grad():  # non-trivial BN statistics and shifts
        net.bn1.bias_orig.uniform_(-1, 1)
        net.bn1.running_mean.uniform_(-1, 1)
    m.update_masks(net, 0.5)
    net.eval()
    x = torch.randn(4, 3, 8, 8)
    expected = net(x)
    result = m.prune(net, ctx())
    model = result.model.eval()
    assert model.conv1.out_channels == 4 and model.conv2.in_channels == 4
    assert model.bn1.num_features == 4
    # conv2 -> mean -> fc is a plain slice too: fc loses the matching input columns
    assert (model.conv2.out_channels, model.fc.in_features) == (8, 8)
    assert result.info["filters_removed"] == 4 + 8 and result.info["removal_exact"] is True
    assert result.info["channels"] == {"conv1": [4, 8], "conv2": [8, 16]}
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert result.masks == {}  # every pruned filter is gone: nothing left to hold

    # resume: a fresh prepared model rebuilt from the checkpoint computes the same function
    fresh = m.prepare(copy.deepcopy(tiny_net))
    ckpt = {"model": model.state_dict(), "masks": result.masks, "info": result.info}
    restored = m.restore(fresh, ckpt, "pruned.pt").eval()
    assert torch.allclose(restored(x), expected, atol=1e-5)


def test_fully_pruned_layer_keeps_one_zero_filter(tiny_net: nn.Module) -> None:
    m = method(rate=0.5, mask_bn=True)  # global: 12 of 24 filters
    net = m.prepare(tiny_net)
    with torch.no_grad():
        net.conv1.weight_orig.mul_(1e-3)  # conv1's 8 filters rank lowest
    m.update_masks(net, 0.5)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    result = m.prune(net, ctx())
    model = result.model.eval()
    assert (model.conv1.out_channels, model.conv2.out_channels) == (1, 12)
    assert result.info["filters_removed"] == 7 + 4
    assert not bool(model.conv1.weight.any())
    assert not bool(result.masks["conv1.weight"].any())
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_prune_without_training_updates_masks_once_and_says_so(tiny_net: nn.Module) -> None:
    m = method(rate=0.5, scope="layerwise", remove_filters=False)
    result = m.prune(m.prepare(tiny_net), ctx())
    assert result.info["masks_from"] == "one-shot at prune"
    assert "no mask update ran during training" in result.info["warnings"][0]
    assert result.info["filters_pruned"] == 4 + 8
    assert set(result.masks) == {"conv1.weight", "conv2.weight"}


@pytest.mark.parametrize(("epochs", "ramp"), [(1, 1), (3, 3), (4, 3), (8, 6), (300, 225)])
def test_cubic_schedule_reaches_its_rate_within_the_configured_run(
    tiny_net: nn.Module, epochs: int, ramp: int
) -> None:
    """stop_epoch (225) beyond the run: the cubic ramp scales to the repository's 225/300 of
    the run, ceil(0.75 E) (a 1-epoch run ramps too, never the constant rate at once), the run
    says so, and the masks end at the rate, updating every freq steps as training would."""
    m = method(rate=0.6, schedule="cubic", freq=2, mask_bn=False, remove_filters=False)
    net = m.prepare(tiny_net)
    steps = 4
    m.on_fit_start(net, epochs, steps)
    assert m.ramp_epochs == ramp
    # halfway up the ramp: s = r - r (1 - 1/2)^3
    assert m.target_sparsity(ramp * steps // 2) == pytest.approx(0.6 - 0.6 * 0.125)
    for epoch in range(min(epochs, 4)):  # the first epochs, as fit() calls the hook
        for i in range(steps):
            m.before_step(net, epoch * steps + i, epoch)
    if epochs <= 4:
        result = m.prune(net, ctx())
        rate = result.info["rates"]["filters"]
        assert rate["target"] == 0.6 and rate["total"] == 24
        assert abs(rate["achieved"] - 0.6) <= 1 / 24  # floor(0.6 * 24) = 14 of 24 filters
        assert result.info["filters_pruned"] == math.floor(0.6 * 24)
        assert result.info["masks_from"] == "training"
        (warning,) = result.info["warnings"]  # the ramp is shorter than stop_epoch asked
        assert warning.startswith(
            f"dynamic_filter: the cubic schedule reaches rate 0.6 after "
            f"{ramp} of {epochs} epochs, not after method.stop_epoch=225"
        )
    assert (m.shortened_ramp() is None) == (ramp == 225)


def test_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown method.reg 'l2'.*none, cov_faithful, cov"):
        method(reg="l2")
    with pytest.raises(ConfigError, match=r"method.freq 0 .*integer >= 1"):
        method(freq=0)
    with pytest.raises(ConfigError, match=r"unknown method.schedule 'linear'"):
        method(schedule="linear")
    with pytest.raises(ConfigError, match=r"method.rate 1.0 is out of range"):
        build_method({"name": "dynamic_filter", "rate": 1.0}, 0.5)


def test_training_signature_keys_everything_that_changes_training() -> None:
    base = method(rate=0.6).training_signature()
    assert base["rate"] == 0.6 and base["freq"] == 4 and base["stop_epoch"] == 225
    for change in ({"reg": "cov", "odecay": 0.7}, {"freq": 16}, {"schedule": "cubic"},
                   {"feedback": False}, {"type": "unstructured"}, {"rate": 0.5}):  # fmt: skip
        assert method(**{"rate": 0.6, **change}).training_signature() != base, change
    assert method(rate=0.6, remove_filters=False).training_signature() == base


def test_masked_model_survives_deepcopy_and_state_dict(tiny_net: nn.Module) -> None:
    m = method(rate=0.5)
    net = m.prepare(tiny_net)
    m.update_masks(net, 0.5)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    twin = copy.deepcopy(net)
    assert "conv1.weight_mask" in twin.state_dict()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(twin.eval()(x), net.eval()(x))
    other = attach_mask(nn.Conv2d(3, 8, 3), "weight")
    assert other.name == "weight"


def test_a_plain_dense_checkpoint_loads_into_the_masked_model() -> None:
    torch.manual_seed(0)
    dense = build_model("resnet20", num_classes=10, in_channels=3, image_size=32).eval()
    masked = build_model("resnet20", num_classes=10, in_channels=3, image_size=32)
    method = build_method({"name": "dynamic_filter", "mask_bn": True}, 0.5)
    method.prepare(masked)
    state = method.pretrained_state(masked, dense.state_dict())
    assert "conv1.weight" not in state and torch.equal(
        state["conv1.weight_orig"], dense.conv1.weight
    )
    assert torch.equal(state["bn1.weight_mask"], torch.ones(16))  # mask_bn: BN gamma masked too
    masked.load_state_dict(state)  # strict: every key of the masked layout is there
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(masked.eval()(x), dense(x))
    # a checkpoint already in the masked layout (resume) passes through unchanged
    assert method.pretrained_state(masked, masked.state_dict()).keys() == state.keys()


def test_prune_run_dynamic_filter_trains_from_a_pretrained_dense_model(tmp_path: Path) -> None:
    """DPF prunes during training: with pretrained= its training starts from the weights (the
    masks move with feedback), it is not silently replaced by one-shot filter pruning; the
    pretrained dense model is the dense reference."""
    torch.manual_seed(0)
    dense = build_model("resnet20", num_classes=10, in_channels=3, image_size=32)
    torch.save({"model": dense.state_dict(), "arch": "resnet20"}, tmp_path / "dense.pt")
    proc = prune_run(
        *FAST, "method=dynamic_filter", "ratio=0.5", "pretrained=dense.pt", "hydra.run.dir=run",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "completed"
    assert m["train"]["started_from"]["pretrained"].endswith("dense.pt")
    assert m["train"]["epochs"] == 1 and m["train"]["from_cache"] is False
    info = m["prune_info"]
    assert info["masks_from"] == "training"
    assert info["filters_pruned"] == math.floor(0.5 * info["filters_total"])
    assert m["baseline_kind"].startswith("masked")
    ref = m["dense_reference"]
    assert ref["source"].startswith("pretrained") and ref["params"] == count_params(dense)[0]
    assert "warnings" not in m


# ----------------------------------------------------------------------------- CLI
def test_prune_run_dynamic_filter_end_to_end(tmp_path: Path) -> None:
    proc = prune_run(
        *FAST,
        "method=dynamic_filter",
        "ratio=0.5",
        "method.freq=1",
        "method.reg=cov",
        "method.odecay=0.01",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "completed" and m["method"] == "dynamic_filter"
    info = m["prune_info"]
    assert info["masks_from"] == "training"
    assert info["filters_pruned"] == math.floor(0.5 * info["filters_total"])
    assert info["filters_removed"] > 0
    # physically smaller, and the residual-stream filters held at zero through fine-tuning
    assert m["final"]["params"] < m["baseline"]["params"]
    assert m["final"]["macs"] < m["baseline"]["macs"]
    assert m["method_config"]["reg"] == "cov"
    # A filter masked in one producer of a residual stream whose channel another producer
    # still uses cannot be removed: it stays, masked, and fine-tuning keeps it exactly zero.
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt")
    stream = [k for k in ckpt["masks"] if k.endswith(("conv2.weight", "downsample.0.weight"))]
    assert stream, "some residual-stream producer keeps masked filters"
    for key, mask in ckpt["masks"].items():
        weight = ckpt["model"][key]
        assert not weight[~mask].any(), key
        assert not mask.any() or weight[mask].any(), key  # the kept filters did train


# ----------------------------------------------------------------- experiments, scripts
def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(root), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_experiment_configs_reproduce_the_repository_recipe() -> None:
    cfg = _compose("+experiment=dynamic_filter_recipe")
    assert (cfg.model.name, cfg.dataset.name, cfg.method.name) == (
        "resnet56", "cifar10", "dynamic_filter")  # fmt: skip
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.schedule, t.momentum, t.weight_decay) == (
        300, 256, 0.2, "constant", 0.9, 1e-4)  # fmt: skip
    d = cfg.dataset
    assert (d.mean, d.std, d.crop_padding, d.hflip) == (0.5, 0.5, 4, False)
    assert (cfg.seed, cfg.ratio, cfg.method.rate, cfg.method.reg, cfg.method.odecay) == (
        777, 0.6, 0.6, "cov_faithful", 0.7)  # fmt: skip
    assert (cfg.method.freq, cfg.method.stop_epoch, cfg.finetune.epochs) == (4, 225, 0)
    grid = _compose("+experiment=dynamic_filter_prune_reg").hydra.sweeper.params
    assert grid["ratio"] == grid["method.odecay"] == "0.5,0.6,0.7,0.8,0.9"
    assert _compose("+experiment=dynamic_filter_prune").method.reg == "none"
    reg_only = _compose("+experiment=dynamic_filter_reg")
    assert reg_only.ratio == 0.0 and "method.odecay" in reg_only.hydra.sweeper.params


def _compare_reg():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_reg.py"
    spec = importlib.util.spec_from_file_location("compare_reg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_reg_welch_test_and_report(tmp_path: Path) -> None:
    c = _compare_reg()
    # means 2.5 and 4.5, variances 5/3: t = 2 / sqrt(5/6) = 2.1909, df = 6, p = 0.0710
    w = c.welch([1, 2, 3, 4], [3, 4, 5, 6])
    assert (w["t"], w["df"], w["p"]) == pytest.approx((2.19089, 6.0, 0.07099), abs=1e-4)
    assert w["diff_over_sd"] == pytest.approx(2 / math.sqrt(5 / 3))
    assert c.betainc(2, 3, 0.4) == pytest.approx(0.5248)  # = P(Binomial(4, 0.4) >= 2)
    for i, (reg, top1) in enumerate([("none", 80), ("none", 82), ("cov", 81), ("cov", 83)]):
        run = tmp_path / str(i)
        run.mkdir()
        metrics = {
            "status": "completed", "method": "dynamic_filter", "seed": i % 2,
            "method_config": {"reg": reg}, "final": {"top1": top1, "sparsity": 0.5},
            "train": {"best_top1_test": top1 + 1}, "prune_info": {"repo_sparsity_percent": 60.0},
        }  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(metrics))
    groups = c.read_runs(tmp_path)
    assert [r["final_top1"] for r in groups["cov"]] == [81, 83]
    text = c.report(groups, "cov")
    assert "final_top1 81.0000 ± 1.4142" in text
    assert "final_top1     diff +1.0000" in text and "within seed noise" in text
