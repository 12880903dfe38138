"""Parameter, MAC and sparsity counting.

Definitions (docs/metrics.md "Stage objects", docs/methods.md §2.2):

- **params**: every ``nn.Parameter`` of the model, BN affine parameters included; a tensor shared
  by several modules (tied weights) counts once. *nonzero params* counts the entries that are not
  exactly 0. For a weight pruned with ``torch.nn.utils.prune`` (parameter ``X_orig`` plus buffer
  ``X_mask``) the nonzeros are those of the masked tensor ``X``.
- **MACs** (multiply-accumulates) of one forward pass of one image:
  conv ``Kh*Kw*(Cin/groups)*Cout*Hout*Wout``; linear ``in*out`` times the product of the output's
  leading dimensions other than the batch. BN, activations, pooling, additions and biases cost 0.
  *nonzero MACs* (effective MACs of an unstructured-sparse model) count only nonzero weights:
  ``nnz(W)*Hout*Wout`` for a conv and ``nnz(W)`` (times leading dims) for a linear.
- **sparsity**: the fraction of exactly-zero entries among the *weights*: the ``weight``
  tensors of ``nn.Conv2d`` and (by default) ``nn.Linear`` modules, and the stored weights of
  layers whose weight is generated from them (a template bank's ``templates``: a module names
  that parameter in its ``weight_bank`` attribute); biases and BN are excluded. Counting the
  banks keeps a shared model's weights what they are, not zero: its generated convs hold none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle


def prunable_layers(model: nn.Module, include_linear: bool = True) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Conv2d`` (and ``nn.Linear``) in ``named_modules`` order."""
    kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear) if include_linear else (nn.Conv2d,)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def weight_tensors(model: nn.Module, include_linear: bool = True) -> list[tuple[str, torch.Tensor]]:
    """``(module name, weight)`` of every conv (and linear) weight, the effective masked tensor
    for ``torch.nn.utils.prune``, and every weight bank (``module.weight_bank`` names the
    parameter), in ``named_modules`` order: the weights the figures count."""
    out = [(name, m.weight) for name, m in prunable_layers(model, include_linear)]
    for name, m in model.named_modules():
        bank = getattr(m, "weight_bank", None)
        if isinstance(bank, str):
            out.append((name, getattr(m, bank)))
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(total, nonzero)`` entries of all parameters, shared tensors once; see module doc."""
    total = nonzero = 0
    for tensor, effective in _parameters_with_effective_value(model):
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(effective.detach()))
    return total, nonzero


def _parameters_with_effective_value(
    model: nn.Module,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (parameter, value used in forward): the masked tensor for torch.nn.utils.prune."""
    seen: set[int] = set()
    for module in model.modules():
        buffers = dict(module.named_buffers(recurse=False))
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            base = pname.removesuffix("_orig")
            if pname.endswith("_orig") and f"{base}_mask" in buffers:
                yield param, param * buffers[f"{base}_mask"]
            else:
                yield param, param


@dataclass
class MacCount:
    """MACs of one forward pass of one image.

    ``dense`` counts every weight entry, ``nonzero`` only nonzero ones; ``per_layer`` maps the
    name of the module that ran each conv/linear to ``(dense, nonzero)`` (summed over calls).
    """

    dense: int
    nonzero: int
    per_layer: dict[str, tuple[int, int]] = field(default_factory=dict)


class _MacCounter(TorchFunctionMode):
    """Counts every ``F.conv2d`` / ``F.linear`` call with the weight it is actually given.

    Intercepting the functional calls (rather than hooking ``nn.Conv2d``/``nn.Linear`` only) also
    counts custom layers that compute their weight in ``forward`` (masked convs, template-shared
    convs), with the nonzeros of the weight actually used.
    """

    def __init__(self, module_stack: list[str]) -> None:
        super().__init__()
        self.module_stack = module_stack
        self.per_layer: dict[str, tuple[int, int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.conv2d or func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            dense, nonzero = _call_macs(weight, out)
            name = self.module_stack[-1] if self.module_stack else ""
            old = self.per_layer.get(name, (0, 0))
            self.per_layer[name] = (old[0] + dense, old[1] + nonzero)
        return out


def _call_macs(weight: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(dense, nonzero) MACs of one conv2d/linear call on a batch of one."""
    nnz = int(torch.count_nonzero(weight.detach()))
    # Each weight entry is used once per output element of its output channel / feature:
    # N*Hout*Wout times for a conv (N = 1), prod(leading dims) times for a linear.
    positions = out.numel() // weight.shape[0]
    return weight.numel() * positions, nnz * positions


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> MacCount:
    """MACs of one forward pass of a batch of one ``(1, *input_size)`` image; see module doc.

    The model runs in eval mode (its mode is restored afterwards), without gradients, on the
    device of its first parameter or buffer. A module called twice counts twice.
    """
    device = _model_device(model)
    module_stack: list[str] = []
    handles = _track_module_names(model, module_stack)
    counter = _MacCounter(module_stack)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(torch.zeros((1, *input_size), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    per_layer = counter.per_layer
    return MacCount(
        dense=sum(d for d, _ in per_layer.values()),
        nonzero=sum(n for _, n in per_layer.values()),
        per_layer=per_layer,
    )


def _track_module_names(model: nn.Module, stack: list[str]) -> list[RemovableHandle]:
    """Hooks that keep ``stack[-1]`` = name of the innermost module currently running."""
    handles: list[RemovableHandle] = []
    for name, module in model.named_modules():

        def push(_module: nn.Module, _args: object, name: str = name) -> None:
            stack.append(name)

        def pop(_module: nn.Module, _args: object, _out: object) -> None:
            stack.pop()

        handles.append(module.register_forward_pre_hook(push))
        # always_call: pop even when the forward raises, so the stack stays balanced.
        handles.append(module.register_forward_hook(pop, always_call=True))
    return handles


def _model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def prunable_counts(model: nn.Module, include_linear: bool = True) -> tuple[int, int]:
    """``(entries, nonzero entries)`` of the weights (:func:`weight_tensors`)."""
    entries = nonzero = 0
    for _, tensor in weight_tensors(model, include_linear):
        weight = tensor.detach()
        entries += weight.numel()
        nonzero += int(torch.count_nonzero(weight))
    return entries, nonzero


def sparsity(model: nn.Module, include_linear: bool = True) -> tuple[float, dict[str, float]]:
    """``(global, per_layer)`` fraction of zero entries among the weights
    (:func:`weight_tensors`); see module doc.

    Global = zeros / entries over all weights together (not the mean of the layers). The
    effective ``module.weight`` is read, so ``torch.nn.utils.prune`` masks are respected.
    """
    zeros_total = entries_total = 0
    per_layer: dict[str, float] = {}
    for name, tensor in weight_tensors(model, include_linear):
        weight = tensor.detach()
        entries = weight.numel()
        zeros = entries - int(torch.count_nonzero(weight))
        per_layer[name] = zeros / entries if entries else 0.0
        zeros_total += zeros
        entries_total += entries
    return (zeros_total / entries_total if entries_total else 0.0), per_layer
