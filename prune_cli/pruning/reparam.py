"""Weight re-parameterisation by a mask: ``W = W_orig ⊙ M`` in every forward pass.

Used by dynamic pruning with feedback (DPF, ``method=dynamic_filter``, docs/methods.md §7.4):
:func:`attach_mask` replaces ``module.weight`` by a dense parameter ``weight_orig`` and a buffer
``weight_mask`` (all ones) -- ``torch.nn.utils.prune``'s naming, which the metrics already read
(the nonzeros of a masked weight are those of ``orig * mask``); masks are buffers, never
parameters, so parameter counts do not change. With ``feedback`` the backward pass is
straight-through: the dense weight receives the full gradient evaluated at ``W ⊙ M``, pruned
entries included, so pruned filters keep evolving and can come back (DPF); without it the
gradient is multiplied by the mask (static masks). :func:`strip_masks` undoes it, exporting
``W ⊙ M`` as plain parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _StraightThroughMask(torch.autograd.Function):
    """``W * M`` forward; the full gradient to ``W`` backward (the repository's ``Masker``)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def masked_weight(weight: torch.Tensor, mask: torch.Tensor, feedback: bool = True) -> torch.Tensor:
    """``weight ⊙ mask``; gradient to ``weight`` straight-through (``feedback``) or times mask."""
    if feedback:
        return _StraightThroughMask.apply(weight, mask)
    return weight * mask


class MaskedWeight:
    """Keeps ``module.<name> = <name>_orig ⊙ <name>_mask`` for every forward pass.

    A plain object (no reference to the method) so that ``copy.deepcopy`` of the model works;
    the post-hook detaches the computed weight because a non-leaf tensor attribute would make
    ``deepcopy`` fail.
    """

    def __init__(self, name: str, feedback: bool) -> None:
        self.name = name
        self.feedback = feedback

    def compute(self, module: nn.Module) -> torch.Tensor:
        orig = getattr(module, f"{self.name}_orig")
        mask = getattr(module, f"{self.name}_mask")
        return masked_weight(orig, mask, self.feedback)

    def pre(self, module: nn.Module, args: Any) -> None:
        setattr(module, self.name, self.compute(module))

    def post(self, module: nn.Module, args: Any, out: Any) -> None:
        setattr(module, self.name, getattr(module, self.name).detach())


def attach_mask(module: nn.Module, name: str, feedback: bool = True) -> MaskedWeight:
    """Re-parameterise ``module.<name>`` as ``<name>_orig`` (the same Parameter object, so an
    optimizer built before keeps working) times a buffer ``<name>_mask`` of ones."""
    param = module._parameters.pop(name)
    module.register_parameter(f"{name}_orig", param)
    module.register_buffer(f"{name}_mask", torch.ones_like(param, requires_grad=False))
    hook = MaskedWeight(name, feedback)
    module.register_forward_pre_hook(hook.pre)
    module.register_forward_hook(hook.post)
    with torch.no_grad():
        setattr(module, name, hook.compute(module).detach())
    return hook


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return f"{name}_orig" in module._parameters and f"{name}_mask" in module._buffers


@torch.no_grad()
def detach_mask(module: nn.Module, name: str = "weight", apply: bool = True) -> torch.Tensor:
    """Undo :func:`attach_mask`: ``<name>`` becomes a plain Parameter holding ``orig ⊙ mask``
    (``apply=False``: the dense values). Returns the mask (bool, ``True`` = kept)."""
    param = module._parameters.pop(f"{name}_orig")
    mask = module._buffers.pop(f"{name}_mask")
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key, fn in list(hooks.items()):
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, MaskedWeight) and owner.name == name:
                del hooks[key]
    if name in module.__dict__:
        delattr(module, name)
    if apply:
        param.mul_(mask)
    module.register_parameter(name, param)
    return mask.to(torch.bool)


def masked_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """``(name, conv)`` of every conv re-parameterised by :func:`attach_mask`, module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and is_masked(m)]


def bn_after_conv(model: nn.Module) -> dict[str, str]:
    """``{conv name: BN name}`` for each BatchNorm2d registered right after a conv (module order)
    with ``num_features == out_channels``: the conv-BN pairs of CIFAR ResNets, VGG and
    torchvision's Conv-BN-activation blocks."""
    pairs: dict[str, str] = {}
    previous: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and previous is not None:
            conv_name, conv = previous
            if conv.out_channels == module.num_features:
                pairs[conv_name] = name
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            previous = (name, module) if isinstance(module, nn.Conv2d) else None
    return pairs


def strip_masks(model: nn.Module, apply: bool = True) -> dict[str, torch.Tensor]:
    """Undo every :func:`attach_mask` in ``model``; ``{param name: bool mask}``."""
    masks = {}
    for name, module in model.named_modules():
        for pname in ("weight", "bias"):
            if is_masked(module, pname):
                prefix = f"{name}." if name else ""
                masks[f"{prefix}{pname}"] = detach_mask(module, pname, apply)
    return masks


def export_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Export ``W ⊙ M`` as plain parameters; the masks keyed by parameter name."""
    return strip_masks(model, apply=True)
