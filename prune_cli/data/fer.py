"""FER2013 and FER+ (FERPlus): 48x48 grayscale faces.

FER2013 (Goodfellow et al. 2013) is read from either layout under ``root``:

- ``fer2013.csv`` (Kaggle challenge file): columns ``emotion,pixels,Usage``; ``pixels`` holds
  2304 space-separated values (48x48, row-major). ``Usage`` Training -> ``train``,
  PublicTest -> ``val``, PrivateTest -> ``test``.
- the image-folder layout ``train/<emotion>/*.jpg`` and ``test/<emotion>/*.jpg`` (Kaggle
  "fer2013" images) with folders angry, disgust, fear, happy, sad, surprise, neutral. It has no
  PublicTest split, so ``val`` is carved from train by ``dataset.val_size``.

Labels use FER2013's order: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral.
When the CSV has PublicTest rows they are the ``val`` split and ``dataset.val_size`` is ignored.

FER+ (Barsoum et al. 2016) relabels the same images: ``fer2013new.csv`` has one row per row of
``fer2013.csv`` (aligned 1:1 by position) with ``Usage, Image name`` and the vote counts of 10
annotators over ``neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
unknown, NF``. Label rules (``dataset.label_rule``):

- ``argmax`` (default): label = the column with the most votes; on a tie the first column in
  the order above wins. Rows whose winner is ``unknown`` or ``NF`` (not a face), rows without
  votes and rows with an empty image name are dropped.
- ``majority``: the FERPlus repository's "majority" mode: single votes are discarded as
  outliers, then a row keeps the top emotion only if it has more than half of the remaining
  votes; other rows, and rows whose top is ``unknown``/``NF``, are dropped.

The split comes from the FER+ file's ``Usage`` column (PublicTest is ``val``).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from prune_cli.data.base import DATASETS, DatasetBundle, Split, resolve_path
from prune_cli.errors import DataNotFoundError, unknown_choice

SIDE = 48
FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FERPLUS_CLASSES = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
]
FERPLUS_VOTE_COLUMNS = [*FERPLUS_CLASSES, "unknown", "NF"]
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
# Pixel mean/std of the FER2013 training images (pixel / 255).
FER_MEAN, FER_STD = (0.5077,), (0.2550,)
FER_SOURCE = (
    "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-"
    "recognition-challenge (fer2013.csv) or https://www.kaggle.com/datasets/msambare/fer2013 "
    "(image folders)"
)
FERPLUS_SOURCE = "https://github.com/microsoft/FERPlus (fer2013new.csv)"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
LABEL_RULES = ("argmax", "majority")


def read_fer_csv(path: Path, dataset: str = "fer2013") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``fer2013.csv`` -> images uint8 ``(N, 1, 48, 48)``, emotions int64 ``(N,)``, Usage strings.

    Every row is checked: a bad pixel string or emotion is an error naming the file and line.
    """
    images, emotions, usages = [], [], []
    for line, row in _csv_rows(path, ("emotion", "pixels", "Usage"), dataset):
        with warnings.catch_warnings():  # a short row warns; the length check reports it
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = np.fromstring(row["pixels"], dtype=np.int32, sep=" ")
        if pixels.size != SIDE * SIDE or pixels.min() < 0 or pixels.max() > 255:
            raise DataNotFoundError(
                f"{dataset}: bad row in {path} line {line}: 'pixels' must hold "
                f"{SIDE * SIDE} space-separated values 0..255"
            )
        if row["emotion"] not in {str(i) for i in range(len(FER_CLASSES))}:
            raise DataNotFoundError(
                f"{dataset}: bad row in {path} line {line}: emotion {row['emotion']!r} is not 0..6"
            )
        images.append(pixels.astype(np.uint8))
        emotions.append(int(row["emotion"]))
        usages.append(row["Usage"])
    if not images:
        raise DataNotFoundError(f"{dataset}: {path} has no data rows")
    stacked = np.stack(images).reshape(-1, 1, SIDE, SIDE)
    return stacked, np.asarray(emotions, dtype=np.int64), usages


