"""What the fine-tune stage does after pruning, beyond plain fine-tuning (issue 13).

- **Distillation** (``finetune.kd.alpha`` > 0, ``finetune.kd.temperature``; Hinton et al.
  2015): the dense reference is the teacher (:class:`~prune_cli.engine.distill.Distiller`), in
  every fine-tuning stage of the run.
- **Rewinding** (``finetune.rewind``):

  - ``init`` (lottery ticket, Frankle & Carbin 2019): the pruned model's weights go back to the
    values dense training started from (``rewind_init.pt`` of the training's cache entry; for a
    physically narrower model, the kept channels' values), the masks are applied, and it is
    retrained with the dense training's settings (``train.*``) for ``train.epochs``;
  - ``epoch:K`` (late rewinding, Frankle et al. 2020): the same from the weights after epoch K
    of dense training (``rewind_epoch<K>.pt``), retrained for the last ``train.epochs - K``
    epochs of the training schedule;
  - ``lr`` (learning-rate rewinding, Renda et al. 2020): the trained weights are kept and
    fine-tuned for ``finetune.epochs`` with the learning rates of the training schedule's last
    ``finetune.epochs`` epochs (``train.*`` settings).

- **From scratch** (``finetune.from_scratch``; Liu et al. 2019, "Rethinking the value of network
  pruning"): the pruned architecture (and its masks) re-initialised — a fresh draw of the dense
  model's initialisation (seeded by :func:`scratch_seed`) cut to the kept channels — and trained
  with ``train.*`` for ``train.epochs`` (``same_epochs``, Scratch-E) or for the dense training's
  MAC budget (``same_budget``, Scratch-B: :func:`scratch_steps`).

Rewinding and from-scratch training are refused (one-line ConfigError) for a method whose pruned
model has no dense-training counterpart (``Method.no_weight_reset``: sharing, ``none``,
dynamic_filter), together, with ``pretrained=`` where the rewind point was never saved, and with a
gradual schedule (which prunes during the stage they would retrain). With an iterative schedule
the rewinding happens before every round's retraining, not only the last (Frankle & Carbin's
iterative pruning with rewinding). A method that changes dense training (network slimming's
sparsity term) is retrained with ``train.*`` alone, which the run says in its warnings.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from pydantic import BeforeValidator
from torch import nn

from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.engine.settings import FitSettings, TrainOptions
from prune_cli.errors import ConfigError
from prune_cli.options import Float, Int, OneOf, Options, Valid, parse
from prune_cli.pruning.channels import rebuild
from prune_cli.pruning.masks import apply_masks

#: ``finetune.from_scratch`` choices (Liu et al. 2019: Scratch-E, Scratch-B).
FROM_SCRATCH = ("none", "same_epochs", "same_budget")
#: How ``finetune.rewind`` is described in errors.
REWIND_VALID = "none, init, lr, or epoch:K (K an integer >= 1)"


def parse_rewind(value: Any) -> str:
    """``finetune.rewind``: ``none``, ``init``, ``lr`` or ``epoch:K`` (K >= 1), normalised
    (``epoch:03`` -> ``epoch:3``; a YAML null is ``none``)."""
    if value is None:
        return "none"
    if not isinstance(value, str):
        raise ValueError("is not a rewind point")
    text = value.strip()
    if text in ("none", "init", "lr"):
        return text
    kind, sep, number = text.partition(":")
    if kind != "epoch" or not sep:
        raise ValueError("is not a rewind point")
    if not number.strip().isdigit() or int(number) < 1:
        raise ValueError("has no epoch number K >= 1")
    return f"epoch:{int(number)}"


class KDOptions(Options):
    """``finetune.kd.*``: knowledge distillation from the dense reference (Hinton et al. 2015):
    loss = (1 - alpha)·CE + alpha·T²·KL(teacher/T ‖ student/T); ``alpha`` 0 turns it off."""

    alpha: Float(ge=0, le=1)
    temperature: Float(gt=0)


class FinetuneOptions(TrainOptions):
    """Fine-tuning after pruning (``finetune.*``; ``configs/finetune/default.yaml`` has the
    defaults): as ``train``, and 0 epochs skips it.

    ``kd``: distillation from the dense reference; ``rewind``: weights (``init``,
    ``epoch:K``) or learning rate (``lr``) rewinding; ``from_scratch``: the pruned
    architecture re-initialised and trained as the dense model was (module docstring).
    """

    epochs: Int(ge=0)
    kd: KDOptions
    rewind: Annotated[str, BeforeValidator(parse_rewind), Valid(REWIND_VALID)]
    from_scratch: OneOf(*FROM_SCRATCH)

    @property
    def alpha(self) -> float:
        return self.kd.alpha

    @property
    def temperature(self) -> float:
        return self.kd.temperature

    @property
    def distills(self) -> bool:
        return self.kd.alpha > 0

    @property
    def rewind_point(self) -> str | None:
        """The saved weights the model goes back to: ``init``, ``epoch:K``, or None."""
        return self.rewind if self.rewind == "init" or self.rewind.startswith("epoch:") else None

    @property
    def rewind_epoch(self) -> int | None:
        return int(self.rewind.partition(":")[2]) if self.rewind.startswith("epoch:") else None

    @property
    def resets_weights(self) -> bool:
        """Rewinding to saved weights or re-initialising: the stage retrains with ``train.*``."""
        return self.rewind_point is not None or self.from_scratch != "none"

    @property
    def uses_train_recipe(self) -> bool:
        return self.resets_weights or self.rewind == "lr"


def finetune_options(given: Mapping[str, Any] | FinetuneOptions) -> FinetuneOptions:
    """``given`` typed (:func:`~prune_cli.engine.settings.train_options` for ``finetune``: the
    keys a mapping leaves out from ``configs/finetune/default.yaml``)."""
    if isinstance(given, FinetuneOptions):
        return given
    defaults = group_defaults("finetune", "default")
    return parse(FinetuneOptions, with_defaults(defaults, given), "finetune.")


def check_plan(
    plan: FinetuneOptions,
    *,
    method_name: str,
    no_weight_reset: str | None,
    train_epochs: int,
    pretrained: bool,
    schedule: str = "oneshot",
) -> None:
    """Refuse, in one line, what cannot be done (module docstring); called before any work.
    ``schedule``: the method's sparsity schedule (``method.schedule``)."""
    if plan.rewind != "none" and plan.from_scratch != "none":
        raise ConfigError(
            f"finetune.rewind={plan.rewind} and finetune.from_scratch={plan.from_scratch} "
            "exclude each other; valid: set one of them to none"
        )
    if plan.resets_weights and no_weight_reset:
        key = "rewind" if plan.rewind_point else "from_scratch"
        value = plan.rewind if plan.rewind_point else plan.from_scratch
        raise ConfigError(
            f"finetune.{key}={value} is unsound for method {method_name!r}: {no_weight_reset}"
        )
    _check_gradual(plan, schedule)
    k = plan.rewind_epoch
    if k is not None and k >= train_epochs:
        raise ConfigError(
            f"finetune.rewind=epoch:{k} leaves nothing to retrain (train.epochs={train_epochs}); "
            f"valid: epoch:1 ... epoch:{train_epochs - 1}, or init"
            if train_epochs > 1
            else f"finetune.rewind=epoch:{k} leaves nothing to retrain (train.epochs=1); "
            "valid: init, lr, none"
        )
    if plan.rewind_point and pretrained:
        raise ConfigError(
            f"finetune.rewind={plan.rewind} needs the weights saved during dense training, and "
            "pretrained= skips training; valid with pretrained=: none, lr"
        )
    finetune_epochs = plan.epochs
    if plan.rewind == "lr" and not 1 <= finetune_epochs <= train_epochs:
        raise ConfigError(
            f"finetune.rewind=lr replays the last finetune.epochs={finetune_epochs} epochs of "
            f"the training schedule (train.epochs={train_epochs}); valid: "
            f"1 <= finetune.epochs <= {train_epochs}"
        )


