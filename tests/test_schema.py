"""The typed config schema (prune_cli.schema, prune_cli.options): every shipped config is
valid, bad values are one line naming the key, method options go through the same mechanism,
and a seeded fuzz test over the schema's keys."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import random
from collections.abc import Iterator
from typing import Any, get_origin

import pytest
import torch
from cli_helpers import composed
from omegaconf import OmegaConf
from pydantic import ValidationError

from prune_cli.cli import CONFIG_DIR, group_choices
from prune_cli.data import DATASET_OPTIONS
from prune_cli.defaults import group_defaults
from prune_cli.engine.optim import build_optimizer, build_scheduler
from prune_cli.engine.settings import FitSettings, TrainOptions, train_options
from prune_cli.errors import ConfigError
from prune_cli.methods import METHODS, Method, MethodOptions, build_method
from prune_cli.metrics.report import netscore_units
from prune_cli.options import Bool, Float, Int, OneOf, Options, describe, parse
from prune_cli.pruning.search import GAConfig, PSOConfig, SAConfig
from prune_cli.schema import FinetuneOptions, RunOptions, RunPlan, validate_config
from prune_cli.tracking import LoggerOptions

#: Methods whose options are declared (the others keep their own checks for now).
TYPED_METHODS = sorted(n for n in METHODS.names() if METHODS.get(n).Options is not None)


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return composed()


def one_line_error(cfg: Any) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    return message


# ----------------------------------------------------------------------------- config files
def test_converted_methods_are_the_brief() -> None:
    assert {"none", "magnitude", "random", "optimized"} <= set(TYPED_METHODS)


@pytest.mark.parametrize("method", group_choices("method"))
def test_every_method_config_validates(method: str) -> None:
    plan = validate_config(composed(f"method={method}"))
    if method in TYPED_METHODS:  # its options were checked and typed
        assert isinstance(plan.method, METHODS.get(method).Options)
        assert isinstance(plan.method, MethodOptions)


def _experiments() -> list[str]:
    root = CONFIG_DIR / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_config_validates(experiment: str) -> None:
    if "/" in experiment:  # an arm of an experiment: selected inside its group
        group, arm = experiment.rsplit("/", 1)
        overrides = [f"+experiment/{group}={arm}"]
    else:
        overrides = [f"+experiment={experiment}"]
    cfg = validate_config(composed(*overrides))
    assert cfg.train.epochs >= 1


@pytest.mark.parametrize(
    "group", ["dataset", "model", "train", "finetune"], ids=lambda g: f"every-{g}"
)
def test_every_group_config_validates(group: str) -> None:
    # the generic model sources have mandatory keys (model.arch, model._target_): give them one
    mandatory = {
        "torchvision": ["model.arch=resnet18"],
        "timm": ["model.arch=resnet18"],
        "custom": ["model._target_=pkg.mod.factory"],
    }
    for name in group_choices(group):
        extra = mandatory.get(name, []) if group == "model" else []
        validate_config(composed(f"{group}={name}", *extra))


def test_every_dataset_family_declares_its_keys() -> None:
    for name in group_choices("dataset"):
        keys = set(OmegaConf.load(CONFIG_DIR / "dataset" / f"{name}.yaml"))
        assert keys <= set(DATASET_OPTIONS[name].model_fields), name
    assert "on_bad_file" in DATASET_OPTIONS["imagenet"].model_fields
    assert "on_bad_file" not in DATASET_OPTIONS["shapes"].model_fields  # nothing read


def test_config_keys_are_all_in_the_schema(base: dict[str, Any]) -> None:
    top = set(base) - {"model", "dataset", "method"}
    assert top <= set(RunOptions.model_fields)


# ----------------------------------------------------------------------------- messages
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("train", "epochs", -3), "train.epochs -3 is out of range; valid: an integer >= 1"),
        (("train", "epochs", 2.5), "train.epochs 2.5 is not an integer; valid: an integer >= 1"),
        (("train", "lr", "fast"), "train.lr 'fast' is not a number; valid: a number > 0"),
        (("train", "precision", "half"), "unknown train.precision 'half'; choose one of: auto, fp32, bf16, fp16"),  # noqa: E501
        (("finetune", "memory_format", "nhwc"), "unknown finetune.memory_format 'nhwc'; choose one of: auto, channels_last, contiguous"),  # noqa: E501
        (("train", "amp", True), "train.amp was replaced by train.precision (auto | fp32 | bf16 | fp16)"),  # noqa: E501
        (("metrics", "precision", "int8"), "unknown metrics.precision 'int8'; choose one of: auto, fp32, bf16, fp16"),  # noqa: E501
        (("finetune", "epochs", -1), "finetune.epochs -1 is out of range; valid: an integer >= 0"),
        (("train", "momentum", 1.0), "train.momentum 1.0 is out of range; valid: a number in [0, 1)"),  # noqa: E501
        (("train", "schedule", "step"), "unknown train.schedule 'step'; choose one of: constant, multistep, cosine"),  # noqa: E501
        (("train", "milestones", [0.5, -1]), "train.milestones[1] -1 is out of range; valid: a number >= 0"),  # noqa: E501
        ((None, "ratio", 1.5), "ratio 1.5 is out of range; valid: 0 <= ratio < 1"),
        ((None, "seed", "x"), "seed 'x' is not an integer"),
        ((None, "device", "tpu"), "unknown device 'tpu'; choose one of: auto, cpu, cuda"),
        ((None, "pretrained", ""), "pretrained '' is empty; valid: a checkpoint path, or null"),
        (("metrics", "latency", {"batch_sizes": [0]}), "metrics.latency.batch_sizes[0] 0 is out of range"),  # noqa: E501
        (("dataset", "val_size", 1.5), "dataset.val_size 1.5 is out of range; valid: an integer count >= 0 or a fraction in [0, 1)"),  # noqa: E501
        (("dataset", "crop_padding", 33), "dataset.crop_padding 33 is out of range"),
        (("dataset", "std", [1, 0, 1]), "dataset.std [1.0, 0.0, 1.0] is out of range"),
        (("dataset", "mean", [0.5, 0.5]), "dataset.mean [0.5, 0.5] has 2 values; valid: a number or a list of 3 numbers"),  # noqa: E501
        (("method", "scope", "all"), "unknown method.scope 'all' for method 'magnitude'; choose one of: global, layerwise"),  # noqa: E501
        (("cache", "enabled", 1), "cache.enabled 1 is not true or false"),
        (("cache", "figures", "no"), "cache.figures 'no' is not true or false; valid: true, false"),
        (("train", "compile", 1), "train.compile 1 is not true or false; valid: true, false"),
        (("finetune", "compile", "yes"), "finetune.compile 'yes' is not true or false"),
        (("metrics", "latency", {"compile": "on"}), "metrics.latency.compile 'on' is not true or false"),  # noqa: E501
        (("metrics", "latency", {"dense": "cache"}), "unknown metrics.latency.dense 'cache'; choose one of: reuse, interleaved"),  # noqa: E501
    ],
)  # fmt: skip
def test_bad_values_are_one_line_naming_key_value_and_valid(
    base: dict[str, Any], override: tuple[str | None, str, Any], message: str
) -> None:
    cfg = copy.deepcopy(base)
    group, key, value = override
    node = cfg if group is None else cfg[group]
    node[key] = {**node[key], **value} if isinstance(value, dict) else value  # as Hydra merges
    assert message in one_line_error(cfg)


def test_unknown_keys_name_the_valid_keys(base: dict[str, Any]) -> None:
    cfg = copy.deepcopy(base)
    cfg["train"]["epoch"] = 3
    msg = one_line_error(cfg)
    assert msg.startswith("unknown key train.epoch; valid keys of train: batch_size, compile")
    cfg = copy.deepcopy(base)
    cfg["dataset"]["on_bad_file"] = "skip"  # shapes reads no file
    assert "unknown key dataset.on_bad_file; valid keys of dataset shapes:" in one_line_error(cfg)
    cfg = copy.deepcopy(base)
    cfg["tags"] = ["a"]
    assert "unknown key tags; valid keys of the config: cache, dataset" in one_line_error(cfg)
    cfg = copy.deepcopy(base)
    cfg["model"]["depth_multiplier"] = 2  # model options are free-form: the factory checks
    validate_config(cfg)


def test_typed_values_are_converted_and_spelling_kept(base: dict[str, Any]) -> None:
    cfg = copy.deepcopy(base)
    cfg["train"]["epochs"] = "3"  # a quoted command-line value
    cfg["train"]["weight_decay"] = 0  # an int where a float is meant stays 0 (cache key)
    cfg["train"]["lr"] = 1
    cfg["dataset"]["val_size"] = "100"
    plan = validate_config(cfg)
    assert plan.train.epochs == 3 and isinstance(plan.train.epochs, int)
    assert plan.train.weight_decay == 0.0 and isinstance(plan.train.weight_decay, float)
    assert plan.dataset.val_size == 100
    # what the run records (and the cache key hashes) keeps the spelling where nothing changed
    assert plan.resolved["train"]["epochs"] == 3
    weight_decay = plan.resolved["train"]["weight_decay"]
    assert weight_decay == 0 and isinstance(weight_decay, int)
    # a valid config comes back as it was
    assert validate_config(base).resolved == base


def test_the_plan_is_typed_and_frozen(base: dict[str, Any]) -> None:
    plan = validate_config(base)
    assert plan.method_name == "magnitude" and plan.method_ratio == 0.5
    assert type(plan.dataset).__name__ == "ShapesOptions" and plan.dataset.train_size == 5000
    assert plan.model_options == {"shortcut": "B"}
    with pytest.raises(ValidationError):
        plan.seed = 3  # type: ignore[misc]
    carved = plan.with_val_size(100)
    assert carved.dataset.val_size == 100 and carved.resolved["dataset"]["val_size"] == 100
    assert plan.dataset.val_size == 0 and plan.resolved["dataset"]["val_size"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=l1_filter", "+method.layer_ratios={conv1: 0.5}", "method.scope=global"],
         "method.layer_ratios needs method.scope=layerwise, not global"),
        (["method=l1_filter", "+method.layer_ratios={conv1: 0.5}", "method.macs_reduction=2"],
         "method.layer_ratios and method.macs_reduction both set the ratios"),
        (["method.schedule=gradual", "finetune.epochs=0"], "finetune.epochs 0 is invalid"),
        (["method=soft_sharing", "finetune.rewind=init"], "finetune.rewind=init is unsound"),
        (["weights=resnet20_cifar10_akamaster", "model=resnet56"], "is for model 'resnet20'"),
    ],
)  # fmt: skip
def test_combinations_are_refused_with_the_config(overrides: list[str], message: str) -> None:
    """Rules about combinations of keys run with the schema: before data or a model."""
    assert message in one_line_error(composed(*overrides))


def test_interpolation_errors_are_one_line(base: dict[str, Any]) -> None:
    cfg = OmegaConf.create({**base, "ratio": "${nope}"})
    assert one_line_error(cfg).startswith("cannot resolve ratio: Interpolation key 'nope'")


# ----------------------------------------------------------------------------- methods
def test_method_options_are_typed_and_checked() -> None:
    m = build_method({"name": "optimized", "population": "8", "ga": {"elitism": 1}}, 0.5)
    assert m.opts.population == 8 and m.opts.ga.elitism == 1 and m.opts.sa.t0 == 1.0
    bad = [
        ({"ga": {"crossover_prob": 1.5}}, "method.ga.crossover_prob 1.5 is out of range for "
         "method 'optimized'; valid: a number in [0, 1]"),
        ({"ga": {"elitsm": 1}}, "unknown key method.ga.elitsm for method 'optimized'; valid "
         "keys: crossover_prob, elitism"),
        ({"search": "pso", "population": 0}, "method.population 0 is out of range"),
        ({"population": 1}, "method.population 1 is out of range for search 'ga'"),
        ({"layers": "conv1"}, "method.layers 'conv1' is not a list"),
        ({"ratio": 1.0}, "method.ratio 1.0 is out of range for method 'optimized'; valid: 0 <= "
         "ratio < 1"),
    ]  # fmt: skip
    for options, message in bad:
        with pytest.raises(ConfigError) as err:
            build_method({"name": "optimized", **options}, 0.5)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_method_is_named_once_by_its_registration() -> None:
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.name == name and "name" not in vars(cls).get("__annotations__", {})
        source = inspect.getsource(cls)
        assert f'name = "{name}"' not in source, name


def test_a_method_without_declared_options_keeps_its_config() -> None:
    class Legacy(Method):
        name = "legacy"

    m = Legacy({"name": "legacy", "anything": [1, 2]}, 0.5)
    assert m.opts is None and m.cfg["anything"] == [1, 2]
    assert Legacy.parse_options({"whatever": 1}) is None


def test_declaring_options_in_a_method() -> None:
    class Demo(Method):
        name = "demo"

        class Options(MethodOptions):
            rate: Float(ge=0, lt=1) = 0.5
            steps: Int(ge=1) = 3
            norm: OneOf("l1", "l2") = "l1"
            signed: Bool = False

    m = Demo({"name": "demo", "steps": 5}, 0.5)
    assert (m.opts.rate, m.opts.steps, m.opts.norm, m.opts.signed) == (0.5, 5, "l1", False)
    with pytest.raises(ConfigError, match=r"^unknown method.norm 'l3' for method 'demo'; "):
        Demo({"norm": "l3"}, 0.5)


def test_describe_reads_like_the_valid_part() -> None:
    assert describe(Int(ge=1)) == "an integer >= 1"
    assert describe(Float(gt=0, le=1)) == "a number in (0, 1]"
    assert describe(list[Int(ge=0)]) == "a list of integers >= 0"
    assert describe(OneOf("a", "b") | None) == "one of: a, b, or null"

    class Group(Options):
        x: Int() = 1

    with pytest.raises(ConfigError, match=r"^group 5 is not a group of keys; valid keys: x$"):
        parse(Group, 5, "group.")


# ----------------------------------------------------------------------------- fuzz
def _leaves(model: type[Options], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, annotation)`` of every key of ``model``, nested groups included."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Options):
            yield from _leaves(ann, (*prefix, name))
        else:
            yield (*prefix, name), ann


def schema_keys(cfg: dict[str, Any]) -> list[tuple[str, ...]]:
    """Every key the fuzz may set: the run's own, its dataset family's, its method's."""
    keys = [p for p, _ in _leaves(RunOptions) if p[0] not in ("model", "dataset", "method")]
    keys += [("dataset", *p) for p, _ in _leaves(DATASET_OPTIONS[cfg["dataset"]["name"]])]
    method = METHODS.get(cfg["method"]["name"]).Options
    if method is not None:
        keys += [("method", *p) for p, _ in _leaves(method)]
    keys += [("model", "name")]
    return [k for k in keys if k[-1] != "name" or k[0] == "model"]


