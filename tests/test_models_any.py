"""Any model: ``torchvision-<arch>``, ``timm-<arch>``, ``custom-<target>`` (prune_cli.models).

The default suite builds a cheap representative subset for real; every torchvision
classification model is built for real in the ``slow`` test and checked on the meta device
(shapes only, milliseconds per model) here.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.models import (
    MODELS,
    build_model,
    build_skeleton,
    fits,
    min_image_size,
    model_overrides,
    source_model_name,
    split_model_name,
    torchvision_archs,
    torchvision_options,
)
from prune_cli.models.base import InputSizeError
from prune_cli.models.torchvision_models import OPTIONS

HAS_TIMM = importlib.util.find_spec("timm") is not None


def _tv(arch: str, image_size: int = 32, in_channels: int = 3, **options: object) -> nn.Module:
    return build_model(
        f"torchvision-{arch}",
        num_classes=10,
        in_channels=in_channels,
        image_size=image_size,
        **options,
    )


def _skeleton(arch: str, image_size: int = 32, in_channels: int = 3) -> nn.Module:
    """The architecture on the meta device: structure checks without weights."""
    return build_skeleton(
        f"torchvision-{arch}", num_classes=10, in_channels=in_channels, image_size=image_size
    )


def _one_sgd_step(model: nn.Module, in_channels: int, image_size: int) -> None:
    """Logits of the right shape in eval and train mode; one SGD step reaches every parameter."""
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(torch.randn(2, in_channels, image_size, image_size))
    assert isinstance(logits, torch.Tensor), type(logits)  # no aux-logits namedtuple
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters outside the forward: {unused[:3]}"
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- names
def test_names_round_trip_and_overrides() -> None:
    assert source_model_name("torchvision", "densenet121") == "torchvision-densenet121"
    assert split_model_name("timm-resnet18d") == ("timm", "resnet18d")
    assert split_model_name("custom-pkg.mod.fn") == ("custom", "pkg.mod.fn")
    assert split_model_name("resnet56") is None and split_model_name("wrn16_4") is None
    assert model_overrides("resnet56") == "model=resnet56"
    assert model_overrides("torchvision-vgg16") == "model=torchvision model.arch=vgg16"
    assert model_overrides("custom-a.b") == "model=custom model._target_=a.b"
    # No registered name could be mistaken for a source model.
    assert not [n for n in MODELS.names() if split_model_name(n) is not None]


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_archs_are_every_classification_model() -> None:
    archs = torchvision_archs()
    assert list(archs) == sorted(tvm.list_models(module=tvm)) and len(archs) >= 80
    assert {"densenet121", "googlenet", "inception_v3", "maxvit_t", "vit_h_14"} <= set(archs)


@pytest.mark.parametrize(
    "arch",
    ["densenet121", "googlenet", "inception_v3", "regnet_y_400mf", "squeezenet1_0", "swin_t"],
)
def test_representative_torchvision_models_build_and_train(arch: str) -> None:
    torch.manual_seed(0)
    model = _tv(arch)
    assert model.training
    _one_sgd_step(model, 3, 32)


@pytest.mark.slow
def test_every_torchvision_model_fits_a_small_input_on_meta() -> None:
    # Shapes only (no weights, no arithmetic): which input each of the 80 takes (15 s of CPU).
    sizes = {
        arch: min_image_size(f"torchvision-{arch}", at_least=32) for arch in torchvision_archs()
    }
    assert sizes["maxvit_t"] == 221  # partition size 7 must divide every block's feature map
    assert sizes["vit_h_14"] == 42  # patch 14 must divide the size
    unusual = {a: s for a, s in sizes.items() if s != 32}
    assert unusual == {"maxvit_t": 221, "vit_h_14": 42}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_registered_torchvision_name_is_the_torchvision_source_model(name: str) -> None:
    # model=resnet18 and model=torchvision model.arch=resnet18: same modules, same initial weights.
    torch.manual_seed(0)
    registered = build_model(name, num_classes=10, in_channels=1, image_size=32)
    torch.manual_seed(0)
    source = _tv(name, in_channels=1)
    assert [(n, type(m)) for n, m in registered.named_modules()] == [
        (n, type(m)) for n, m in source.named_modules()
    ]
    a, b = registered.state_dict(), source.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_small_input_adaptations_per_family() -> None:
    googlenet = _skeleton("googlenet")
    assert googlenet.aux1 is None and not googlenet.aux_logits and not googlenet.transform_input
    assert googlenet.conv1.conv.stride == (1, 1) and isinstance(googlenet.maxpool1, nn.Identity)
    inception = _skeleton("inception_v3")
    assert inception.AuxLogits is None and inception.Conv2d_1a_3x3.conv.stride == (1, 1)
    assert isinstance(inception.maxpool1, nn.Identity)
    assert isinstance(inception.maxpool2, nn.MaxPool2d)  # later pools are the architecture
    densenet = _skeleton("densenet121", in_channels=1)
    assert densenet.features.conv0.stride == (1, 1) and densenet.features.conv0.in_channels == 1
    assert isinstance(densenet.features.pool0, nn.Identity)
    alexnet = _skeleton("alexnet")
    assert alexnet.features[0].stride == (1, 1) and isinstance(alexnet.features[2], nn.Identity)
    regnet = _skeleton("regnet_x_400mf")
    assert regnet.stem[0].stride == (1, 1)
    resnext = _skeleton("wide_resnet50_2")  # every torchvision ResNet gets the CIFAR stem
    assert resnext.conv1.kernel_size == (3, 3) and isinstance(resnext.maxpool, nn.Identity)
    # VGG is torchvision's as is: stride-1 stem, 5 max-pools, the 25,088-wide classifier.
    vgg = _skeleton("vgg11")
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    assert vgg.classifier[0].in_features == 25_088
    # Patch embeddings (kernel = stride) are never touched.
    assert _skeleton("convnext_tiny").features[0][0].stride == (4, 4)
    swin = _skeleton("swin_t", in_channels=1)
    assert swin.features[0][0].stride == (4, 4) and swin.features[0][0].in_channels == 1
    vit = _skeleton("vit_b_16")
    assert vit.conv_proj.stride == (16, 16) and vit.image_size == 32


def test_large_input_keeps_torchvision_stems() -> None:
    densenet = _skeleton("densenet121", image_size=96)
    assert densenet.features.conv0.stride == (2, 2)
    assert isinstance(densenet.features.pool0, nn.MaxPool2d)
    assert _skeleton("alexnet", image_size=224).features[0].stride == (4, 4)


def test_skeleton_has_no_weights_but_the_parameter_count() -> None:
    big = _skeleton("regnet_y_128gf")
    assert all(p.is_meta for p in big.parameters())
    assert sum(p.numel() for p in big.parameters()) > 600_000_000


def test_vit_gets_the_image_size_and_keeps_its_patch_embedding() -> None:
    # Built on the meta device: the architecture without 88M weights.
    assert fits("torchvision-vit_b_32", 32) and fits("torchvision-vit_b_16", 48)
    assert not fits("torchvision-vit_b_32", 48)
    with pytest.raises(InputSizeError) as info:
        _tv("vit_b_32", image_size=48)
    message = str(info.value)
    assert "patch size 32 must divide" in message and "\n" not in message
    assert "smallest image_size that fits: 32, next above 48: 64" in message


def test_inception_and_maxvit_minimum_sizes_are_one_line_errors() -> None:
    # Inception-v3 takes 32 px with its small-input stem, but with torchvision's stem needs 75.
    assert fits("torchvision-inception_v3", 32) and not fits("torchvision-inception_v3", 70)
    assert fits("torchvision-inception_v3", 75)
    with pytest.raises(ConfigError) as info:
        _tv("inception_v3", image_size=70)
    message = str(info.value)
    assert "does not fit input shape (2, 3, 70, 70)" in message and "\n" not in message
    assert "next above 70: 75" in message
    with pytest.raises(ConfigError) as info:
        _tv("maxvit_t", image_size=32)
    message = str(info.value)
    assert "partition size" in message and "smallest image_size that fits: 221" in message
    assert "\n" not in message


def test_torchvision_options_are_validated_against_the_constructor() -> None:
    assert {"drop_rate", "memory_efficient", "bn_size"} <= set(torchvision_options("densenet121"))
    model = _tv("densenet121", drop_rate=0.25)
    assert model.features.denseblock1.denselayer1.drop_rate == 0.25
    # Builder-only options (MobileNetV3's width_mult) are known too.
    assert {"width_mult", "reduced_tail", "dropout"} <= set(
        torchvision_options("mobilenet_v3_large")
    )
    # ConvNeXt's constructor swallows **kwargs: an unknown key is still refused.
    with pytest.raises(ConfigError) as info:
        _tv("convnext_tiny", no_such_option=1)
    message = str(info.value)
    assert "no_such_option" in message and "stochastic_depth_prob" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"unknown weights 'V9'.*IMAGENET1K_V1, DEFAULT"):
        _tv("densenet121", weights="V9")
    with pytest.raises(ConfigError, match=r"progress.*progress bar"):
        _tv("densenet121", progress=False)
    with pytest.raises(ConfigError, match=r"aux_logits.*one logits tensor"):
        _tv("googlenet", aux_logits=True)
    with pytest.raises(ConfigError, match=r"input_size.*dataset"):
        _tv("maxvit_t", input_size=(224, 224))
    # An argument the builder passes itself: torchvision's own refusal, as one line.
    with pytest.raises(ConfigError) as info:
        _tv("densenet121", growth_rate=12)
    assert "growth_rate" in str(info.value) and "\n" not in str(info.value)


def test_unknown_torchvision_arch_names_close_matches() -> None:
    with pytest.raises(ConfigError) as info:
        _tv("densnet121")
    message = str(info.value)
    assert "'densnet121'" in message and "densenet121" in message and "\n" not in message
    assert "resnet18" not in message  # close matches, not the whole list


def test_source_name_and_config_key_must_agree() -> None:
    with pytest.raises(ConfigError, match="disagrees"):
        build_model(
            "torchvision-resnet18", num_classes=10, in_channels=3, image_size=32, arch="resnet34"
        )
    model = build_model(
        "torchvision-resnet18", num_classes=10, in_channels=3, image_size=32, arch="resnet18"
    )
    assert isinstance(model, tvm.ResNet)


def test_unknown_model_names_the_sources() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("densenet121", num_classes=10, in_channels=3, image_size=32)
    message = str(info.value)
    assert "model=torchvision model.arch=NAME" in message and "\n" not in message


# ----------------------------------------------------------------------------- timm
@pytest.mark.skipif(not HAS_TIMM, reason="the optional timm extra is not installed")
def test_timm_cnn_gets_the_small_input_stem() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("timm-resnet18d", num_classes=10, in_channels=1, image_size=32)
    assert model.conv1[0].in_channels == 1 and model.conv1[0].stride == (1, 1)
    _one_sgd_step(model, 1, 32)


@pytest.mark.skipif(not HAS_TIMM, reason="the optional timm extra is not installed")
def test_timm_vit_gets_img_size_and_keeps_its_patch_embedding() -> None:
    model = build_model("timm-vit_tiny_patch16_224", num_classes=10, in_channels=3, image_size=32)
    assert model.patch_embed.proj.stride == (16, 16)
    _one_sgd_step(model, 3, 32)


@pytest.mark.skipif(not HAS_TIMM, reason="the optional timm extra is not installed")
def test_timm_errors_are_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("timm-resnt18d", num_classes=10, in_channels=3, image_size=32)
    message = str(info.value)
    assert "'resnt18d'" in message and "resnet18d" in message and "\n" not in message
    with pytest.raises(ConfigError) as info:
        build_model("timm-resnet18", num_classes=10, in_channels=3, image_size=32, foo=1)
    message = str(info.value)
    assert "foo" in message and "drop_rate" in message and "\n" not in message
    with pytest.raises(ConfigError, match="pretrained=PATH"):
        build_model("timm-resnet18", num_classes=10, in_channels=3, image_size=32, pretrained=1)


def test_timm_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError) as info:
        build_model("timm-resnet18", num_classes=10, in_channels=3, image_size=32)
    message = str(info.value)
    assert "pip install -e '.[timm]'" in message and "\n" not in message


# ----------------------------------------------------------------------------- custom
def test_custom_factory_gets_sizes_and_options() -> None:
    model = build_model(
        "custom-custom_models.small_cnn", num_classes=7, in_channels=1, image_size=48, width=4
    )
    assert model[0].in_channels == 1 and model[0].out_channels == 4
    _one_sgd_step(nn.Sequential(model, nn.Linear(7, 10)), 1, 48)
    model = build_model(
        "custom-custom_models.Residual", num_classes=10, in_channels=3, image_size=16
    )
    assert model.image_size == 16


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_package.nets.f", "no module named 'no_such_package'"),
        ("custom_models.no_such_factory", "has no attribute 'no_such_factory'"),
        ("custom_models", "expected pkg.module.factory"),
        (
            "custom_models.needs_depth",
            "cannot be called with (num_classes, in_channels, image_size",
        ),
        ("custom_models.not_a_model", "returned a str, not a torch.nn.Module"),
    ],
)
def test_custom_errors_are_one_line_naming_the_target(target: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(f"custom-{target}", num_classes=10, in_channels=3, image_size=32)
    message = str(info.value)
    assert f"model._target_={target!r}" in message and fragment in message, message
    assert "\n" not in message


def test_custom_factory_with_an_unknown_option() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(
            "custom-custom_models.small_cnn", num_classes=10, in_channels=3, image_size=32, depth=3
        )
    assert "depth" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- all 80, slow
@pytest.mark.slow
@pytest.mark.parametrize("arch", torchvision_archs())
def test_every_torchvision_model_builds_and_trains(arch: str) -> None:
    size = min_image_size(f"torchvision-{arch}", at_least=32)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _tv(arch, image_size=size)
    _one_sgd_step(model, 3, size)