def _check_gradual(plan: FinetuneOptions, schedule: str) -> None:
    """A gradual schedule prunes *during* the fine-tune stage, so there is no pruned model
    before it: rewinding would choose the masks from the rewound weights, and from-scratch
    training would have no pruned architecture (nor its MACs, for Scratch-B) to start from."""
    if schedule != "gradual":
        return
    if plan.rewind_point is not None:
        raise ConfigError(
            f"finetune.rewind={plan.rewind} with method.schedule=gradual would choose the masks "
            "from the rewound weights (gradual pruning happens during that retraining); valid "
            "with gradual: finetune.rewind none or lr"
        )
    if plan.from_scratch != "none":
        raise ConfigError(
            f"finetune.from_scratch={plan.from_scratch} with method.schedule=gradual has no "
            "pruned architecture to train (gradual pruning happens during that stage); valid "
            "with gradual: finetune.from_scratch=none, or method.schedule oneshot or iterative"
        )


def stage_settings(
    finetune: FinetuneOptions, train: TrainOptions, eval_precision: str
) -> FitSettings:
    """The settings of the fine-tune stage, and with them the learning-rate schedule it
    follows (``schedule_epochs``/``schedule_start``: see
    :func:`prune_cli.engine.optim.build_scheduler`). Scratch-B's step budget is set by the
    caller (it needs the pruned model's MACs)."""
    if not finetune.uses_train_recipe:
        return FitSettings.of(finetune, eval_precision=eval_precision)
    total = train.epochs
    span: dict[str, int] = {}
    if finetune.rewind == "lr":
        epochs = finetune.epochs
        span = {"epochs": epochs, "schedule_epochs": total, "schedule_start": total - epochs}
    elif finetune.rewind_epoch is not None:
        k = finetune.rewind_epoch
        span = {"epochs": total - k, "schedule_epochs": total, "schedule_start": k}
    return FitSettings.of(train, eval_precision=eval_precision, **span)


