"""Batch loaders: the in-memory tensor loader and a DataLoader wrapper for image files.

Both yield ``(x, y)`` with ``x`` float32 NCHW normalized as ``(pixel / 255 - mean) / std`` and
``y`` int64, on the requested device. Randomness (shuffle order, augmentation draws, worker seeds)
comes from CPU ``torch.Generator`` objects seeded from ``(seed, epoch, stream)``, so it does not
depend on the device, on the global RNG, or on how many epochs ran before in this process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from prune_cli.errors import BadFileError, DataLoaderWorkerError

log = logging.getLogger("prune_cli")

# Independent random streams derived from one (seed, epoch) pair.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1
_WORKER_STREAM = 2


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (NumPy's SeedSequence hashing).

    Unlike ``seed + epoch``, nearby inputs give unrelated seeds: (seed=1, epoch=0) and
    (seed=0, epoch=1) do not collide.
    """
    entropy = [int(p) & 0xFFFF_FFFF_FFFF_FFFF for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator_for(*parts: int) -> torch.Generator:
    """A CPU generator seeded with :func:`mix_seed` of ``parts``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def crop_and_flip(
    x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int
) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip of a batch, without a per-sample loop.

    ``x``: ``(B, C, H, W)``, any dtype. Sample ``i`` is cut from ``x[i]`` zero-padded by
    ``padding`` pixels on every side, at rows ``offsets[i, 0] + 0..H-1`` and columns
    ``offsets[i, 1] + 0..W-1`` of the padded image (``offsets`` in ``[0, 2 * padding]``;
    ``(padding, padding)`` is the identity), then mirrored left-right where ``flips[i]``.
    """
    b, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # One gather on the channels-last view: result (B, H, W, C).
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2).contiguous()
    return torch.where(flips[:, None, None, None], x.flip(3), x)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(pixel / 255 - mean[c]) / std[c]``."""
    return x.float().div_(255.0).sub_(mean).div_(std)


def _channel_stats(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    def col(v: Sequence[float]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    return col(mean), col(std)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items split as evenly as possible.

    The first ``n % world_size`` ranks get one item more; one process gets ``slice(0, n)``.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def _sharded_num_batches(loader: Any, n: int) -> int:
    """Batches per rank in a distributed run.

    Training: every rank takes the same number of steps (DistributedDataParallel synchronises
    each one); a last partial global batch with fewer images than ranks is dropped, since a
    rank with no image cannot take the step. Evaluation: batches over this rank's part.
    """
    if not loader.train:
        part = shard_slice(n, loader.rank, loader.world_size)
        return math.ceil((part.stop - part.start) / loader.batch_size)
    full, rest = divmod(n, loader.batch_size)
    return full + (1 if rest >= loader.world_size and not loader.drop_last else 0)


class _EpochCounter:
    """Epoch bookkeeping shared by both loaders.

    Each pass uses the current epoch and then advances it, so a loop that never calls
    ``set_epoch`` still reshuffles; ``set_epoch(e)`` pins the next pass to epoch ``e``.
    """

    def __init__(self) -> None:
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def _next_epoch(self) -> int:
        epoch = self._epoch
        self._epoch += 1
        return epoch


class TensorLoader(_EpochCounter):
    """Batches of an in-memory uint8 image tensor, augmented and normalized on the device.

    ``images``/``labels`` should already be on ``device`` (see ``Split.tensors_on``); each batch
    is gathered with a slice of a permutation, moved to the device if needed, then (``train``)
    cropped/flipped by :func:`crop_and_flip` and normalized there.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        seed: int = 0,
        drop_last: bool = False,
        crop_padding: int = 4,
        hflip: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.device = batch_size, train, device
        self.seed, self.drop_last = seed, drop_last
        self.crop_padding, self.hflip = crop_padding, hflip
        self.num_samples = len(labels)
        self._mean, self._std = _channel_stats(mean, std, device)
        # Distributed runs (prune_cli.distributed): ``batch_size`` stays the global batch.
        self.rank, self.world_size = rank, world_size
        self._eval_part = shard_slice(self.num_samples, rank, world_size)

    def __len__(self) -> int:
        if self.world_size > 1:
            return _sharded_num_batches(self, self.num_samples)
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch()
        n, bs = self.num_samples, self.batch_size
        perm = None
        if self.train:
            perm = torch.randperm(n, generator=generator_for(self.seed, epoch, _ORDER_STREAM))
            perm = perm.to(self.images.device)
        aug = generator_for(self.seed, epoch, _AUGMENT_STREAM)
        sharded = self.world_size > 1
        if sharded and not self.train:  # evaluation: this rank's contiguous part of the split
            lo, n = self._eval_part.start, self._eval_part.stop
        else:
            lo = 0
        for i in range(len(self)):
            sel = slice(lo + i * bs, min(n, lo + (i + 1) * bs))
            idx = perm[sel] if perm is not None else sel
            part = None
            if sharded and self.train:  # this rank's slice of the global batch
                part = shard_slice(sel.stop - sel.start, self.rank, self.world_size)
                idx = idx[part]
            x = self.images[idx].to(self.device, non_blocking=True)
            y = self.labels[idx].to(self.device, non_blocking=True)
            if self.train:
                x = self._augment(x, aug, part, sel.stop - sel.start)
            yield normalize(x, self._mean, self._std), y

    def _augment(
        self,
        x: torch.Tensor,
        gen: torch.Generator,
        part: slice | None = None,
        total: int | None = None,
    ) -> torch.Tensor:
        b, p = total or len(x), self.crop_padding
        # Drawn on the CPU generator for every batch, so results match across devices; for the
        # whole global batch in a distributed run, so each rank uses its slice of those draws.
        offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=gen)
        flips = torch.rand(b, generator=gen) < 0.5
        if not self.hflip:
            flips.zero_()
        if part is not None:
            offsets, flips = offsets[part], flips[part]
        return crop_and_flip(x, offsets.to(x.device), flips.to(x.device), p)


