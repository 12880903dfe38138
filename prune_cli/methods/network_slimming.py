"""``network_slimming``: Liu et al., ICCV 2017, with physical channel removal (methods.md §3).

1. **Sparsity training.** After every ``backward()`` and before the optimiser step, each
   ``BatchNorm2d`` γ gets the L1 sub-gradient: ``γ.grad += λ·sign(γ)`` (β is not penalised).
   ``method.l1_lambda`` = λ; ``auto`` picks 1e-4 for plain CNNs (VGG, SqueezeNet) and 1e-5 for
   residual networks (everything else), as the reference README does for VGG vs ResNet-164 /
   DenseNet-40. ``method.bn_init`` (e.g. 0.5, the reference init) sets every γ before training;
   ``null`` keeps the model's own init. Both change training, so both are in
   :meth:`training_signature` (the trained-model cache keys them).
2. **Global threshold** over |γ| of the leader BN of every prunable channel group (methods.md
   §2.1: ``exact`` removes ``floor(N·ratio)`` channels, ``reference`` the reference code's
   ``+1``). Coupled channels follow :mod:`prune_cli.pruning.channels`: post-activation ResNets
   rank only inner BNs, depthwise convs and SE gates follow their producer, residual streams and
   ShuffleNetV2's split/concat outputs stay whole.
3. **Guards.** A group keeps at least ``method.min_channels`` channels (an int, or a fraction of
   the group for a float < 1) and, with ``method.round_to`` = r, a multiple of r channels (more
   kept, never fewer); so the removed count can be below ``floor(N·ratio)``.
4. **Removal.** The returned model is a new, physically narrower module; ``info["channels"]``
   holds ``{producer conv: [kept, total]}`` for every group, which :meth:`restore` uses to rebuild
   the structure on resume. Fine-tuning (the pipeline's) runs without the sparsity term.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models import VGG, SqueezeNet

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.models.vgg import CifarVGG
from prune_cli.pruning import THRESHOLD_MODES
from prune_cli.pruning.channels import (
    channel_groups,
    channel_report,
    global_keep,
    load_pruned,
    remove_channels,
)
from prune_cli.pruning.importance import bn_gamma

#: Models without residual connections: λ = 1e-4 (methods.md §3, VGG); all others 1e-5.
PLAIN_MODELS: tuple[type[nn.Module], ...] = (CifarVGG, VGG, SqueezeNet)
LAMBDA_PLAIN = 1e-4
LAMBDA_RESIDUAL = 1e-5


def default_l1_lambda(model: nn.Module) -> float:
    """λ by model family: 1e-4 for plain CNNs (:data:`PLAIN_MODELS`), 1e-5 for the rest."""
    return LAMBDA_PLAIN if isinstance(model, PLAIN_MODELS) else LAMBDA_RESIDUAL


def number_option(cfg: Mapping[str, Any], key: str, default: Any, method: str) -> float:
    """A numeric method option, with a one-line ConfigError for a non-number."""
    value = cfg.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"method.{key} {value!r} of method {method!r} is not a number") from None


def slim(
    model: nn.Module,
    input_size: tuple[int, ...],
    ratio: float,
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int = 1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Steps 2-4 of the module docstring: a new narrower model and the ``info`` describing it.

    ``info``: ``channels`` ({group: [kept, total]}), ``channels_kept`` / ``channels_total`` over
    the ranked groups, ``groups_ranked`` / ``groups_unranked`` (groups without a leader BN, left
    whole), ``input_size`` (for :meth:`NetworkSlimming.restore`).
    """
    groups = channel_groups(model, input_size)
    scores = bn_gamma(model, groups)
    if not scores:
        raise ConfigError(
            f"network slimming needs BatchNorm after prunable convs; {type(model).__name__} "
            "has none (use method=l1_filter or method=magnitude)"
        )
    keep = global_keep(scores, ratio, mode, min_channels, round_to)
    new = remove_channels(model, groups, keep)
    info = {
        "importance": "bn_gamma",
        "channel_ratio": ratio,
        "mode": mode,
        "min_channels": min_channels,
        "round_to": round_to,
        "channels_kept": int(sum(int(k.sum()) for k in keep.values())),
        "channels_total": int(sum(k.numel() for k in keep.values())),
        "groups_ranked": len(scores),
        "groups_unranked": len(groups) - len(scores),
        "channels": channel_report(groups, keep),
        "input_size": list(input_size),
    }
    return new, info


