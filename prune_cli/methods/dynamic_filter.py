"""``dynamic_filter``: dynamic pruning with feedback (DPF, Lin et al. ICLR 2020) as coded in
heehehe/pruning-decorrelation, with an optional decorrelation regulariser (docs/methods.md §7).

Pruning happens *during* training (docs/methods.md §7.4):

1. :meth:`DynamicFilter.prepare` re-parameterises every ``nn.Conv2d`` weight as a dense parameter
   ``weight_orig`` and a mask buffer ``weight_mask`` (all ones), the ``torch.nn.utils.prune``
   naming, which the metrics already read (the nonzeros of a masked weight are those of
   ``orig * mask``). Masks are buffers, never parameters, so parameter counts are unchanged.
2. Every forward uses ``W ⊙ M`` (a forward pre-hook sets ``module.weight``). With
   ``feedback=true`` (DPF, the repository's ``Masker``) the backward is straight-through: the
   dense ``W`` receives the full gradient evaluated at ``W ⊙ M``, pruned entries included, so
   pruned filters keep evolving and can come back. ``feedback=false`` is the static variant
   (gradient times mask).
3. :meth:`DynamicFilter.before_step` recomputes the masks from the dense weights before the
   forward pass of iteration ``i`` of epoch ``e`` (0-based) when ``(i + 1) % freq == 0`` and
   ``e <= stop_epoch`` (the repository: ``freq = 4``, ``stop_epoch = 225``, i.e. 49 updates per
   epoch of 196 iterations, in epochs 0..225).
4. :meth:`DynamicFilter.extra_loss` adds ``odecay * reg(model)`` (:mod:`.regularizers`).
5. :meth:`DynamicFilter.prune` fixes the masks, exports ``W ⊙ M`` as plain weights (the model is a
   plain module again) and returns the masks for fine-tuning (``finetune.epochs=0`` reproduces the
   repository, which never fine-tunes). In the structured mode every channel whose filter is
   masked in all its producers is then physically removed (:func:`channel_prune` with the
   :class:`~prune_cli.pruning.importance.MaskedFilters` criterion; ``method.groups``: ``coupled``
   also cuts residual-stream channels that every producer of the stream masked, ``single`` only
   single groups); a masked filter whose channel another producer still uses stays as a masked
   zero. The mask re-parameterisation lives in :mod:`prune_cli.pruning.reparam`.

Masks (``type``):

- ``structured``: one keep bit per filter, written over all of ``[in, kh, kw]``. Filter
  importance (``importance``): ``l1_mean`` = ``sum|W[j]| / W[j].numel()`` (the repository),
  ``l1`` = ``sum|W[j]|``, ``l2`` = ``||W[j]||_2``, ``l2_mean`` = ``sum W[j]^2 / W[j].numel()``
  (the repository's ``L2``). ``scope=global`` ranks all filters of all convs together (the
  repository), ``layerwise`` each conv on its own.
- ``unstructured``: one keep bit per weight, importance ``|w|`` (``l1``, ``l1_mean``, ``l2``) or
  ``w^2`` (``l2_mean``); the repository's unstructured mode raises KeyError, this one works.

The threshold is that of docs/methods.md §2.1 (``threshold_mode``): ``exact`` removes
``floor(N * s)`` filters/weights, ``reference`` the repository's ``int(N * s) + 1``.
Sparsity ``s`` (``schedule``): ``constant`` = ``rate`` from the first update (the repository);
``cubic`` = ``s_t = rate - rate * (1 - t / T)^3`` at global iteration ``t``, ``T = stop_epoch *
iterations per epoch``, ``s_t = rate`` for ``t >= T`` (Zhu & Gupta, DPF; docs/methods.md §7.3).

``mask_bn=true`` masks the BN (γ and β) right after each conv with the conv's filter mask too, so
a pruned channel outputs 0 (true channel removal, and physical removal preserves the function).
With ``mask_bn=false`` (the repository) a pruned channel outputs its BN's constant, which
physical removal drops; ``prune_info.removal_exact`` says which.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult, Ratio
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, Float, Int, OneOf, Options
from prune_cli.pruning.channels import channel_prune, restore_channels
from prune_cli.pruning.groups import GROUPINGS
from prune_cli.pruning.importance import (
    FILTER_IMPORTANCES,
    MaskedFilters,
    filter_scores,
    weight_scores,
)
from prune_cli.pruning.masks import SCOPES, masks_from_scores
from prune_cli.pruning.regularizers import REGULARIZERS, regularizer
from prune_cli.pruning.reparam import (
    attach_mask,
    bn_after_conv,
    export_masks,
    is_masked,
    masked_convs,
    strip_masks,
)
from prune_cli.pruning.schedules import cubic_sparsity
from prune_cli.pruning.threshold import THRESHOLD_MODES

log = logging.getLogger("prune_cli")

PRUNE_TYPES = ("structured", "unstructured")
SCHEDULES = ("constant", "cubic")
#: The repository's cubic ramp: 225 of 300 epochs (used to scale it to shorter runs).
CUBIC_RAMP_FRACTION = 225 / 300


def repo_sparsity(model: nn.Module) -> tuple[int, int, float]:
    """The repository's printed sparsity (``cal_sparsity``): ``(denominator, zeros, percent)``.

    zeros = zero entries of all masks; denominator = entries of every parameter whose name
    contains ``weight`` or ``bias`` (855,770 for ResNet-56: conv, BN and FC, not only the 850,864
    conv weights), so it is not the fraction of conv weights pruned.
    """
    zeros = sum(int((b == 0).sum()) for n, b in model.named_buffers() if n.endswith("_mask"))
    total = sum(p.numel() for n, p in model.named_parameters() if "weight" in n or "bias" in n)
    return total, zeros, 100.0 * zeros / total if total else 0.0


# ----------------------------------------------------------------------------- the method
class ZhuOptions(Options):
    """``method.zhu``: the weights of Zhu et al.'s penalty (Decorr_Reg defaults)."""

    lam: Float()
    eta: Float()
    gamma: Float()
    tau: Float(ge=0)


