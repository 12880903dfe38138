"""Writers of tiny datasets in the real on-disk formats, for tests (no download, no real data).

Each writer returns what it wrote, so tests can compare the loader's output with it exactly.
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

FER_HEADER = ["emotion", "pixels", "Usage"]
FERPLUS_HEADER = [
    "Usage",
    "Image name",
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
]


def _pickle(path: Path, obj: dict, bytes_keys: bool) -> None:
    if bytes_keys:  # the official files are Python 2 pickles whose str keys load as bytes
        obj = {k.encode(): v for k, v in obj.items()}
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(
    root: Path, per_batch: int = 4, seed: int = 0, bytes_keys: bool = True
) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with 5 train batches and a test batch of ``per_batch`` images.

    Returns train/test images (uint8 ``(N, 3, 32, 32)``) and labels in file order.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        x = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_batch).tolist()
        batch = {"batch_label": name, "labels": y, "data": x.reshape(per_batch, -1)}
        _pickle(folder / name, batch, bytes_keys)
        split = "test" if name == "test_batch" else "train"
        out[f"{split}_x"].append(x)
        out[f"{split}_y"].append(np.asarray(y))
    labels = [f"class{i}".encode() if bytes_keys else f"class{i}" for i in range(10)]
    _pickle(folder / "batches.meta", {"label_names": labels, "num_vis": 3072}, bytes_keys)
    return {k: np.concatenate(v) for k, v in out.items()}


def write_cifar100(root: Path, n: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    """``root/cifar-100-python/{train,test,meta}`` with ``n`` images each; fine + coarse labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name in ("train", "test"):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        coarse = [f // 5 for f in fine]
        batch = {"data": x.reshape(n, -1), "fine_labels": fine, "coarse_labels": coarse}
        _pickle(folder / name, batch, bytes_keys=True)
        out[f"{name}_x"], out[f"{name}_y"] = x, np.asarray(fine)
    meta = {"fine_label_names": [f"fine{i}".encode() for i in range(100)]}
    _pickle(folder / "meta", meta, bytes_keys=True)
    return out


def face(value: int, seed: int | None = None) -> np.ndarray:
    """A 48x48 uint8 image: random when ``seed`` is given, else flat ``value``."""
    if seed is None:
        return np.full((48, 48), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, size=(48, 48), dtype=np.uint8)


def write_fer_csv(path: Path, rows: Sequence[tuple[int, np.ndarray, str]]) -> None:
    """``fer2013.csv`` from ``(emotion, 48x48 uint8 image, Usage)`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FER_HEADER)
        for emotion, img, usage in rows:
            w.writerow([emotion, " ".join(str(v) for v in img.flatten()), usage])


def write_ferplus_csv(path: Path, rows: Sequence[tuple[str, str, Sequence[int | str]]]) -> None:
    """``fer2013new.csv`` from ``(Usage, Image name, 10 vote cells)`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FERPLUS_HEADER)
        for usage, name, votes in rows:
            w.writerow([usage, name, *votes])


def write_image(path: Path, pixels: np.ndarray) -> None:
    """Save a uint8 HxW (grayscale) or HxWx3 (RGB) array with PIL; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def write_imagenet(
    root: Path, wnids: Sequence[str], n_train: int = 2, n_val: int = 1, side: int = 20
) -> None:
    """``root/{train,val}/<wnid>/*.JPEG`` of flat-colour RGB images (colour = class index)."""
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(wnids):
            for i in range(n):
                img = np.full((side, side + 4, 3), (40 * c, 100, 10 * i), dtype=np.uint8)
                write_image(root / split / wnid / f"{wnid}_{i}.JPEG", img)


# ----------------------------------------------------------------------------- bad files
def write_not_an_image(path: Path, text: str = "this is not an image\n") -> None:
    """A text file with an image suffix (e.g. a stray note saved as ``.JPEG``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_truncated_image(path: Path, side: int = 24, keep: float = 0.5, seed: int = 0) -> None:
    """A real JPEG/PNG (format from the suffix) cut to ``keep`` of its bytes, as a copy
    interrupted mid-way leaves it."""
    rng = np.random.default_rng(seed)
    write_image(path, rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def write_image_in_mode(path: Path, mode: str, side: int = 24) -> None:
    """An image stored in PIL ``mode`` (``L``, ``CMYK``, ``RGBA``, ``P``...): a format that
    holds that mode is chosen from the suffix (JPEG for CMYK, PNG otherwise)."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb.convert(mode)
    image.save(path, format="JPEG" if mode == "CMYK" else "PNG")
