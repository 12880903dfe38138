"""The typed schema of a whole ``prune-run`` config, checked before any work starts.

:func:`validate_config` checks every key a user types, with the mechanism of
:mod:`prune_cli.options` (one line naming the key, the value and what is valid):

- top level: ``ratio``, ``seed``, ``device``, ``deterministic``, ``pretrained``, ``resume``
  (:class:`RunOptions`);
- ``train.*`` and ``finetune.*`` (:class:`~prune_cli.engine.settings.TrainOptions`,
  :class:`~prune_cli.retrain.FinetuneOptions`), ``metrics.*``, ``cache.*``, ``export.*``,
  ``logger.*`` (:class:`~prune_cli.tracking.LoggerOptions`);
- ``dataset.*`` per dataset family (the options class each one registers in
  :mod:`prune_cli.data`);
- ``method.*`` per method (the method's ``Options``; a method that declares none is taken as
  it is and checks its config itself);
- ``model.*``: ``name`` here; every other key is the model's own option, checked by the model
  factory.

and then every rule about combinations of keys (:data:`PLAN_RULES`). The result is one typed,
frozen :class:`RunPlan` that every stage reads. The defaults of the keys are those of the YAML
files (``configs/``): the options here type and bound them (:mod:`prune_cli.defaults`).

It runs at the start of every job (:meth:`prune_cli.pipeline.Pipeline.run`), before the
dataset is read or the model built, so a bad job of a sweep fails alone, with ``metrics.json``
status ``failed`` and the message, in seconds rather than after a training run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BeforeValidator, ConfigDict, Field, SerializeAsAny

from prune_cli.data import DatasetOptions, dataset_options
from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.engine.precision import PRECISIONS
from prune_cli.engine.settings import TrainOptions
from prune_cli.errors import ConfigError, one_line
from prune_cli.methods import METHODS, Method, MethodOptions
from prune_cli.methods.base import Ratio, schedule_of
from prune_cli.metrics.deploy import LATENCY_BACKENDS
from prune_cli.options import Bool, Float, Int, OneOf, Options, Text, Valid, is_number, parse
from prune_cli.pruning.schedules import check_window
from prune_cli.renamed import RENAMED_IN, renamed_key_message
from prune_cli.tracking import LoggerOptions

log = logging.getLogger("prune_cli")
DEVICES = ("auto", "cpu", "cuda")
#: How the dense model's latency is had (``metrics.latency.dense``): measured once per trained
#: checkpoint and reused from the cache entry, or in every run interleaved with the final model.
DENSE_LATENCY = ("reuse", "interleaved")


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
    architecture re-initialised and trained as the dense model was (:mod:`prune_cli.retrain`).
    """

    epochs: Int(ge=0)
    kd: KDOptions
    rewind: Annotated[str, BeforeValidator(parse_rewind), Valid(REWIND_VALID)]
    from_scratch: OneOf(*FROM_SCRATCH)

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
    """Refuse, in one line, what the fine-tune stage cannot do (:mod:`prune_cli.retrain`);
    a rule of the plan, run before any work. ``schedule``: the method's sparsity schedule
    (``method.schedule``)."""
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


class ModelOptions(Options):
    """``model.*``: the name; the other keys are the model's options (checked by its factory)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Text("a model name")


class NetScoreOptions(Options):
    p_unit: Float(gt=0)
    m_unit: Float(gt=0)
    count: OneOf("nonzero", "dense")


class LatencyOptions(Options):
    enabled: Bool
    batch_sizes: Annotated[list[Int(ge=1)], Field(min_length=1)]
    warmup: Int(ge=0)
    repeats: Int(ge=1)
    #: Where latency is measured: PyTorch eager, and the exported ONNX model in ONNX Runtime.
    backends: Annotated[list[OneOf(*LATENCY_BACKENDS)], Field(min_length=1)]
    compile: Bool
    dense: OneOf(*DENSE_LATENCY)


class MetricsOptions(Options):
    #: The evaluations' and latencies' precision: fp32 keeps figures comparable with published
    #: ones (auto, bf16, fp16 as for training).
    precision: OneOf(*PRECISIONS)
    netscore: NetScoreOptions
    latency: LatencyOptions


class CacheOptions(Options):
    enabled: Bool
    figures: Bool
    dir: Text("a directory path")


class ExportOptions(Options):
    onnx: Bool
    torchscript: Bool


class WeightsOptions(Options):
    """``weights.*``: what a known pretrained checkpoint (``configs/weights/<name>.yaml``)
    must match and should score. A weights config sets ``pretrained`` to ``file`` and the model,
    its options and the input normalization the file was trained with; the run then compares
    the loaded dense model's test top-1 with ``top1`` (:mod:`prune_cli.pretrained`). With a
    file of one's own, ``+weights.top1=...`` asks for the same check."""

    name: Text() | None = None
    model: Text("a model name") | None = None
    file: Text("a checkpoint path") | None = None
    #: The published test top-1 (percent) of these weights, on ``test_images`` test images.
    top1: Float(ge=0, le=100) | None = None
    test_images: Int(ge=1) | None = None
    #: How far (points) the measured top-1 may be from ``top1`` before the run says so.
    tolerance: Float(ge=0) = 0.5
    source: Text() | None = None
    license: Text() | None = None
    normalization: Text() | None = None


