"""``shapes``: the offline default dataset, generated procedurally in memory.

Ten classes of 3x32x32 images, each a shape or a texture family drawn at a random position and
scale, in a random colour and contrast, over a random-colour background with pixel noise:

====  ===================  =======================================================
 id   class                drawn as
====  ===================  =======================================================
 0    circle               filled disc
 1    ring                 annulus, inner radius 0.55 of the outer
 2    square               filled square, any rotation
 3    triangle             filled equilateral triangle, any rotation
 4    cross                plus sign of two bars, any rotation
 5    horizontal_stripes   stripes at 0 +- 15 degrees in a square window
 6    vertical_stripes     stripes at 90 +- 15 degrees in a square window
 7    diagonal_stripes     stripes at 45 or 135 (+- 15) degrees in a square window
 8    checkerboard         checkerboard (cell 3-6 px, tilted +- 15 degrees) in a window
 9    dot_grid             grid of dots (period 5-8 px, tilted +- 15 degrees) in a window
====  ===================  =======================================================

Shapes have a radius of 7-12 px and texture windows a half-side of 8-13 px, centred anywhere in
the middle 14x14 px. Contrast is 0.6-1 and the Gaussian pixel noise has a standard deviation of
0.02-0.10 (in units of the 0..1 range), drawn per image.

Difficulty, measured with a plain ResNet-20 (SGD lr 0.1, momentum 0.9, batch 128, 5000 train
images, crop + flip augmentation): 10-27% test top-1 after one epoch, 70-78% after three with a
cosine schedule (three seeds); squares and triangles are the classes learnt last.

Generation is vectorised with torch (one pass per class) and deterministic: the train images
come from the generator seeded with ``(dataset.seed, 0)`` and the test images from
``(dataset.seed, 1)``, so changing ``train_size`` leaves the test set unchanged, and the data do
not depend on the run's seed (a seed sweep sees the same images). Labels are balanced: class
``i % 10`` for the ``i``-th image before a seeded shuffle. No files, no download.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from prune_cli.data.base import (
    DatasetBundle,
    InMemoryOptions,
    Seed,
    Split,
    register_dataset,
)
from prune_cli.data.loaders import generator_for
from prune_cli.options import Int

SIDE = 32
CLASSES = [
    "circle",
    "ring",
    "square",
    "triangle",
    "cross",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dot_grid",
]
# Pixel mean/std (pixel / 255): the generator treats the channels alike, and the default train
# set (seed 0, 5000 images) measures 0.50 +- 0.006 and 0.240 +- 0.001 in every channel.
MEAN = (0.50, 0.50, 0.50)
STD = (0.24, 0.24, 0.24)

_TRAIN_STREAM, _TEST_STREAM = 0, 1


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _rotate(
    x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` in a frame rotated by ``angle`` (``(n,)``, radians); broadcasts to (n, H, W).

    ``x`` is ``(n, 1, W)`` and ``y`` ``(n, H, 1)``: the products stay small and only the sums
    are full-size, which halves the work of generating a set.
    """
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return c * x + s * y, c * y - s * x


