"""ImageNet (ILSVRC-2012) and ImageNet-style subsets from class folders.

Layout: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (the official validation
tarball is flat; sort it into wnid folders first, e.g. with the widely used ``valprep.sh``).
Classes are the sorted wnid folders of ``train`` (torchvision ImageFolder's convention) and
``val`` must have the same set. As usual for ImageNet, the public ``val`` images are the
``test`` split; a held-out ``val`` split comes from train via ``dataset.val_size``.

Pipeline (the standard one): train = RandomResizedCrop(``image_size``) + horizontal flip;
eval = Resize(``resize``) + CenterCrop(``image_size``); ``image_size`` 224 and ``resize`` 256
unless the config overrides them. Images are decoded in DataLoader workers
(``dataset.num_workers``) to uint8 and normalized on the device.

Bad files are found at first read: a file with an image extension that PIL cannot decode (not
an image, truncated, unreadable) is an error naming it, or with ``dataset.on_bad_file=skip`` is
left out of its batch, logged and counted in ``metrics.json``. Images in another mode
(grayscale, CMYK, RGBA, palette, 16-bit) are converted to RGB, as torchvision's ImageFolder
does (RGBA loses its alpha channel). Files without an image extension are not samples (as in
ImageFolder); their count is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import model_validator

from prune_cli.data.base import (
    DatasetBundle,
    DatasetOptions,
    FileOptions,
    Split,
    bad_files_for,
    register_dataset,
    resolve_path,
)
from prune_cli.errors import BadFileError, ConfigError, DataNotFoundError
from prune_cli.options import Int

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

log = logging.getLogger("prune_cli")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SOURCE = "https://image-net.org/download (ILSVRC-2012)"


def _folder(path: Path) -> ImageFolder:
    # torchvision is imported where it is used: importing it adds ~0.5 s to the start of
    # every run, and only this dataset needs it.
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    ignored: list[str] = []

    def is_image(name: str) -> bool:
        if has_file_allowed_extension(name, IMG_EXTENSIONS):
            return True
        ignored.append(name)
        return False

    try:
        folder = ImageFolder(str(path), is_valid_file=is_image)
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise DataNotFoundError(
            f"imagenet: no images in {path} (expected {path.name}/<wnid>/*.JPEG: {e})"
        ) from e
    except OSError as e:  # a folder that cannot be listed
        where = e.filename or path
        reason = f"{type(e).__name__}: {e.strerror}"
        raise BadFileError(f"imagenet: cannot read {where} ({reason})") from e
    if ignored:
        log.warning(
            "imagenet: %d file(s) in %s without an image extension are not samples (first: %s)",
            len(ignored),
            path,
            ignored[0],
        )
    return folder


def _split(folder: ImageFolder) -> Split:
    files = [p for p, _ in folder.samples]
    labels = torch.tensor([y for _, y in folder.samples], dtype=torch.int64)
    return Split(labels=labels, files=files)


def imagenet_transforms(image_size: int, resize: int, hflip: bool = True) -> tuple[Any, Any]:
    """``(train, eval)`` transforms: PIL RGB image -> uint8 ``(3, image_size, image_size)``."""
    from torchvision import transforms as T

    train = [T.RandomResizedCrop(image_size)]
    if hflip:
        train.append(T.RandomHorizontalFlip())
    evaluation = [T.Resize(resize), T.CenterCrop(image_size)]
    return T.Compose([*train, T.PILToTensor()]), T.Compose([*evaluation, T.PILToTensor()])


class ImagenetOptions(FileOptions, DatasetOptions):
    """``dataset=imagenet`` keys: the shared ones plus the crop sizes, the DataLoader workers
    and ``on_bad_file``."""

    image_size: Int(ge=1)
    resize: Int(ge=1)
    num_workers: Int(ge=0)

    @model_validator(mode="after")
    def _resize_covers_crop(self) -> ImagenetOptions:
        if self.resize < self.image_size:
            raise ConfigError(
                f"dataset.resize {self.resize} is out of range; valid: an integer >= "
                f"dataset.image_size ({self.image_size})"
            )
        return self


@register_dataset("imagenet", ImagenetOptions)
def build_imagenet(opts: ImagenetOptions) -> DatasetBundle:
    """ImageNet: classes = train wnid folders (1000 for ILSVRC-2012), 3x224x224 by default."""
    root = resolve_path(opts.root)
    missing = [f"{d}/" for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        note = "; there is no downloader: ImageNet needs a login" if opts.download else ""
        raise DataNotFoundError(
            f"imagenet: missing {', '.join(missing)} in {root} (expected train/<wnid>/*.JPEG "
            f"and val/<wnid>/*.JPEG; get them from {SOURCE}{note})"
        )
    image_size, resize = opts.image_size, opts.resize  # resize >= image_size: ImagenetOptions
    train, val = _folder(root / "train"), _folder(root / "val")
    if val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataNotFoundError(
            f"imagenet: class folders of {root / 'val'} differ from train/ "
            f"(only in train: {only_train[:5]}, only in val: {only_val[:5]})"
        )
    hflip = opts.hflip
    train_tf, eval_tf = imagenet_transforms(image_size, resize, hflip)
    return DatasetBundle(
        name="imagenet",
        num_classes=len(train.classes),
        in_channels=3,
        image_size=image_size,
        mean=MEAN,
        std=STD,
        splits={"train": _split(train), "test": _split(val)},
        class_names=list(train.classes),
        hflip=hflip,
        train_transform=train_tf,
        eval_transform=eval_tf,
        num_workers=opts.num_workers,
        bad_files=bad_files_for("imagenet", opts),
    )
