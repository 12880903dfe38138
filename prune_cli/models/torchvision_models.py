"""torchvision architectures adapted to the dataset's input, randomly initialised or with
torchvision's pretrained weights.

Two ways in, one construction:

- the registered short names ``resnet18``, ``resnet50``, ``mobilenet_v2``,
  ``mobilenet_v3_small``, ``mobilenet_v3_large``, ``shufflenet_v2_x0_5``, ``shufflenet_v2_x1_0``,
  ``squeezenet1_1``, ``efficientnet_b0``, ``mnasnet1_0`` (``configs/model/<name>.yaml``), whose
  config options are the ones in :data:`OPTIONS` and ``weights``;
- :func:`build_torchvision` for *any* name of :func:`torchvision_archs` (``model=torchvision
  model.arch=<name>``, model name ``torchvision-<name>``), whose options are ``weights`` and the
  constructor's keyword arguments (:func:`torchvision_options`). ``model=torchvision
  model.arch=resnet18`` builds the same module, with the same initial weights for a seed, as
  ``model=resnet18``.

Both use torchvision's definitions with ``num_classes`` from the dataset. Options torchvision
would silently ignore (some classes take ``**kwargs``) are rejected, and so are the ones fixed
here (:data:`FIXED_OPTIONS`).

``weights`` (default ``null``: random initialisation) takes ``DEFAULT`` or a member of the
arch's weights enum (``IMAGENET1K_V1``, or in full ``ResNet18_Weights.IMAGENET1K_V1``;
:func:`resolve_weights`). The model is built and adapted as without weights, then torchvision's
weights are loaded into it (:func:`load_torchvision_weights`), read through torchvision's own
``weights.get_state_dict`` (torch.hub: the file in ``torch.hub.get_dir()/checkpoints``, i.e.
``$TORCH_HOME/hub/checkpoints``, else downloaded there; ``weights_only=True``). The weights are
for 1,000 ImageNet classes and torchvision's stem: the classifier for another number of classes
and a replaced stem (another ``in_channels``, the ResNets' CIFAR stem) keep their fresh
initialisation, which is logged and recorded for ``metrics.json`` ``warnings``
(:mod:`.library_weights`); a stem that only loses its stride keeps its weights
(``model=resnet18 model.stem=imagenet`` keeps ResNet's 7x7 one). Weights that do not fit
otherwise (ViT's position embedding at another image size) are a one-line error, and so is a
missing file that cannot be downloaded (it names the path where torchvision looks).
GoogLeNet and Inception-v3 get ``transform_input=True`` with weights and 3 input channels, as
torchvision's builders do.

Adaptations, done on the *stem conv* (the first ``nn.Conv2d`` in module order) and the *initial
max-pool* (the first ``nn.MaxPool2d``, if it runs before the second conv):

- ``in_channels != 3``: the stem conv is replaced by one with the same hyper-parameters and the
  new number of input channels (Kaiming-normal fan-out init, torchvision's init for the stems of
  ResNet, MobileNet, EfficientNet and MNASNet).
- small inputs (``image_size <= 64``: CIFAR 32 px, FER 48 px), for a downsampling stem (stride
  > 1) that is not a patch embedding (kernel = stride, as in ViT, Swin and ConvNeXt, which are
  never touched): the stem's stride becomes 1 and the initial max-pool becomes ``nn.Identity``,
  so the last feature map keeps 2-4 px instead of 1. ResNets (``resnet*``, ``resnext*``,
  ``wide_resnet*``) get the usual CIFAR stem instead: conv1 = 3x3, stride 1, padding 1, no
  bias. Inception-v3's max-pool follows three stem convs; it is removed too, which is what lets
  it take 32 px. VGG's stem has stride 1 already: VGG is torchvision's model as is (its
  ``AdaptiveAvgPool2d(7)`` feeds the 25,088-wide classifier at any input size).

Per family (``model=torchvision``): GoogLeNet and Inception-v3 are built without auxiliary
classifiers (``aux_logits=False``: in train mode they would return a namedtuple) and with
``init_weights=True`` (torchvision's init, without its FutureWarning); ``transform_input`` keeps
its default (off). ViT gets ``image_size`` (its patch size must divide it; the patch embedding
keeps its stride), MaxViT gets ``input_size`` (its partition size 7 must divide every block's
feature map, which takes 221-224 px or more, never 32-64 px). Sizes that cannot work raise a
one-line :class:`~prune_cli.errors.ConfigError`; :func:`prune_cli.models.min_image_size` finds
the smallest that does.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from prune_cli.errors import CheckpointError, ConfigError, one_line
from prune_cli.models.base import MODELS, InputSizeError, unknown_options
from prune_cli.models.library_weights import (
    DOWNLOAD_FAILURES,
    LOCAL_FILE_HINT,
    load_library_state,
    loads_weights,
    set_weights_record,
    torch_hub_file,
    with_metadata,
)
from prune_cli.models.names import source_model_name
from prune_cli.models.traits import stem_and_classifier

SMALL_INPUT_MAX = 64

# Registered name -> constructor keyword arguments accepted as config options.
OPTIONS: dict[str, tuple[str, ...]] = {
    "resnet18": ("zero_init_residual", "stem"),
    "resnet50": ("zero_init_residual", "stem"),
    "mobilenet_v2": ("width_mult", "dropout"),
    "mobilenet_v3_small": ("width_mult", "reduced_tail", "dropout"),
    "mobilenet_v3_large": ("width_mult", "reduced_tail", "dropout"),
    "shufflenet_v2_x0_5": (),
    "shufflenet_v2_x1_0": (),
    "squeezenet1_1": ("dropout",),
    "efficientnet_b0": ("dropout", "stochastic_depth_prob"),
    "mnasnet1_0": ("dropout",),
}

#: Options of every registered name besides its own: ``weights`` (:func:`resolve_weights`).
COMMON_OPTIONS = ("weights",)

#: Constructor arguments set here, never by a config option, and why.
FIXED_OPTIONS: dict[str, str] = {
    "progress": "a download shows torchvision's progress bar",
    "num_classes": "it comes from the dataset",
    "image_size": "it comes from the dataset",
    "input_size": "it comes from the dataset",
    "aux_logits": "the training loop takes one logits tensor, so auxiliary classifiers are off",
}

#: ``stem`` of the registered ResNets: ``auto`` = the CIFAR stem for small inputs (module
#: docstring), ``cifar`` = always the CIFAR stem, ``imagenet`` = torchvision's 7x7/2 conv and
#: max-pool at any input size (4x fewer MACs than the CIFAR stem at 32 px: the offline budget of
#: ResNet-50 uses it).
STEMS = ("auto", "cifar", "imagenet")


@functools.cache
def _tvm() -> ModuleType:
    """``torchvision.models``, imported when a torchvision model is first built or listed:
    importing torchvision (its models, datasets, transforms and ops) adds ~0.5 s to the start of
    every run, and the CIFAR models of the default runs do not need it."""
    import torchvision.models

    return torchvision.models


@functools.cache
def _builder_options() -> dict[type[nn.Module], tuple[str, ...]]:
    """Keyword arguments a builder reads itself besides those of the class it returns."""
    tvm = _tvm()
    return {
        tvm.MobileNetV3: ("width_mult", "reduced_tail", "dilated"),  # _mobilenet_v3_conf
        tvm.EfficientNet: ("dropout",),  # popped with a per-variant default
    }


@functools.cache
def _defaults() -> dict[type[nn.Module], dict[str, object]]:
    """Defaults that differ from torchvision's (see the module docstring), by model class."""
    tvm = _tvm()
    return {
        tvm.GoogLeNet: {"aux_logits": False, "init_weights": True},
        tvm.Inception3: {"aux_logits": False, "init_weights": True},
    }


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (e.g. ``"features.0.0"``) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def stem_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem conv: the first ``nn.Conv2d`` in module order, with its dotted name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d to use as the stem")


