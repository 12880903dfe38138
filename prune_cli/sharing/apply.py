"""Re-parameterising a model with template banks, the parameter formula, and materialisation.

Sharing plans (which convs share which bank) [docs/methods.md §9.2, §9.3]:

- :func:`shufflenet_plans` (template reuse, docs/methods.md §9.3, our design): per stage ``s`` of
  torchvision's ShuffleNetV2 (``stage2..stage4``), the stride-1 units (every unit after the first)
  have a right branch ``1x1 -> BN -> ReLU -> 3x3 depthwise -> BN -> 1x1 -> BN -> ReLU``. Both 1x1
  convs (``bf x bf``) of every stride-1 unit share one bank ``stage<s>``: ``L_s = 2 (n_s - 1)``
  layers (6, 14, 6). With ``depthwise=True`` (variant C) the depthwise convs (``bf x 1 x 3 x 3``,
  ``groups = bf``) share a second bank ``stage<s>_depthwise`` (``n_s - 1`` layers). The stride-2
  units, conv1, conv5, the classifier and every BN stay unshared.
- :func:`resnet_plans` (soft sharing, docs/methods.md §9.2, Savarese & Maire's SWRN rule, on the
  Wide ResNets of the paper and on the project's CIFAR ResNets): per stage, every 3x3 conv of the
  blocks after the first block shares one bank ``layer<s>``: ``L = 2 (n - 1)`` layers of shape
  ``C_s x C_s x 3 x 3``. The first block of a stage (stride or width change), the stem, the 1x1
  shortcuts and the classifier stay unshared.

Parameter formula (docs/methods.md §9.3, generalised to any plan): with ``P`` the unshared model's
parameters and bank ``b`` serving ``L_b`` layers of weight size ``|W_b|`` with ``k_b`` templates,

    P_shared = P - sum_b L_b |W_b| + sum_b (k_b |W_b| + L_b k_b c_b),

where ``c_b = 1`` for scalar coefficients and ``c_b = C_out`` for per-channel ones. MACs do not
change: every layer still convolves with a full-size weight (sharing changes storage, not compute).

Initialisation is drawn from a ``torch.Generator`` seeded with the run seed, so :func:`share` is
deterministic: a checkpoint of a trained shared model loads into a freshly shared model (same
state-dict keys and shapes, and the same initial values for the same seed).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.metrics.counting import count_params
from prune_cli.models import traits
from prune_cli.sharing.layers import (
    COEFFICIENT_KINDS,
    SConv2d,
    TemplateBank,
    orthogonal_coefficients,
)

BANKS_ATTR = "template_banks"


@dataclass
class BankPlan:
    """One bank: its name, the dotted names of the convs it serves, and their weight shape."""

    name: str
    layers: list[str]
    weight_shape: tuple[int, int, int, int]
    groups: int = 1

    @property
    def weight_numel(self) -> int:
        c_out, c_in, kh, kw = self.weight_shape
        return c_out * c_in * kh * kw


@dataclass
class SharingSummary:
    """What :func:`share` did: templates per bank and the parameter counts before and after."""

    templates: dict[str, int]
    layers: dict[str, int]
    params_unshared: int
    params_shared: int
    coefficients: str

    @property
    def reduction(self) -> float:
        """Fraction of the unshared model's parameters removed by sharing."""
        return 1.0 - self.params_shared / self.params_unshared


def _conv(model: nn.Module, name: str) -> nn.Conv2d:
    module = model.get_submodule(name)
    if not isinstance(module, nn.Conv2d) or module.bias is not None:
        raise ValueError(f"{name} is not a bias-free nn.Conv2d (got {type(module).__name__})")
    return module


def _plan(model: nn.Module, name: str, layers: list[str]) -> BankPlan:
    """A bank over ``layers``, checking that their weights have one shape and one geometry."""
    convs = [_conv(model, n) for n in layers]
    shapes = {tuple(c.weight.shape) for c in convs}
    groups = {c.groups for c in convs}
    if len(shapes) != 1 or len(groups) != 1:
        raise ValueError(f"bank {name}: layers differ in shape {shapes} or groups {groups}")
    shape = tuple(int(s) for s in shapes.pop())
    return BankPlan(name, layers, shape, groups.pop())  # type: ignore[arg-type]


