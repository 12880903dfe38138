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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prune_cli.data import cifar, fer, imagenet, shapes  # noqa: F401  (registers the builders)
from prune_cli.data.base import (
    DATASETS,
    BatchLoader,
    DatasetBundle,
    Split,
    cfg_int,
    cfg_stats,
    resolve_path,
    with_val_split,
)
from prune_cli.errors import ConfigError

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetBundle",
    "Split",
    "build_dataset",
    "resolve_path",
    "with_val_split",
]


def build_dataset(cfg: Mapping[str, Any]) -> DatasetBundle:
    """Build the dataset named ``cfg['name']`` and apply the shared options (see module doc)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    if not isinstance(cfg, Mapping) or not cfg.get("name"):
        raise ConfigError(f"dataset.name is required; choose one of: {', '.join(DATASETS)}")
    bundle = DATASETS.get(str(cfg["name"]))(cfg)
    bundle = _apply_overrides(bundle, cfg)
    return with_val_split(bundle, cfg.get("val_size") or 0, cfg_int(cfg, "split_seed", 0))


def _apply_overrides(bundle: DatasetBundle, cfg: Mapping[str, Any]) -> DatasetBundle:
    hflip = cfg.get("hflip")
    hflip = bundle.hflip if hflip is None else hflip
    if not isinstance(hflip, bool):
        raise ConfigError(f"dataset.hflip must be true or false, got {hflip!r}")
    return dataclasses.replace(
        bundle,
        mean=cfg_stats(cfg, "mean", bundle.mean),
        std=cfg_stats(cfg, "std", bundle.std),
        crop_padding=cfg_int(cfg, "crop_padding", bundle.crop_padding, minimum=0),
        hflip=hflip,
    )
