"""Tests of prune_cli.data: every format read back exactly, splits, loaders and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_in_process
from fakedata import (
    face,
    write_cifar10,
    write_cifar100,
    write_fer_csv,
    write_ferplus_csv,
    write_image,
    write_imagenet,
)
from omegaconf import OmegaConf

from prune_cli.data import (
    DATASETS,
    BatchLoader,
    DatasetBundle,
    Split,
    build_dataset,
    resolve_path,
    with_val_split,
)
from prune_cli.data.base import holdout_count, stratified_holdout
from prune_cli.data.fer import ferplus_labels
from prune_cli.data.loaders import TensorLoader, crop_and_flip
from prune_cli.data.shapes import generate_shapes
from prune_cli.errors import BadFileError, ConfigError, DataNotFoundError, UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dataset"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def tiny_bundle(images: torch.Tensor, labels: torch.Tensor, **kw) -> DatasetBundle:
    c = images.shape[1]
    return DatasetBundle(
        name="tiny",
        num_classes=int(labels.max()) + 1,
        in_channels=c,
        image_size=images.shape[-1],
        mean=kw.pop("mean", (0.5,) * c),
        std=kw.pop("std", (0.25,) * c),
        splits={"train": Split(labels=labels, images=images)},
        class_names=[],
        **kw,
    )


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_reads_back_exactly(tmp_path: Path, bytes_keys: bool) -> None:
    written = write_cifar10(tmp_path, per_batch=3, bytes_keys=bytes_keys)
    b = build_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 3, 32)
    assert b.class_names == [f"class{i}" for i in range(10)]
    assert set(b.splits) == {"train", "test"}
    train, test = b.splits["train"], b.splits["test"]
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.shape == (15, 3, 32, 32)  # batches 1..5 in order, 3 images each
    assert torch.equal(train.images, torch.from_numpy(written["train_x"]))
    assert train.labels.tolist() == written["train_y"].tolist()
    assert torch.equal(test.images, torch.from_numpy(written["test_x"]))
    assert test.labels.tolist() == written["test_y"].tolist()


def test_cifar10_root_may_be_the_batch_folder(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=2)
    b = build_dataset({"name": "cifar10", "root": str(tmp_path / "cifar-10-batches-py")})
    assert torch.equal(b.splits["test"].images, torch.from_numpy(written["test_x"]))


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, n=5)
    b = build_dataset({"name": "cifar100", "root": str(tmp_path)})
    assert b.num_classes == 100 and b.class_names[7] == "fine7"
    assert b.splits["train"].labels.tolist() == written["train_y"].tolist()
    assert torch.equal(b.splits["train"].images, torch.from_numpy(written["train_x"]))


def test_cifar_missing_directory_is_one_line_naming_dir_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        build_dataset({"name": "cifar10", "root": str(tmp_path / "nowhere")})
    msg = one_line(err)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data_batch_1..5" in msg and "test_batch" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "download=true" in msg


def test_cifar_missing_single_batch_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError) as err:
        build_dataset({"name": "cifar10", "root": str(tmp_path)})
    msg = one_line(err)
    assert "incomplete" in msg and "missing data_batch_3" in msg and "data_batch_4" not in msg


def test_cifar_corrupt_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=1)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert str(bad) in one_line(err)


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=1)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    # A pickle that would call os.system when loaded with plain pickle.load.
    bad.write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(BadFileError, match=r"refusing to load os\.system"):
        build_dataset({"name": "cifar10", "root": str(tmp_path)})


def test_cifar_download_only_when_missing(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_cifar10(root: str, download: bool) -> None:
        calls.append((root, download))
        write_cifar10(Path(root), per_batch=1)

    monkeypatch.setattr("torchvision.datasets.CIFAR10", fake_cifar10)
    cfg = {"name": "cifar10", "root": str(tmp_path / "c10"), "download": True}
    assert len(build_dataset(cfg).splits["train"]) == 5
    assert calls == [(str(tmp_path / "c10"), True)]
    build_dataset(cfg)  # files present now: no second download
    assert len(calls) == 1

    def offline(root: str, download: bool) -> None:
        raise OSError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(DataNotFoundError) as err:
        build_dataset({**cfg, "root": str(tmp_path / "other")})
    assert "failed ([Errno -3] Temporary failure in name resolution)" in one_line(err)


# ----------------------------------------------------------------------------- FER2013


def fer_rows() -> list[tuple[int, np.ndarray, str]]:
    usages = ["Training"] * 4 + ["PublicTest"] * 2 + ["PrivateTest"] * 3
    return [(i % 7, face(0, seed=i), u) for i, u in enumerate(usages)]


def test_fer2013_csv_splits_by_usage(tmp_path: Path) -> None:
    rows = fer_rows()
    write_fer_csv(tmp_path / "fer2013.csv", rows)
    b = build_dataset({"name": "fer2013", "root": str(tmp_path), "val_size": 2})
    assert (b.num_classes, b.in_channels, b.image_size) == (7, 1, 48)
    assert b.class_names[0] == "angry" and b.class_names[6] == "neutral"
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 4, "val": 2, "test": 3}
    for split, first in (("train", 0), ("val", 4), ("test", 6)):
        part = b.splits[split]
        expected = [rows[i] for i in range(first, first + len(part))]
        assert part.labels.tolist() == [e for e, _, _ in expected]
        assert part.images.shape == (len(part), 1, 48, 48) and part.images.dtype == torch.uint8
        assert torch.equal(
            part.images[:, 0], torch.from_numpy(np.stack([x for _, x, _ in expected]))
        )


def test_fer2013_csv_bad_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    write_fer_csv(path, fer_rows())
    lines = path.read_text().splitlines()
    lines[3] = "2,1 2 3,Training"  # too few pixels on line 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "fer2013", "root": str(tmp_path)})
    msg = one_line(err)
    assert str(path) in msg and "line 4" in msg


def test_fer2013_image_folders_map_emotions_to_fer_order(tmp_path: Path) -> None:
    # PNG keeps exact pixels; JPEG of a flat image decodes to the same flat value.
    write_image(tmp_path / "train" / "neutral" / "a.png", face(0, seed=1))
    write_image(tmp_path / "train" / "angry" / "b.jpg", face(100))
    write_image(tmp_path / "train" / "happy" / "c.jpg", face(200))
    write_image(tmp_path / "train" / "happy" / "d.jpg", face(50))
    write_image(tmp_path / "test" / "Surprise" / "e.jpg", face(30))
    b = build_dataset({"name": "fer2013", "root": str(tmp_path)})
    train = b.splits["train"]
    assert train.labels.tolist() == [0, 3, 3, 6]  # angry, happy (c, d), neutral
    assert torch.equal(train.images[3, 0], torch.from_numpy(face(0, seed=1)))
    assert [int(train.images[i].float().mean().round()) for i in range(3)] == [100, 200, 50]
    assert b.splits["test"].labels.tolist() == [5]
    assert "val" not in b.splits


def test_fer2013_folders_are_resized_to_48(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "sad" / "a.png", np.full((64, 64), 77, np.uint8))
    write_image(tmp_path / "test" / "sad" / "b.png", np.full((48, 48), 9, np.uint8))
    b = build_dataset({"name": "fer2013", "root": str(tmp_path)})
    assert b.splits["train"].images.shape == (1, 1, 48, 48)
    assert torch.all(b.splits["train"].images == 77)


def test_fer2013_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        build_dataset({"name": "fer2013", "root": str(tmp_path)})
    msg = one_line(err)
    assert str(tmp_path) in msg and "fer2013.csv" in msg and "train/<emotion>" in msg
    assert "kaggle.com" in msg
    write_image(tmp_path / "train" / "sad" / "a.png", face(1))
    with pytest.raises(DataNotFoundError, match="missing test/"):
        build_dataset({"name": "fer2013", "root": str(tmp_path)})
    write_image(tmp_path / "test" / "grumpy" / "a.png", face(1))
    with pytest.raises(DataNotFoundError, match=r"unknown emotion folder .*grumpy"):
        build_dataset({"name": "fer2013", "root": str(tmp_path)})


# ----------------------------------------------------------------------------- FER+

# Vote columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
FERPLUS_ROWS = [
    ("Training", "fer0.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness
    ("Training", "fer1.png", [4, 0, 4, 0, 0, 0, 0, 0, 2, 0]),  # tie -> first: neutral
    ("Training", "fer2.png", [1, 1, 0, 0, 0, 0, 0, 0, 8, 0]),  # unknown -> dropped
    ("Training", "fer3.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # NF -> dropped
    ("Training", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # no image name -> dropped
    ("Training", "fer5.png", [0, 0, 0, 0, 0, 0, 0, 5, 5, 0]),  # tie with unknown: contempt
    ("PublicTest", "fer6.png", [0, 0, 0, 0, 6, 2, 2, 0, 0, 0]),  # anger
    ("PublicTest", "fer7.png", ["", "", "", "", "", "", "", "", "", ""]),  # no votes -> dropped
    ("PrivateTest", "fer8.png", [0, 0, 0, 3, 0, 0, 7, 0, 0, 0]),  # fear
]


def write_ferplus(tmp_path: Path) -> Path:
    # fer2013.csv's own Usage/emotion are deliberately different: FER+ must not use them.
    write_fer_csv(tmp_path / "fer2013.csv", [(0, face(10 * i), "Training") for i in range(9)])
    write_ferplus_csv(tmp_path / "fer2013new.csv", FERPLUS_ROWS)
    return tmp_path


def test_ferplus_majority_and_drop_rules(tmp_path: Path) -> None:
    b = build_dataset({"name": "ferplus", "root": str(write_ferplus(tmp_path))})
    assert b.num_classes == 8 and b.class_names[7] == "contempt" and b.in_channels == 1
    kept = {k: v.images[:, 0, 0, 0].div(10).tolist() for k, v in b.splits.items()}
    assert kept == {"train": [0, 1, 5], "val": [6], "test": [8]}  # row indices, by flat value
    labels = {k: v.labels.tolist() for k, v in b.splits.items()}
    assert labels == {"train": [1, 0, 7], "val": [4], "test": [6]}


def test_ferplus_labels_rules_by_hand() -> None:
    votes = np.array(
        [
            [4, 3, 3, 0, 0, 0, 0, 0, 0, 0],  # argmax neutral; majority: 4 of 10 -> dropped
            [6, 1, 1, 0, 0, 0, 0, 0, 2, 0],  # single votes removed: 6 of 8 -> neutral
            [0, 0, 5, 0, 0, 0, 0, 0, 5, 0],  # argmax tie -> surprise; majority: 5 of 10 -> dropped
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no votes -> dropped by both
            [0, 2, 0, 0, 0, 0, 0, 0, 7, 1],  # unknown wins -> dropped by both
        ]
    )
    assert ferplus_labels(votes, "argmax").tolist() == [0, 0, 2, -1, -1]
    assert ferplus_labels(votes, "majority").tolist() == [-1, 0, -1, -1, -1]
    with pytest.raises(ConfigError, match="argmax, majority"):
        ferplus_labels(votes, "vote")


def test_ferplus_label_rule_from_config(tmp_path: Path) -> None:
    cfg = {"name": "ferplus", "root": str(write_ferplus(tmp_path)), "label_rule": "majority"}
    # majority: fer1 (4 of 10) and fer5 (5 of 10) lack a majority; fer0, fer6, fer8 keep theirs
    b = build_dataset(cfg)
    assert {k: v.labels.tolist() for k, v in b.splits.items()} == {
        "train": [1],
        "val": [4],
        "test": [6],
    }
    with pytest.raises(ConfigError, match=r"unknown dataset\.label_rule 'mode'"):
        build_dataset({**cfg, "label_rule": "mode"})


def test_ferplus_paths_can_be_overridden_and_rows_must_align(tmp_path: Path) -> None:
    write_ferplus(tmp_path)
    (tmp_path / "fer2013.csv").rename(tmp_path / "images.csv")
    (tmp_path / "fer2013new.csv").rename(tmp_path / "labels.csv")
    cfg = {"name": "ferplus", "root": str(tmp_path / "elsewhere")}
    with pytest.raises(DataNotFoundError) as err:
        build_dataset(cfg)
    msg = one_line(err)
    assert "fer2013new.csv" in msg and "github.com/microsoft/FERPlus" in msg
    cfg["ferplus_csv"] = str(tmp_path / "labels.csv")
    with pytest.raises(DataNotFoundError, match="fer2013_csv"):
        build_dataset(cfg)
    cfg["fer2013_csv"] = str(tmp_path / "images.csv")
    assert len(build_dataset(cfg).splits["train"]) == 3
    write_fer_csv(tmp_path / "images.csv", [(0, face(1), "Training")] * 5)
    with pytest.raises(DataNotFoundError, match=r"9 rows but .* has 5"):
        build_dataset(cfg)


def test_ferplus_bad_vote_row_and_missing_column(tmp_path: Path) -> None:
    write_ferplus(tmp_path)
    labels = tmp_path / "fer2013new.csv"
    lines = labels.read_text().splitlines()
    lines[2] = "Training,fer1.png,4,0,4,0,0,x,0,0,2,0"  # line 3: a non-integer vote
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "ferplus", "root": str(tmp_path)})
    assert str(labels) in one_line(err) and "line 3" in str(err.value)
    labels.write_text("Usage,Image name,neutral\nTraining,fer0.png,1\n")
    with pytest.raises(DataNotFoundError, match="lacks column"):
        build_dataset({"name": "ferplus", "root": str(tmp_path)})


# ----------------------------------------------------------------------------- ImageNet

WNIDS = ["n02", "n01", "n03"]


def test_imagenet_folders_and_pipeline(tmp_path: Path) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=2, n_val=1)
    cfg = {"name": "imagenet", "root": str(tmp_path), "image_size": 8, "resize": 10}
    b = build_dataset({**cfg, "num_workers": 0})
    assert b.class_names == ["n01", "n02", "n03"] and b.num_classes == 3
    assert (b.image_size, len(b.splits["train"]), len(b.splits["test"])) == (8, 6, 3)
    x, y = next(iter(b.loader("test", 8, train=False)))
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2]
    # Flat images: the centre crop keeps the colour (40 * wnid index of the written class).
    red = x[:, 0].mean(dim=(1, 2)) * b.std[0] + b.mean[0]
    written_red = torch.tensor([40.0, 0.0, 80.0]) / 255  # n01 was written 2nd, n02 1st
    assert torch.allclose(red, written_red, atol=3 / 255)
    loader = b.loader("train", 4, train=True, seed=1)
    assert len(loader) == 2 and loader.num_samples == 6
    batches = list(loader)
    assert [tuple(xb.shape) for xb, _ in batches] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    assert sorted(torch.cat([yb for _, yb in batches]).tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagenet_workers_reproduce_random_crops_and_val_is_carved(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        for i in range(2):  # textured images, so that different crops differ
            img = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
            write_image(tmp_path / "train" / wnid / f"{i}.png", img)
        write_image(tmp_path / "val" / wnid / "v.png", np.full((24, 24, 3), c, np.uint8))
    cfg = {"name": "imagenet", "root": str(tmp_path), "image_size": 8, "resize": 10}
    b = build_dataset({**cfg, "num_workers": 1, "val_size": 3})
    assert torch.bincount(b.splits["val"].labels).tolist() == [1, 1, 1]
    assert len(b.splits["train"]) == 3 and not set(b.splits["val"].files) & set(
        b.splits["train"].files
    )

    def images(seed: int) -> torch.Tensor:
        return torch.cat([x for x, _ in b.loader("train", 2, train=True, seed=seed)])

    first = images(0)
    assert torch.equal(first, images(0)) and not torch.equal(first, images(1))


def test_imagenet_errors(tmp_path: Path) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=1, n_val=0)
    with pytest.raises(DataNotFoundError) as err:
        build_dataset({"name": "imagenet", "root": str(tmp_path / "none")})
    msg = one_line(err)
    assert "train/, val/" in msg and "val/<wnid>/*.JPEG" in msg and str(tmp_path) in msg
    write_imagenet(tmp_path / "two", WNIDS[:2], n_train=1, n_val=1)
    (tmp_path / "two" / "val" / "n01").rename(tmp_path / "two" / "val" / "n09")
    with pytest.raises(DataNotFoundError, match="only in train: \\['n01'\\]"):
        build_dataset({"name": "imagenet", "root": str(tmp_path / "two")})


# ----------------------------------------------------------------------------- splits


def labelled(n_per_class: int, classes: int) -> torch.Tensor:
    return torch.arange(n_per_class * classes) % classes


def test_stratified_holdout_by_hand() -> None:
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    # quotas for 5 of 10: 3.0, 1.5, 0.5 -> floors 3, 1, 0; one left, tie 0.5/0.5 -> class 1
    train_idx, val_idx = stratified_holdout(labels, 5, seed=0)
    assert torch.bincount(labels[val_idx], minlength=3).tolist() == [3, 2, 0]
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(10))


def test_val_split_sizes_determinism_and_disjointness() -> None:
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)  # pixel value = sample id
    bundle = tiny_bundle(images, labelled(10, 10))
    a, b = with_val_split(bundle, 20), with_val_split(bundle, 20)
    c = with_val_split(bundle, 20, split_seed=1)
    assert (len(a.splits["train"]), len(a.splits["val"])) == (80, 20)
    assert torch.bincount(a.splits["val"].labels).tolist() == [2] * 10  # stratified
    ids = {k: set(v.images.flatten().tolist()) for k, v in a.splits.items()}
    assert not ids["train"] & ids["val"] and ids["train"] | ids["val"] == set(range(100))
    assert torch.equal(a.splits["val"].images, b.splits["val"].images)
    assert not torch.equal(a.splits["val"].images, c.splits["val"].images)
    assert len(with_val_split(bundle, 0.25).splits["val"]) == 25
    assert "val" not in with_val_split(bundle, 0).splits
    assert len(bundle.splits["train"]) == 100  # the input bundle is left alone


@pytest.mark.parametrize("bad", [-1, 100, 1.5, "ten", True])
def test_bad_val_size_is_a_config_error(bad) -> None:
    with pytest.raises(ConfigError, match="val_size"):
        holdout_count(bad, 100)


def test_fer_publictest_is_val_and_val_size_is_ignored(tmp_path: Path) -> None:
    write_fer_csv(tmp_path / "fer2013.csv", fer_rows())
    b = build_dataset({"name": "fer2013", "root": str(tmp_path), "val_size": 0.5})
    assert len(b.splits["train"]) == 4 and len(b.splits["val"]) == 2
    assert b.notes == [
        "fer2013 has its own validation split (2 images); dataset.val_size=0.5 is ignored"
    ]


def test_an_ignored_val_size_is_a_warning_of_the_run(tmp_path: Path) -> None:
    write_fer_csv(tmp_path / "fer2013.csv", fer_rows())
    overrides = ["dataset=fer2013", f"dataset.root={tmp_path}", "dataset.val_size=0.5",
                 "method=none", "train.epochs=1", "train.batch_size=4", "export.onnx=false",
                 "metrics.latency.enabled=false", f"cache.dir={tmp_path / 'cache'}"]  # fmt: skip
    metrics = run_in_process(tmp_path / "run", overrides).metrics
    assert metrics["status"] == "completed"
    assert "dataset.val_size=0.5 is ignored" in " ".join(metrics["warnings"])


def test_fer_folders_carve_val_from_train(tmp_path: Path) -> None:
    for i in range(4):
        write_image(tmp_path / "train" / ("sad" if i % 2 else "fear") / f"{i}.png", face(i))
    write_image(tmp_path / "test" / "sad" / "t.png", face(9))
    b = build_dataset({"name": "fer2013", "root": str(tmp_path), "val_size": 2})
    assert torch.bincount(b.splits["val"].labels, minlength=5)[[2, 4]].tolist() == [1, 1]
    assert len(b.splits["train"]) == 2 and len(b.splits["test"]) == 1


# ----------------------------------------------------------------------------- loaders


def test_crop_and_flip_by_hand() -> None:
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    offsets = torch.tensor([[1, 1], [0, 0], [2, 1]])  # identity, shift down-right, shift up
    flips = torch.tensor([False, False, True])
    out = crop_and_flip(x, offsets, flips, padding=1)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert out[0, 0].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert out[1, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    assert out[2, 0].tolist() == [[6, 5, 4], [9, 8, 7], [0, 0, 0]]


def test_eval_loader_is_plain_normalization_in_order() -> None:
    images = torch.tensor(
        [[[[0, 204]], [[102, 255]]], [[[255, 0]], [[51, 102]]]], dtype=torch.uint8
    )
    bundle = tiny_bundle(images, torch.tensor([1, 0]), mean=(0.2, 0.4), std=(0.5, 0.2))
    loader = bundle.loader("train", 1, train=False)
    batches = list(loader)
    assert len(loader) == 2 and loader.num_samples == 2 and isinstance(loader, BatchLoader)
    # (p / 255 - mean) / std: 0 -> -0.4, 204 -> 1.2 (ch 0); 102 -> 0.0, 255 -> 3.0 (ch 1)
    expected0 = torch.tensor([[[[-0.4, 1.2]], [[0.0, 3.0]]]])
    assert torch.allclose(batches[0][0], expected0, atol=1e-6)
    assert [y.tolist() for _, y in batches] == [[1], [0]]
    assert torch.equal(list(loader)[1][0], batches[1][0])  # no augmentation, fixed order


def shapes_bundle(**cfg) -> DatasetBundle:
    return build_dataset({"name": "shapes", "train_size": 60, "test_size": 20, **cfg})


def test_train_loader_augments_reproducibly() -> None:
    b = shapes_bundle()

    def epoch(seed: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader = b.loader("train", 16, train=True, seed=seed)
        loader.set_epoch(e)
        xs, ys = zip(*loader)
        return torch.cat(xs), torch.cat(ys)

    x0, y0 = epoch(0, 0)
    assert x0.shape == (60, 3, 32, 32) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    assert sorted(y0.tolist()) == sorted(b.splits["train"].labels.tolist())
    x0b, y0b = epoch(0, 0)
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)
    assert not torch.equal(y0, epoch(0, 1)[1])
    assert not torch.equal(epoch(1, 0)[1], y0)
    # Same (seed, epoch) without augmentation: the same order, the plain images.
    plain = shapes_bundle(crop_padding=0, hflip=False).loader("train", 16, train=True, seed=0)
    xp, yp = (torch.cat(t) for t in zip(*plain))
    assert torch.equal(yp, y0)
    assert not torch.equal(xp, x0)
    # Every augmented image is one of the 9 x 9 x 2 padded crops / flips of its plain image.
    mean = torch.tensor(b.mean).view(1, 3, 1, 1)
    std = torch.tensor(b.std).view(1, 3, 1, 1)

    def to_pixels(x: torch.Tensor) -> torch.Tensor:
        return ((x * std + mean) * 255).round().to(torch.uint8)

    grid = torch.cartesian_prod(torch.arange(9), torch.arange(9), torch.arange(2))
    offsets, flips = grid[:, :2], grid[:, 2].bool()
    aug, base = to_pixels(x0), to_pixels(xp)
    for i in range(len(aug)):
        candidates = crop_and_flip(base[i : i + 1].expand(len(grid), -1, -1, -1), offsets, flips, 4)
        assert (candidates == aug[i]).flatten(1).all(1).any()


def test_set_epoch_reproduces_order_and_passes_advance() -> None:
    b = shapes_bundle()
    loader = b.loader("train", 60, train=True, seed=3)
    first = next(iter(loader))[1]  # epoch 0
    second = next(iter(loader))[1]  # epoch 1 (advanced automatically)
    loader.set_epoch(1)
    assert torch.equal(next(iter(loader))[1], second)
    loader.set_epoch(0)
    assert torch.equal(next(iter(loader))[1], first)
    assert not torch.equal(first, second)


def test_loader_lengths_drop_last_and_bad_inputs() -> None:
    b = shapes_bundle()
    assert len(b.loader("train", 16, train=True)) == 4
    loader = b.loader("train", 16, train=True, drop_last=True)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [16, 16, 16]
    with pytest.raises(ConfigError, match="unknown shapes split 'val'; choose one of: test, train"):
        b.loader("val", 16, train=False)
    with pytest.raises(ConfigError, match="batch size"):
        b.loader("train", 0, train=True)


def test_tensor_loader_without_hflip_or_padding_is_identity() -> None:
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    args = dict(train=True, mean=(0, 0, 0), std=(1, 1, 1), device=torch.device("cpu"))
    loader = TensorLoader(images, torch.arange(5), 5, crop_padding=0, hflip=False, **args)
    x, y = next(iter(loader))
    assert torch.allclose(x, images[y].float() / 255)


# ----------------------------------------------------------------------------- shapes


def test_shapes_deterministic_balanced_and_seeded() -> None:
    x, y = generate_shapes(50, seed=0)
    x2, y2 = generate_shapes(50, seed=0)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.bincount(y, minlength=10).tolist() == [5] * 10
    assert not torch.equal(generate_shapes(50, seed=1)[0], x)
    # Each image has a visible foreground: not a flat noisy background.
    assert bool((x.float().std(dim=(1, 2, 3)) > 10).all())


def test_shapes_bundle_and_test_set_independent_of_train_size() -> None:
    a, b = shapes_bundle(), shapes_bundle(train_size=30)
    assert (a.name, a.num_classes, a.in_channels, a.image_size) == ("shapes", 10, 3, 32)
    assert len(a.class_names) == 10 and len(a.splits["train"]) == 60
    assert torch.equal(a.splits["test"].images, b.splits["test"].images)
    assert not torch.equal(a.splits["test"].images[:30], a.splits["train"].images[:30])


def test_shapes_image_size_resizes_by_area_average() -> None:
    a, small = shapes_bundle(), shapes_bundle(image_size=16)
    assert (small.image_size, small.splits["train"].images.shape) == (16, (60, 3, 16, 16))
    # Area averaging: each 16 px pixel is the rounded mean of a 2x2 block of the 32 px image.
    blocks = a.splits["train"].images.float().unflatten(2, (16, 2)).unflatten(4, (16, 2))
    expected = blocks.mean(dim=(3, 5)).round().to(torch.uint8)
    assert torch.equal(small.splits["train"].images, expected)
    assert torch.equal(small.splits["train"].labels, a.splits["train"].labels)
    assert shapes_bundle(image_size=48).splits["test"].images.shape == (20, 3, 48, 48)
    with pytest.raises(ConfigError, match=r"dataset.image_size 4 is out of range; valid: .* >= 8"):
        shapes_bundle(image_size=4)


# ----------------------------------------------------------------------------- config


def test_config_files_build(tmp_path: Path, monkeypatch) -> None:
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == ["cifar10", "cifar100", "fer2013", "ferplus", "imagenet", "shapes"]
    assert set(names) <= set(DATASETS.names())
    monkeypatch.setenv("PRUNE_CLI_DATA", str(tmp_path))
    for name in names:
        cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
        assert cfg.name == name and cfg.download is False and cfg.val_size == 0
    write_cifar10(tmp_path / "cifar10", per_batch=1)
    cfg = OmegaConf.load(CONFIGS / "cifar10.yaml")
    assert len(build_dataset(cfg).splits["train"]) == 5  # ${oc.env:PRUNE_CLI_DATA} resolved
    shapes_cfg = OmegaConf.load(CONFIGS / "shapes.yaml")
    shapes_cfg.train_size, shapes_cfg.test_size, shapes_cfg.val_size = 20, 10, 0.5
    b = build_dataset(shapes_cfg)
    assert (len(b.splits["train"]), len(b.splits["val"])) == (10, 10)


def test_relative_root_resolves_against_launch_directory(tmp_path: Path, monkeypatch) -> None:
    write_cifar10(tmp_path / "data" / "cifar10", per_batch=1)
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/x") == tmp_path / "data" / "x"
    assert len(build_dataset({"name": "cifar10", "root": "data/cifar10"}).splits["test"]) == 1


def test_unknown_dataset_and_overrides() -> None:
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "mnist"})
    assert "unknown dataset 'mnist'" in one_line(err) and "cifar10, cifar100" in str(err.value)
    b = shapes_bundle(mean=0.5, std=[0.1, 0.2, 0.3], crop_padding=2, hflip=False)
    assert b.mean == (0.5,) * 3 and b.std == (0.1, 0.2, 0.3)
    assert b.crop_padding == 2 and b.hflip is False
    for bad in ({"std": [1, 2]}, {"std": 0}, {"hflip": "no"}, {"crop_padding": -1}):
        with pytest.raises(UserError):
            shapes_bundle(**bad)


# ----------------------------------------------------------------------------- real samples


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared real-data samples")
def test_shared_real_samples_load() -> None:
    c10 = build_dataset({"name": "cifar10", "root": str(SHARED / "cifar10-mini")})
    assert (len(c10.splits["train"]), len(c10.splits["test"])) == (10000, 2000)
    assert c10.class_names[:2] == ["airplane", "automobile"]
    assert torch.bincount(c10.splits["test"].labels).tolist() == [200] * 10
    fer = build_dataset({"name": "fer2013", "root": str(SHARED / "fer2013-mini")})
    assert {k: len(v) for k, v in fer.splits.items()} == {"train": 3500, "val": 700, "test": 700}
    ferplus = build_dataset(
        {
            "name": "ferplus",
            "root": str(SHARED / "ferplus-mini"),
            "fer2013_csv": str(SHARED / "fer2013-mini" / "fer2013.csv"),
        }
    )
    sizes = {k: len(v) for k, v in ferplus.splits.items()}
    assert set(sizes) == {"train", "val", "test"} and 3400 < sizes["train"] < 3500
    nette = build_dataset(
        {"name": "imagenet", "root": str(SHARED / "imagenette-mini"), "num_workers": 0}
    )
    assert nette.num_classes == 10 and len(nette.splits["test"]) == 50
    x, y = next(iter(nette.loader("test", 4, train=False)))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 0, 0]
