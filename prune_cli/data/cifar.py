"""CIFAR-10 and CIFAR-100 from the official python pickle batches.

Layouts (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html):

- CIFAR-10: ``cifar-10-batches-py/data_batch_1..5`` (train), ``test_batch``, ``batches.meta``
  (``label_names``). Each batch holds ``data`` (uint8 ``(N, 3072)``: 1024 red, 1024 green,
  1024 blue values, each a row-major 32x32 plane) and ``labels``.
- CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta`` (``fine_label_names``); labels are
  the 100 ``fine_labels``.

The batches are read directly (not with ``torchvision.datasets.CIFAR10``, whose md5 check
rejects subsets). ``root`` may be the parent folder or the batch folder itself.
``download: true`` calls torchvision's downloader only when files are missing.

A corrupt or truncated batch file is an error naming it; with ``dataset.on_bad_file=skip`` a
bad train batch is left out (logged and counted in ``metrics.json``), while a bad test batch
stays an error (there is no test split without it). A bad meta file only loses the class names.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from prune_cli.data.base import (
    DatasetBundle,
    FileOptions,
    InMemoryOptions,
    Split,
    bad_files_for,
    register_dataset,
    resolve_path,
)
from prune_cli.data.loaders import BadFiles
from prune_cli.errors import BadFileError, DataNotFoundError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant keeps its files and labels."""

    name: str
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    downloader: str  # attribute of torchvision.datasets


# Per-channel mean/std of the training images (pixel / 255).
CIFAR10 = CifarFormat(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    downloader="CIFAR10",
)
CIFAR100 = CifarFormat(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    downloader="CIFAR100",
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays: a CIFAR batch needs nothing else.

    A plain ``pickle.load`` runs arbitrary code from a tampered file; refusing every other
    global keeps the loader from executing anything found in a data directory.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


class _Unreadable(Exception):
    """Why a CIFAR file cannot be used (reported through :class:`BadFiles`)."""


# Everything a truncated, corrupt or foreign pickle makes the unpickler raise.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
)