# ---------------------------------------------------------------------------- unreadable files
#: What PIL raises for a file it cannot decode: not an image (UnidentifiedImageError, an
#: OSError), truncated or corrupt data (OSError, SyntaxError, ValueError), a file that cannot be
#: opened (OSError), a decompression bomb.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


def decode_reason(exc: BaseException, path: str = "") -> str:
    """Why a file could not be decoded, in a few words on one line (without the path)."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image (PIL cannot identify it)"
    text = str(getattr(exc, "strerror", None) or exc) or type(exc).__name__
    if path:
        text = text.replace(repr(path), "").replace(path, "")
    return " ".join(f"{type(exc).__name__}: {text}".split()).rstrip(": ")


@dataclass(eq=False)
class BadFiles:
    """Unreadable files (and CSV rows) met while loading a dataset, and what to do about them.

    ``policy`` is ``dataset.on_bad_file``: ``error`` raises :class:`BadFileError` naming the
    first one; ``skip`` leaves each out, logs a warning, and counts it once (a file met again in
    a later epoch is not counted again). :meth:`summary` goes into ``metrics.json`` (``data``).
    """

    dataset: str
    policy: str = "error"
    skipped: list[str] = field(default_factory=list)

    def found(self, where: str, reason: str) -> None:
        """Report the unreadable ``where`` (a path, or "path line N") and ``reason``."""
        if self.policy != "skip":
            raise BadFileError(
                f"{self.dataset}: cannot read {where}: {reason}; fix or remove it, or set "
                "dataset.on_bad_file=skip"
            )
        entry = f"{where} ({reason})"
        if entry in self.skipped:
            return
        self.skipped.append(entry)
        log.warning(
            "%s: skipped %s (dataset.on_bad_file=skip; %d skipped so far)",
            self.dataset,
            entry,
            len(self.skipped),
        )

    def summary(self, first: int = 5) -> dict[str, Any]:
        """``{"on_bad_file", "skipped_files", "first_skipped"}`` for ``metrics.json``."""
        return {
            "on_bad_file": self.policy,
            "skipped_files": len(self.skipped),
            "first_skipped": self.skipped[:first],
        }


@dataclass(frozen=True)
class BadSample:
    """Returned by :class:`ImageFiles` in place of a sample whose file cannot be decoded; the
    main process then applies the ``on_bad_file`` policy (a worker process cannot)."""

    path: str
    reason: str


def collate_good(batch: list[Any]) -> tuple[Any, Any, list[BadSample]]:
    """``default_collate`` of the decodable samples, plus the :class:`BadSample` markers."""
    bad = [s for s in batch if isinstance(s, BadSample)]
    good = [s for s in batch if not isinstance(s, BadSample)]
    if not good:
        return None, None, bad
    x, y = default_collate(good)
    return x, y, bad


def worker_failure(exc: BaseException) -> DataLoaderWorkerError | None:
    """A DataLoader worker's failure as one line, or None if ``exc`` did not come from one.

    PyTorch re-raises a worker's exception in the main process with the worker's traceback in
    the message ("Caught X in DataLoader worker process N. Original Traceback ..."), and a worker
    that died (killed for memory, say) as a RuntimeError; the traceback text stays in the log.
    """
    text = str(exc)
    if "DataLoader worker" not in text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first, last = lines[0], lines[-1]
    detail = first if len(lines) == 1 else f"{first} {last}"
    return DataLoaderWorkerError(
        f"a DataLoader worker failed: {detail} (if it ran out of memory, lower "
        "dataset.num_workers or the batch size; the full traceback is in the log)"
    )


class ImageFiles(Dataset):
    """Image files + int labels; ``transform`` maps a PIL RGB image to a uint8 CHW tensor.

    Files in another mode (grayscale, CMYK, RGBA with its alpha dropped, palette, 16-bit) are
    converted to RGB, as torchvision's ``ImageFolder`` does. A file that cannot be decoded gives
    a :class:`BadSample` instead of raising inside a worker process.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: torch.Tensor,
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.files, self.labels, self.transform = list(files), labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | BadSample:
        path = self.files[i]
        # Imported here: importing torchvision adds ~0.5 s to the start of every run, and only
        # file-backed datasets read images with it.
        from torchvision.datasets.folder import default_loader

        try:
            image = default_loader(path)  # PIL: open, decode, convert to RGB
        except DECODE_ERRORS as exc:
            return BadSample(path, decode_reason(exc, path))
        return self.transform(image), self.labels[i]


