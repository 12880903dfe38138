"""The interface every method implements.

The pipeline calls, in order::

    model = method.prepare(model)          # before training (e.g. re-parameterise convs)
    fit(model, hooks=method)               # dense training: regulariser and per-step hooks
    result = method.prune(model, ctx)      # masks and/or a physically smaller model
    fit(result.model, hooks=MaskHold(...)) # fine-tuning with the masks held at zero

A method is one module under ``prune_cli/methods`` registered under its config name with
``@METHODS.register("name")``, which also sets its ``name``. It never calls the pipeline; when it
needs more than one prune/fine-tune round it uses the callbacks of :class:`PruneContext`.

Options: a method declares the keys of its config (``configs/method/<name>.yaml``) as a nested
``Options`` class (a :class:`MethodOptions`, see :mod:`prune_cli.options`) with their types,
defaults, ranges and choices; ``__init__`` validates the config into ``self.opts`` (one-line
``ConfigError`` naming ``method.<key>``, the value and what is valid). The same check runs
before any work when a run starts (``prune_cli.schema``)::

    @METHODS.register("magnitude")
    class MagnitudePruning(Method):
        class Options(MethodOptions):
            scope: OneOf("global", "layerwise") = "global"
            include_linear: Bool = False

        opts: Options

        def prune(self, model, ctx):
            ... self.opts.scope ...

A method without an ``Options`` class (a user's own, say) keeps its raw config in ``self.cfg``
(``self.opts`` is None) and checks it itself.

This module is the methods' one door to the layers below the toolbox (the training hooks,
checkpoint loading, evaluation): a method module itself imports only this module, the registry,
``prune_cli.pruning`` and ``prune_cli.sharing`` (tests/test_layers.py). :class:`SharingMethod` is
the base of the parameter-sharing methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BeforeValidator
from torch import nn

from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.engine.checkpoint import load_state_into
from prune_cli.engine.hooks import TrainHooks
from prune_cli.engine.loop import EvalResult, evaluate
from prune_cli.errors import ConfigError
from prune_cli.methods.registry import METHODS
from prune_cli.options import Float, Int, OneOf, Options, Text, Valid, parse
from prune_cli.pruning.groups import GROUPINGS
from prune_cli.pruning.regularizers import BNSparsity
from prune_cli.pruning.schedules import (
    SCHEDULES,
    STEPS,
    GradualPruning,
    PruneTo,
    run_schedule,
)
from prune_cli.pruning.threshold import THRESHOLD_MODES
from prune_cli.sharing import (
    BankPlan,
    SharingSummary,
    TemplateSetting,
    parse_templates,
    sharing_report,
)

#: The run's ratio as a method option: 0 <= ratio < 1.
Ratio = Float(ge=0, lt=1, valid="0 <= ratio < 1")


def _auto_or_nonnegative(value: Any) -> Any:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool):
        raise ValueError("is not auto or a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("is not auto or a number") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError("is out of range")
    return number


#: ``auto`` (the method decides) or a number >= 0 (slimming's ``l1_lambda``).
AutoOrNonNegative = Annotated[
    Any, BeforeValidator(_auto_or_nonnegative), Valid("auto, or a number >= 0")
]


def _auto_or_positive_int(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, bool):
        raise ValueError("is not auto or an integer")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("is not auto or an integer") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError("is not auto or an integer")
    if number < 1:
        raise ValueError("is out of range")
    return int(number)


#: ``auto`` or an integer >= 1 (``round_to``).
AutoOrPositiveInt = Annotated[
    Any, BeforeValidator(_auto_or_positive_int), Valid("auto, or an integer >= 1")
]


class MethodOptions(Options):
    """The key every method config has: its ``name``. Subclasses add the method's keys, whose
    defaults are in ``configs/method/<name>.yaml`` (:meth:`Method.parse_options`)."""

    name: Text("a method name")


class OwnRatio(MethodOptions):
    """``ratio``: the fraction the method's main rate prunes (``${ratio}`` in its config: the
    run's ratio; null: the run's ratio too)."""

    ratio: Ratio | None


class ScheduleOptions(MethodOptions):
    """Keys of the methods that follow a sparsity schedule (:mod:`prune_cli.pruning.schedules`):
    ``schedule`` (``oneshot``, ``iterative``: ``rounds`` of prune-then-fine-tune with ``linear``
    or ``geometric`` ``steps``; ``gradual``: Zhu & Gupta's cubic ramp from ``initial`` to the
    ratio over fine-tuning epochs ``[start, end]`` (``end`` null: the last), the masks updated
    every ``frequency`` steps)."""

    schedule: OneOf(*SCHEDULES)
    rounds: Int(ge=1)
    steps: OneOf(*STEPS)
    initial: Ratio
    start: Float(ge=0)
    end: Float(gt=0) | None
    frequency: Int(ge=1)


class ChannelOptions(MethodOptions):
    """Keys of the channel-removal methods (:func:`~prune_cli.pruning.channels.channel_prune`):
    ``groups`` (``coupled``: residual streams, concatenations, ShuffleNetV2 streams too;
    ``single``: one-producer groups only), the threshold ``mode``, ``min_channels`` (an int, or
    a fraction of the group if < 1) and ``round_to`` (an int, or ``auto``:
    :func:`~prune_cli.pruning.channels.rounded_keep`)."""

    groups: OneOf(*GROUPINGS)
    mode: OneOf(*THRESHOLD_MODES)
    min_channels: Float(gt=0)
    round_to: AutoOrPositiveInt

    def channel_settings(self) -> dict[str, Any]:
        """These options as :func:`channel_prune` keywords."""
        return {
            "grouping": self.groups,
            "mode": self.mode,
            "min_channels": self.min_channels,
            "round_to": self.round_to,
        }


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
    #: ``metrics.latency.enabled``: whether a method may spend time measuring latency.
    latency: bool = True
    #: The run directory, for methods that write files of their own (sensitivity analysis).
    run_dir: Path | None = None
    #: ``retrain(model, masks, stage, info)``: what a pruned model gets between the rounds of an
    #: iterative schedule, as the fine-tune stage does it (rewinding included; ``info``: how
    #: the model was cut). None: ``finetune``.
    retrain: Callable[..., nn.Module] | None = None

    def round_retrain(self) -> Callable[..., nn.Module] | None:
        """The retraining between iterative rounds (``retrain``, else ``finetune``)."""
        if self.retrain is not None:
            return self.retrain
        finetune = self.finetune
        if finetune is None:
            return None
        return lambda model, masks, stage, info: finetune(model, masks, stage)

    def evaluate(self, model: nn.Module, split: str = "test", batch_size: int = 256) -> EvalResult:
        """Mean cross-entropy and top-1/top-5 of ``model`` on ``split`` of the run's data (eval
        mode, no augmentation), e.g. to compare candidate masks on the test split."""
        loader = self.data.loader(split, batch_size, train=False, device=self.device)
        return evaluate(model, loader, self.device)


class Method(TrainHooks):
    """Base class: no-op hooks, a config, the ratio, and the run seed."""

    #: The config name (``method=<name>``), set by ``@METHODS.register``.
    name: ClassVar[str] = "base"
    #: False for methods that do not prune (the baseline): the pipeline then skips fine-tuning.
    prunes: ClassVar[bool] = True
    #: The method's options (a :class:`MethodOptions` subclass), or None if not declared yet.
    Options: ClassVar[type[MethodOptions] | None] = None
    #: False for analyses (``sensitivity``): no pruned model comes out, so the pipeline skips
    #: fine-tuning and the final evaluation and records why.
    produces_model: ClassVar[bool] = True

    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        if not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"ratio {ratio} is out of range; valid: 0 <= ratio < 1")
        #: The validated options (``self.Options``), or None for a method that declares none:
        #: typed options are taken as they are; a mapping is checked, the keys it leaves out
        #: taken from ``configs/method/<name>.yaml`` (its ``${ratio}`` is ``ratio``).
        if isinstance(cfg, MethodOptions):
            self.opts: Any = cfg
            self.cfg = cfg.model_dump()
        else:
            self.cfg = dict(cfg)
            self.opts = self.parse_options(self.cfg, ratio=float(ratio))
        self.ratio = float(ratio)
        self.seed = int(seed)

    @classmethod
    def parse_options(
        cls, cfg: Mapping[str, Any], ratio: float | None = None
    ) -> MethodOptions | None:
        """``cfg`` validated against :attr:`Options` (one-line :class:`ConfigError`), or None
        when the method declares no options (its config is then taken as it is). With
        ``ratio``, the keys ``cfg`` leaves out are taken from ``configs/method/<name>.yaml``
        (its ``${ratio}`` is ``ratio``); without, ``cfg`` must have them all (a composed run
        config does)."""
        if ratio is not None:
            # The method knows its name; the rest of what cfg leaves out is in its YAML.
            cfg = with_defaults(group_defaults("method", cls.name, ratio=ratio), cfg)
            cfg.setdefault("name", cls.name)
        check_schedule(cls, cfg)
        if cls.Options is None:
            return None
        return parse(
            cls.Options, cfg, "method.", context=f" for method {cls.name!r}", group="method"
        )

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

    def baseline_kind(self, trained: bool = True) -> str:
        """What the trained model this method prunes *is*, for ``metrics.json``
        (``baseline_kind``): ``dense`` when the method does not change training (it then equals
        the dense reference) or when no training ran (``trained=False``: ``pretrained=``
        weights); methods that change training or the architecture say how."""
        if not trained or not self.training_signature():
            return "dense"
        return "trained with " + self.name

    def holdout_size(self) -> int | float:
        """Training images this method needs held out as a validation split when the dataset
        configures none: a count, or a fraction of train (0: none); the pipeline carves them
        from train before training."""
        return 0

    #: Does ``pretrained=`` start this method's *training* (instead of skipping it)? True for
    #: methods that prune during training (dynamic_filter): without training they would not run.
    trains_from_pretrained: ClassVar[bool] = False
    #: Why this method's pruned model cannot have its weights reset (``finetune.rewind``
    #: init/epoch:K, ``finetune.from_scratch``), in a few words; None: it can.
    no_weight_reset: ClassVar[str | None] = None

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        raise NotImplementedError

    # ------------------------------------------------------------------ schedules
    @property
    def schedule(self) -> str:
        """``method.schedule`` (``oneshot`` for methods without schedules)."""
        return schedule_of(self.opts)

    def scheduled(
        self, model: nn.Module, ctx: PruneContext, prune_to: PruneTo, ratio: float
    ) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
        """Prune ``model`` to ``ratio`` by the method's schedule with its step ``prune_to``
        (:func:`~prune_cli.pruning.schedules.run_schedule`; the rounds of ``iterative`` are
        retrained by ``ctx.retrain``, else fine-tuned by ``ctx.finetune``; ``gradual`` prunes
        during fine-tuning, :meth:`finetune_hooks`)."""
        rounds = {}
        if self.schedule == "iterative":
            rounds = {"rounds": self.opts.rounds, "steps": self.opts.steps}
        return run_schedule(
            self.schedule,
            model,
            prune_to,
            ratio,
            record=ctx.record,
            retrain=ctx.round_retrain(),
            **rounds,
        )

    def gradual_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The scores gradual pruning ranks weights by (lowest pruned first); methods that
        support ``schedule: gradual`` define it."""
        raise ConfigError(f"method {self.name!r} does not support method.schedule=gradual")

    def gradual_pool(self) -> tuple[float, str, str]:
        """``(ratio, scope, mode)`` of the gradual schedule's weights."""
        return self.ratio, "global", "exact"

    def finetune_hooks(
        self, model: nn.Module, masks: Mapping[str, torch.Tensor]
    ) -> GradualPruning | None:
        """Hooks that replace the pipeline's mask holding during fine-tuning (``gradual``:
        :class:`GradualPruning`, whose ``masks`` are the final masks), or None."""
        if self.schedule != "gradual":
            return None
        ratio, scope, mode = self.gradual_pool()
        opts = self.opts
        return GradualPruning(
            self.gradual_scores,
            ratio,
            initial=opts.initial,
            start=opts.start,
            end=opts.end,
            frequency=opts.frequency,
            scope=scope,
            mode=mode,
        )

    def restore(self, model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> nn.Module:
        """Rebuild the pruned model from a checkpoint written after :meth:`prune` (for resume).

        ``checkpoint`` holds ``model`` (state dict), ``masks`` and ``info`` (the
        :attr:`PruneResult.info` of the run). The default loads the state dict into ``model``;
        methods that change the architecture rebuild it from ``info`` first.
        """
        load_state_into(model, dict(checkpoint), source)
        return model

    def sharing_plan(self) -> dict[str, Any] | None:
        """The parameter-sharing plan :meth:`prepare` applied (templates and layers per bank),
        recorded in portable checkpoints; None for methods that share nothing."""
        return None


def schedule_of(opts: Any) -> str:
    """The sparsity schedule of a method's options (``oneshot`` for methods without schedules:
    dynamic_filter's ``schedule`` is its rate's, not one of these)."""
    value = getattr(opts, "schedule", "oneshot")
    return value if value in SCHEDULES else "oneshot"


def check_schedule(cls: type[Method], cfg: Mapping[str, Any]) -> None:
    """``method.schedule`` iterative or gradual for a method without schedules: one line
    naming the method, the value and the methods that have them."""
    value = cfg.get("schedule")
    options = cls.Options
    if value not in ("iterative", "gradual"):
        return
    if options is not None and issubclass(options, ScheduleOptions):
        refused = getattr(cls, "refuses_schedule", None)
        reason = refused(cfg) if refused is not None else None
        if reason:
            raise ConfigError(f"method {cls.name!r} cannot run method.schedule={value}: {reason}")
        return
    having = [
        n
        for n in METHODS.names()
        if (o := METHODS.get(n).Options) is not None and issubclass(o, ScheduleOptions)
    ]
    raise ConfigError(
        f"method {cls.name!r} has no method.schedule={value}; methods with schedules: "
        + ", ".join(having)
    )


class SparsityTraining(Method):
    """Base of the methods that train with network slimming's L1 term on BN γ
    (:class:`~prune_cli.pruning.regularizers.BNSparsity`: ``method.l1_lambda``,
    ``method.bn_init``): ``network_slimming`` and ``double_pruning``. ``pretrained=`` weights
    start that sparsity training (``train.*``): slimming ranks the γ that the L1 term has driven
    apart, which a plainly trained model's γ are not."""

    trains_from_pretrained: ClassVar[bool] = True

    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self.sparsity = BNSparsity(self.opts.l1_lambda, self.opts.bn_init)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Resolve ``l1_lambda: auto`` from the model family; apply ``bn_init`` if set."""
        self.sparsity.prepare(model)
        return model

    def training_signature(self) -> dict[str, Any]:
        """Sparsity training differs from plain training: λ and the γ init key the cache."""
        return self.sparsity.signature()

    def after_backward(self, model: nn.Module) -> None:
        """``γ.grad += λ·sign(γ)`` for every BatchNorm2d (docs/methods.md §3 step 1)."""
        self.sparsity.after_backward(model)

    def baseline_kind(self, trained: bool = True) -> str:
        return self.sparsity.baseline_kind() if trained else "dense"


class SharingOptions(OwnRatio):
    """Keys of the parameter-sharing methods: ``templates_per_stage`` (k for every bank, one k
    per stage, or ``auto``: the k whose reduction is closest to ``ratio``)."""

    templates_per_stage: Annotated[
        Any,
        BeforeValidator(parse_templates),
        Valid("an integer >= 1, a list of integers >= 1, or auto"),
    ]

    @property
    def coefficient_kind(self) -> str:
        """The coefficients of the shared convs: scalar unless the method has the key."""
        return getattr(self, "coefficients", "scalar")


class SharingMethod(Method):
    """Base of the parameter-sharing methods (docs/methods.md §9); subclasses define :meth:`plans`.

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
    Options: ClassVar[type[MethodOptions] | None] = SharingOptions
    no_weight_reset: ClassVar[str | None] = (
        "it shares weights through templates trained from scratch: there is no pruned "
        "subnetwork of the dense model to rewind or re-initialise"
    )
    opts: SharingOptions

    def __init__(self, cfg: MethodOptions | Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self.summary: SharingSummary | None = None
        self.bank_plans: list[BankPlan] = []
        opts = self.opts
        self.setting = TemplateSetting(opts.templates_per_stage, opts.coefficient_kind, self.ratio)

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

    def baseline_kind(self, trained: bool = True) -> str:
        return "shared: convs generated from template banks (not the dense model)"

    def training_signature(self) -> dict[str, Any]:
        templates: Any = self.summary.templates if self.summary else self.setting.templates
        return {
            "sharing": self.name,
            "plan": self.plan_description(),
            "templates": templates,
            "coefficients": self.setting.coefficients,
            "init": "kaiming_templates+orthogonal_coefficients",
        }

    def sharing_plan(self) -> dict[str, Any] | None:
        if self.summary is None:
            return None
        return {
            "plan": self.plan_description(),
            "templates": dict(self.summary.templates),
            "layers": dict(self.summary.layers),
            "coefficients": self.summary.coefficients,
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
            latency=ctx.latency,
        )
        info: dict[str, Any] = {
            "sharing": self.plan_description(),
            **report,
            "finetune": "skipped: sharing is trained from scratch; nothing is pruned",
        }
        return PruneResult(model=model, masks={}, info=info)
