"""Thresholds, masks and the magnitude / random methods."""

from __future__ import annotations

import pytest
import torch

from prune_cli.errors import ConfigError
from prune_cli.methods import build_method
from prune_cli.methods.base import PruneContext
from prune_cli.pruning import (
    MaskHold,
    count_pruned,
    keep_mask,
    masks_from_scores,
    n_to_remove,
    prunable_weights,
)


def _ctx() -> PruneContext:
    return PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=(3, 8, 8))


def test_threshold_exact_and_reference_counts() -> None:
    # docs/methods.md §2.1: N = 1000 distinct values, percent 0.7: exact removes 700, reference 701.
    scores = torch.randperm(1000).float()
    assert int((~keep_mask(scores, 0.7, "exact")).sum()) == 700
    assert int((~keep_mask(scores, 0.7, "reference")).sum()) == 701


def test_threshold_removes_the_smallest_and_breaks_ties_by_position() -> None:
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 5.0])
    keep = keep_mask(scores, 0.4, "exact")  # floor(5 * 0.4) = 2 removed: the first two 1.0s
    assert keep.tolist() == [True, False, False, True, True]


def test_n_to_remove_is_robust_to_float_error() -> None:
    assert n_to_remove(1000, 0.7) == 700
    assert n_to_remove(10, 0.3) == 3
    assert n_to_remove(3, 0.0) == 0


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range_is_a_config_error(ratio: float) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        keep_mask(torch.rand(10), ratio)


def test_layerwise_scope_prunes_each_layer_equally() -> None:
    scores = {"a": torch.rand(10), "b": torch.rand(30) + 10}
    masks = masks_from_scores(scores, 0.5, "layerwise")
    assert int((~masks["a"]).sum()) == 5 and int((~masks["b"]).sum()) == 15
    glob = masks_from_scores(scores, 0.25, "global")  # 10 of 40 removed: all of layer a
    assert int((~glob["a"]).sum()) == 10 and int((~glob["b"]).sum()) == 0


def test_magnitude_prunes_exactly_floor_pN_conv_weights_and_leaves_the_rest(tiny_net) -> None:
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    method = build_method({"name": "magnitude", "scope": "global", "mode": "exact"}, 0.6)
    result = method.prune(tiny_net, _ctx())
    convs = prunable_weights(tiny_net)
    n = sum(w.numel() for w in convs.values())
    zeros = sum(int((w == 0).sum()) for w in convs.values())
    assert zeros == n_to_remove(n, 0.6)
    assert count_pruned(result.masks) == (n_to_remove(n, 0.6), n)
    # The pruned weights are the smallest in magnitude.
    flat_before = torch.cat([before[k].abs().reshape(-1) for k in convs])
    kept_min = torch.cat([w.abs().reshape(-1) for w in convs.values()])
    assert kept_min[kept_min > 0].min() >= flat_before.sort().values[zeros - 1]
    # Linear, biases and BN are untouched.
    assert torch.equal(tiny_net.fc.weight, before["fc.weight"])
    assert torch.equal(tiny_net.bn1.weight, before["bn1.weight"])


def test_magnitude_include_linear_and_layerwise(tiny_net) -> None:
    method = build_method({"name": "magnitude", "scope": "layerwise", "include_linear": True}, 0.5)
    result = method.prune(tiny_net, _ctx())
    assert set(result.masks) == {"conv1.weight", "conv2.weight", "fc.weight"}
    for name, mask in result.masks.items():
        assert int((~mask).sum()) == n_to_remove(mask.numel(), 0.5), name


def test_random_removes_the_same_count_as_magnitude_and_depends_on_seed(tiny_net) -> None:
    import copy

    a = build_method({"name": "random"}, 0.6, seed=1).prune(copy.deepcopy(tiny_net), _ctx())
    b = build_method({"name": "random"}, 0.6, seed=1).prune(copy.deepcopy(tiny_net), _ctx())
    c = build_method({"name": "random"}, 0.6, seed=2).prune(copy.deepcopy(tiny_net), _ctx())
    m = build_method({"name": "magnitude"}, 0.6).prune(copy.deepcopy(tiny_net), _ctx())
    assert count_pruned(a.masks) == count_pruned(m.masks)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], c.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], m.masks[k]) for k in a.masks)


def test_mask_hold_keeps_zeros_through_sgd_with_momentum_and_decay(tiny_net) -> None:
    result = build_method({"name": "magnitude"}, 0.6).prune(tiny_net, _ctx())
    hold = MaskHold(tiny_net, result.masks)
    zero_sets = {k: (w == 0) for k, w in prunable_weights(tiny_net).items()}
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    before = {k: w.detach().clone() for k, w in prunable_weights(tiny_net).items()}
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tiny_net(x), y).backward()
        hold.after_backward(tiny_net)
        opt.step()
        hold.after_step(tiny_net)
    for k, w in prunable_weights(tiny_net).items():
        assert torch.equal(w == 0, zero_sets[k]), k  # the zero set is unchanged
        assert not torch.equal(w, before[k])  # while the kept weights did train


def test_unknown_method_and_option_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'magnitud'; choose one of: .*magnitude"):
        build_method({"name": "magnitud"}, 0.5)
    # Options are checked when the method is built, before any model exists.
    with pytest.raises(ConfigError, match=r"method.scope 'everywhere'.*global, layerwise"):
        build_method({"name": "magnitude", "scope": "everywhere"}, 0.5)
    with pytest.raises(ConfigError, match=r"unknown key method.scop for method 'magnitude'"):
        build_method({"name": "magnitude", "scop": "global"}, 0.5)
