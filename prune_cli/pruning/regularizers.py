"""Training-time regularisers: network slimming's L1 on BN γ (docs/methods.md §3) and the penalties
of ``method=dynamic_filter`` (``method.reg``, docs/methods.md §7.5).

**BN L1** (:func:`bn_l1_subgradient`): after ``backward()`` and before the optimiser step, every
``BatchNorm2d`` γ gets ``γ.grad += λ·sign(γ)``, the sub-gradient of ``λ·Σ|γ|`` (β is not
penalised). :func:`default_bn_l1_lambda` is the reference README's λ by family: 1e-4 for plain
CNNs, 1e-5 for residual networks (VGG vs ResNet-164 / DenseNet-40).

**Decorrelation penalties** (dynamic_filter):

Every penalty is a pure function of tensors (``*_penalty`` / ``*_term``) with a model-level sum
over the weights it applies to. The training loss is ``CE + odecay * reg(model)`` (the name
``odecay`` comes from the SRIP code the repository copied).

The model-level functions read the *trainable dense* weights: a weight re-parameterised as
``weight_orig`` (parameter) + ``weight_mask`` (buffer) by :mod:`prune_cli.pruning.reparam`
contributes ``weight_orig``, so the penalty acts on what SGD updates. Masks are buffers, never
parameters, and are excluded, except by :func:`cov_faithful`, which includes them because the
repository's masks were ``nn.Parameter``s.

- ``none``: no penalty.
- ``cov_faithful``: the repository's ``reg_cov`` exactly as coded (NumPy on detached tensors; only
  2-D kernel slices whose first dimension has length 2 count): **no gradient, and exactly 0 on
  ResNet-56**, whose kernels are 3x3 and 1x1. It exists only to reproduce the repository's runs.
- ``cov``: the corrected, differentiable covariance penalty over every conv kernel slice.
- ``decorr_zhu``: Zhu, Zhou & Li (IJCAI 2018) as in henry-eigen/Decorr_Reg ``ssr.py``:
  ``lam*||W||_F + eta*R_s + gamma*R_c`` per conv layer.
- ``ortho``: the repository's unused ``reg_ortho``, *inspired by* SRIP: one power-iteration
  estimate of ``sigma_max(W^T W - I)`` per weight with >= 2 dimensions, ``W`` reshaped to
  ``(out, in*kh*kw)``, squared and summed. ``W^T W`` is the fan-in Gram, of rank <= out: on a wide
  layer (out < in*kh*kw) it has an eigenvalue -1 whatever the weights, so each such layer
  contributes a floor of 1.
- ``srip``: SRIP as Bansal et al. (2018) define it, on the *smaller* Gram matrix
  (``W W^T - I`` when out < in*kh*kw, else ``W^T W - I``), which is 0 exactly when the smaller
  side is orthonormal: no floor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.engine.hooks import TrainHooks
from prune_cli.errors import ConfigError

REGULARIZERS = ("none", "cov_faithful", "cov", "decorr_zhu", "ortho", "srip")

#: Slimming's λ by model family (docs/methods.md §3): plain CNNs and residual networks.
LAMBDA_PLAIN = 1e-4
LAMBDA_RESIDUAL = 1e-5


# ----------------------------------------------------------------------------- BN L1 (slimming)
def default_bn_l1_lambda(model: nn.Module) -> float:
    """λ by model family: 1e-4 for plain CNNs (no residual connections), 1e-5 for the rest."""
    from prune_cli.models.traits import is_plain

    return LAMBDA_PLAIN if is_plain(model) else LAMBDA_RESIDUAL


def bn_gammas(model: nn.Module) -> list[nn.Parameter]:
    """The γ of every ``BatchNorm2d`` with an affine weight, module order."""
    return [
        m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.weight is not None
    ]


@torch.no_grad()
def bn_l1_subgradient(gammas: list[nn.Parameter], lam: float) -> None:
    """``γ.grad += λ·sign(γ)`` for every γ in ``gammas`` (a missing gradient counts as 0)."""
    if lam == 0:
        return
    for gamma in gammas:
        if gamma.grad is None:
            gamma.grad = torch.zeros_like(gamma)
        gamma.grad.add_(torch.sign(gamma), alpha=lam)


class BNSparsity(TrainHooks):
    """Sparsity training of network slimming: the BN L1 sub-gradient after every backward.

    ``l1_lambda``: a number >= 0, or ``"auto"``/``None`` for :func:`default_bn_l1_lambda`
    (resolved by :meth:`prepare`); ``bn_init``: a value every γ is set to before training, or
    ``None`` to keep the model's init. Bad values raise a one-line ConfigError naming
    ``method.<key>``.
    """

    def __init__(self, l1_lambda: Any = "auto", bn_init: Any = None) -> None:
        self.auto = l1_lambda is None or str(l1_lambda) == "auto"
        self.l1_lambda = None if self.auto else _number("l1_lambda", l1_lambda)
        if self.l1_lambda is not None and self.l1_lambda < 0:
            raise ConfigError(f"method.l1_lambda {self.l1_lambda} is out of range; valid: >= 0")
        self.bn_init = None if bn_init is None else _number("bn_init", bn_init)
        self._gammas: tuple[int, list[nn.Parameter]] | None = None

    def prepare(self, model: nn.Module) -> None:
        """Resolve ``auto`` from the model family; apply ``bn_init`` if set."""
        if self.auto:
            self.l1_lambda = default_bn_l1_lambda(model)
        if self.bn_init is not None:
            with torch.no_grad():
                for gamma in bn_gammas(model):
                    gamma.fill_(self.bn_init)
        self._gammas = None

    @property
    def lam(self) -> float:
        if self.l1_lambda is None:
            raise RuntimeError("l1_lambda is 'auto': call prepare(model) first")
        return self.l1_lambda

    def signature(self) -> dict[str, Any]:
        """What sparsity training changes about training (for the trained-model cache key)."""
        return {"bn_l1_lambda": self.lam, "bn_init": self.bn_init}

    def baseline_kind(self) -> str:
        """How the trained model differs from plain dense training (``metrics.json``)."""
        init = "" if self.bn_init is None else f", BN gamma initialised to {self.bn_init}"
        return f"sparsity-trained: L1 {self.lam:g} on BN gamma{init}"

    def after_backward(self, model: nn.Module) -> None:
        if self._gammas is None or self._gammas[0] != id(model):
            self._gammas = (id(model), bn_gammas(model))
        bn_l1_subgradient(self._gammas[1], self.lam)


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"method.{key} {value!r} is not a number") from None


def _weights(model: nn.Module, min_dim: int = 2, exact_dim: int | None = None) -> Iterator:
    """``(name, parameter)`` of every trainable parameter with >= ``min_dim`` dimensions
    (exactly ``exact_dim`` if given), shared tensors once."""
    for name, p in model.named_parameters():
        if p.dim() < min_dim or (exact_dim is not None and p.dim() != exact_dim):
            continue
        yield name, p


def _zero(model: nn.Module) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((), device=device)


# ----------------------------------------------------------------------------- cov_faithful
def cov_faithful_slice(w_: np.ndarray) -> float:
    """The repository's per-slice term: ``sum |triu(np.cov(w_))|`` if ``len(w_) == 2``, else 0.

    ``np.cov`` treats rows as variables (ddof = 1); ``triu`` keeps the diagonal. A 0-d slice
    (a row of a linear layer's weight) contributes nothing.
    """
    if w_.ndim == 0 or len(w_) != 2:
        return 0.0
    cov = np.atleast_2d(np.cov(w_))
    return float(np.absolute(np.triu(cov)).sum())


def cov_faithful(model: nn.Module) -> torch.Tensor:
    """``reg_cov`` of heehehe/pruning-decorrelation as coded (docs/methods.md §7.5,
    consequences a, b).

    Loops over every parameter (and mask buffer ``*_mask``, which were parameters there) with
    >= 2 dimensions, over its 2-D slices ``W[o, c]``, and adds :func:`cov_faithful_slice`. The
    value is a constant tensor without gradient; only slices whose first dimension is 2 can be
    non-zero, so it is 0 for 3x3 and 1x1 kernels and for linear layers.
    """
    tensors = [p for _, p in _weights(model)]
    tensors += [b for n, b in model.named_buffers() if n.endswith("_mask") and b.dim() >= 2]
    total = 0.0
    for w in tensors:
        # Only W[o, c] with first dimension 2 can contribute: skip the rest without a Python
        # loop over ~10^5 slices (the value is the same, the repository's loop is just slow).
        if w.dim() < 3 or w.shape[2] != 2:
            continue
        arr = w.detach().cpu().numpy()
        for row in arr:
            for w_ in row:
                total += cov_faithful_slice(w_)
    return torch.tensor(total, dtype=torch.float32, device=_zero(model).device)


# ----------------------------------------------------------------------------- cov
def cov_penalty(weight: torch.Tensor, include_diag: bool = True) -> torch.Tensor:
    """``sum_{o,c} sum_{i<=j} |Cov(K)_ij|`` over the kernel slices ``K = W[o, c]`` (kh x kw).

    ``Cov(K) = (K - mean_row(K)) (K - mean_row(K))^T / (kw - 1)``: rows are variables, columns
    observations, as ``np.cov``. ``include_diag=False`` sums ``i < j`` only (decorrelation
    without the variance term). Kernels with ``kw < 2`` have no covariance and give 0.
    """
    if weight.dim() != 4 or weight.shape[-1] < 2:
        return weight.new_zeros(())
    kw = weight.shape[-1]
    centred = weight - weight.mean(dim=-1, keepdim=True)
    cov = centred @ centred.transpose(-1, -2) / (kw - 1)
    kh = weight.shape[-2]
    ones = torch.ones(kh, kh, dtype=torch.bool, device=weight.device)
    upper = ones.triu(0 if include_diag else 1)
    return cov.abs()[..., upper].sum()


def cov(model: nn.Module, include_diag: bool = True) -> torch.Tensor:
    """:func:`cov_penalty` summed over every conv weight (4-D parameter) of ``model``."""
    total = _zero(model)
    for _, w in _weights(model, exact_dim=4):
        total = total + cov_penalty(w, include_diag)
    return total


# ----------------------------------------------------------------------------- decorr_zhu
def zhu_correlation(weight: torch.Tensor, tau: float = 1e-4) -> torch.Tensor:
    """``R_c`` of Zhu et al. 2018 for one layer (henry-eigen/Decorr_Reg ``rc_loss``).

    Filters are the columns ``F = W.reshape(out, -1)^T``; those with ``mean|w| > tau`` form S.
    Each is centred and L2-normalised, ``P = F_S^T F_S`` (the Pearson correlation matrix) and
    ``R_c = ||P - diag(P) I||_F / |S|``. Fewer than two filters in S give 0.
    """
    filters = weight.reshape(weight.shape[0], -1).t()
    keep = filters.abs().mean(dim=0) > tau
    n = int(keep.sum())
    if n < 2:
        return weight.new_zeros(())
    sel = filters[:, keep]
    unit = F.normalize(sel - sel.mean(dim=0, keepdim=True), dim=0, eps=1e-12)
    pearson = unit.t() @ unit
    off = pearson - torch.diag_embed(torch.diagonal(pearson))
    return torch.linalg.norm(off) / n


def group_lasso(weight: torch.Tensor) -> torch.Tensor:
    """``R_s = (sum_o ||W[o]||_F + sum_c ||W[:, c]||_F) / 2``: filter- and channel-wise ℓ2."""
    filter_wise = weight.reshape(weight.shape[0], -1).norm(dim=1).sum()
    channel_wise = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1).sum()
    return (filter_wise + channel_wise) / 2


def zhu_term(
    weight: torch.Tensor,
    lam: float = 5e-4,
    eta: float = 1e-3,
    gamma: float = 5.0,
    tau: float = 1e-4,
) -> torch.Tensor:
    """One layer's ``lam*||W||_F + eta*R_s + gamma*R_c`` (Decorr_Reg ``rc_reg``, defaults)."""
    return (
        lam * torch.linalg.norm(weight)
        + eta * group_lasso(weight)
        + gamma * zhu_correlation(weight, tau)
    )


def decorr_zhu(
    model: nn.Module,
    lam: float = 5e-4,
    eta: float = 1e-3,
    gamma: float = 5.0,
    tau: float = 1e-4,
) -> torch.Tensor:
    """:func:`zhu_term` summed over every conv weight (4-D parameter) of ``model``."""
    total = _zero(model)
    for _, w in _weights(model, exact_dim=4):
        total = total + zhu_term(w, lam, eta, gamma, tau)
    return total


# ----------------------------------------------------------------------------- ortho
def srip_sigma(
    weight: torch.Tensor, generator: torch.Generator | None = None, gram: str = "fan_in"
) -> torch.Tensor:
    """One power-iteration estimate of ``sigma_max(M)``, ``M = G - I`` with the Gram matrix
    ``G`` of ``W`` reshaped to ``(rows = out, cols = W[0].numel())``.

    ``gram="fan_in"`` (the repository's ``reg_ortho``): ``G = W^T W`` (cols x cols);
    ``gram="smaller"`` (SRIP): the smaller of ``W W^T`` and ``W^T W``. With a random unit ``u``:
    ``v = normalize(M^T u)``, ``u = normalize(M v)``, ``sigma = u . (M v)``. Exact when ``M`` is a
    multiple of the identity; 0 for an orthonormal Gram.
    """
    cols = weight[0].numel()
    w = weight.reshape(-1, cols)
    if gram == "smaller" and w.shape[0] < cols:
        w = w.t()
    n = w.shape[1]
    m = w.t() @ w - torch.eye(n, device=w.device, dtype=w.dtype)
    u = torch.randn(n, generator=generator, dtype=w.dtype)
    u = F.normalize(u.to(w.device), dim=0, eps=1e-12)
    v = F.normalize(m.t() @ u, dim=0, eps=1e-12)
    u = F.normalize(m @ v, dim=0, eps=1e-12)
    return torch.dot(u, m @ v)


def ortho(
    model: nn.Module, generator: torch.Generator | None = None, gram: str = "fan_in"
) -> torch.Tensor:
    """``sum sigma^2`` of :func:`srip_sigma` over every parameter with >= 2 dimensions."""
    total = _zero(model)
    for _, w in _weights(model):
        total = total + srip_sigma(w, generator, gram) ** 2
    return total


# ----------------------------------------------------------------------------- dispatch
def regularizer(name: str, model: nn.Module, **options: Any) -> torch.Tensor | None:
    """``reg(model)`` for ``method.reg = name`` (``None`` for ``none``).

    ``options``: ``include_diag`` (cov); ``lam``, ``eta``, ``gamma``, ``tau`` (decorr_zhu);
    ``generator`` (ortho, srip). Unknown names raise ``ValueError`` (the method validates the name).
    """
    if name == "none":
        return None
    if name == "cov_faithful":
        return cov_faithful(model)
    if name == "cov":
        return cov(model, bool(options.get("include_diag", True)))
    if name == "decorr_zhu":
        keys = ("lam", "eta", "gamma", "tau")
        return decorr_zhu(model, **{k: float(options[k]) for k in keys if k in options})
    if name == "ortho":
        return ortho(model, options.get("generator"), "fan_in")
    if name == "srip":
        return ortho(model, options.get("generator"), "smaller")
    raise ValueError(f"unknown regularizer {name!r}; choose one of: {', '.join(REGULARIZERS)}")