def read_ferplus_votes(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``fer2013new.csv`` -> votes int64 ``(N, 10)``, Usage strings, ``usable`` bool ``(N,)``.

    A row is not usable when its image name is empty or its vote cells are empty; such rows
    get zero votes.
    """
    votes, usages, usable = [], [], []
    needed = ("Usage", "Image name", *FERPLUS_VOTE_COLUMNS)
    for line, row in _csv_rows(path, needed, "ferplus"):
        cells = [row[c] for c in FERPLUS_VOTE_COLUMNS]
        has_votes = all(cells)
        try:
            counts = [int(c) for c in cells] if has_votes else [0] * len(cells)
        except ValueError:
            counts = [-1]
        if min(counts) < 0:
            raise DataNotFoundError(
                f"ferplus: bad row in {path} line {line}: vote counts must be integers >= 0, "
                f"got {cells}"
            )
        votes.append(counts)
        usages.append(row["Usage"])
        usable.append(has_votes and bool(row["Image name"]))
    return np.asarray(votes, dtype=np.int64).reshape(-1, 10), usages, np.asarray(usable, bool)


def ferplus_labels(votes: np.ndarray, rule: str = "argmax") -> np.ndarray:
    """FER+ labels (0..7, FERPLUS_CLASSES order) from ``(N, 10)`` votes; -1 marks dropped rows.

    See the module docstring for the ``argmax`` and ``majority`` rules. ``np.argmax`` returns
    the first maximum, which is the documented tie rule.
    """
    votes = np.asarray(votes, dtype=np.int64)
    if rule == "majority":
        votes = np.where(votes <= 1, 0, votes)  # FERPlus drops single votes as outliers
    elif rule != "argmax":
        raise unknown_choice("dataset.label_rule", rule, LABEL_RULES)
    top = votes.argmax(axis=1)
    best = votes.max(axis=1)
    keep = (best > 0) & (top < len(FERPLUS_CLASSES))
    if rule == "majority":
        keep &= 2 * best > votes.sum(axis=1)
    return np.where(keep, top, -1)


def _csv_rows(
    path: Path, needed: tuple[str, ...], dataset: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV file with a header naming at least ``needed``.

    Unreadable files, bad encodings and malformed CSV become one-line errors naming the file.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            _require_columns(reader.fieldnames, needed, path, dataset)
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataNotFoundError(f"{dataset}: cannot read {path} ({type(e).__name__}: {e})") from e


def _require_columns(found: Any, needed: tuple[str, ...], path: Path, dataset: str) -> None:
    missing = [c for c in needed if c not in (found or [])]
    if missing:
        raise DataNotFoundError(
            f"{dataset}: {path} lacks column(s) {', '.join(missing)} (expected {','.join(needed)})"
        )


def _splits_by_usage(
    images: np.ndarray, labels: np.ndarray, usages: list[str], path: Path, dataset: str
) -> dict[str, Split]:
    names = np.asarray([USAGE_TO_SPLIT.get(u, "") for u in usages])
    bad = sorted({u for u in usages if u not in USAGE_TO_SPLIT})
    if bad:
        raise DataNotFoundError(
            f"{dataset}: {path} has unknown Usage value(s) {bad}; expected one of "
            f"{', '.join(USAGE_TO_SPLIT)}"
        )
    splits = {}
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(names == split)
        if rows.size:
            splits[split] = Split(
                labels=torch.from_numpy(labels[rows].copy()),
                images=torch.from_numpy(images[rows].copy()),
            )
    for needed, usage in (("train", "Training"), ("test", "PrivateTest")):
        if needed not in splits:
            raise DataNotFoundError(f"{dataset}: {path} has no {usage} rows (the {needed} split)")
    return splits


def _read_image_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``folder/<emotion>/*`` -> uint8 ``(N, 1, 48, 48)`` and labels, in label then name order."""
    known = {name: i for i, name in enumerate(FER_CLASSES)}
    images, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = known.get(sub.name.lower())
        if label is None:
            raise DataNotFoundError(
                f"fer2013: unknown emotion folder {sub}; expected folders {', '.join(FER_CLASSES)}"
            )
        for file in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            images.append(_decode_gray(file))
            labels.append(label)
    if not images:
        raise DataNotFoundError(f"fer2013: no images in {folder}/<emotion>/ (expected *.jpg)")
    order = sorted(range(len(labels)), key=labels.__getitem__)  # stable: keeps name order
    return torch.stack([images[i] for i in order]), torch.tensor([labels[i] for i in order])


def _decode_gray(file: Path) -> torch.Tensor:
    """One image as uint8 ``(1, 48, 48)`` grayscale (other sizes are resized, bilinear)."""
    try:
        with Image.open(file) as im:
            gray = im.convert("L")
    except (OSError, SyntaxError) as e:  # PIL reports truncated/corrupt files with these
        raise DataNotFoundError(f"fer2013: cannot decode image {file} ({e})") from e
    if gray.size != (SIDE, SIDE):
        gray = gray.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(gray, dtype=np.uint8))[None]


