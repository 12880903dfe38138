"""Datasets: builders registered by config name, and the loaders they hand out.

``build_dataset(cfg)`` takes the Hydra ``dataset`` node. Keys shared by every dataset:

- ``name``: ``shapes`` (offline default), ``cifar10``, ``cifar100``, ``fer2013``, ``ferplus``,
  ``imagenet``.
- ``root``: data directory; a relative path is taken from the directory the user launched in.
- ``download``: fetch missing files with torchvision's downloader (CIFAR only).
- ``val_size``: validation images held out of train: an int count, a float fraction in (0, 1),
  or 0 for none. Drawn stratified by class with ``split_seed``. Ignored (with a warning) when
  the dataset has its own validation split (FER2013/FER+ PublicTest).
- ``mean``/``std``: optional per-channel normalization override (a number or a list).
- ``crop_padding``/``hflip``: training augmentation of in-memory datasets (random crop from
  the zero-padded image, horizontal flip); defaults 4 and true.
- ``on_bad_file`` (datasets read from files): ``error`` (default) stops at the first corrupt,
  truncated or unreadable file or CSV row, naming it; ``skip`` leaves such files out, logs each
  and counts them (``DatasetBundle.bad_files``, ``metrics.json`` ``data``).

Each family declares its keys as a typed options class (``DATASET_OPTIONS``); ``build_dataset``
checks the config against it first, so a bad value is one line before any file is read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from prune_cli.data import cifar, fer, imagenet, shapes  # noqa: F401  (registers the builders)
from prune_cli.data.base import (
    DATASET_OPTIONS,
    DATASETS,
    BatchLoader,
    DatasetBundle,
    DatasetOptions,
    Split,
    dataset_options,
    resolve_path,
    stats_of,
    with_val_split,
)

log = logging.getLogger("prune_cli")

__all__ = [
    "DATASETS",
    "DATASET_OPTIONS",
    "BatchLoader",
    "DatasetBundle",
    "DatasetOptions",
    "Split",
    "build_dataset",
    "dataset_options",
    "resolve_path",
    "with_val_split",
]


def build_dataset(cfg: DatasetOptions | Mapping[str, Any]) -> DatasetBundle:
    """Build the dataset of the typed options ``cfg`` (a mapping is typed first, the keys it
    leaves out taken from ``configs/dataset/<name>.yaml``) and apply the shared options (see
    module doc)."""
    options = cfg if isinstance(cfg, DatasetOptions) else dataset_options(cfg, fill=True)
    bundle = _apply_overrides(DATASETS.get(options.name)(options), options)
    if bundle.bad_files.skipped:
        log.warning(
            "%s: %d bad file(s) or row(s) skipped (dataset.on_bad_file=skip)",
            bundle.name,
            len(bundle.bad_files.skipped),
        )
    return with_val_split(bundle, options.val_size, options.split_seed)


def _apply_overrides(bundle: DatasetBundle, options: DatasetOptions) -> DatasetBundle:
    return dataclasses.replace(
        bundle,
        mean=stats_of(options.mean, bundle.mean),
        std=stats_of(options.std, bundle.std),
        crop_padding=getattr(options, "crop_padding", bundle.crop_padding),
        hflip=options.hflip,
    )