class RunOptions(Options):
    """The top level of ``configs/config.yaml`` (which has the defaults). ``dataset`` and
    ``method`` are checked per family / per method by :func:`validate_config`."""

    model: ModelOptions
    dataset: dict[str, Any]
    method: dict[str, Any]
    train: TrainOptions
    finetune: FinetuneOptions
    ratio: Ratio
    seed: Int(ge=0, lt=2**63, valid="an integer >= 0 (below 2**63)")
    device: OneOf(*DEVICES)
    deterministic: Bool
    pretrained: Text("a checkpoint path") | None
    resume: Bool
    cache: CacheOptions
    metrics: MetricsOptions
    export: ExportOptions
    logger: LoggerOptions
    #: The arm of an experiment (configs/experiment/*_arm/*.yaml): a label for the report; not
    #: a key of config.yaml (absent: no arm).
    experiment_arm: Text() | None = None
    #: A known checkpoint (``weights=NAME``); absent when none is chosen.
    weights: WeightsOptions | None = None


class RunPlan(RunOptions):
    """The run as :func:`validate_config` typed it, frozen; every stage reads it.

    As :class:`RunOptions`, with ``dataset`` the dataset family's typed options and ``method``
    the method's (its raw mapping for a method that declares no options), and ``resolved``: the
    config as resolved and checked, spelled as the user typed it (``3`` stays ``3`` where a
    number is expected), which is what the trained-model cache key hashes and what the run
    records (``.hydra``, the trackers' parameters, ``metrics.json`` ``method_config``).
    """

    dataset: SerializeAsAny[DatasetOptions]  # type: ignore[assignment]
    method: Any
    resolved: dict[str, Any]

    @property
    def method_class(self) -> type[Method]:
        return METHODS.get(self.method_name)

    @property
    def method_name(self) -> str:
        method = self.method
        return str(method.name if isinstance(method, MethodOptions) else method.get("name"))

    @property
    def method_ratio(self) -> float:
        """The ratio the method prunes to: its own ``method.ratio`` when set, else ``ratio``."""
        own = getattr(self.method, "ratio", None)
        if own is None and isinstance(self.method, Mapping):
            own = self.method.get("ratio")
        return self.ratio if own is None else float(own)

    @property
    def model_options(self) -> dict[str, Any]:
        """The model's options (every ``model.*`` key but ``name``): the factory's keywords."""
        return dict(self.model.model_extra or {})

    def held_out_for(self, method: Method) -> tuple[RunPlan, dict[str, Any] | None]:
        """A method that decides on held-out images (``optimized``'s fitness, ``sensitivity``'s
        layer evaluations) gets a validation split carved from train (seeded, stratified:
        ``dataset.val_size``) when the dataset has none configured; training then never sees
        those images. Returns the plan and what ``metrics.json`` records (``data_holdout``;
        None when nothing is held out)."""
        wanted = method.holdout_size()
        if not wanted or self.dataset.val_size:
            return self, None
        log.info("%s: %s training images held out as the validation split", method.name, wanted)
        why = f"method {method.name!r} decides on images held out of training"
        return self.with_val_size(wanted), {"val_size": wanted, "why": why}

    def with_val_size(self, val_size: int | float) -> RunPlan:
        """The plan with ``dataset.val_size`` set (a validation split carved from train for a
        method that decides on held-out images)."""
        resolved = copy.deepcopy(self.resolved)
        resolved["dataset"]["val_size"] = val_size
        dataset = self.dataset.model_copy(update={"val_size": val_size})
        return self.model_copy(update={"dataset": dataset, "resolved": resolved})