def _local_frame(
    n: int, g: torch.Generator, scale_px: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel offsets ``dx`` (n, 1, W), ``dy`` (n, H, 1) from a random centre; scale (n, 1, 1)."""
    axis = torch.arange(SIDE, dtype=torch.float32)
    cx = _uniform(n, 9.0, 23.0, g)[:, None, None]
    cy = _uniform(n, 9.0, 23.0, g)[:, None, None]
    scale = _uniform(n, *scale_px, g)[:, None, None]
    return axis[None, None, :] - cx, axis[None, :, None] - cy, scale


def _shape_mask(cls: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Boolean masks ``(n, H, W)`` of one of the five solid-shape classes."""
    dx, dy, scale = _local_frame(n, g, (7.0, 12.0))
    angle = _uniform(n, 0.0, 2 * math.pi, g)
    u, v = _rotate(dx / scale, dy / scale, angle)
    r2 = u * u + v * v
    if cls == 0:
        mask = r2 <= 1.0
    elif cls == 1:
        mask = (r2 <= 1.0) & (r2 >= 0.55**2)
    elif cls == 2:
        mask = torch.maximum(u.abs(), v.abs()) <= 0.8
    elif cls == 3:
        mask = (v <= 0.5) & (v >= -1.0 + math.sqrt(3.0) * u.abs())
    else:
        bar = 0.3
        mask = ((u.abs() <= bar) & (v.abs() <= 1.0)) | ((v.abs() <= bar) & (u.abs() <= 1.0))
    return mask


def _texture_mask(cls: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Boolean masks ``(n, H, W)`` of one of the five texture classes, in a square window."""
    dx, dy, scale = _local_frame(n, g, (8.0, 13.0))
    window = (dx.abs() <= scale) & (dy.abs() <= scale)
    jitter = _uniform(n, -math.radians(15), math.radians(15), g)
    if cls == 5:
        angle = jitter
    elif cls == 6:
        angle = jitter + math.pi / 2
    elif cls == 7:
        second = torch.rand(n, generator=g) < 0.5  # either diagonal: a flip maps one to the other
        angle = jitter + torch.where(second, 3 * math.pi / 4, math.pi / 4)
    else:
        angle = jitter
    x, y = _rotate(dx, dy, angle)
    phase_x = _uniform(n, 0.0, 1.0, g)[:, None, None]
    phase_y = _uniform(n, 0.0, 1.0, g)[:, None, None]
    if cls in (5, 6, 7):
        period = _uniform(n, 4.0, 8.0, g)[:, None, None]
        pattern = torch.frac(y / period + phase_y + 100.0) < 0.5  # +100 keeps frac's input > 0
    elif cls == 8:
        cell = _uniform(n, 3.0, 6.0, g)[:, None, None]
        ix = torch.floor(x / cell + phase_x)
        iy = torch.floor(y / cell + phase_y)
        pattern = torch.remainder(ix + iy, 2.0) < 0.5
    else:
        period = _uniform(n, 5.0, 8.0, g)[:, None, None]
        radius = period * _uniform(n, 0.2, 0.35, g)[:, None, None]
        ox = (torch.frac(x / period + phase_x + 100.0) - 0.5) * period
        oy = (torch.frac(y / period + phase_y + 100.0) - 0.5) * period
        pattern = ox * ox + oy * oy <= radius * radius
    return window & pattern


def _masks(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    masks = torch.zeros(len(labels), SIDE, SIDE, dtype=torch.bool)
    for cls in range(len(CLASSES)):
        rows = torch.nonzero(labels == cls).flatten()
        if len(rows):
            draw = _shape_mask if cls < 5 else _texture_mask
            masks[rows] = draw(cls, len(rows), g)
    return masks


def generate_shapes(
    n: int, seed: int, stream: int = _TRAIN_STREAM
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images uint8 ``(n, 3, 32, 32)`` and balanced labels int64 ``(n,)`` (fresh copies of
    :func:`_generated`, so a caller may change them in place)."""
    pixels, labels = _generated(n, seed, stream)
    return pixels.clone(), labels.clone()


# Every job of a sweep (Hydra runs them in one process) builds the same images: generated once
# per process (0.6 s for the default 6,000 images, ~1% of a default job; 18 MB kept).
@functools.lru_cache(maxsize=4)
def _generated(n: int, seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of :func:`generate_shapes`, computed.

    Image = background colour ``b`` with a foreground colour ``f`` blended in by the shape mask
    ``m`` at contrast ``a``: ``b * (1 - a m) + f * a m``, plus Gaussian pixel noise. ``f`` differs
    from ``b`` by 0.3..0.7 (mod 1) in every channel, so no shape is invisible.
    """
    g = generator_for(seed, stream)
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    mask = _masks(labels, g)[:, None]  # (n, 1, H, W)
    bg = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.1
    fg = torch.remainder(bg + 0.3 + 0.4 * torch.rand(n, 3, 1, 1, generator=g), 1.0)
    contrast = _uniform(n, 0.6, 1.0, g)[:, None, None, None]
    noise = _uniform(n, 0.02, 0.1, g)[:, None, None, None]
    # b (1 - a m) + f a m == b + (f - b) a m, then noise; all scaled to 0..255 in place.
    image = torch.randn(n, 3, SIDE, SIDE, generator=g).mul_(noise)
    image.add_(bg).add_(mask * ((fg - bg) * contrast))
    pixels = image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return pixels, labels.to(torch.int64)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(n, c, h, w)`` images resized to ``size x size``: area averaging when shrinking
    (every source pixel counts, no aliasing of the stripes and checkerboards), bilinear when
    enlarging."""
    if images.shape[-1] == size:
        return images
    mode = "area" if size < images.shape[-1] else "bilinear"
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(images), 1024):  # chunked: a float copy of all images is large
        chunk = images[start : start + 1024].float()
        resized = F.interpolate(chunk, size=(size, size), mode=mode)
        out[start : start + 1024] = resized.clamp_(0, 255).round_().to(torch.uint8)
    return out


class ShapesOptions(InMemoryOptions):
    """``dataset=shapes`` keys: the shared ones plus the set sizes, the image side and the
    data's own seed (nothing is read from disk, so there is no ``on_bad_file``)."""

    train_size: Int(ge=1)
    test_size: Int(ge=1)
    image_size: Int(ge=8)
    seed: Seed

    def image_side(self) -> int:
        return self.image_size


@register_dataset("shapes", ShapesOptions)
def build_shapes(opts: ShapesOptions) -> DatasetBundle:
    """The procedural ``shapes`` dataset (see the module docstring).

    ``dataset.image_size`` resizes the generated 32 px images (smaller images make a large
    model cheaper on a CPU).
    """
    seed, size = opts.seed, opts.image_size
    train_x, train_y = generate_shapes(opts.train_size, seed)
    test_x, test_y = generate_shapes(opts.test_size, seed, _TEST_STREAM)
    train_x, test_x = resize_images(train_x, size), resize_images(test_x, size)
    return DatasetBundle(
        name="shapes",
        num_classes=len(CLASSES),
        in_channels=3,
        image_size=size,
        mean=MEAN,
        std=STD,
        splits={
            "train": Split(labels=train_y, images=train_x),
            "test": Split(labels=test_y, images=test_x),
        },
        class_names=list(CLASSES),
    )