def _fer_bundle(name: str, splits: dict[str, Split], classes: list[str]) -> DatasetBundle:
    return DatasetBundle(
        name=name,
        num_classes=len(classes),
        in_channels=1,
        image_size=SIDE,
        mean=FER_MEAN,
        std=FER_STD,
        splits=splits,
        class_names=list(classes),
    )


def _no_download_note(cfg: Mapping[str, Any]) -> str:
    return "; there is no downloader: Kaggle needs a login" if cfg.get("download") else ""


@DATASETS.register("fer2013")
def build_fer2013(cfg: Mapping[str, Any]) -> DatasetBundle:
    """FER2013: 7 classes, 1x48x48; from ``fer2013.csv`` (preferred) or the image folders."""
    root = resolve_path(cfg.get("root") or "data/fer2013")
    csv_path = resolve_path(cfg["fer2013_csv"]) if cfg.get("fer2013_csv") else root / "fer2013.csv"
    if csv_path.is_file():
        images, labels, usages = read_fer_csv(csv_path)
        return _fer_bundle(
            "fer2013", _splits_by_usage(images, labels, usages, csv_path, "fer2013"), FER_CLASSES
        )
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() or test_dir.is_dir():
        missing = [f"{d.name}/" for d in (train_dir, test_dir) if not d.is_dir()]
        if missing:
            raise DataNotFoundError(
                f"fer2013: incomplete image folders in {root}: missing {', '.join(missing)} "
                f"(expected train/<emotion>/*.jpg and test/<emotion>/*.jpg; get them from "
                f"{FER_SOURCE})"
            )
        splits = {}
        for split, folder in (("train", train_dir), ("test", test_dir)):
            x, y = _read_image_folder(folder)
            splits[split] = Split(labels=y, images=x)
        return _fer_bundle("fer2013", splits, FER_CLASSES)
    raise DataNotFoundError(
        f"fer2013: no FER2013 data in {root} (expected {csv_path.name} with columns "
        f"emotion,pixels,Usage, or train/<emotion>/*.jpg and test/<emotion>/*.jpg; get them "
        f"from {FER_SOURCE}{_no_download_note(cfg)})"
    )


@DATASETS.register("ferplus")
def build_ferplus(cfg: Mapping[str, Any]) -> DatasetBundle:
    """FER+: 8 classes, 1x48x48; FER2013 images relabelled by ``fer2013new.csv`` votes."""
    root = resolve_path(cfg.get("root") or "data/ferplus")
    rule = str(cfg.get("label_rule") or "argmax")
    if rule not in LABEL_RULES:
        raise unknown_choice("dataset.label_rule", rule, LABEL_RULES)
    labels_path = (
        resolve_path(cfg["ferplus_csv"]) if cfg.get("ferplus_csv") else root / "fer2013new.csv"
    )
    images_path = (
        resolve_path(cfg["fer2013_csv"]) if cfg.get("fer2013_csv") else root / "fer2013.csv"
    )
    note = _no_download_note(cfg)
    if not labels_path.is_file():
        raise DataNotFoundError(
            f"ferplus: no FER+ label file {labels_path} (expected fer2013new.csv with columns "
            f"Usage,Image name,{','.join(FERPLUS_VOTE_COLUMNS)}; get it from {FERPLUS_SOURCE} "
            f"or set dataset.ferplus_csv{note})"
        )
    if not images_path.is_file():
        raise DataNotFoundError(
            f"ferplus: no FER2013 images {images_path} (expected fer2013.csv with columns "
            f"emotion,pixels,Usage; get it from {FER_SOURCE} or set dataset.fer2013_csv{note})"
        )
    images, _, _ = read_fer_csv(images_path, "ferplus")
    votes, usages, usable = read_ferplus_votes(labels_path)
    if len(votes) != len(images):
        raise DataNotFoundError(
            f"ferplus: {labels_path} has {len(votes)} rows but {images_path} has {len(images)}; "
            f"the FER+ rows must align 1:1 with fer2013.csv"
        )
    labels = ferplus_labels(votes, rule)
    keep = np.flatnonzero(usable & (labels >= 0))
    splits = _splits_by_usage(
        images[keep], labels[keep], [usages[i] for i in keep], labels_path, "ferplus"
    )
    return _fer_bundle("ferplus", splits, FERPLUS_CLASSES)