BAD_VALUES: list[Any] = [
    "", " ", "fast", "3", "2.5", "true", "null", "-1", True, False, None, 0, 1, -1, -3, 2.5,
    -0.5, 0.5, 1.0, 1e-12, 10**30, -(10**30), 1e308, -1e308, math.inf, -math.inf, math.nan,
    [], [1, 2], [0.5, -1], ["a"], [[1]], {"a": 1}, {}, "global", "cosine", "skip", "nonzero",
]  # fmt: skip


def _set(cfg: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = cfg
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[path[-1]] = value


def _would_run(plan: RunPlan) -> None:
    """The parts of a run that take these values without data: optimizer, LR schedule,
    NetScore units, the method."""
    model = torch.nn.Linear(2, 2)
    for options in (plan.train, plan.finetune):
        optimizer = build_optimizer(model, options)
        sched = build_scheduler(optimizer, options, options.epochs)
        for _ in range(min(options.epochs, 3)):
            optimizer.step()
            sched.step()
    netscore_units(plan.metrics.netscore.model_dump())
    build_method(plan)


@pytest.mark.parametrize(
    "overrides", [(), ("dataset=imagenet",), ("dataset=ferplus", "method=optimized")]
)
def test_fuzz_overrides_validate_or_fail_in_one_line_naming_the_key(overrides: tuple) -> None:
    rng = random.Random(16)
    start = composed(*overrides)
    keys = schema_keys(start)
    accepted = rejected = 0
    for _ in range(500):
        cfg = copy.deepcopy(start)
        path = rng.choice(keys)
        value = rng.choice(BAD_VALUES)
        if rng.random() < 0.2 and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # as quoted on the command line
        _set(cfg, path, copy.deepcopy(value))
        key = ".".join(path)
        try:
            typed = validate_config(cfg)
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and len(message) < 600, message
            # the key it names: the one set, or (a cross-key rule) a key of the same group
            assert key in message or ".".join(path[:-1]) in message, (key, value, message)
            rejected += 1
            continue
        accepted += 1
        # Typed values are stable and usable.
        assert validate_config(typed.resolved).resolved == typed.resolved, (key, value)
        _would_run(typed)
    # both outcomes are common (each new choice key lowers the share of accepted values a little)
    assert accepted > 40 and rejected > 200, (accepted, rejected)


def test_fuzz_lists_where_scalars_are_expected_and_back(base: dict[str, Any]) -> None:
    rng = random.Random(0)
    for path in schema_keys(base):
        ann = dict(_leaves(RunOptions)).get(path)
        is_list = ann is not None and get_origin(ann) is list
        cfg = copy.deepcopy(base)
        _set(cfg, path, 7 if is_list else [rng.random()])
        with pytest.raises(ConfigError) as err:
            validate_config(cfg)
        assert ".".join(path) in str(err.value)


# ----------------------------------------------------------------------------- defaults
def _options_class(annotation: Any) -> type[Options] | None:
    """The options class a field's annotation holds (through Optional / Annotated), if any."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, Options) else None
    for arg in getattr(annotation, "__args__", ()):
        found = _options_class(arg)
        if found is not None:
            return found
    return None


def _second_defaults(options: type[Options], node: dict[str, Any], where: str) -> list[str]:
    """Keys of a YAML node whose options field is missing or declares a default of its own."""
    problems = []
    for key, value in node.items():
        field = options.model_fields.get(key)
        if field is None:
            problems.append(f"{where}{key}: no field of {options.__name__}")
            continue
        if not field.is_required():
            problems.append(f"{where}{key}: {options.__name__} declares a default too")
        inner = _options_class(field.annotation)
        if inner is not None and isinstance(value, dict):
            problems += _second_defaults(inner, value, f"{where}{key}.")
    return problems


def _group_nodes() -> Iterator[tuple[str, type[Options], dict[str, Any]]]:
    """Every shipped group file with the options class that types it."""
    for name in group_choices("train"):
        yield f"train/{name}", TrainOptions, group_defaults("train", name)
    for name in group_choices("finetune"):
        yield f"finetune/{name}", FinetuneOptions, group_defaults("finetune", name)
    for name in group_choices("dataset"):
        yield f"dataset/{name}", DATASET_OPTIONS[name], group_defaults("dataset", name)
    for name in group_choices("method"):
        node = group_defaults("method", name, ratio=0.5)
        yield f"method/{name}", METHODS.get(node["name"]).Options, node
    for name in group_choices("logger"):
        node = group_defaults("logger", name)[name]
        yield f"logger/{name}", _options_class(LoggerOptions.model_fields[name].annotation), node
    top = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"), resolve=False)
    yield "config", RunOptions, {k: v for k, v in top.items() if k not in ("defaults", "hydra")}


@pytest.mark.parametrize("group", [g for g, _, _ in _group_nodes()])
def test_every_key_has_one_default_the_yaml_one(group: str) -> None:
    """The defaults are those of the YAML files the user sees; the options type and bound each
    key and declare no default of their own."""
    _, options, node = next(item for item in _group_nodes() if item[0] == group)
    assert node or not options.model_fields, group
    assert _second_defaults(options, node, f"{group}: ") == []


def test_the_engine_has_no_defaults_of_its_own() -> None:
    """Training settings and the searches' settings come from the options, never from a
    default the engine keeps apart from the YAML files."""
    assert all(f.is_required() for f in TrainOptions.model_fields.values())
    for cls in (FitSettings, GAConfig, PSOConfig, SAConfig):
        defaults = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
        assert defaults == [], cls.__name__
    # a training node given in part takes the rest from configs/train/default.yaml
    assert train_options({"lr": 0.5}).model_dump() == {
        **group_defaults("train", "default"),
        "lr": 0.5,
    }


def test_a_key_of_an_earlier_release_names_its_replacement() -> None:
    from prune_cli.renamed import renamed_key_message

    assert renamed_key_message("train.amp") == (
        "train.amp was replaced by train.precision (auto | fp32 | bf16 | fp16)"
    )
    assert renamed_key_message("finetune.channels_last").startswith(
        "finetune.channels_last was replaced by finetune.memory_format"
    )
    assert renamed_key_message("train.lr") is None and renamed_key_message("amp") is None
