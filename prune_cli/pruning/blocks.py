"""Whole residual blocks removed (``method.remove_blocks``): depth pruning.

A channel-pruned network keeps every layer call; on small inputs and small batches a layer's
fixed cost (the call, the kernel launch, the memory it touches whatever its width) is a large
part of its latency, and thinner layers cannot remove it: at 2x fewer MACs, ResNet-56 at 32 px
in PyTorch eager at batch 1 can run at most about 1.5x faster however its channels are chosen
(the fixed cost that is left when every group keeps one channel), while ResNet-32 (the same
network with 12 fewer blocks, 1.8x fewer MACs) ran 1.75x faster (``scripts/bench_deploy.py
--floor``; docs/benchmarks.md). Removing whole blocks removes their calls too (Elkerdawy et al.,
"To filter prune, or to layer prune, that is the question", ACCV 2020, compare the two on
latency).

A block is removable when its output is its input plus a residual branch (an identity
shortcut) and zeroing the branch's last layer (a BatchNorm's gamma and beta, or a conv's weight)
makes the block the identity function exactly:

- the CIFAR ResNets' and torchvision's ``BasicBlock`` / ``Bottleneck`` without a downsampling
  shortcut: ``relu(x + 0) = x`` because a block's input is the output of a ReLU (the stem's or
  the previous block's);
- Wide ResNet's pre-activation block with the identity shortcut (``conv2(...) + x``);
- MobileNetV2's and MobileNetV3's inverted residuals with ``use_res_connect`` (linear
  bottlenecks: ``x + 0 = x``);
- with timm installed, timm's ResNet ``BasicBlock`` / ``Bottleneck`` without downsampling whose
  last activation is a ReLU, and its EfficientNet / MobileNetV3 blocks (``InvertedResidual``,
  ``DepthwiseSeparableConv``) with ``has_skip`` whose last BatchNorm applies no activation.

Only these exact classes are recognised (a subclass may compute something else). Removing a
block replaces it with ``nn.Identity`` (:func:`drop_blocks`); :func:`zero_blocks` is the
masked-dense equivalent, in place (the branch's last layer zeroed): in eval mode both compute
the same function.

**Which blocks** (:func:`block_scores`): the branch's contribution to the stream is scaled by
its last layer, so a branch whose last BatchNorm has small gammas adds little to what passes
through the shortcut (the scale factor criterion of Huang & Wang's sparse structure selection,
ECCV 2018, applied to trained rather than sparsity-trained factors). The score is the root mean
square of that layer's weight (gamma, or the conv's weights), so that branches of different
widths compare; the lowest-scored blocks go first. On the published CIFAR-10 ResNet-56 a lesion
criterion that needs data (the loss increase when each block alone is removed, on 1,024 training
images; 80 s on one thread) chose 12 of the same 13 blocks and left 13.6% test top-1 before
fine-tuning, against 19.4% for this one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prune_cli.metrics.counting import count_macs

__all__ = [
    "Block",
    "block_scores",
    "drop_blocks",
    "removable_blocks",
    "remove_lowest_blocks",
    "total_reduction",
    "zero_blocks",
]


@dataclass(frozen=True)
class Block:
    """A removable block: its module path and the path of its residual branch's last layer."""

    name: str
    last: str


def _kinds() -> dict[type[nn.Module], Callable[[nn.Module], str | None]]:
    """Block class -> the relative path of its branch's last layer when the block is
    removable (module docstring), else None."""
    from torchvision.models import mobilenetv2, mobilenetv3, resnet

    from prune_cli.models.cifar_resnet import BasicBlock as CifarBasicBlock
    from prune_cli.models.wide_resnet import WideBasicBlock

    def inverted_v2(block: nn.Module) -> str | None:
        return f"conv.{len(block.conv) - 1}" if block.use_res_connect else None

    def inverted_v3(block: nn.Module) -> str | None:
        # the last Conv2dNormActivation has no activation: (conv, BN)
        return f"block.{len(block.block) - 1}.1" if block.use_res_connect else None

    return {
        CifarBasicBlock: lambda b: "bn2" if b.downsample is None else None,
        resnet.BasicBlock: lambda b: "bn2" if b.downsample is None else None,
        resnet.Bottleneck: lambda b: "bn3" if b.downsample is None else None,
        WideBasicBlock: lambda b: "conv2" if b.shortcut is None else None,
        mobilenetv2.InvertedResidual: inverted_v2,
        mobilenetv3.InvertedResidual: inverted_v3,
        **_timm_kinds(),
    }


