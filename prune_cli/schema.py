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
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, Field, SerializeAsAny

from prune_cli.data import DatasetOptions, dataset_options
from prune_cli.engine.precision import PRECISIONS
from prune_cli.engine.settings import TrainOptions
from prune_cli.errors import ConfigError, one_line
from prune_cli.methods import METHODS, Method, MethodOptions
from prune_cli.methods.base import Ratio, schedule_of
from prune_cli.metrics.deploy import LATENCY_BACKENDS
from prune_cli.options import Bool, Float, Int, OneOf, Options, Text, is_number, parse
from prune_cli.pruning.schedules import check_window
from prune_cli.retrain import FinetuneOptions, check_plan
from prune_cli.tracking import LoggerOptions

DEVICES = ("auto", "cpu", "cuda")
#: How the dense model's latency is had (``metrics.latency.dense``): measured once per trained
#: checkpoint and reused from the cache entry, or in every run interleaved with the final model.
DENSE_LATENCY = ("reuse", "interleaved")


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


#: Keys of earlier releases -> what replaced them.
RENAMED_KEYS = {
    "amp": "precision (auto | fp32 | bf16 | fp16)",
    "channels_last": "memory_format (auto | channels_last | contiguous)",
}


def _check_renamed(raw: Mapping[str, Any]) -> None:
    """A key an earlier release had (``train.amp``) gets one line naming its replacement."""
    for group in ("train", "finetune"):
        node = raw.get(group)
        for key, replacement in RENAMED_KEYS.items():
            if isinstance(node, Mapping) and key in node:
                raise ConfigError(f"{group}.{key} was replaced by {group}.{replacement}")