@METHODS.register("network_slimming")
class NetworkSlimming(Method):
    name = "network_slimming"

    def __init__(self, cfg: Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        raw = self.cfg.get("l1_lambda", "auto")
        self._lambda_auto = raw is None or str(raw) == "auto"
        self.l1_lambda: float | None = (
            None if self._lambda_auto else number_option(self.cfg, "l1_lambda", 0, self.name)
        )
        if self.l1_lambda is not None and self.l1_lambda < 0:
            raise ConfigError(f"method.l1_lambda {self.l1_lambda} is out of range; valid: >= 0")
        init = self.cfg.get("bn_init")
        self.bn_init = None if init is None else number_option(self.cfg, "bn_init", 0, self.name)
        self.mode = self.option("mode", THRESHOLD_MODES, "exact")
        self.min_channels = number_option(self.cfg, "min_channels", 1, self.name)
        if self.min_channels <= 0:
            raise ConfigError(
                f"method.min_channels {self.min_channels} is out of range; valid: > 0"
            )
        self.round_to = int(number_option(self.cfg, "round_to", 1, self.name))
        if self.round_to < 1:
            raise ConfigError(f"method.round_to {self.round_to} is out of range; valid: >= 1")
        self._gammas: tuple[int, list[nn.Parameter]] | None = None

    # ------------------------------------------------------------------ training
    def prepare(self, model: nn.Module) -> nn.Module:
        """Resolve ``l1_lambda: auto`` from the model family; apply ``bn_init`` if set."""
        if self._lambda_auto:
            self.l1_lambda = default_l1_lambda(model)
        if self.bn_init is not None:
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d) and m.weight is not None:
                        m.weight.fill_(self.bn_init)
        self._gammas = None
        return model

    def training_signature(self) -> dict[str, Any]:
        """Sparsity training differs from plain training: λ and the γ init key the cache."""
        return {"bn_l1_lambda": self._lambda(), "bn_init": self.bn_init}

    def _lambda(self) -> float:
        if self.l1_lambda is None:
            raise RuntimeError("l1_lambda is 'auto': call prepare(model) first")
        return self.l1_lambda

    def after_backward(self, model: nn.Module) -> None:
        """``γ.grad += λ·sign(γ)`` for every BatchNorm2d (methods.md §3 step 1)."""
        lam = self._lambda()
        if lam == 0:
            return
        if self._gammas is None or self._gammas[0] != id(model):
            gammas = [
                m.weight
                for m in model.modules()
                if isinstance(m, nn.BatchNorm2d) and m.weight is not None
            ]
            self._gammas = (id(model), gammas)
        with torch.no_grad():
            for gamma in self._gammas[1]:
                if gamma.grad is None:
                    gamma.grad = torch.zeros_like(gamma)
                gamma.grad.add_(torch.sign(gamma), alpha=lam)

    # ------------------------------------------------------------------ pruning
    def _slim(self, model: nn.Module, ctx: PruneContext, ratio: float) -> tuple[nn.Module, dict]:
        new, info = slim(model, ctx.input_size, ratio, self.mode, self.min_channels, self.round_to)
        info["l1_lambda"] = self._lambda()
        return new.to(ctx.device), info

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        new, info = self._slim(model, ctx, self.ratio)
        return PruneResult(model=new, masks={}, info=info)

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the narrower structure from ``info["channels"]``, then load the weights."""
        return load_pruned(model, checkpoint, source)