def scratch_seed(seed: int) -> int:
    """The seed of a from-scratch model's fresh initialisation: derived from the run seed, and
    never the seed of the dense model's own initialisation (which would make it the lottery
    ticket rather than a random re-initialisation)."""
    digest = hashlib.sha256(f"prune-cli from_scratch {int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63 - 1) + 1


def scratch_steps(epochs: int, steps_per_epoch: int, dense_macs: float, pruned_macs: float) -> int:
    """Scratch-B's training steps (Liu et al. 2019): the dense training's budget,
    ``epochs * steps_per_epoch * dense_macs / pruned_macs``, rounded to the nearest step
    (halves up) and never fewer than the dense training's steps."""
    if pruned_macs <= 0:
        raise ValueError(f"the pruned model's MACs must be > 0, not {pruned_macs}")
    dense_steps = int(epochs) * int(steps_per_epoch)
    steps = math.floor(dense_steps * float(dense_macs) / float(pruned_macs) + 0.5)
    return max(dense_steps, steps)


@torch.no_grad()
def load_start_weights(
    model: nn.Module,
    dense: nn.Module,
    state: Mapping[str, torch.Tensor],
    info: Mapping[str, Any],
    masks: Mapping[str, torch.Tensor],
) -> None:
    """Set the pruned ``model``'s weights from ``state``, a state dict of the *dense*
    architecture ``dense`` (its layout; not changed): for a physically narrower model
    (``info["channels"]``, as :func:`~prune_cli.pruning.channels.channel_prune` records it) the
    kept channels of ``state`` are sliced out (:func:`~prune_cli.pruning.channels.rebuild` cut
    at ``info["keep"]``); then ``masks`` zero the pruned weights. Every parameter and buffer of
    ``model`` is replaced (BN statistics included)."""
    start = copy.deepcopy(dense)
    start.load_state_dict(dict(state))
    if info.get("channels"):
        start = rebuild(start, info)
    model.load_state_dict(start.state_dict())
    apply_masks(model, masks)
