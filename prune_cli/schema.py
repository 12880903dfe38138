"""The typed schema of a whole ``prune-run`` config, checked before any work starts.

:func:`validate_config` checks every key a user types, with the mechanism of
:mod:`prune_cli.options` (one line naming the key, the value and what is valid):

- top level: ``ratio``, ``seed``, ``device``, ``deterministic``, ``pretrained``, ``resume``
  (:class:`RunOptions`);
- ``train.*`` and ``finetune.*`` (:class:`TrainOptions`, :class:`FinetuneOptions`),
  ``metrics.*``, ``cache.*``, ``export.*``, ``logger.*``
  (:class:`~prune_cli.tracking.LoggerOptions`);
- ``dataset.*`` per dataset family (the options class each one registers in
  :mod:`prune_cli.data`);
- ``method.*`` per method (the method's ``Options``; a method that declares none is taken as
  it is and checks its config itself);
- ``model.*``: ``name`` here; every other key is the model's own option, checked by the model
  factory.

It runs at the start of every job (:meth:`prune_cli.pipeline.Pipeline.run`), before the
dataset is read or the model built, so a bad job of a sweep fails alone, with ``metrics.json``
status ``failed`` and the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BeforeValidator, ConfigDict, Field

from prune_cli.data import dataset_options
from prune_cli.engine.loop import DEFAULT_EVAL_BATCH_SIZE
from prune_cli.engine.optim import OPTIMIZERS, SCHEDULE_EVERY
from prune_cli.engine.precision import MEMORY_FORMATS, PRECISIONS
from prune_cli.errors import ConfigError, one_line
from prune_cli.methods import METHODS
from prune_cli.methods.base import Ratio
from prune_cli.metrics.deploy import LATENCY_BACKENDS
from prune_cli.options import Bool, Float, Int, OneOf, Options, Text, Valid, is_number, parse
from prune_cli.renamed import RENAMED_IN, renamed_key_message
from prune_cli.tracking import LoggerOptions

DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("constant", "multistep", "cosine")
#: How the dense model's latency is had (``metrics.latency.dense``): measured once per trained
#: checkpoint and reused from the cache entry, or in every run interleaved with the final model.
DENSE_LATENCY = ("reuse", "interleaved")


class TrainOptions(Options):
    """One training stage (``train.*``; ``engine.loop.fit`` reads these keys)."""

    epochs: Int(ge=1) = 4
    batch_size: Int(ge=1) = 128
    optimizer: OneOf(*OPTIMIZERS) = "sgd"
    lr: Float(gt=0) = 0.1
    momentum: Float(ge=0, lt=1) = 0.9
    nesterov: Bool = False
    weight_decay: Float(ge=0) = 5.0e-4
    schedule: OneOf(*SCHEDULES) = "cosine"
    schedule_every: OneOf(*SCHEDULE_EVERY) = "epoch"
    milestones: list[Float(ge=0)] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: Float(gt=0) = 0.1
    warmup_epochs: Int(ge=0) = 0
    label_smoothing: Float(ge=0, lt=1) = 0.0
    #: auto: bf16 autocast where the hardware does it natively, else fp32 (engine/precision.py)
    precision: OneOf(*PRECISIONS) = "auto"
    memory_format: OneOf(*MEMORY_FORMATS) = "auto"
    eval_batch_size: Int(ge=1) = DEFAULT_EVAL_BATCH_SIZE
    select_best: Bool = True
    compile: Bool = False


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

    alpha: Float(ge=0, le=1) = 0.0
    temperature: Float(gt=0) = 4.0


class FinetuneOptions(TrainOptions):
    """Fine-tuning after pruning (``finetune.*``): as ``train``, and 0 epochs skips it.

    ``kd``: distillation from the dense reference; ``rewind``: weights (``init``,
    ``epoch:K``) or learning rate (``lr``) rewinding; ``from_scratch``: the pruned
    architecture re-initialised and trained as the dense model was (:mod:`prune_cli.retrain`).
    """

    epochs: Int(ge=0) = 2
    lr: Float(gt=0) = 0.01
    kd: KDOptions = KDOptions()
    rewind: Annotated[str, BeforeValidator(parse_rewind), Valid(REWIND_VALID)] = "none"
    from_scratch: OneOf(*FROM_SCRATCH) = "none"


class ModelOptions(Options):
    """``model.*``: the name; the other keys are the model's options (checked by its factory)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Text("a model name")


