"""The interface every method implements.

The pipeline calls, in order::

    model = method.prepare(model)          # before training (e.g. re-parameterise convs)
    fit(model, hooks=method)               # dense training: regulariser and per-step hooks
    result = method.prune(model, ctx)      # masks and/or a physically smaller model
    fit(result.model, hooks=MaskHold(...)) # fine-tuning with the masks held at zero

A method is one module under ``prune_cli/methods`` registered under its config name with
``@METHODS.register("name")``. It never calls the pipeline; when it needs more than one
prune/fine-tune round it uses the callbacks of :class:`PruneContext`.

This module is the methods' one door to the layers below the toolbox (the training hooks,
checkpoint loading, evaluation): a method module itself imports only this module, the registry,
``prune_cli.pruning`` and ``prune_cli.sharing`` (tests/test_layers.py). :class:`SharingMethod` is
the base of the parameter-sharing methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from prune_cli.engine.checkpoint import load_state_into
from prune_cli.engine.hooks import TrainHooks
from prune_cli.engine.loop import EvalResult, evaluate
from prune_cli.errors import ConfigError
from prune_cli.sharing import (
    BankPlan,
    SharingSummary,
    TemplateSetting,
    parse_templates,
    sharing_report,
)


@dataclass
class PruneResult:
    """The pruned model (the same object or a new, smaller one) and the masks to hold."""

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneContext:
    """What a method may use while pruning.

    ``finetune(model, masks, stage, epochs=None)`` fine-tunes with the run's ``finetune``
    settings (``epochs`` overrides their epoch count) and returns the model;
    ``record(stage, model)`` adds an intermediate stage to ``metrics.json``. Both let a
    multi-round method (slimming then magnitude, say) report every round without knowing the
    pipeline.
    """

    data: Any
    device: torch.device
    seed: int
    input_size: tuple[int, int, int]
    finetune: Callable[..., nn.Module] | None = None
    record: Callable[[str, nn.Module], Any] | None = None

    def evaluate(self, model: nn.Module, split: str = "test", batch_size: int = 256) -> EvalResult:
        """Mean cross-entropy and top-1/top-5 of ``model`` on ``split`` of the run's data (eval
        mode, no augmentation), e.g. to compare candidate masks on the test split."""
        loader = self.data.loader(split, batch_size, train=False, device=self.device)
        return evaluate(model, loader, self.device)


class Method(TrainHooks):
    """Base class: no-op hooks, a config, the ratio, and the run seed."""

    name: ClassVar[str] = "base"
    #: False for methods that do not prune (the baseline): the pipeline then skips fine-tuning.
    prunes: ClassVar[bool] = True

    def __init__(self, cfg: Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        if not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"ratio {ratio} is out of range; valid: 0 <= ratio < 1")
        self.cfg = dict(cfg)
        self.ratio = float(ratio)
        self.seed = int(seed)

    def option(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """A string option of this method, validated against ``choices`` with a one-line error."""
        value = str(self.cfg.get(key, default))
        if value not in choices:
            raise ConfigError(
                f"unknown method.{key} {value!r} for method {self.name!r}; "
                f"choose one of: {', '.join(choices)}"
            )
        return value

    def prepare(self, model: nn.Module) -> nn.Module:
        """Change the model before training (default: unchanged)."""
        return model

    def pretrained_state(
        self, model: nn.Module, state: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """A dense checkpoint's state dict (``pretrained=``) in the key layout of ``model`` after
        :meth:`prepare`. The default returns it unchanged; methods whose ``prepare`` renames
        parameters map the plain names onto theirs."""
        return dict(state)

    def training_signature(self) -> dict[str, Any]:
        """Everything this method changes about dense training, for the trained-model cache key.

        Methods that only act after training return ``{}``, so that all of them share one
        trained checkpoint.
        """
        return {}

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        raise NotImplementedError

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the pruned model from a checkpoint written after :meth:`prune` (for resume).

        ``checkpoint`` holds ``model`` (state dict), ``masks`` and ``info`` (the
        :attr:`PruneResult.info` of the run). The default loads the state dict into ``model``;
        methods that change the architecture rebuild it from ``info`` first.
        """
        load_state_into(model, dict(checkpoint), source)
        return model


class SharingMethod(Method):
    """Base of the parameter-sharing methods (methods.md §9); subclasses define :meth:`plans`.

    Sharing re-parameterises the model *before training*, which then trains it from scratch
    through the normal pipeline:

    - ``prepare(model)`` replaces the planned convs by template-generated convs
      (:meth:`prune_cli.sharing.TemplateSetting.share`, deterministic given the run seed, so that
      a trained checkpoint reloads into a freshly prepared model).
    - ``training_signature()`` holds the resolved templates per bank, the coefficient kind and
      the plan, so the trained-model cache keys every variant separately.
    - ``prune()`` prunes nothing: it returns the model unchanged with no masks and reports in
      ``prune_info`` :func:`prune_cli.sharing.sharing_report` (parameter reduction against the
      unshared model, templates per bank, MACs, the materialisation check).
    - ``prunes = False``: the pipeline skips fine-tuning. Sharing is decided before training and
      training *is* the training of the shared model, so another round at the fine-tuning
      settings would only give the shared model more epochs than the ``method=none`` baseline it
      is compared with (which also skips fine-tuning).

    ``ratio`` is the *target fraction of parameters removed*, used only when
    ``templates_per_stage`` is ``auto`` (:mod:`prune_cli.sharing.setting`).
    """

    prunes: ClassVar[bool] = False
    #: The coefficient kinds a subclass accepts in ``method.coefficients``.
    coefficient_kinds: ClassVar[tuple[str, ...]] = ("scalar",)

    def __init__(self, cfg: Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self.summary: SharingSummary | None = None
        self.bank_plans: list[BankPlan] = []
        coefficients = self.option("coefficients", self.coefficient_kinds, "scalar")
        templates = parse_templates(self.cfg.get("templates_per_stage", 2))
        self.setting = TemplateSetting(templates, coefficients, self.ratio)

    # ------------------------------------------------------------------ subclass interface
    def plans(self, model: nn.Module) -> list[BankPlan]:
        """The banks to create on ``model`` (raise ConfigError for an unsupported model)."""
        raise NotImplementedError

    def plan_description(self) -> str:
        """One line naming which convs share, for ``prune_info`` and the cache key."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Method interface
    def prepare(self, model: nn.Module) -> nn.Module:
        plans = self.plans(model)
        self.bank_plans = plans
        self.summary = self.setting.share(model, plans, self.seed)
        return model

    def training_signature(self) -> dict[str, Any]:
        templates: Any = self.summary.templates if self.summary else self.setting.templates
        return {
            "sharing": self.name,
            "plan": self.plan_description(),
            "templates": templates,
            "coefficients": self.setting.coefficients,
            "init": "kaiming_templates+orthogonal_coefficients",
        }

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        if self.summary is None:
            raise RuntimeError(f"method {self.name!r}: prune() called before prepare()")
        report = sharing_report(
            model,
            self.summary,
            self.bank_plans,
            self.setting,
            input_size=ctx.input_size,
            device=ctx.device,
            seed=ctx.seed,
        )
        info: dict[str, Any] = {
            "sharing": self.plan_description(),
            **report,
            "finetune": "skipped: sharing is trained from scratch; nothing is pruned",
        }
        return PruneResult(model=model, masks={}, info=info)
