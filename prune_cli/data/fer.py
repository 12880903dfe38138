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

Bad input is named: a CSV row with the wrong number of pixels or a bad label (file and line),
an image file that cannot be decoded (file). With ``dataset.on_bad_file=skip`` such rows and
files are left out, logged and counted in ``metrics.json`` (a skipped ``fer2013.csv`` row drops
its FER+ row too, keeping the 1:1 alignment). Images in another mode (RGB, RGBA, CMYK, palette)
are converted to grayscale.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from prune_cli.data.base import (
    DatasetBundle,
    FileOptions,
    InMemoryOptions,
    Split,
    bad_files_for,
    register_dataset,
    resolve_path,
)
from prune_cli.data.loaders import DECODE_ERRORS, BadFiles, decode_reason
from prune_cli.errors import BadFileError, DataNotFoundError, unknown_choice
from prune_cli.options import OneOf, Text

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


def _row_problem(row: dict[str, str]) -> tuple[np.ndarray | None, str]:
    """The pixels of a ``fer2013.csv`` row, or None and what is wrong with it."""
    with warnings.catch_warnings():  # a short row warns; the length check reports it
        warnings.simplefilter("ignore", DeprecationWarning)
        pixels = np.fromstring(row.get("pixels") or "", dtype=np.int32, sep=" ")
    if pixels.size != SIDE * SIDE or pixels.min() < 0 or pixels.max() > 255:
        return None, (
            f"'pixels' must hold {SIDE * SIDE} space-separated values 0..255 "
            f"(found {pixels.size} values)"
        )
    if row.get("emotion") not in {str(i) for i in range(len(FER_CLASSES))}:
        return None, f"emotion {row.get('emotion')!r} is not 0..6"
    return pixels.astype(np.uint8), ""


def read_fer_csv(
    path: Path, dataset: str = "fer2013", bad: BadFiles | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``fer2013.csv`` -> images uint8 ``(N, 1, 48, 48)``, emotions int64 ``(N,)``, Usage
    strings and ``ok`` bool ``(N,)``.

    Every row is checked: a bad pixel string or emotion goes to ``bad`` naming the file and
    line (an error, unless ``on_bad_file=skip``: then the row stays as a zero image with
    ``ok`` False, so that row positions still align with ``fer2013new.csv``).
    """
    bad = bad or BadFiles(dataset)
    images, emotions, usages, ok = [], [], [], []
    for line, row in _csv_rows(path, ("emotion", "pixels", "Usage"), dataset):
        pixels, problem = _row_problem(row)
        if pixels is None:
            bad.found(f"{path} line {line}", problem)
            pixels = np.zeros(SIDE * SIDE, dtype=np.uint8)
        images.append(pixels)
        emotions.append(int(row["emotion"]) if not problem else 0)
        usages.append(row["Usage"])
        ok.append(not problem)
    if not any(ok):
        raise DataNotFoundError(f"{dataset}: {path} has no usable data rows")
    stacked = np.stack(images).reshape(-1, 1, SIDE, SIDE)
    return stacked, np.asarray(emotions, dtype=np.int64), usages, np.asarray(ok, dtype=bool)


def read_ferplus_votes(
    path: Path, bad: BadFiles | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``fer2013new.csv`` -> votes int64 ``(N, 10)``, Usage strings, ``usable`` bool ``(N,)``.

    A row is not usable when its image name is empty or its vote cells are empty; such rows
    get zero votes. A row with malformed votes goes to ``bad`` (an error naming the file and
    line, or a skipped, unusable row).
    """
    bad = bad or BadFiles("ferplus")
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
            bad.found(f"{path} line {line}", f"vote counts must be integers >= 0, got {cells}")
            counts, has_votes = [0] * len(cells), False
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
    reader = None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            _require_columns(reader.fieldnames, needed, path, dataset)
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        line = f" line {reader.line_num}" if reader is not None and reader.line_num else ""
        reason = " ".join(str(getattr(e, "strerror", None) or e).split())
        raise BadFileError(
            f"{dataset}: cannot read {path}{line} ({type(e).__name__}: {reason})"
        ) from e


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


def _read_image_folder(folder: Path, bad: BadFiles) -> tuple[torch.Tensor, torch.Tensor]:
    """``folder/<emotion>/*`` -> uint8 ``(N, 1, 48, 48)`` and labels, in label then name order.

    An image that cannot be decoded goes to ``bad`` (an error naming it, or skipped)."""
    known = {name: i for i, name in enumerate(FER_CLASSES)}
    images, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = known.get(sub.name.lower())
        if label is None:
            raise DataNotFoundError(
                f"fer2013: unknown emotion folder {sub}; expected folders {', '.join(FER_CLASSES)}"
            )
        for file in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                images.append(_decode_gray(file))
            except DECODE_ERRORS as e:
                bad.found(str(file), decode_reason(e, str(file)))
                continue
            labels.append(label)
    if not images:
        raise DataNotFoundError(f"fer2013: no images in {folder}/<emotion>/ (expected *.jpg)")
    order = sorted(range(len(labels)), key=labels.__getitem__)  # stable: keeps name order
    return torch.stack([images[i] for i in order]), torch.tensor([labels[i] for i in order])


def _decode_gray(file: Path) -> torch.Tensor:
    """One image as uint8 ``(1, 48, 48)`` grayscale (other sizes are resized, bilinear; other
    modes converted). PIL's errors (:data:`DECODE_ERRORS`) pass through to the caller."""
    with Image.open(file) as im:
        gray = im.convert("L")
    if gray.size != (SIDE, SIDE):
        gray = gray.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(gray, dtype=np.uint8))[None]


