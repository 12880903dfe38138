"""A library's pretrained weights: torchvision's ``model.weights``, timm's ``model.pretrained``.

No network is used and no download is faked: a weights file is written where the library looks
for it (its cache), and the offline failure is a download that fails as it fails without
network (``urllib.error.URLError`` from ``urlopen``; the Hugging Face client in offline mode).
"""

from __future__ import annotations

import importlib.util
import socket
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision.models as tvm

from prune_cli.cache import cache_key, training_payload
from prune_cli.errors import CheckpointError, ConfigError
from prune_cli.models import build_model, build_skeleton, fits, without_library_weights
from prune_cli.models.library_weights import torch_hub_file, weights_record, weights_warnings

HAS_TIMM = importlib.util.find_spec("timm") is not None
RESNET18 = tvm.ResNet18_Weights.IMAGENET1K_V1


def _offline(*args: object, **kwargs: object) -> None:
    """``urlopen`` without network: the name of the server does not resolve."""
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``TORCH_HOME`` (torch.hub.get_dir() reads it on every call), without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", _offline)
    return tmp_path / "torch"


def _place(weights: tvm.WeightsEnum, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` where torch.hub looks for ``weights`` (the file name of its URL)."""
    path = torch_hub_file(weights.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _imagenet_state(builder, seed: int = 7, **kwargs: object) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's own model for the weights' 1,000 classes (seeded)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's init_weights FutureWarning
        return builder(weights=None, **kwargs).state_dict()


def _resnet18(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "torchvision-resnet18", num_classes=10, in_channels=3, image_size=32, **options
    )


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_weights_load_from_the_hub_cache(torch_home: Path) -> None:
    state = _imagenet_state(tvm.resnet18)
    path = _place(RESNET18, state)
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    model = _resnet18(weights="DEFAULT")
    fresh = _resnet18()  # the same seed without weights
    got = model.state_dict()
    # Every tensor is the file's, except the classifier (10 classes) and the CIFAR stem (3x3),
    # which keep exactly the fresh initialisation of a model built without weights.
    assert torch.equal(got["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    for key, value in got.items():
        expected = fresh.state_dict()[key] if key.startswith(("fc.", "conv1.")) else state[key]
        assert torch.equal(value, expected), key
    record = weights_record(model)
    assert record["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and record["file"] == str(path)
    assert record["replaced"]["classifier"]["keys"] == ["fc.bias", "fc.weight"]
    assert record["tensors_loaded"] == record["tensors_in_model"] - 3
    lines = weights_warnings(model)
    assert lines == [
        "model.weights=ResNet18_Weights.IMAGENET1K_V1: stem conv1 kept at its fresh "
        "initialisation (conv1.weight is (64, 3, 7, 7) in the file, (64, 3, 3, 3) in the model)",
        "model.weights=ResNet18_Weights.IMAGENET1K_V1: classifier fc kept at its fresh "
        "initialisation (fc.weight is (1000, 512) in the file, (10, 512) in the model)",
    ]
    assert weights_warnings(fresh) == [] and weights_record(fresh) is None
    # torchvision's own builder reads the same file, with its check_hash=True (torch.hub checks
    # the hash prefix of the name only when it downloads; a cached file is read as it is).
    own = tvm.resnet18(weights="DEFAULT").state_dict()
    assert all(torch.equal(own[k], state[k]) for k in state)


def test_torchvision_weight_names_and_the_registered_names(torch_home: Path) -> None:
    state = _imagenet_state(tvm.resnet18)
    _place(RESNET18, state)
    full = _resnet18(weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(full.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # model=resnet18 takes weights too; stem=imagenet keeps the pretrained 7x7 stem.
    model = build_model(
        "resnet18", num_classes=10, in_channels=3, image_size=32, weights="IMAGENET1K_V1",
        stem="imagenet",
    )  # fmt: skip
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert list(weights_record(model)["replaced"]) == ["classifier"]
    # 1,000 classes and 224 px: nothing to replace, every tensor is the file's.
    model = build_model(
        "torchvision-resnet18", num_classes=1000, in_channels=3, image_size=224, weights="DEFAULT"
    )
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert weights_warnings(model) == []


def test_bad_weight_names_are_one_line_with_the_choices(torch_home: Path) -> None:
    for bad in ("IMAGENET1K_V9", "ResNet34_Weights.IMAGENET1K_V1", True):
        with pytest.raises(ConfigError) as info:
            _resnet18(weights=bad)
        message = str(info.value)
        assert repr(bad) in message and "\n" not in message
        assert "IMAGENET1K_V1, DEFAULT" in message and "ResNet18_Weights" in message
    with pytest.raises(ConfigError, match="progress"):
        _resnet18(progress=True)


def test_torchvision_weights_offline_name_the_file_and_where(torch_home: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        _resnet18(weights="DEFAULT")
    message = str(info.value)
    where = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "\n" not in message
    assert f"looks for it at {where} " in message and "TORCH_HOME" in message
    assert RESNET18.url in message and "Name or service not known" in message
    assert "pretrained=PATH" in message
    assert not where.exists()  # nothing half-written is left behind


def test_a_corrupt_cached_file_is_named(torch_home: Path) -> None:
    path = torch_hub_file(RESNET18.url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        _resnet18(weights="DEFAULT")
    message = str(info.value)
    assert f"at {path} cannot be used" in message and "delete that file" in message
    assert "\n" not in message


def test_shapes_and_rebuilds_read_no_weights(torch_home: Path) -> None:
    # Nothing is cached and there is no network: these never reach for the file.
    assert fits("resnet18", 32, weights="DEFAULT")
    skeleton = build_skeleton(
        "torchvision-resnet18", num_classes=10, in_channels=3, image_size=32, weights="DEFAULT"
    )
    assert skeleton.fc.weight.is_meta
    with without_library_weights():  # a portable checkpoint loads its own state
        model = _resnet18(weights="DEFAULT")
    assert weights_record(model) is None
    with pytest.raises(ConfigError, match="IMAGENET1K_V9"):  # names are still checked
        build_skeleton(
            "resnet18", num_classes=10, in_channels=3, image_size=32, weights="IMAGENET1K_V9"
        )


@pytest.mark.parametrize(
    ("arch", "builder", "kwargs", "replaced"),
    [
        # MNASNet's load reads the module version stored with the file.
        ("mnasnet0_5", tvm.mnasnet0_5, {}, ["classifier"]),
        # GoogLeNet's file holds the auxiliary heads, built off here; 1 channel: a fresh stem.
        ("googlenet", tvm.googlenet, {"aux_logits": True, "init_weights": True}, None),
    ],
)
def test_torchvision_weights_per_family(
    torch_home: Path, arch: str, builder, kwargs: dict, replaced: list[str] | None
) -> None:
    weights = tvm.get_model_weights(arch).DEFAULT
    state = _imagenet_state(builder, **kwargs)
    _place(weights, state)
    in_channels = 1 if replaced is None else 3
    model = build_model(
        f"torchvision-{arch}",
        num_classes=10,
        in_channels=in_channels,
        image_size=32,
        weights="DEFAULT",
    )
    record = weights_record(model)
    assert sorted(record["replaced"]) == (replaced or ["classifier", "stem"])
    kept = {k for layer in record["replaced"].values() for k in layer["keys"]}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k not in kept)


def test_densenet_weights_files_have_old_key_names(torch_home: Path) -> None:
    # torchvision's DenseNet files name layers "denselayer1.norm.1" (no longer valid names) and
    # predate num_batches_tracked; its builder renames them while loading, and so do we.
    state = _imagenet_state(tvm.densenet121)
    old = {
        k.replace(".norm1.", ".norm.1.").replace(".norm2.", ".norm.2.")
        .replace(".conv1.", ".conv.1.").replace(".conv2.", ".conv.2."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }  # fmt: skip
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    _place(tvm.DenseNet121_Weights.IMAGENET1K_V1, old)
    model = build_model(  # (72 px: torchvision's stem, a quicker forward than at 32 px)
        "torchvision-densenet121", num_classes=10, in_channels=3, image_size=72, weights="DEFAULT"
    )
    assert list(weights_record(model)["replaced"]) == ["classifier"]
    conv = "features.denseblock4.denselayer16.conv2.weight"
    assert torch.equal(model.state_dict()[conv], state[conv])


def test_weights_that_do_not_fit_the_model_are_one_line(torch_home: Path) -> None:
    # Another width than the weights': layers other than the stem and classifier differ.
    weights = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    _place(weights, _imagenet_state(tvm.mobilenet_v3_small))
    with pytest.raises(ConfigError) as info:
        build_model(
            "mobilenet_v3_small",
            num_classes=10,
            in_channels=3,
            image_size=32,
            weights="DEFAULT",
            width_mult=0.75,
        )
    message = str(info.value)
    assert "torchvision weights MobileNet_V3_Small_Weights.IMAGENET1K_V1 does not fit" in message
    assert "shape mismatches (e.g. features." in message and "\n" not in message


def test_weights_are_part_of_the_trained_model_cache_key() -> None:
    def key(**model: object) -> str:
        return cache_key(
            training_payload(
                model={"name": "torchvision-resnet18", "arch": "resnet18", **model},
                dataset={"name": "cifar10"},
                train={"epochs": 1},
                seed=0,
                deterministic=False,
                method_training={},
                device_type="cpu",
            )
        )

    # null (the default, new in the config files) keeps the keys of entries trained before.
    assert key(weights=None) == key() and key(pretrained=False) == key()
    assert key(weights="DEFAULT") != key() and key(pretrained=True) != key()
    assert key(weights="DEFAULT") != key(weights="IMAGENET1K_V1")


# ----------------------------------------------------------------------------- timm
@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in offline mode (HF_HUB_OFFLINE=1; huggingface_hub reads
    both from its constants, set from the environment when it is imported)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", _offline)
    return tmp_path / "hf"


def _timm(**options: object) -> torch.nn.Module:
    return build_model("timm-resnet18", num_classes=10, in_channels=1, image_size=32, **options)


@pytest.mark.skipif(not HAS_TIMM, reason="the optional timm extra is not installed")
def test_timm_pretrained_offline_names_the_cache(hf_cache: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        _timm(pretrained=True)
    message = str(info.value)
    assert "\n" not in message and "timm/resnet18.a1_in1k" in message
    assert str(hf_cache / "models--timm--resnet18.a1_in1k") in message
    assert "HF_HUB_OFFLINE=1" in message and "pretrained=PATH" in message
    with pytest.raises(ConfigError, match="pretrained=PATH"):
        _timm(pretrained="weights.pth")
    with pytest.raises(ConfigError, match=r"checkpoint_path.*without executing code"):
        _timm(checkpoint_path="weights.pth")


@pytest.mark.skipif(not HAS_TIMM, reason="the optional timm extra is not installed")
def test_timm_pretrained_loads_from_the_hugging_face_cache(hf_cache: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    # The cache layout the Hugging Face client reads: refs/main names the snapshot.
    repo = hf_cache / "models--timm--resnet18.a1_in1k"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / revision / "model.safetensors"))
    model = _timm(pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    # timm sums the RGB stem weights for one input channel; the stride-1 stem keeps them.
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert model.conv1.stride == (1, 1)
    assert weights_warnings(model) == [
        "model.pretrained=true (timm/resnet18.a1_in1k): classifier fc kept at its fresh "
        "initialisation (the weights are for 1000 classes, the model has 10)",
        "model.pretrained=true (timm/resnet18.a1_in1k): stem conv1 weights adapted by timm from "
        "3 to 1 input channels (summed or repeated over the channels)",
    ]
    assert weights_warnings(_timm()) == []