class FileLoader(_EpochCounter):
    """A torch DataLoader over image files, yielding normalized float batches on the device.

    Workers decode and transform to uint8 (a quarter of the float32 bytes to pin and copy);
    normalization happens on the device. The order is a permutation drawn from
    ``(seed, epoch)``; worker RNG seeds derive from the same pair, so with ``num_workers > 0``
    the random crops are reproducible too. With ``num_workers == 0`` the transforms draw from
    the global torch RNG (seeded by the run).

    Files that cannot be decoded are reported to ``bad_files`` on first read (an error naming
    the file, or skipped and counted: ``dataset.on_bad_file``); a batch then holds the others.
    A failing worker process becomes one :class:`DataLoaderWorkerError` line.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: torch.Tensor,
        batch_size: int,
        *,
        transform: Callable[[Any], torch.Tensor],
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        bad_files: BadFiles | None = None,
    ) -> None:
        super().__init__()
        self.dataset = ImageFiles(files, labels, transform)
        self.bad_files = bad_files or BadFiles("dataset")
        self.batch_size, self.train, self.device = batch_size, train, device
        self.seed, self.drop_last, self.num_workers = seed, drop_last, num_workers
        self.num_samples = len(files)
        self._mean, self._std = _channel_stats(mean, std, device)
        # Distributed runs (prune_cli.distributed): ``batch_size`` stays the global batch.
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.world_size > 1:
            return _sharded_num_batches(self, self.num_samples)
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    def _rank_part(self) -> tuple[int, ...]:
        return (self.rank,) if self.world_size > 1 else ()

    def _rank_batches(self, order: list[int]) -> list[list[int]]:
        """This rank's slice of every global batch of ``order`` (training), or batches over
        its contiguous part of the split (evaluation)."""
        bs, world = self.batch_size, self.world_size
        if not self.train:
            part = order[shard_slice(len(order), self.rank, world)]
            return [part[i : i + bs] for i in range(0, len(part), bs)]
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        return [b[shard_slice(len(b), self.rank, world)] for b in batches[: len(self)]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch()
        if self.train:
            gen = generator_for(self.seed, epoch, _ORDER_STREAM)
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        if self.world_size > 1:
            batching: dict[str, Any] = {"batch_sampler": self._rank_batches(order)}
        else:
            batching = {"batch_size": self.batch_size, "sampler": order}
            batching["drop_last"] = self.drop_last
        loader = DataLoader(
            self.dataset,
            **batching,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate_good,
            # Each rank's workers draw their own augmentations; one process keeps its seeds.
            generator=generator_for(self.seed, epoch, _WORKER_STREAM, *self._rank_part()),
        )
        batches = iter(loader)
        while True:
            # Only the loader's own failures are translated, never those of the consumer.
            try:
                x, y, bad = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                failure = worker_failure(exc)
                if failure is None:
                    raise
                raise failure from exc
            for sample in bad:
                self.bad_files.found(sample.path, sample.reason)
            if x is None:  # every file of the batch was skipped
                continue
            x = x.to(self.device, non_blocking=True)
            yield normalize(x, self._mean, self._std), y.to(self.device, non_blocking=True)