def shufflenet_plans(
    model: nn.Module, pointwise: bool = True, depthwise: bool = False
) -> list[BankPlan]:
    """Banks over the stride-1 units of torchvision's ShuffleNetV2; see the module docstring."""
    plans: list[BankPlan] = []
    for stage_name in ("stage2", "stage3", "stage4"):
        units = list(getattr(model, stage_name))
        point: list[str] = []
        depth: list[str] = []
        # Unit 0 is the stride-2 downsampling unit; every later unit is stride 1.
        for i in range(1, len(units)):
            for j, module in enumerate(units[i].branch2):
                if not isinstance(module, nn.Conv2d):
                    continue
                name = f"{stage_name}.{i}.branch2.{j}"
                (depth if module.groups > 1 else point).append(name)
        if pointwise and point:
            plans.append(_plan(model, stage_name, point))
        if depthwise and depth:
            plans.append(_plan(model, f"{stage_name}_depthwise", depth))
    return plans


def resnet_plans(model: nn.Module) -> list[BankPlan]:
    """Savarese & Maire's rule on a (wide) CIFAR ResNet: 3x3 convs after the first block of a
    stage. On WRN-28-10 this is SWRN-28-10-k: 3 banks of 6 layers (160, 320, 640 channels)."""
    plans: list[BankPlan] = []
    for stage_name in ("layer1", "layer2", "layer3"):
        blocks = list(getattr(model, stage_name))
        layers = [
            f"{stage_name}.{i}.{c}" for i in range(1, len(blocks)) for c in ("conv1", "conv2")
        ]
        if layers:
            plans.append(_plan(model, stage_name, layers))
    return plans


def is_shufflenet(model: nn.Module) -> bool:
    """torchvision's ShuffleNetV2 (:func:`prune_cli.models.traits.is_shufflenet_v2`)."""
    return traits.is_shufflenet_v2(model)


def is_cifar_resnet(model: nn.Module) -> bool:
    """A CIFAR ResNet or a Wide ResNet (:func:`prune_cli.models.traits.is_cifar_resnet`)."""
    return traits.is_cifar_resnet(model)


def templates_per_bank(ks: int | Sequence[int], plans: Sequence[BankPlan]) -> dict[str, int]:
    """``k`` for every bank: one int for all, or one per *stage* (a depthwise bank takes its
    stage's value), in stage order."""
    if isinstance(ks, int):
        values = {p.name: ks for p in plans}
    else:
        stages = list(dict.fromkeys(p.name.removesuffix("_depthwise") for p in plans))
        if len(ks) != len(stages):
            raise ConfigError(
                f"templates_per_stage {list(ks)} has {len(ks)} values; the model has "
                f"{len(stages)} shared stages ({', '.join(stages)}): give one value per stage"
            )
        per_stage = dict(zip(stages, ks, strict=True))
        values = {p.name: int(per_stage[p.name.removesuffix("_depthwise")]) for p in plans}
    for name, k in values.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"templates_per_stage {k!r} for {name} must be an integer >= 1")
    return values


def predicted_params(
    params_unshared: int,
    plans: Sequence[BankPlan],
    ks: dict[str, int],
    coefficients: str = "scalar",
) -> int:
    """``P - sum_b L_b |W_b| + sum_b (k_b |W_b| + L_b k_b c_b)`` (module docstring)."""
    total = params_unshared
    for plan in plans:
        k, n_layers = ks[plan.name], len(plan.layers)
        per_layer = 1 if coefficients == "scalar" else plan.weight_shape[0]
        total += -n_layers * plan.weight_numel + k * plan.weight_numel + n_layers * k * per_layer
    return total