def _load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with ``str`` keys (the files may hold bytes or str keys)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Unreadable(f"{type(e).__name__}: {e.strerror}") from e
    try:
        raw = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _PICKLE_ERRORS as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise _Unreadable(f"not a CIFAR pickle ({reason})") from e
    if not isinstance(raw, dict):
        raise _Unreadable("not a CIFAR pickle (no dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_batch(path: Path, fmt: CifarFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``(N, 3, 32, 32)`` and labels int64 ``(N,)`` of one batch file."""
    batch = _load_pickle(path)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[fmt.label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except (KeyError, ValueError, TypeError) as e:
        raise _Unreadable(
            f"expected 'data' (N x 3072 uint8) and '{fmt.label_key}' ({type(e).__name__}: {e})"
        ) from e
    if len(images) != len(labels) or (
        labels.size and not 0 <= labels.min() <= labels.max() < fmt.num_classes
    ):
        raise _Unreadable(
            f"{len(images)} images, {len(labels)} labels, labels must be in "
            f"0..{fmt.num_classes - 1}"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _read_batches(
    folder: Path, names: tuple[str, ...], fmt: CifarFormat, bad: BadFiles
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The readable batches among ``names``; each bad one goes to ``bad`` (error or skip)."""
    out = []
    for name in names:
        try:
            out.append(_read_batch(folder / name, fmt))
        except _Unreadable as e:
            bad.found(str(folder / name), str(e))
    return out


def _class_names(folder: Path, fmt: CifarFormat, bad: BadFiles) -> list[str]:
    numbers = [str(i) for i in range(fmt.num_classes)]
    meta_path = folder / fmt.meta_file
    if not meta_path.is_file():  # the names are cosmetic: fall back to numbers
        return numbers
    try:
        names = _load_pickle(meta_path).get(fmt.names_key, [])
    except _Unreadable as e:
        bad.found(str(meta_path), str(e))
        return numbers
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return names if len(names) == fmt.num_classes else numbers


def _batch_folder(root: Path, fmt: CifarFormat) -> Path:
    """``root/<folder>``, or ``root`` itself when it already is the batch folder."""
    if root.name == fmt.folder or (root / fmt.test_file).is_file():
        return root
    return root / fmt.folder


def _missing(folder: Path, fmt: CifarFormat) -> list[str]:
    return [f for f in (*fmt.train_files, fmt.test_file) if not (folder / f).is_file()]


def _expected(fmt: CifarFormat) -> str:
    train = fmt.train_files
    train_desc = f"{train[0][:-1]}1..{len(train)}" if len(train) > 1 else train[0]
    return f"{fmt.folder}/{train_desc}, {fmt.test_file}"


def _download(root: Path, fmt: CifarFormat) -> None:
    import torchvision.datasets

    parent = root.parent if root.name == fmt.folder else root
    parent.mkdir(parents=True, exist_ok=True)
    try:
        getattr(torchvision.datasets, fmt.downloader)(str(parent), download=True)
    except (OSError, RuntimeError) as e:  # no network, bad archive, full disk...
        reason = " ".join(str(e).split())
        raise DataNotFoundError(
            f"{fmt.name}: downloading {fmt.title} into {parent} failed ({reason}); get "
            f"{fmt.folder} from {URL}"
        ) from e


def load_cifar(opts: CifarOptions, fmt: CifarFormat) -> DatasetBundle:
    """Read a CIFAR variant from ``dataset.root`` (downloading first if asked and missing)."""
    root = resolve_path(opts.root)
    folder = _batch_folder(root, fmt)
    missing = _missing(folder, fmt)
    if missing and opts.download:
        _download(root, fmt)
        folder = _batch_folder(root, fmt)
        missing = _missing(folder, fmt)
    if missing:
        what = "no" if len(missing) == len(fmt.train_files) + 1 else "incomplete"
        detail = "" if what == "no" else f": missing {', '.join(missing)}"
        raise DataNotFoundError(
            f"{fmt.name}: {what} {fmt.title} batches in {folder}{detail} (expected "
            f"{_expected(fmt)}; get them from {URL} or set dataset.download=true)"
        )
    bad = bad_files_for(fmt.name, opts)
    train = _read_batches(folder, fmt.train_files, fmt, bad)
    test = _read_batches(folder, (fmt.test_file,), fmt, bad)
    if not train or not test:
        which = "train batch" if not train else "test batch"
        raise BadFileError(
            f"{fmt.name}: no readable {which} in {folder} (skipped: {'; '.join(bad.skipped)})"
        )
    (test_x, test_y), class_names = test[0], _class_names(folder, fmt, bad)
    return DatasetBundle(
        name=fmt.name,
        num_classes=fmt.num_classes,
        in_channels=3,
        image_size=32,
        mean=fmt.mean,
        std=fmt.std,
        splits={
            "train": Split(
                labels=torch.cat([y for _, y in train]), images=torch.cat([x for x, _ in train])
            ),
            "test": Split(labels=test_y, images=test_x),
        },
        class_names=class_names,
        bad_files=bad,
    )


class CifarOptions(FileOptions, InMemoryOptions):
    """``dataset=cifar10`` / ``cifar100`` keys: the shared ones plus ``crop_padding`` and
    ``on_bad_file``."""


@register_dataset("cifar10", CifarOptions)
def build_cifar10(opts: CifarOptions) -> DatasetBundle:
    """CIFAR-10: 10 classes, 3x32x32, 50,000 train / 10,000 test images."""
    return load_cifar(opts, CIFAR10)


@register_dataset("cifar100", CifarOptions)
def build_cifar100(opts: CifarOptions) -> DatasetBundle:
    """CIFAR-100 (fine labels): 100 classes, 3x32x32, 50,000 train / 10,000 test images."""
    return load_cifar(opts, CIFAR100)