def replace_stem(
    model: nn.Module,
    in_channels: int,
    *,
    kernel_size: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> nn.Conv2d:
    """Replace the stem conv by a copy with ``in_channels`` inputs and optional new geometry.

    Hyper-parameters not given are kept; the new weight is Kaiming-normal (fan-out, ReLU gain)
    and any bias is zero.
    """
    name, old = stem_conv(model)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size if kernel_size is None else kernel_size,
        stride=old.stride if stride is None else stride,
        padding=old.padding if padding is None else padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    replace_module(model, name, new)
    return new


def remove_initial_maxpool(model: nn.Module) -> bool:
    """Replace the first MaxPool2d by Identity if it runs right after the stem (before conv #2).

    Returns whether one was removed. Module order is used as the execution order, which holds for
    the sequential stems of the torchvision models adapted here.
    """
    convs_seen = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            convs_seen += 1
            if convs_seen > 1:
                return False
        elif isinstance(module, nn.MaxPool2d):
            replace_module(model, name, nn.Identity())
            return True
    return False


def is_patch_embedding(conv: nn.Conv2d) -> bool:
    """A non-overlapping patchify conv (kernel = stride > 1): ViT, Swin, ConvNeXt stems."""
    return conv.stride != (1, 1) and tuple(conv.kernel_size) == tuple(conv.stride)


def adapt_input(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """Apply the generic adaptations of the module docstring (stride-1 stem for small inputs)."""
    _, stem = stem_conv(model)
    if stem.in_channels != in_channels:
        stem = replace_stem(model, in_channels)
    downsampling = stem.stride != (1, 1) and not is_patch_embedding(stem)
    if image_size <= SMALL_INPUT_MAX and downsampling:
        stem.stride = (1, 1)
        remove_initial_maxpool(model)
    return model


def adapt_resnet(
    model: nn.Module, in_channels: int, image_size: int, stem: str = "auto"
) -> nn.Module:
    """torchvision ResNet: the CIFAR stem (3x3/1, no max-pool) for small inputs (``stem=auto``),
    always (``cifar``) or never (``imagenet``: torchvision's stem, only ``in_channels`` adapted)."""
    if stem == "cifar" or (stem == "auto" and image_size <= SMALL_INPUT_MAX):
        replace_stem(model, in_channels, kernel_size=3, stride=1, padding=1)
        remove_initial_maxpool(model)
        return model
    _, conv = stem_conv(model)
    if conv.in_channels != in_channels:
        replace_stem(model, in_channels)
    return model


def adapt_inception(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """Inception-v3: the generic adaptation, plus its first max-pool (after three stem convs)."""
    adapt_input(model, in_channels, image_size)
    if image_size <= SMALL_INPUT_MAX:
        model.maxpool1 = nn.Identity()
    return model


# ----------------------------------------------------------------------------- any model
@functools.cache
def torchvision_archs() -> tuple[str, ...]:
    """Every torchvision classification model name (``torchvision.models.list_models``)."""
    tvm = _tvm()
    return tuple(sorted(tvm.list_models(module=tvm)))


def _check_arch(arch: str) -> Callable[..., nn.Module]:
    archs = torchvision_archs()
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. densenet121, resnet50"
        raise ConfigError(
            f"unknown torchvision model {arch!r}; {hint} (one of the {len(archs)} names of "
            "torchvision.models.list_models(module=torchvision.models), listed in docs/models.md)"
        )
    return _tvm().get_model_builder(arch)


def model_class(arch: str) -> type[nn.Module]:
    """The class torchvision's builder for ``arch`` returns (from its return annotation)."""
    return typing.get_type_hints(_check_arch(arch)).get("return", nn.Module)


def _settable(annotation: object) -> bool:
    """Can a config value (number, string, bool, list) be this argument? Not for layer types,
    callables or torchvision's config objects."""
    text = str(annotation)
    return not any(s in text for s in ("Callable", "type[", "Module", "torchvision."))


def torchvision_options(arch: str) -> list[str]:
    """The config options of ``model=torchvision model.arch=<arch>``: ``weights``
    (:func:`resolve_weights`), the keyword arguments of the model class's constructor that a
    config value can set, the ones its builder reads, minus :data:`FIXED_OPTIONS`. (An argument
    the builder itself passes, such as ``growth_rate`` of ``densenet121``, is refused by
    torchvision when given, as a one-line error.)"""
    cls = model_class(arch)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
        and p.kind in keyword
        and p.default is not inspect.Parameter.empty
        and _settable(p.annotation)
    ]
    names += [*_builder_options().get(cls, ()), "weights"]
    return sorted(set(names) - set(FIXED_OPTIONS))


def _check_torchvision_options(name: str, options: dict[str, object], valid: list[str]) -> None:
    for key in sorted(options):
        if key in FIXED_OPTIONS:
            raise ConfigError(
                f"model {name!r}: option {key!r} is not supported ({FIXED_OPTIONS[key]})"
            )
    unknown = set(options) - set(valid)
    if unknown:
        raise unknown_options(name, unknown, valid)


def _construct(
    name: str,
    builder: Callable[..., nn.Module],
    kwargs: dict[str, object],
    options: dict[str, object],
) -> nn.Module:
    try:
        return builder(weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if options:
            raise ConfigError(f"model {name!r}: bad option value(s) {options}: {reason}") from None
        raise InputSizeError(f"model {name!r} cannot be built for this input: {reason}") from None


def build_torchvision(
    arch: str, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    """torchvision's ``arch`` (any name of :func:`torchvision_archs`), adapted to
    ``(in_channels, image_size)`` as the module docstring says, randomly initialised or, with
    ``weights=<name>``, with torchvision's pretrained weights (:func:`load_torchvision_weights`);
    the other ``options`` are passed to its constructor (:func:`torchvision_options`)."""
    name = source_model_name("torchvision", arch)
    return _build(name, arch, num_classes, in_channels, image_size, options)


def _build(
    name: str,
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    options: dict[str, object],
    stem: str = "auto",
) -> nn.Module:
    """:func:`build_torchvision`, with ``name`` (registered or ``torchvision-<arch>``) in errors;
    ``stem`` is the registered ResNets' option (:data:`STEMS`)."""
    builder = _check_arch(arch)
    cls = model_class(arch)
    options = dict(options)
    weights = resolve_weights(name, arch, options.pop("weights", None))
    _check_torchvision_options(name, options, torchvision_options(arch))
    kwargs: dict[str, object] = {"num_classes": num_classes, **_defaults().get(cls, {}), **options}
    tvm = _tvm()
    if weights is not None and cls in (tvm.GoogLeNet, tvm.Inception3) and in_channels == 3:
        # As torchvision's builders do with weights: those weights expect its input transform
        # (of RGB channels; another channel count gets a fresh stem anyway).
        kwargs.setdefault("transform_input", True)
    if cls is tvm.VisionTransformer:
        patch = re.search(r"_(\d+)$", arch)  # vit_{b,l,h}_<patch size>
        if patch and image_size % int(patch.group(1)):
            raise InputSizeError(
                f"model {name!r} does not fit image_size {image_size}: its patch size "
                f"{patch.group(1)} must divide the image size"
            )
        kwargs["image_size"] = image_size  # (the constructor asserts the same)
    if cls is tvm.MaxVit:
        kwargs["input_size"] = (image_size, image_size)
    model = _construct(name, builder, kwargs, options)
    if cls is tvm.ResNet:
        adapt_resnet(model, in_channels, image_size, stem)
    elif cls is tvm.Inception3:
        adapt_inception(model, in_channels, image_size)
    else:
        adapt_input(model, in_channels, image_size)
    if weights is not None and loads_weights():
        load_torchvision_weights(model, name, weights, num_classes)
    return model


# ----------------------------------------------------------------------------- weights
def resolve_weights(name: str, arch: str, value: object) -> Any:
    """The ``torchvision.models.WeightsEnum`` member ``value`` names for ``arch``: ``DEFAULT``
    or a member name of the arch's weights enum (``IMAGENET1K_V1``), alone or in full
    (``ResNet18_Weights.IMAGENET1K_V1``); None for ``None`` (random init). Anything else is a
    one-line :class:`ConfigError` listing the arch's choices."""
    if value is None:
        return None
    enum = _tvm().get_model_weights(arch)
    key = value.removeprefix(f"{enum.__name__}.") if isinstance(value, str) else None
    if key not in enum.__members__:
        raise ConfigError(
            f"model {name!r}: unknown weights {value!r}; choose one of: "
            f"{', '.join(enum.__members__)} (also as {enum.__name__}.<name>), or null for "
            "random initialisation"
        )
    return enum[key]


def load_torchvision_weights(model: nn.Module, name: str, weights: Any, num_classes: int) -> None:
    """Load torchvision's ``weights`` into the adapted ``model`` (module docstring): the layers
    that do not fit any more (the classifier for another ``num_classes``, an adapted stem) keep
    their fresh initialisation, which is logged and recorded on the model
    (:func:`~prune_cli.models.library_weights.set_weights_record`)."""
    state, file = fetch_torchvision_weights(name, weights)
    try:
        loaded = load_library_state(
            model,
            _fit_builder_layout(model, state),
            replaceable=stem_and_classifier(model, num_classes),
            source=f"torchvision weights {weights}",
            name=name,
        )
    except ConfigError as exc:
        min_size = weights.meta.get("min_size", (1, 1))
        if max(min_size) <= 1:
            raise
        # ViT's position embedding: its weights are for one image size, which min_size gives.
        raise ConfigError(f"{exc}; the weights' min_size is {min_size}") from None
    set_weights_record(
        model,
        {"option": f"model.weights={weights}", "weights": str(weights), "file": str(file)} | loaded,
    )


def fetch_torchvision_weights(name: str, weights: Any) -> tuple[dict[str, Any], Path]:
    """The state dict of ``weights`` and its file, through torchvision's own
    ``weights.get_state_dict`` with the arguments its builders use (``check_hash=True``: a
    download's SHA-256 must start with the hash in the file name; torch.hub does not check a
    file already in its cache) and ``weights_only=True`` (no code is executed). The file is
    :func:`~prune_cli.models.library_weights.torch_hub_file`: read from there without network if
    present, else downloaded into it; a failed download, or a cached file that cannot be read, is
    a one-line :class:`CheckpointError` naming that path."""
    file = torch_hub_file(weights.url)
    cached = file.is_file()
    try:
        state = weights.get_state_dict(
            progress=True, check_hash=True, weights_only=True, map_location="cpu"
        )
    except DOWNLOAD_FAILURES as exc:
        raise CheckpointError(
            f"model {name!r}: torchvision weights {weights} are not in its cache and could not "
            f"be downloaded from {weights.url} ({one_line(exc)}); torchvision looks for it at "
            f"{file} (torch.hub.get_dir()/checkpoints, under TORCH_HOME): put the file from that "
            f"URL there, {LOCAL_FILE_HINT}"
        ) from None
    except Exception as exc:  # torch.load of a truncated or foreign file; a download's hash
        if not cached and "hash" not in str(exc):
            raise
        raise CheckpointError(
            f"model {name!r}: torchvision weights {weights} at {file} cannot be used "
            f"({one_line(exc)}); delete that file to download it again from {weights.url}, or "
            "put the right file there"
        ) from None
    return state, file


def _fit_builder_layout(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` in the layout of ``model`` as built here, as torchvision's builders load it:
    without the tensors of heads built off here (GoogLeNet's ``aux1``/``aux2`` and
    Inception-v3's ``AuxLogits``, ``None`` with ``aux_logits=False``: the builders load them,
    then drop them), and with DenseNet's old key names (``denselayer1.norm.1.weight``, in its
    weights files) renamed as its builder renames them (``denselayer1.norm1.weight``)."""
    absent = {
        key.split(".", 1)[0] for key in state if getattr(model, key.split(".", 1)[0], 0) is None
    }
    if absent:
        state = with_metadata(
            state, {k: v for k, v in state.items() if k.split(".", 1)[0] not in absent}
        )
    if isinstance(model, _tvm().DenseNet):
        renamed = {_DENSENET_OLD_KEY.sub(r"\1\2.", k): v for k, v in state.items()}
        state = with_metadata(state, renamed)
    return state


#: ``denselayer<i>.norm.1.`` -> ``denselayer<i>.norm1.`` (and ``conv.2.`` -> ``conv2.``...).
_DENSENET_OLD_KEY = re.compile(r"(denselayer\d+\.(?:norm|conv))\.([12])\.")


# ----------------------------------------------------------------------------- registered names
def _register(name: str) -> None:
    def factory(
        num_classes: int, in_channels: int, image_size: int, **options: object
    ) -> nn.Module:
        valid = (*OPTIONS[name], *COMMON_OPTIONS)
        unknown = set(options) - set(valid)
        if unknown:
            raise unknown_options(name, unknown, valid)
        stem = str(options.pop("stem", "auto"))
        if stem not in STEMS:
            raise ConfigError(
                f"model {name!r}: unknown stem {stem!r}; choose one of: {', '.join(STEMS)}"
            )
        return _build(name, name, num_classes, in_channels, image_size, options, stem)

    factory.__name__ = name
    factory.__doc__ = f"torchvision {name} adapted to the input (weights: torchvision's)."
    MODELS.register(name)(factory)


for _name in OPTIONS:
    _register(_name)