def choose_templates(
    params_unshared: int, plans: Sequence[BankPlan], ratio: float, coefficients: str = "scalar"
) -> tuple[int, float]:
    """The ``k`` (same for every bank) whose parameter reduction is closest to ``ratio``.

    Candidates are ``1 .. max_b L_b`` (more templates than layers saves nothing). Ties go to
    the larger ``k`` (more capacity for the same reduction). Returns ``(k, reduction)``.
    """
    best: tuple[float, int, float] | None = None
    for k in range(1, max(len(p.layers) for p in plans) + 1):
        shared = predicted_params(params_unshared, plans, {p.name: k for p in plans}, coefficients)
        reduction = 1.0 - shared / params_unshared
        gap = abs(reduction - ratio)
        if best is None or gap <= best[0] + 1e-12:
            best = (gap, k, reduction)
    assert best is not None
    return best[1], best[2]


def share(
    model: nn.Module,
    plans: Sequence[BankPlan],
    ks: dict[str, int],
    coefficients: str = "scalar",
    seed: int = 0,
) -> SharingSummary:
    """Replace the convs of ``plans`` by :class:`SConv2d` on new banks, in place.

    The banks are registered as ``model.template_banks[<bank name>]`` (parameter names
    ``template_banks.<bank>.templates``); each replaced conv becomes an ``SConv2d`` with the same
    stride, padding, dilation and groups and a ``coefficients`` parameter initialised from the
    bank's orthogonal ``(L, k)`` matrix (row ``i`` for the bank's ``i``-th layer; per-channel
    coefficients repeat that row over the output channels, so both kinds start from the same
    weights). The old conv weights are discarded: sharing is applied before training.
    """
    if coefficients not in COEFFICIENT_KINDS:
        raise ConfigError(
            f"unknown coefficients {coefficients!r}; choose one of: {', '.join(COEFFICIENT_KINDS)}"
        )
    if hasattr(model, BANKS_ATTR):
        raise ValueError("the model is already shared (it has template_banks)")
    params_unshared = count_params(model)[0]
    generator = torch.Generator().manual_seed(int(seed))
    banks = nn.ModuleDict()
    for plan in plans:
        k = ks[plan.name]
        bank = TemplateBank(k, plan.weight_shape, generator=generator)
        banks[plan.name] = bank
        matrix = orthogonal_coefficients(len(plan.layers), k, generator=generator)
        for i, name in enumerate(plan.layers):
            old = _conv(model, name)
            new = SConv2d(
                bank,
                stride=old.stride,
                padding=old.padding,  # type: ignore[arg-type]
                dilation=old.dilation,
                groups=old.groups,
                coefficients=coefficients,
            ).to(device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                row = matrix[i].to(new.coefficients)
                new.coefficients.copy_(row if coefficients == "scalar" else row[:, None])
            _replace(model, name, new)
    model.add_module(BANKS_ATTR, banks.to(_device_of(model)))
    return SharingSummary(
        templates={p.name: ks[p.name] for p in plans},
        layers={p.name: len(p.layers) for p in plans},
        params_unshared=params_unshared,
        params_shared=count_params(model)[0],
        coefficients=coefficients,
    )


def materialize(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Fold the templates into plain conv weights: a copy of ``model`` with every ``SConv2d``
    replaced by an ``nn.Conv2d`` holding its generated weight, and no ``template_banks``.

    The copy computes the same function (the same weights, generated by the same operation). It
    is what a deployment runs when it does not want to regenerate weights at each forward.
    Returns ``(plain_model, report)``; the report compares the *stored* size (the shared model's
    parameters, what a checkpoint holds) with the *runtime* size (the materialised model's
    parameters, what memory holds while running):
    ``{"stored_params", "runtime_params", "stored_saving", "materialized_layers"}`` with
    ``stored_saving = 1 - stored / runtime``.
    """
    plain = copy.deepcopy(model)
    names = [name for name, m in plain.named_modules() if isinstance(m, SConv2d)]
    for name in names:
        _replace(plain, name, plain.get_submodule(name).to_conv())
    if hasattr(plain, BANKS_ATTR):
        delattr(plain, BANKS_ATTR)
    stored, runtime = count_params(model)[0], count_params(plain)[0]
    return plain, {
        "stored_params": stored,
        "runtime_params": runtime,
        "stored_saving": round(1.0 - stored / runtime, 6),
        "materialized_layers": len(names),
    }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
