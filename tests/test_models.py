"""Tests of the model registry and architectures (CPU, tiny batches)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.models import MODELS, build_model
from prune_cli.models.cifar_resnet import ZeroPadShortcut

ALL_MODELS = MODELS.names()
# (in_channels, image_size, num_classes) of the datasets the models are used with.
CIFAR = (3, 32, 10)
FER = (1, 48, 7)
IMAGENET = (3, 224, 1000)


def _build(name: str, data: tuple[int, int, int], **kwargs: object) -> nn.Module:
    in_channels, image_size, num_classes = data
    return build_model(
        name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
    )


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_every_documented_model() -> None:
    expected = {
        *("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
        *("resnet18", "resnet50"),
        *("vgg11", "vgg16", "vgg19", "mobilenet_v2", "mobilenet_v3_small"),
        *("mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "squeezenet1_1"),
        *("efficientnet_b0", "mnasnet1_0", "wrn16_4", "wrn16_8", "wrn28_10", "wrn40_4"),
    }
    assert set(ALL_MODELS) == expected


def _eval_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_cifar_logits_and_one_sgd_step(name: str) -> None:
    torch.manual_seed(0)
    # Stochastic depth can drop a whole block for both samples of a batch of 2 (no gradient).
    options = {"stochastic_depth_prob": 0.0} if name == "efficientnet_b0" else {}
    model = _build(name, CIFAR, **options)
    assert model.training, "build_model must return the model in train mode"
    out = _eval_logits(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()

    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    # Every parameter tensor reaches the loss, so every one gets a gradient and moves.
    assert changed == len(before)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fer_logits(name: str) -> None:
    out = _eval_logits(_build(name, FER), torch.randn(2, 1, 48, 48))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_imagenet_logits(name: str) -> None:
    assert _eval_logits(_build(name, IMAGENET), torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("name", "kwargs", "num_classes", "expected"),
    [
        ("resnet56", {}, 10, 855_770),  # heehehe/pruning-decorrelation ResNet_CIFAR
        ("resnet56", {"shortcut": "B"}, 10, 855_770),
        ("resnet56", {"shortcut": "A"}, 10, 853_018),  # original CIFAR ResNet-56 (0.85M)
        ("resnet20", {"shortcut": "A"}, 10, 269_722),  # 0.27M in He et al. Table 6
        ("resnet110", {"shortcut": "A"}, 10, 1_727_962),  # 1.7M in He et al. Table 6
        # B adds 1x1 convs + BN: 16*32 + 64 + 32*64 + 128 = 2,752 parameters.
        ("resnet20", {}, 10, 269_722 + 2_752),
        ("vgg19", {}, 10, 20_035_018),  # docs/methods.md §3
        ("vgg19", {}, 100, 20_081_188),
        ("wrn28_10", {}, 10, 36_479_194),  # docs/methods.md §9.2 (Savarese & Maire's WRN-28-10)
        ("wrn16_8", {}, 10, 10_961_370),  # 11.0M in Zagoruyko & Komodakis Table 4
        ("wrn40_4", {}, 10, 8_949_210),  # 8.9M
        ("wrn16_4", {}, 100, 2_748_890 + 256 * 90 + 90),
    ],
)
def test_exact_parameter_counts(
    name: str, kwargs: dict[str, object], num_classes: int, expected: int
) -> None:
    model = _build(name, (3, 32, num_classes), **kwargs)
    assert _n_params(model) == expected


def test_shufflenet_parameter_counts_match_methods_doc() -> None:
    # docs/methods.md §9.3: torchvision 2,278,604; CIFAR-100 head 1,356,104 (stem changes keep
    # counts).
    assert _n_params(_build("shufflenet_v2_x1_0", IMAGENET)) == 2_278_604
    assert _n_params(_build("shufflenet_v2_x1_0", (3, 32, 100))) == 1_356_104


def test_zero_pad_shortcut_subsamples_and_pads_channels() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = ZeroPadShortcut(2, 4, stride=2)(x)
    assert out.shape == (1, 4, 2, 2)
    assert torch.equal(out[:, 1:3], x[:, :, ::2, ::2])
    assert torch.equal(out[0, 1], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert not out[:, 0].any() and not out[:, 3].any()
    assert list(ZeroPadShortcut(2, 4, 2).parameters()) == []


def test_shortcut_option_is_validated_and_case_insensitive() -> None:
    assert _n_params(_build("resnet56", CIFAR, shortcut="a")) == 853_018
    with pytest.raises(ConfigError) as info:
        _build("resnet56", CIFAR, shortcut="C")
    message = str(info.value)
    assert "'C'" in message and "A, B" in message and "\n" not in message


def test_unknown_model_is_one_line_config_error_with_choices() -> None:
    with pytest.raises(ConfigError) as info:
        _build("resnet57", CIFAR)
    message = str(info.value)
    assert "\n" not in message
    assert "'resnet57'" in message
    assert all(name in message for name in ALL_MODELS)


def test_unknown_option_is_config_error_naming_valid_options() -> None:
    with pytest.raises(ConfigError) as info:
        _build("resnet56", CIFAR, depth=20)
    message = str(info.value)
    assert "depth" in message and "shortcut" in message and "\n" not in message
    with pytest.raises(ConfigError, match="vgg16"):
        _build("vgg16", CIFAR, shortcut="A")


def test_torchvision_options_pass_through_and_bad_ones_fail_cleanly() -> None:
    model = _build("mobilenet_v3_small", CIFAR, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    with pytest.raises(ConfigError, match="mobilenet_v3_small"):
        _build("mobilenet_v3_small", CIFAR, no_such_option=1)
    with pytest.raises(ConfigError, match="unknown weights 'IMAGENET1K_V9'"):
        _build("resnet18", CIFAR, weights="IMAGENET1K_V9")


@pytest.mark.parametrize(("name", "size"), [("vgg16", 4), ("vgg11", 8), ("squeezenet1_1", 2)])
def test_model_that_does_not_fit_input_is_config_error(name: str, size: int) -> None:
    # VGG max-pools 4 times, so 4 and 8 px reach 0 px; SqueezeNet's unpadded 3x3 stem needs 3 px.
    # (resnet50 fits even 1 px: its small-input stem is padded and every later conv too.)
    with pytest.raises(ConfigError) as info:
        build_model(name, num_classes=10, in_channels=3, image_size=size)
    message = str(info.value)
    assert f"'{name}'" in message and f"(2, 3, {size}, {size})" in message
    assert "\n" not in message


def test_vgg16_fits_16_px() -> None:
    assert _build("vgg16", (3, 16, 10)).training


@pytest.mark.parametrize(
    ("key", "value"), [("num_classes", 0), ("in_channels", -1), ("image_size", 0)]
)
def test_non_positive_sizes_are_config_errors(key: str, value: int) -> None:
    sizes = {"num_classes": 10, "in_channels": 3, "image_size": 32, key: value}
    with pytest.raises(ConfigError, match=key):
        build_model("resnet20", **sizes)


def test_small_input_stems() -> None:
    resnet = _build("resnet18", CIFAR)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert resnet.conv1.padding == (1, 1) and resnet.conv1.bias is None
    assert isinstance(resnet.maxpool, nn.Identity)
    shufflenet = _build("shufflenet_v2_x0_5", FER)
    assert shufflenet.conv1[0].stride == (1, 1) and shufflenet.conv1[0].in_channels == 1
    assert isinstance(shufflenet.maxpool, nn.Identity)
    squeezenet = _build("squeezenet1_1", CIFAR)
    assert squeezenet.features[0].stride == (1, 1)
    assert isinstance(squeezenet.features[2], nn.Identity)
    # Later max-pools are part of the architecture and stay.
    assert sum(isinstance(m, nn.MaxPool2d) for m in squeezenet.modules()) == 2
    mobilenet = _build("mobilenet_v2", CIFAR)
    assert mobilenet.features[0][0].stride == (1, 1)


def test_resnet_stem_option_overrides_the_size_rule_and_rejects_unknown_stems() -> None:
    imagenet = _build("resnet50", CIFAR, stem="imagenet")  # torchvision's stem at 32 px
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert imagenet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    grey = _build("resnet18", FER, stem="imagenet")
    assert grey.conv1.in_channels == 1 and grey.conv1.kernel_size == (7, 7)
    cifar = _build("resnet18", IMAGENET, stem="cifar")  # the CIFAR stem at 224 px
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)
    auto = _build("resnet18", CIFAR, stem="auto")
    torch.manual_seed(0)
    same = _build("resnet18", CIFAR, stem="auto")
    torch.manual_seed(0)
    default = _build("resnet18", CIFAR)
    assert auto.conv1.kernel_size == (3, 3)
    assert torch.equal(same.conv1.weight, default.conv1.weight)  # auto is the old default
    with pytest.raises(ConfigError, match=r"unknown stem 'wide'; choose one of: auto, cifar"):
        _build("resnet50", CIFAR, stem="wide")


def test_large_input_keeps_torchvision_stem_but_takes_in_channels() -> None:
    resnet = _build("resnet18", (1, 224, 1000))
    assert resnet.conv1.in_channels == 1
    assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2)
    assert resnet.conv1.padding == (3, 3)
    assert isinstance(resnet.maxpool, nn.MaxPool2d)
    efficientnet = _build("efficientnet_b0", (1, 96, 5))
    assert efficientnet.features[0][0].in_channels == 1
    assert efficientnet.features[0][0].stride == (2, 2)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"shortcut": "A"}),  # the custom parameter-free shortcut module
        ("resnet20", {"shortcut": "B"}),
        ("vgg11", {}),
        ("resnet18", {}),  # replaced stem
        ("mobilenet_v3_small", {}),
        ("shufflenet_v2_x0_5", {}),  # replaced max-pool
        ("squeezenet1_1", {}),
    ],
)
def test_state_dict_round_trip_and_deepcopy(name: str, kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    source = _build(name, CIFAR, **kwargs).eval()
    torch.manual_seed(1)
    target = _build(name, CIFAR, **kwargs).eval()
    target.load_state_dict(source.state_dict())
    twin = copy.deepcopy(source)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
        assert torch.equal(target(x), expected)
        assert torch.equal(twin(x), expected)