def _timm_kinds() -> dict[type[nn.Module], Callable[[nn.Module], str | None]]:
    """timm's ResNet blocks (when their last activation is a ReLU: ``relu(x + 0) = x`` needs
    it) and its EfficientNet/MobileNetV3 blocks with ``has_skip`` (when the branch's last
    BatchNormAct applies no activation), if timm is installed."""
    try:
        from timm.models import _efficientnet_blocks as efficientnet
        from timm.models import resnet as timm_resnet
    except ImportError:  # the optional extra
        return {}

    def residual(last: str, act: str) -> Callable[[nn.Module], str | None]:
        def rule(block: nn.Module) -> str | None:
            relu = isinstance(getattr(block, act), nn.ReLU)
            return last if block.downsample is None and relu else None

        return rule

    def skip(last: str) -> Callable[[nn.Module], str | None]:
        def rule(block: nn.Module) -> str | None:
            act = getattr(block.get_submodule(last), "act", None)
            plain = act is None or isinstance(act, nn.Identity)
            return last if block.has_skip and plain else None

        return rule

    return {
        timm_resnet.BasicBlock: residual("bn2", "act2"),
        timm_resnet.Bottleneck: residual("bn3", "act3"),
        efficientnet.InvertedResidual: skip("bn3"),
        efficientnet.DepthwiseSeparableConv: skip("bn2"),
    }


def removable_blocks(model: nn.Module) -> list[Block]:
    """``model``'s removable blocks (module docstring), in module order."""
    kinds = _kinds()
    found = []
    for name, module in model.named_modules():
        rule = kinds.get(type(module))
        last = rule(module) if rule is not None else None
        if last is None:
            continue
        layer = module.get_submodule(last)
        if not isinstance(layer, nn.BatchNorm2d | nn.Conv2d):  # pragma: no cover - by design
            raise TypeError(f"{name}.{last} is a {type(layer).__name__}, not a BN or conv")
        found.append(Block(name, f"{name}.{last}"))
    return found


def block_scores(model: nn.Module, blocks: Sequence[Block]) -> dict[str, float]:
    """``{block: root mean square of its branch's last layer's weight}`` (module docstring)."""
    return {
        b.name: float(model.get_submodule(b.last).weight.detach().float().pow(2).mean().sqrt())
        for b in blocks
    }


def lowest(scores: dict[str, float], count: int) -> list[str]:
    """The ``count`` lowest-scored blocks (ties: the later block), in module order."""
    order = list(scores)
    ranked = sorted(order, key=lambda n: (scores[n], -order.index(n)))
    chosen = set(ranked[:count])
    return [n for n in order if n in chosen]


def remove_lowest_blocks(
    model: nn.Module, count: int, input_size: Sequence[int]
) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` less its ``count`` lowest-scored removable blocks (all it has when it has
    fewer), and the record of the cut (``prune_info.blocks``)."""
    found = removable_blocks(model)
    scores = block_scores(model, found)
    chosen = lowest(scores, count)
    before = float(count_macs(model, input_size).dense)
    new = drop_blocks(model, chosen)
    after = float(count_macs(new, input_size).dense)
    record = {
        "requested": count,
        "removable": len(found),
        "removed": chosen,
        "criterion": "rms of the residual branch's last BN gamma (conv weight)",
        "scores": {name: round(value, 6) for name, value in scores.items()},
        "macs_before": round(before),
        "macs_after": round(after),
        "macs_reduction": round(before / after, 4) if after else None,
    }
    return new, record


def total_reduction(record: dict[str, Any], final: nn.Module, input_size: Sequence[int]) -> float:
    """Dense MACs (before the blocks went) over ``final``'s."""
    return round(record["macs_before"] / float(count_macs(final, input_size).dense), 4)


def drop_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of ``model`` with the blocks ``names`` replaced by ``nn.Identity``; raises
    ``ValueError`` (one line) for a name that is not a removable block of ``model``."""
    _check(model, names)
    new = copy.deepcopy(model)
    for name in names:
        new.set_submodule(name, nn.Identity())
    return new


@torch.no_grad()
def zero_blocks(model: nn.Module, names: Sequence[str]) -> None:
    """In place: the branch's last layer of each block ``names`` zeroed (weight and bias), so
    each block computes its input in eval mode, as :func:`drop_blocks`' identity does."""
    last = {b.name: b.last for b in _check(model, names)}
    for name in names:
        layer = model.get_submodule(last[name])
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()


def _check(model: nn.Module, names: Sequence[str]) -> list[Block]:
    blocks = removable_blocks(model)
    known = {b.name for b in blocks}
    unknown = [n for n in names if n not in known]
    if unknown:
        valid = ", ".join(sorted(known)[:6]) or "none in this model"
        raise ValueError(f"{unknown[0]!r} is not a removable block; removable: {valid}")
    return blocks