@METHODS.register("dynamic_filter")
class DynamicFilter(Method):
    """Dynamic filter (or weight) pruning with feedback during training; see the module doc."""

    class Options(MethodOptions):
        """``configs/method/dynamic_filter.yaml`` (docs/methods.md §7)."""

        rate: Ratio | None
        type: OneOf(*PRUNE_TYPES)
        importance: OneOf(*FILTER_IMPORTANCES)
        scope: OneOf(*SCOPES)
        threshold_mode: OneOf(*THRESHOLD_MODES)
        freq: Int(ge=1)
        stop_epoch: Int(ge=0)
        schedule: OneOf(*SCHEDULES)
        feedback: Bool
        mask_bn: Bool
        remove_filters: Bool
        groups: OneOf(*GROUPINGS)
        reg: OneOf(*REGULARIZERS)
        odecay: Float()
        cov_include_diag: Bool
        zhu: ZhuOptions

    opts: Options

    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        opts = self.opts
        self.ratio = self.rate = self.ratio if opts.rate is None else opts.rate
        self.type, self.importance, self.scope = opts.type, opts.importance, opts.scope
        self.rate_schedule, self.threshold_mode = opts.schedule, opts.threshold_mode
        self.freq, self.stop_epoch = opts.freq, opts.stop_epoch
        self.reg, self.odecay = opts.reg, opts.odecay
        self.feedback, self.mask_bn = opts.feedback, opts.mask_bn
        self.remove_filters = opts.remove_filters
        self.reg_options = {"include_diag": opts.cov_include_diag, **opts.zhu.model_dump()}
        self.steps_per_epoch: int | None = None
        self.ramp_epochs = self.stop_epoch
        self.fit_epochs: int | None = None  # the epochs of the training the masks move in
        self.updates = 0  # mask recomputations so far (this process)
        self._epoch: int | None = None
        self._i = -1
        self._bn: dict[str, str] = {}
        # Created at first use: the run seed is final only once the pipeline has built us.
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ training
    def training_signature(self) -> dict[str, Any]:
        """Everything that changes training: the masks, the gradient path, the regulariser."""
        return {
            "method": self.name,
            "rate": self.rate,
            "type": self.type,
            "importance": self.importance,
            "scope": self.scope,
            "schedule": self.rate_schedule,
            "threshold_mode": self.threshold_mode,
            "freq": self.freq,
            "stop_epoch": self.stop_epoch,
            "feedback": self.feedback,
            "mask_bn": self.mask_bn,
            "reg": self.reg,
            "odecay": self.odecay if self.reg != "none" else None,
            "reg_options": self.reg_options if self.reg != "none" else None,
        }

    def prepare(self, model: nn.Module) -> nn.Module:
        """Attach a mask of ones to every conv weight (and its BN's γ, β with ``mask_bn``)."""
        modules = dict(model.named_modules())
        self._bn = bn_after_conv(model) if self.mask_bn else {}
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and not is_masked(module):
                attach_mask(module, "weight", self.feedback)
        for bn_name in self._bn.values():
            bn = modules[bn_name]
            for pname in ("weight", "bias"):
                if getattr(bn, pname, None) is not None and not is_masked(bn, pname):
                    attach_mask(bn, pname, self.feedback)
        return model

    #: ``pretrained=`` weights start DPF's training: its masks only move while training runs.
    trains_from_pretrained = True
    #: Rewinding needs the dense-training weights in the pruned model's layout; DPF trains
    #: re-parameterised (masked) convs and learns its masks with the weights.
    no_weight_reset = (
        "it prunes during training (masks learned with the weights on re-parameterised convs), "
        "so its training start is not in the pruned model's layout"
    )

    def baseline_kind(self, trained: bool = True) -> str:
        return "masked: filters pruned dynamically during training (DPF)"

    def pretrained_state(
        self, model: nn.Module, state: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """A plain dense checkpoint for the masked model: ``<p>`` becomes ``<p>_orig`` and
        ``<p>_mask`` starts as ones (no weight masked yet), so DPF can start from a trained
        dense model. A checkpoint that already has the masked layout is returned unchanged."""
        own = model.state_dict()
        out = dict(state)
        for key in own:
            base = key.removesuffix("_orig")
            if key.endswith("_orig") and key not in out and base in out:
                out[key] = out.pop(base)
                out.setdefault(f"{base}_mask", torch.ones_like(own[f"{base}_mask"]))
        return out

    def on_fit_start(self, model: nn.Module, epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = int(steps_per_epoch)
        self.fit_epochs = int(epochs)
        self.ramp_epochs = self.cubic_ramp_epochs(int(epochs))
        note = self.shortened_ramp()
        if note is not None:
            log.info("%s", note)

    def cubic_ramp_epochs(self, epochs: int) -> int:
        """Epochs over which the cubic schedule rises to ``rate``: ``stop_epoch`` when the run
        is longer, else the repository's proportion (225 of 300 epochs) of this run rounded up,
        ``ceil(0.75 E)``, so that a short run still ramps (never the constant rate at once) and
        reaches its rate at the end of the ramp."""
        if self.stop_epoch < epochs:
            return self.stop_epoch
        return math.ceil(epochs * CUBIC_RAMP_FRACTION)

    def shortened_ramp(self) -> str | None:
        """The cubic ramp shorter than ``stop_epoch`` asked (a run shorter than it), said."""
        if self.rate_schedule != "cubic" or self.ramp_epochs >= self.stop_epoch:
            return None
        return (
            f"dynamic_filter: the cubic schedule reaches rate {self.rate:g} after "
            f"{self.ramp_epochs} of {self.fit_epochs} epochs, not after method.stop_epoch="
            f"{self.stop_epoch} (beyond this run): scaled as the repository's 225 of 300 epochs"
        )

    def should_update(self, i: int, epoch: int) -> bool:
        """Recompute masks before iteration ``i`` (0-based, within ``epoch``)?"""
        return (i + 1) % self.freq == 0 and epoch <= self.stop_epoch

    def target_sparsity(self, step: int) -> float:
        """The sparsity of the masks computed at global iteration ``step`` (``schedule``)."""
        if self.rate_schedule == "constant":
            return self.rate
        if self.steps_per_epoch is None:
            raise RuntimeError("the cubic schedule needs on_fit_start (steps per epoch)")
        return cubic_sparsity(self.rate, step, self.ramp_epochs * self.steps_per_epoch)

    def before_step(self, model: nn.Module, step: int, epoch: int) -> None:
        # The loop numbers iterations globally; the repository's rule uses the index within the
        # epoch, counted here (a resumed stage restarts at an epoch boundary, so this holds).
        if epoch != self._epoch:
            self._epoch, self._i = epoch, 0
        else:
            self._i += 1
        if self.should_update(self._i, epoch):
            self.update_masks(model, self.target_sparsity(step))

    @torch.no_grad()
    def update_masks(self, model: nn.Module, sparsity: float) -> None:
        """Recompute every mask from the current dense weights at ``sparsity``."""
        convs = masked_convs(model)
        if self.type == "structured":
            scores = {n: filter_scores(c.weight_orig, self.importance) for n, c in convs}
        else:
            scores = {n: weight_scores(c.weight_orig, self.importance) for n, c in convs}
        keep = masks_from_scores(scores, sparsity, self.scope, self.threshold_mode)
        modules = dict(model.named_modules())
        for name, conv in convs:
            k = keep[name].to(conv.weight_mask.device)
            shape = (-1,) + (1,) * (conv.weight_mask.dim() - 1)
            full = k.reshape(shape).expand_as(conv.weight_mask) if self.type == "structured" else k
            conv.weight_mask.copy_(full)
            conv.weight = (conv.weight_orig * conv.weight_mask).detach()
            bn_name = self._bn.get(name)
            if bn_name is not None and self.type == "structured":
                bn = modules[bn_name]
                for pname in ("weight", "bias"):
                    if is_masked(bn, pname):
                        getattr(bn, f"{pname}_mask").copy_(k)
                        setattr(bn, pname, (getattr(bn, f"{pname}_orig") * k).detach())
        self.updates += 1

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """``odecay * reg(model)`` (``None`` for ``reg=none``)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        options = {**self.reg_options, "generator": self._generator}
        value = regularizer(self.reg, model, **options)
        return None if value is None else self.odecay * value

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        pruned, total = filter_counts(model)
        denom, zeros, pct = repo_sparsity(model)
        log.info(
            "dynamic_filter epoch %d: %d/%d filters pruned; repository sparsity %.2f%% (%d/%d)",
            epoch + 1,
            pruned,
            total,
            pct,
            zeros,
            denom,
        )

    # ------------------------------------------------------------------ pruning
    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        """Fix the masks, export ``W ⊙ M``, and (structured) remove the pruned filters."""
        convs = masked_convs(model)
        if not convs:
            raise RuntimeError("dynamic_filter.prune needs the model returned by prepare()")
        never_updated = all(bool(c.weight_mask.all()) for _, c in convs)
        masks_from = "training"
        warnings = [note] if (note := self.shortened_ramp()) is not None else []
        if never_updated and self.rate > 0:
            # No mask was computed during training (fewer iterations than method.freq): prune
            # once at the final rate from the trained weights, and say so.
            self.update_masks(model, self.rate)
            masks_from = "one-shot at prune"
            warnings.append(
                "dynamic_filter: no mask update ran during training (fewer than method.freq "
                f"= {self.freq} iterations per epoch?); filters pruned once at rate {self.rate} "
                "after training instead of dynamically"
            )
        pruned_filters, total_filters = filter_counts(model)
        denom, zeros, pct = repo_sparsity(model)
        info: dict[str, Any] = {
            "type": self.type,
            "rate": self.rate,
            "importance": self.importance,
            "scope": self.scope,
            "rate_schedule": self.rate_schedule,  # not "schedule": that is Method.schedule's
            "threshold_mode": self.threshold_mode,
            "reg": self.reg,
            "odecay": self.odecay,
            "masks_from": masks_from,
            "cubic_ramp_epochs": self.ramp_epochs if self.rate_schedule == "cubic" else None,
            "filters_pruned": pruned_filters,
            "filters_total": total_filters,
            "repo_sparsity_percent": round(pct, 4),
            "repo_sparsity_zeros": zeros,
            "repo_sparsity_denominator": denom,
        }
        achieved, total = self._achieved(model)
        info["rates"] = {
            self._rate_unit(): {"target": self.rate, "achieved": achieved, "total": total}
        }
        info["warnings"] = warnings
        masks = export_masks(model)
        if self.type == "structured" and self.remove_filters:
            model, masks, removal = self._remove_filters(model, masks, ctx)
            info.update(removal)
            info["removal_exact"] = self.mask_bn
        masks = {n: m for n, m in masks.items() if not bool(m.all())}
        return PruneResult(model=model, masks=masks, info=info)

    def _rate_unit(self) -> str:
        return "filters" if self.type == "structured" else "weights"

    def _achieved(self, model: nn.Module) -> tuple[float, int]:
        """The fraction of filters (structured) or conv weights (unstructured) masked now, and
        how many there are."""
        if self.type == "structured":
            pruned, total = filter_counts(model)
        else:
            masks = [c.weight_mask for _, c in masked_convs(model)]
            pruned, total = sum(int((m == 0).sum()) for m in masks), sum(m.numel() for m in masks)
        return (round(pruned / total, 6) if total else 0.0), total

    def _remove_filters(
        self, model: nn.Module, masks: dict[str, torch.Tensor], ctx: PruneContext
    ) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
        """Physically remove every channel whose filter is masked in all its producers
        (``method.groups``: in single groups only, or residual streams too); a group whose
        producers lost every filter keeps one, still masked to zero. The masks are sliced
        alike. ``filters_removed`` counts the removed channels."""
        pruned = channel_prune(
            model,
            MaskedFilters(masks),
            0.0,
            input_size=ctx.input_size,
            scope="zeros",
            grouping=self.opts.groups,
            masks=masks,
        )
        info = pruned.info
        removal = {
            "groups": self.opts.groups,
            "channels": info["channels"],
            "keep": info["keep"],
            "input_size": info["input_size"],
            "discovery": info["discovery"],
            "filters_removed": info["channels_total"] - info["channels_kept"],
        }
        return pruned.model.to(ctx.device), pruned.masks, removal

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Strip the re-parameterisation, rebuild the removed structure, load the weights."""
        strip_masks(model, apply=False)
        return restore_channels(model, checkpoint, source)


# ----------------------------------------------------------------------------- export helpers
def filter_counts(model: nn.Module) -> tuple[int, int]:
    """(filters whose mask is zero over all of ``[in, kh, kw]``, filters) over masked convs."""
    pruned = total = 0
    for _, conv in masked_convs(model):
        flat = conv.weight_mask.reshape(conv.weight_mask.shape[0], -1)
        pruned += int((flat == 0).all(dim=1).sum())
        total += flat.shape[0]
    return pruned, total
