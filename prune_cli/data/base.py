"""Dataset containers shared by every dataset family.

Conventions (all datasets):

- Images of the small datasets (CIFAR, FER, shapes) are held in memory as one ``uint8`` tensor of
  shape ``(N, C, H, W)`` with values 0..255; labels are ``int64`` of shape ``(N,)``. File-backed
  datasets (ImageNet) keep a list of image paths instead and decode them in a DataLoader.
- Every loader yields ``(x, y)``: ``x`` float32 NCHW, normalized per channel as
  ``(pixel / 255 - mean[c]) / std[c]``; ``y`` int64. Both are on the requested device.
- ``splits`` holds ``"train"`` and ``"test"``, plus ``"val"`` when there is a validation split.
  The test split is never used for validation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

import torch
from pydantic import PlainValidator, model_validator

from prune_cli import distributed
from prune_cli.data.loaders import BadFiles, FileLoader, TensorLoader
from prune_cli.defaults import group_defaults, with_defaults
from prune_cli.errors import ConfigError, unknown_choice
from prune_cli.options import Bool, Int, OneOf, Options, Text, Valid, is_number, parse
from prune_cli.registry import Registry


@runtime_checkable
class BatchLoader(Protocol):
    """What training and evaluation loops iterate over: the in-memory and the file loader.

    Iterating yields ``(x, y)``: float32 normalized NCHW images and int64 labels, on the device.
    ``len()`` is the number of batches; ``num_samples`` the number of images in the split.
    ``set_epoch(e)`` makes the next pass use the shuffle order and augmentation draws of epoch
    ``e``, a pure function of ``(seed, e)``, so a resumed run sees the same order.
    """

    num_samples: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(eq=False)  # tensors have no single truth value: compare splits by identity
class Split:
    """One split of a dataset.

    ``labels``: int64 ``(N,)``. Exactly one of ``images`` (uint8 ``(N, C, H, W)``, in-memory
    datasets) and ``files`` (image paths aligned with ``labels``, file-backed datasets) is set.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: list[str] | None = None
    _device_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if (self.images is None) == (self.files is None):
            raise ValueError("a Split holds either in-memory images or file paths, not both")
        n = len(self.images) if self.images is not None else len(self.files or [])
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, index: torch.Tensor) -> Split:
        """The samples at ``index`` (int64 positions), in that order."""
        if self.images is not None:
            return Split(labels=self.labels[index], images=self.images[index])
        files = self.files or []
        return Split(labels=self.labels[index], files=[files[i] for i in index.tolist()])

    def tensors_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` on ``device``; copied there once and cached.

        Small datasets fit in accelerator memory, so the whole uint8 tensor moves once and each
        batch is then gathered on the device, with no per-batch host-to-device copy.
        """
        if self.images is None:
            raise ValueError("tensors_on() needs an in-memory split")
        if device.type == "cpu":
            return self.images, self.labels
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = (self.images.to(device), self.labels.to(device))
        return self._device_cache[key]


@dataclass(eq=False)
class DatasetBundle:
    """A built dataset: its splits plus everything a model and a loader need to know about it.

    ``image_size`` is the side of the square input the model sees. ``mean``/``std`` are per
    channel, in units of pixel/255. In-memory training batches are augmented with a random crop
    from the image zero-padded by ``crop_padding`` pixels and, if ``hflip``, a horizontal flip
    with probability 1/2. File-backed datasets augment in ``train_transform`` instead;
    ``eval_transform`` is their deterministic evaluation pipeline.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: dict[str, Split]
    class_names: list[str]
    crop_padding: int = 4
    hflip: bool = True
    train_transform: Callable[[Any], torch.Tensor] | None = None
    eval_transform: Callable[[Any], torch.Tensor] | None = None
    num_workers: int = 0
    #: Unreadable files met so far and the ``dataset.on_bad_file`` policy (shared by copies).
    bad_files: BadFiles = field(default_factory=lambda: BadFiles("dataset"))
    #: What building the dataset did otherwise than asked (an ignored ``dataset.val_size``),
    #: for the run's warnings.
    notes: list[str] = field(default_factory=list)

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool = False,
    ) -> BatchLoader:
        """A loader over ``split``.

        ``train=True``: reshuffled every epoch and augmented; ``train=False``: the split's fixed
        order, no augmentation. The shuffle order and augmentation draws depend only on
        ``(seed, epoch)`` (see :class:`BatchLoader`).
        """
        if split not in self.splits:
            raise unknown_choice(f"{self.name} split", split, self.splits)
        if int(batch_size) < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        dev = torch.device(device)
        part = self.splits[split]
        # Under torchrun each rank loads its shard (prune_cli.distributed); else rank 0 of 1.
        common: dict[str, Any] = {
            "train": train,
            "mean": self.mean,
            "std": self.std,
            "device": dev,
            "seed": seed,
            "drop_last": drop_last,
            "rank": distributed.rank(),
            "world_size": distributed.world_size(),
        }
        if part.in_memory:
            images, labels = part.tensors_on(dev)
            return TensorLoader(
                images,
                labels,
                int(batch_size),
                crop_padding=self.crop_padding,
                hflip=self.hflip,
                **common,
            )
        transform = self.train_transform if train else self.eval_transform
        if transform is None:
            raise ValueError(f"{self.name}: file-backed split {split!r} has no transform")
        return FileLoader(
            part.files or [],
            part.labels,
            int(batch_size),
            transform=transform,
            num_workers=self.num_workers,
            bad_files=self.bad_files,
            **common,
        )


log = logging.getLogger(__name__)

DATASETS: Registry[Callable[[Mapping[str, Any]], DatasetBundle]] = Registry("dataset")


# ---------------------------------------------------------------------------- typed options
def _val_size(value: Any) -> int | float:
    if isinstance(value, str):  # a quoted command-line value
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("is out of range")
        return value
    if is_number(value):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError("is out of range")
        return float(value)
    raise ValueError("is not a count or a fraction")


def _stats(value: Any) -> float | list[float]:
    if is_number(value):
        return float(value)
    if isinstance(value, (list, tuple)) and value and all(is_number(v) for v in value):
        return [float(v) for v in value]
    raise ValueError("is not a number or a list of numbers")


#: ``dataset.val_size``: an int count, a float fraction in [0, 1), or 0 for none.
ValSize = Annotated[
    Any, PlainValidator(_val_size), Valid("an integer count >= 0 or a fraction in [0, 1)")
]
#: ``dataset.mean``/``std``: one number for every channel, or one per channel.
Stats = Annotated[Any, PlainValidator(_stats), Valid("a number or a list of numbers")]
Seed = Int(ge=0, lt=2**63, valid="an integer >= 0 (below 2**63)")


class DatasetOptions(Options):
    """Keys every dataset config has (see :mod:`prune_cli.data`). Each family adds its own
    and registers its class with :func:`register_dataset`; ``configs/dataset/<name>.yaml``
    has the defaults."""

    channels: ClassVar[int] = 3

    name: Text("a dataset name")
    root: Text("a directory path") | None
    download: Bool
    val_size: ValSize
    split_seed: Seed
    mean: Stats | None
    std: Stats | None
    hflip: Bool

    @model_validator(mode="after")
    def _per_channel(self) -> DatasetOptions:
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != self.channels:
                raise ConfigError(
                    f"dataset.{key} {value} has {len(value)} values; valid: a number or a list "
                    f"of {self.channels} numbers ({self.name} has {self.channels} channel(s))"
                )
        std = self.std if isinstance(self.std, list) else [self.std]
        if self.std is not None and any(v <= 0 for v in std):
            raise ConfigError(f"dataset.std {self.std} is out of range; valid: numbers > 0")
        return self


class InMemoryOptions(DatasetOptions):
    """In-memory datasets: training batches are cropped from the zero-padded image."""

    #: Side of the stored images (the crop padding may not exceed it).
    side: ClassVar[int] = 32

    crop_padding: Int(ge=0)

    def image_side(self) -> int:
        return self.side

    @model_validator(mode="after")
    def _padding_fits(self) -> InMemoryOptions:
        side = self.image_side()
        if self.crop_padding > side:
            raise ConfigError(
                f"dataset.crop_padding {self.crop_padding} is out of range; valid: an integer "
                f"in [0, {side}] (at most the image side, {side} px)"
            )
        return self


class FileOptions(Options):
    """Datasets read from files: where they are, and what to do with a file (or CSV row) that
    cannot be read."""

    root: Text("a directory path")
    on_bad_file: OneOf("error", "skip")


#: Options class of each registered dataset name.
DATASET_OPTIONS: dict[str, type[DatasetOptions]] = {}


def register_dataset(
    name: str, options: type[DatasetOptions]
) -> Callable[[Callable[[Mapping[str, Any]], DatasetBundle]], Any]:
    """Register a builder under ``name`` with the options class its config is checked against."""

    def deco(builder: Callable[[Mapping[str, Any]], DatasetBundle]) -> Any:
        DATASETS.register(name)(builder)
        DATASET_OPTIONS[name] = options
        return builder

    return deco


def dataset_options(cfg: Mapping[str, Any], fill: bool = False) -> DatasetOptions:
    """``cfg`` (the ``dataset`` group) checked against its family's options: one-line
    :class:`ConfigError` for an unknown name, an unknown key or a bad value. ``fill``: the keys
    ``cfg`` leaves out are taken from ``configs/dataset/<name>.yaml``."""
    name = cfg.get("name") if isinstance(cfg, Mapping) else None
    if not name:
        raise ConfigError(f"dataset.name is required; choose one of: {', '.join(DATASETS)}")
    DATASETS.get(str(name))  # unknown name: one line with the choices
    if fill:
        cfg = with_defaults(group_defaults("dataset", str(name)), cfg)
    return parse(DATASET_OPTIONS[str(name)], cfg, "dataset.", group=f"dataset {name}")


def bad_files_for(name: str, opts: FileOptions) -> BadFiles:
    """The recorder of unreadable files for dataset ``name`` under ``dataset.on_bad_file``."""
    return BadFiles(name, opts.on_bad_file)


def resolve_path(p: str | Path) -> Path:
    """``p`` as an absolute path; a relative path is taken from the directory the user launched in.

    Hydra changes the working directory to the run directory, so under Hydra the launch
    directory is ``hydra.utils.get_original_cwd()``; without a running Hydra app it is the
    current directory.
    """
    path = Path(p).expanduser()
    if path.is_absolute():
        return path
    try:
        from hydra.utils import get_original_cwd

        base = Path(get_original_cwd())
    except ValueError:  # raised when no Hydra app is running
        base = Path.cwd()
    return (base / path).resolve()


def stratified_holdout(
    labels: torch.Tensor, n_val: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..N-1`` into ``(train_idx, val_idx)`` with ``len(val_idx) == n_val``.

    Stratified: class ``c`` with ``n_c`` samples gives ``floor(n_val * n_c / N)`` samples, and the
    remaining slots go to the classes with the largest fractional parts (ties: lower class id).
    Within a class the samples are chosen by a permutation seeded with ``seed``. Both index
    tensors are sorted ascending, so the kept samples stay in file order.
    """
    n = len(labels)
    if not 0 < n_val < n:
        raise ValueError(f"n_val must be in (0, {n}), got {n_val}")
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * n_val / n
    take = quota.floor().long()
    short = n_val - int(take.sum())
    if short:
        # Stable sort on the negated fractional part: largest first, lower class id on ties.
        order = torch.sort(-(quota - take), stable=True).indices
        take[order[:short]] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    val_parts = [perm[shuffled == c][: int(k)] for c, k in zip(classes.tolist(), take)]
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[torch.cat(val_parts)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def holdout_count(val_size: object, n_train: int) -> int:
    """Number of validation images from ``dataset.val_size``.

    An int is a count; a float in (0, 1) a fraction of the train split (rounded, at least 1);
    0 means no validation split. Anything else is a :class:`ConfigError`.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ConfigError(
            f"dataset.val_size must be an int count or a float fraction, got {val_size!r}"
        )
    if isinstance(val_size, float):
        if val_size == 0.0:
            return 0
        if not 0.0 < val_size < 1.0:
            raise ConfigError(f"dataset.val_size fraction must be in (0, 1), got {val_size!r}")
        count = max(1, round(val_size * n_train))
    else:
        count = val_size
    if count < 0 or count >= n_train:
        raise ConfigError(
            f"dataset.val_size={val_size!r} must leave train images: the train split has "
            f"{n_train} images"
        )
    return count


def stats_of(value: float | list[float] | None, default: tuple[float, ...]) -> tuple[float, ...]:
    """A per-channel ``dataset.mean``/``std`` override (one number for every channel, or one per
    channel: :class:`DatasetOptions` checked it), or ``default``."""
    if value is None:
        return default
    values = [value] * len(default) if isinstance(value, (int, float)) else value
    return tuple(float(v) for v in values)


def with_val_split(bundle: DatasetBundle, val_size: object, split_seed: int = 0) -> DatasetBundle:
    """``bundle`` with a ``val`` split held out of ``train`` (see :func:`holdout_count`).

    The draw is stratified by class (:func:`stratified_holdout`) and seeded with ``split_seed``
    only, so it is the same for every run seed. A bundle that already has ``val`` (FER2013's
    PublicTest) is returned unchanged, with a note (``notes``: the run's warnings) if
    ``val_size`` asked for one.
    """
    if bundle.has_split("val"):
        if val_size:
            note = (
                f"{bundle.name} has its own validation split ({len(bundle.splits['val'])} "
                f"images); dataset.val_size={val_size!r} is ignored"
            )
            log.warning("%s", note)
            return dataclasses.replace(bundle, notes=[*bundle.notes, note])
        return bundle
    train = bundle.splits["train"]
    n_val = holdout_count(val_size, len(train))
    if n_val == 0:
        return bundle
    train_idx, val_idx = stratified_holdout(train.labels, n_val, split_seed)
    splits = {**bundle.splits, "train": train.subset(train_idx), "val": train.subset(val_idx)}
    return dataclasses.replace(bundle, splits=splits)