def _fer_bundle(
    name: str, splits: dict[str, Split], classes: list[str], bad: BadFiles
) -> DatasetBundle:
    return DatasetBundle(
        name=name,
        num_classes=len(classes),
        in_channels=1,
        image_size=SIDE,
        mean=FER_MEAN,
        std=FER_STD,
        splits=splits,
        class_names=list(classes),
        bad_files=bad,
    )


def _no_download_note(opts: FerOptions) -> str:
    return "; there is no downloader: Kaggle needs a login" if opts.download else ""


class FerOptions(FileOptions, InMemoryOptions):
    """``dataset=fer2013`` keys: the shared ones plus ``fer2013_csv``, ``crop_padding`` and
    ``on_bad_file``."""

    channels: ClassVar[int] = 1
    side: ClassVar[int] = SIDE

    fer2013_csv: Text("a path to fer2013.csv") | None


class FerPlusOptions(FerOptions):
    """``dataset=ferplus`` keys: FER2013's plus ``ferplus_csv`` and ``label_rule``."""

    ferplus_csv: Text("a path to fer2013new.csv") | None
    label_rule: OneOf(*LABEL_RULES)


@register_dataset("fer2013", FerOptions)
def build_fer2013(opts: FerOptions) -> DatasetBundle:
    """FER2013: 7 classes, 1x48x48; from ``fer2013.csv`` (preferred) or the image folders."""
    root = resolve_path(opts.root)
    csv_path = resolve_path(opts.fer2013_csv) if opts.fer2013_csv else root / "fer2013.csv"
    bad = bad_files_for("fer2013", opts)
    if csv_path.is_file():
        images, labels, usages, ok = read_fer_csv(csv_path, "fer2013", bad)
        rows = np.flatnonzero(ok)
        splits = _splits_by_usage(
            images[rows], labels[rows], [usages[i] for i in rows], csv_path, "fer2013"
        )
        return _fer_bundle("fer2013", splits, FER_CLASSES, bad)
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
            x, y = _read_image_folder(folder, bad)
            splits[split] = Split(labels=y, images=x)
        return _fer_bundle("fer2013", splits, FER_CLASSES, bad)
    raise DataNotFoundError(
        f"fer2013: no FER2013 data in {root} (expected {csv_path.name} with columns "
        f"emotion,pixels,Usage, or train/<emotion>/*.jpg and test/<emotion>/*.jpg; get them "
        f"from {FER_SOURCE}{_no_download_note(opts)})"
    )


@register_dataset("ferplus", FerPlusOptions)
def build_ferplus(opts: FerPlusOptions) -> DatasetBundle:
    """FER+: 8 classes, 1x48x48; FER2013 images relabelled by ``fer2013new.csv`` votes."""
    root = resolve_path(opts.root)
    rule = opts.label_rule
    labels_path = resolve_path(opts.ferplus_csv) if opts.ferplus_csv else root / "fer2013new.csv"
    images_path = resolve_path(opts.fer2013_csv) if opts.fer2013_csv else root / "fer2013.csv"
    note = _no_download_note(opts)
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
    bad = bad_files_for("ferplus", opts)
    images, _, _, ok = read_fer_csv(images_path, "ferplus", bad)
    votes, usages, usable = read_ferplus_votes(labels_path, bad)
    if len(votes) != len(images):
        raise DataNotFoundError(
            f"ferplus: {labels_path} has {len(votes)} rows but {images_path} has {len(images)}; "
            f"the FER+ rows must align 1:1 with fer2013.csv"
        )
    labels = ferplus_labels(votes, rule)
    keep = np.flatnonzero(usable & ok & (labels >= 0))
    splits = _splits_by_usage(
        images[keep], labels[keep], [usages[i] for i in keep], labels_path, "ferplus"
    )
    return _fer_bundle("ferplus", splits, FERPLUS_CLASSES, bad)
