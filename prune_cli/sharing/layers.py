"""Template banks and template-generated convolutions (docs/methods.md §9.2, §9.3).

A :class:`TemplateBank` holds ``k`` templates ``T_j`` of one conv weight shape
``(C_out, C_in/groups, Kh, Kw)``. An :class:`SConv2d` owns only its layer-specific
``coefficients`` and convolves with the weight it generates from the bank at every forward:

- scalar coefficients (the soft-sharing layer of Savarese & Maire): ``alpha_i`` in R^k and
  ``W_i = sum_j alpha_i[j] * T_j``;
- per-channel coefficients (template-reuse variant B, docs/methods.md §9.3): ``alpha_i`` in
  R^(k x C_out) and ``W_i[o] = sum_j alpha_i[j, o] * T_j[o]``.

Convention: coefficients are stored flat, ``(k,)`` or ``(k, C_out)``, rather than the reference
code's ``(k, 1, 1, 1, 1)``; the generated weight is the same. Gradients follow from the linear
map: ``dL/dT_j = sum_i alpha_i[j] * dL/dW_i`` summed over every layer that uses the bank, and
``dL/dalpha_i[j] = <dL/dW_i, T_j>``.

The parameter is named ``coefficients`` on purpose: :func:`prune_cli.engine.optim.param_groups`
puts every parameter whose name contains ``coefficients`` into the weight-decay-0 group, as the
reference code's ``group_weight_decay(net, decay, ['coefficients'])`` does.

An ``SConv2d`` keeps a plain (unregistered) reference to its bank, so the bank's ``templates``
appear once in ``state_dict``/``named_parameters``, under the module that registers the bank
(``template_banks`` on the model, see :mod:`prune_cli.sharing.apply`). ``copy.deepcopy`` of the
whole model keeps the sharing, because the bank is copied once through the deepcopy memo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COEFFICIENT_KINDS = ("scalar", "per_channel")


class TemplateBank(nn.Module):
    """``k`` templates of one conv weight shape, stored as one parameter ``(k, *weight_shape)``.

    Each template slice is Kaiming-normal initialised (fan-in, ReLU gain sqrt(2)), as in the
    reference ``TemplateBank`` (lolemacs/soft-sharing ``models/layers.py``).
    """

    #: The parameter holding the weights the bank's layers are generated from: the weight
    #: counts (sparsity, weights removed: prune_cli.metrics.counting) include it.
    weight_bank = "templates"

    def __init__(
        self,
        num_templates: int,
        weight_shape: tuple[int, int, int, int],
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_templates < 1:
            raise ValueError(f"a template bank needs at least 1 template, got {num_templates}")
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.templates = nn.Parameter(torch.empty(num_templates, *self.weight_shape))
        with torch.no_grad():
            for j in range(num_templates):
                nn.init.kaiming_normal_(
                    self.templates[j], mode="fan_in", nonlinearity="relu", generator=generator
                )

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The generated weight for ``coefficients`` of shape ``(k,)`` or ``(k, C_out)``."""
        return combine(self.templates, coefficients)

    def extra_repr(self) -> str:
        return f"num_templates={self.num_templates}, weight_shape={self.weight_shape}"


def combine(templates: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_j c[j] T_j`` (``c`` of shape ``(k,)``) or ``sum_j c[j, o] T_j[o]`` (``(k, C_out)``).

    Written with tensordot / broadcasting, never ``F.linear``, so the MAC counter (which
    intercepts ``F.conv2d`` and ``F.linear``) counts the convolution only: generating a weight is
    a per-forward cost independent of the input size, not a layer of the network.
    """
    if coefficients.dim() == 1:
        return torch.tensordot(coefficients, templates, dims=1)
    # (k, C_out) -> (k, C_out, 1, 1, 1), summed over the template axis.
    return (coefficients[(...,) + (None,) * (templates.dim() - 2)] * templates).sum(0)


class SConv2d(nn.Module):
    """A bias-free conv whose weight is generated from a :class:`TemplateBank` at each forward.

    ``forward(x) = F.conv2d(x, bank(coefficients), stride, padding, dilation, groups)``.
    ``coefficients`` start at zero; :func:`prune_cli.sharing.apply.share` overwrites them with the
    orthogonal initialisation of their bank.
    """

    def __init__(
        self,
        bank: TemplateBank,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        coefficients: str = "scalar",
    ) -> None:
        super().__init__()
        if coefficients not in COEFFICIENT_KINDS:
            raise ValueError(f"coefficients must be one of {COEFFICIENT_KINDS}, got {coefficients}")
        # Plain attribute, not a submodule: the bank's templates are registered once, elsewhere.
        object.__setattr__(self, "bank", bank)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = int(groups)
        self.coefficient_kind = coefficients
        k, out_channels = bank.num_templates, bank.weight_shape[0]
        shape = (k,) if coefficients == "scalar" else (k, out_channels)
        self.coefficients = nn.Parameter(torch.zeros(shape))

    @property
    def out_channels(self) -> int:
        return self.bank.weight_shape[0]

    @property
    def in_channels(self) -> int:
        return self.bank.weight_shape[1] * self.groups

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (self.bank.weight_shape[2], self.bank.weight_shape[3])

    @property
    def weight(self) -> torch.Tensor:
        """The generated weight ``W = sum_j alpha[j] T_j`` (differentiable)."""
        return self.bank(self.coefficients)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the current generated weight (the materialised layer)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=False,
        )
        conv = conv.to(device=self.coefficients.device, dtype=self.coefficients.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"templates={self.bank.num_templates}, coefficients={self.coefficient_kind}"
        )


def orthogonal_coefficients(
    num_layers: int, num_templates: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ``(L, k)`` coefficient matrix of one bank: ``nn.init.orthogonal_``
    (docs/methods.md §9.2).

    Rows are orthonormal (``A A^T = I``) when ``L <= k``, columns (``A^T A = I``) when ``L > k``.
    Layer ``i`` of the bank gets row ``A[i]``.
    """
    matrix = torch.empty(num_layers, num_templates)
    nn.init.orthogonal_(matrix, generator=generator)
    return matrix


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = (int(v) for v in value)
    return (first, second)