def _resolved(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" {key}" if key else ""
        raise ConfigError(f"cannot resolve{where}: {one_line(exc)}") from None


def _keep_spelling(original: Any, typed: Any) -> Any:
    """``typed`` (validated), but with the original value wherever it means the same number.

    ``3`` stays ``3`` where a float is expected (not ``3.0``), so that the config, and the
    trained-model cache key computed from it, do not change for values that were already
    right; values that needed converting (``"3"`` -> ``3``) take the typed form.
    """
    if isinstance(original, Mapping) and isinstance(typed, Mapping):
        return {k: _keep_spelling(original.get(k), v) for k, v in typed.items()}
    if isinstance(original, list) and isinstance(typed, list) and len(original) == len(typed):
        return [_keep_spelling(o, t) for o, t in zip(original, typed)]
    # Only where a number is expected: an integer key typed as 1.0 takes the typed 1 (a float
    # would break range(epochs) etc.).
    if is_number(original) and isinstance(typed, float) and original == typed:
        return original
    return typed


def peek(cfg: DictConfig | RunPlan, key: str) -> Any:
    """``cfg``'s value at ``key`` before validation: None if it is missing or cannot be
    resolved (validate() then reports it, recorded in metrics.json)."""
    try:
        if isinstance(cfg, RunPlan):
            return OmegaConf.select(OmegaConf.create(cfg.resolved), key)
        return OmegaConf.select(cfg, key)
    except Exception:  # any OmegaConf error: the check comes in validate()
        return None


def validate_config(cfg: DictConfig | Mapping[str, Any] | RunPlan) -> RunPlan:
    """The run config checked against the schema and returned as the typed, frozen
    :class:`RunPlan` (values converted where needed, e.g. ``train.epochs="3"`` -> 3), after the
    rules about combinations (:data:`PLAN_RULES`): all of it before any data is read or model
    built. The first problem is a one-line ConfigError. A plan is returned as it is."""
    if isinstance(cfg, RunPlan):
        return cfg
    raw = _resolved(cfg)
    _check_renamed(raw)
    run = parse(RunOptions, raw, group="the config")
    dataset = dataset_options(raw["dataset"])
    method_cls = METHODS.get(str(raw["method"].get("name")))
    method = method_cls.parse_options(raw["method"])
    typed = run.model_dump(exclude_unset=True)
    typed["dataset"] = dataset.model_dump(exclude_unset=True)
    typed["method"] = raw["method"] if method is None else method.model_dump(exclude_unset=True)
    fields = {name: getattr(run, name) for name in RunOptions.model_fields}
    fields.update(dataset=dataset, method=raw["method"] if method is None else method)
    plan = RunPlan.model_construct(**fields, resolved=_keep_spelling(raw, typed))
    for rule in PLAN_RULES:
        rule(plan)
    return plan


# ----------------------------------------------------------------------------- combinations
def _check_weights(run: RunOptions) -> None:
    """A known checkpoint (``weights=``) is for one model and one file: a run that asks for
    another model or another file with it is refused before any work."""
    weights = run.weights
    if weights is None or weights.name is None:
        return
    if weights.model is not None and run.model.name != weights.model:
        raise ConfigError(
            f"weights={weights.name} is for model {weights.model!r}, not {run.model.name!r}; "
            f"drop model={run.model.name} (or pick weights for {run.model.name})"
        )
    if weights.file is not None and run.pretrained != weights.file:
        raise ConfigError(
            f"weights={weights.name} loads {weights.file!r}, but pretrained={run.pretrained!r}; "
            "drop one of the two"
        )


def _check_retrain(plan: RunPlan) -> None:
    """Rewinding, from-scratch training and distillation against the method and the run
    (:func:`prune_cli.retrain.check_plan`)."""
    cls = plan.method_class
    check_plan(
        plan.finetune,
        method_name=plan.method_name,
        no_weight_reset=cls.no_weight_reset,
        train_epochs=plan.train.epochs,
        pretrained=plan.pretrained is not None and not cls.trains_from_pretrained,
        schedule=schedule_of(plan.method),
    )


def _check_gradual_window(plan: RunPlan) -> None:
    """A gradual schedule prunes while fine-tuning: its window must fit ``finetune.epochs``."""
    opts = plan.method
    if schedule_of(opts) == "gradual":
        check_window(opts.start, opts.end, plan.finetune.epochs)


#: The rules about combinations of keys, run on every plan before any work.
PLAN_RULES: tuple[Callable[[RunPlan], None], ...] = (
    _check_weights,
    _check_gradual_window,
    _check_retrain,
)


def _check_renamed(raw: Mapping[str, Any]) -> None:
    """A key an earlier release had (``train.amp``) gets one line naming its replacement."""
    for group in RENAMED_IN:
        node = raw.get(group)
        for key in node if isinstance(node, Mapping) else ():
            message = renamed_key_message(f"{group}.{key}")
            if message is not None:
                raise ConfigError(message)