class NetScoreOptions(Options):
    p_unit: Float(gt=0) = 1.0e6
    m_unit: Float(gt=0) = 1.0e9
    count: OneOf("nonzero", "dense") = "nonzero"


class LatencyOptions(Options):
    enabled: Bool = True
    batch_sizes: list[Int(ge=1)] = Field(default_factory=lambda: [1, 64], min_length=1)
    warmup: Int(ge=0) = 3
    repeats: Int(ge=1) = 10
    #: Where latency is measured: PyTorch eager, and the exported ONNX model in ONNX Runtime.
    backends: list[OneOf(*LATENCY_BACKENDS)] = Field(
        default_factory=lambda: list(LATENCY_BACKENDS), min_length=1
    )
    compile: Bool = False
    dense: OneOf(*DENSE_LATENCY) = "reuse"


class MetricsOptions(Options):
    #: The evaluations' and latencies' precision: fp32 keeps figures comparable with published
    #: ones (auto, bf16, fp16 as for training).
    precision: OneOf(*PRECISIONS) = "fp32"
    netscore: NetScoreOptions = NetScoreOptions()
    latency: LatencyOptions = LatencyOptions()


class CacheOptions(Options):
    enabled: Bool = True
    figures: Bool = True
    dir: Text("a directory path") = "outputs/cache"


class ExportOptions(Options):
    onnx: Bool = True
    torchscript: Bool = False


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
    """The top level of ``configs/config.yaml``. ``dataset`` and ``method`` are checked per
    family / per method by :func:`validate_config`."""

    model: ModelOptions
    dataset: dict[str, Any]
    method: dict[str, Any]
    train: TrainOptions = TrainOptions()
    finetune: FinetuneOptions = FinetuneOptions()
    ratio: Ratio = 0.5
    seed: Int(ge=0, lt=2**63, valid="an integer >= 0 (below 2**63)") = 0
    device: OneOf(*DEVICES) = "auto"
    deterministic: Bool = False
    pretrained: Text("a checkpoint path") | None = None
    resume: Bool = False
    cache: CacheOptions = CacheOptions()
    metrics: MetricsOptions = MetricsOptions()
    export: ExportOptions = ExportOptions()
    logger: LoggerOptions = LoggerOptions()
    #: The arm of an experiment (configs/experiment/*_arm/*.yaml): a label for the report.
    experiment_arm: Text() | None = None
    weights: WeightsOptions | None = None


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


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """The run config checked against the schema and returned typed (values converted where
    needed, e.g. ``train.epochs="3"`` -> 3). The first problem is a one-line ConfigError."""
    raw = _resolved(cfg)
    _check_renamed(raw)
    run = parse(RunOptions, raw, group="the config")
    _check_weights(run)
    dataset = dataset_options(raw["dataset"])
    method_cls = METHODS.get(str(raw["method"].get("name")))
    method = method_cls.parse_options(raw["method"])
    typed = run.model_dump(exclude_unset=True)
    typed["dataset"] = dataset.model_dump(exclude_unset=True)
    typed["method"] = raw["method"] if method is None else method.model_dump(exclude_unset=True)
    return OmegaConf.create(_keep_spelling(raw, typed))


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


def _check_renamed(raw: Mapping[str, Any]) -> None:
    """A key an earlier release had (``train.amp``) gets one line naming its replacement."""
    for group in RENAMED_IN:
        node = raw.get(group)
        for key in node if isinstance(node, Mapping) else ():
            message = renamed_key_message(f"{group}.{key}")
            if message is not None:
                raise ConfigError(message)
