"""The trained-model cache: a sweep over ratios (or methods) trains the dense model once.

An entry is keyed by a hash of everything that affects dense training (model, dataset, training
settings, seed, determinism, and any training-time change a method makes, such as a sparsity
regulariser: :func:`training_payload`). Jobs that start at once take an exclusive ``flock`` on the
entry: the first trains (resumably, inside the entry), the others wait and then load the finished
checkpoint, which is written atomically, so nobody ever reads a torn file or trains twice.

An entry directory holds ``key.json`` (the payload, for humans), ``trained.pt`` (weights, the
training summary and history), the rewind points ``rewind_init.pt`` (the weights training
started from, always saved) and ``rewind_epoch<K>.pt`` (after epoch K, saved when the run that
trains the entry asks for ``finetune.rewind=epoch:K``) and, while training, the per-epoch
``train_last.pt``; and ``figures/``: what was measured on the trained model (test evaluation,
latency), one JSON file per measurement setting (:meth:`TrainedCache.figures`), so that every job
of a sweep reuses the dense model's figures instead of measuring them again. The run
directory gets ``checkpoints/trained.pt`` as a hard link to the entry's (a copy across
filesystems). With the cache off, the same happens inside the run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli import distributed
from prune_cli.engine.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from prune_cli.engine.hooks import TrainHooks
from prune_cli.engine.loop import StageFiles
from prune_cli.io import atomic_write_text

log = logging.getLogger("prune_cli")

#: Bumped when the meaning of a trained checkpoint changes, so that old entries are not reused.
PAYLOAD_VERSION = 1
#: Dataset settings that do not change the trained weights (left out of the key).
NOT_IN_KEY = ("num_workers",)
#: Training settings added after version 1, left out of the key at these values (the behaviour
#: before they existed), so that entries trained before them are still found.
TRAIN_ADDED = {"compile": False, "optimizer": "sgd", "schedule_every": "epoch"}
#: The same for model options added after version 1 (``weights``: torchvision's, ``pretrained``:
#: timm's; at other values they are in the key, so the pretrained init trains its own entry).
MODEL_ADDED = {"stem": "auto", "weights": None, "pretrained": False}


def cache_key(payload: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able description of the training run."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_payload(
    *,
    model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    train: Mapping[str, Any],
    seed: int,
    deterministic: bool,
    method_training: Mapping[str, Any],
    device_type: str,
) -> dict[str, Any]:
    """Everything that affects dense training, as plain data: what :func:`cache_key` hashes.

    ``model``, ``dataset`` and ``train`` are the resolved config nodes; ``method_training`` is
    :meth:`prune_cli.methods.Method.training_signature`.
    """
    return {
        "model": {k: v for k, v in model.items() if k not in MODEL_ADDED or v != MODEL_ADDED[k]},
        "dataset": {k: v for k, v in dataset.items() if k not in NOT_IN_KEY},
        "train": {k: v for k, v in train.items() if k not in TRAIN_ADDED or v != TRAIN_ADDED[k]},
        "seed": seed,
        "deterministic": deterministic,
        "method_training": method_training,
        "device_type": device_type,
        "version": PAYLOAD_VERSION,
    }


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (keys training that starts from a weights file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on a cache entry (released even if the holder crashes)."""
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json_once(path: Path, payload: Mapping[str, Any]) -> None:
    """Describe a cache entry next to it (what was trained), for humans."""
    if not path.is_file():
        atomic_write_text(path, json.dumps(payload, indent=2, default=str, sort_keys=True) + "\n")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a cached checkpoint into the run directory (free), copying across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@dataclass
class Trained:
    """The outcome of :meth:`TrainedCache.train_or_load`: the ``train`` summary of
    ``metrics.json``, the stage's ``history.csv`` rows, the directory holding the trained
    checkpoint (the cache entry, or the run's checkpoint directory with the cache off) and the
    checkpoint file itself, to pass to :meth:`TrainedCache.figures`."""

    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    entry: Path | None = None
    checkpoint: Path | None = None


@dataclass
class Figures:
    """What :meth:`TrainedCache.figures` returns: the figures, and whether they were read
    from the entry (``cached``) or computed by this call."""

    values: dict[str, Any]
    cached: bool


#: Trains the model in place, writing where the :class:`StageFiles` say; returns the summary
#: and the history rows.
TrainFn = Callable[[StageFiles], tuple[dict[str, Any], list[dict[str, Any]]]]


@dataclass(frozen=True)
class TrainedCache:
    """The ``cache`` config node: whether dense training is shared, and where entries live."""

    enabled: bool
    directory: Path

    def entry(self, label: str, payload: Mapping[str, Any]) -> Path:
        """The entry directory of ``payload``; ``label`` (model_dataset) is for humans."""
        return Path(self.directory) / f"{label}_{cache_key(payload)}"

    def train_or_load(
        self,
        model: nn.Module,
        payload: Mapping[str, Any],
        run: StageFiles,
        *,
        label: str,
        arch: str,
        device: torch.device,
        train: TrainFn,
        filename: str = "trained.pt",
    ) -> Trained:
        """Load the trained weights of ``payload`` into ``model``, or train them with ``train``.

        ``run`` is the run's own training stage (its checkpoint directory, history CSV and
        ``resume``). With the cache on, training happens (resumably) in the entry and
        ``run.ckpt_dir/<filename>`` links to the entry's ``trained.pt``; with it off, it happens
        in ``run.ckpt_dir`` (as ``<filename>``) and a finished one there is reused only with
        ``resume``. ``arch`` (the model name) is checked against the checkpoint's.
        """
        cached = self.enabled
        entry = self.entry(label, payload) if cached else Path(run.ckpt_dir)
        trained = entry / ("trained.pt" if cached else filename)
        # Under torchrun only rank 0 takes the lock and decides; a rank waiting on the lock
        # while rank 0 trains would deadlock the gradient all-reduce.
        lock = entry_lock(entry) if cached and distributed.is_main() else contextlib.nullcontext()
        with lock:
            if cached:
                write_json_once(entry / "key.json", payload)
            if distributed.broadcast_object(trained.is_file()) and (cached or run.resume):
                result = _load(model, trained, arch, device)
            else:
                files = StageFiles(
                    stage=run.stage,
                    ckpt_dir=entry,
                    history_csv=None if cached else run.history_csv,
                    resume=cached or run.resume,
                )
                result = _train(model, trained, arch, files, train)
        if cached and distributed.is_main():
            link_or_copy(trained, Path(run.ckpt_dir) / filename)
            result.summary["cache_entry"] = str(entry)
        result.entry, result.checkpoint = entry, trained
        return result

    def figures(
        self,
        trained: Path,
        key: Mapping[str, Any],
        compute: Callable[[], Mapping[str, Any]],
    ) -> Figures:
        """Figures measured on the trained model of ``trained``, computed once and then reused.

        ``trained`` is a trained checkpoint file (:attr:`Trained.checkpoint`: the one of a
        cache entry, of any entry, or in a run's checkpoint directory with the cache off) or an
        entry directory (meaning its ``trained.pt``); ``key`` is plain JSON-able data naming
        what is measured and how (e.g. ``{"kind": "test_eval", "split": "test",
        "batch_size": 256, "device": "cpu"}``; for latency the batch sizes, repeats, device
        and its name, threads, compile): a different key is a different measurement.
        ``compute()`` returns the figures (JSON-able) of the model *as trained*: the caller
        evaluates the model loaded from the checkpoint, before any change.

        The figures are stored beside the checkpoint, in ``figures/<checkpoint name>_<hash of
        key>.json``, with the key and a fingerprint of the checkpoint (size and modification
        time), written atomically. A
        missing, unreadable or corrupt file, another key or another checkpoint (retrained
        since) means compute and store again, never an error. Concurrent jobs take the entry's
        lock, so one computes and the others read its result. Under torchrun every rank calls
        this (``compute`` may all-reduce); rank 0 decides and writes.
        """
        trained = Path(trained)
        if trained.is_dir():
            trained = trained / "trained.pt"
        entry = trained.parent
        path = entry / "figures" / f"{trained.stem}_{cache_key(key)}.json"
        fingerprint = _fingerprint(trained)
        plain_key = json.loads(json.dumps(key, sort_keys=True, default=str))
        lock = entry_lock(entry) if distributed.is_main() else contextlib.nullcontext()
        with lock:
            stored = _read_figures(path, plain_key, fingerprint) if distributed.is_main() else None
            stored = distributed.broadcast_object(stored)
            if stored is not None:
                return Figures(stored, cached=True)
            values = json.loads(json.dumps(dict(compute()), default=str))
            record = {"key": plain_key, "checkpoint": fingerprint, "figures": values}
            try:
                atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
            except OSError as exc:  # a read-only or full cache: the run goes on, measured
                log.warning("could not store figures in %s (%s): measured, not cached", path, exc)
        return Figures(values, cached=False)


def _fingerprint(trained: Path) -> dict[str, int] | None:
    """Size and modification time of the checkpoint: a retrained checkpoint invalidates the
    figures measured on the old one."""
    try:
        stat = trained.stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_figures(path: Path, key: Any, fingerprint: Any) -> dict[str, Any] | None:
    """The stored figures of ``key`` for this checkpoint, or None (missing, unreadable,
    corrupt, another key or another checkpoint: then they are measured again)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cached figures %s (%s): measuring again", path, exc)
        return None
    if (
        not isinstance(record, dict)
        or record.get("key") != key
        or record.get("checkpoint") != fingerprint
        or not isinstance(record.get("figures"), dict)
    ):
        log.info("cached figures %s are for another setting or checkpoint: measuring again", path)
        return None
    return record["figures"]


def _load(model: nn.Module, trained: Path, arch: str, device: torch.device) -> Trained:
    ckpt = load_checkpoint(trained, device)
    load_state_into(model, ckpt, str(trained), expect_arch=arch)
    summary = dict(ckpt.get("summary", {}))
    history = list(ckpt.get("history", []))
    log.info("dense model loaded from %s (trained once, shared)", trained)
    summary["from_cache"] = True
    return Trained(summary, history)


def _train(
    model: nn.Module, trained: Path, arch: str, files: StageFiles, train: TrainFn
) -> Trained:
    summary, history = train(files)
    save_checkpoint(
        trained,
        {"model": model.state_dict(), "arch": arch, "summary": summary, "history": history},
    )
    summary["from_cache"] = False
    return Trained(summary, history)


# ----------------------------------------------------------------------------- rewind points
def rewind_point_path(directory: Path, point: str) -> Path:
    """Where rewind point ``point`` (``init`` or ``epoch:K``) of a training run is kept:
    ``rewind_init.pt`` / ``rewind_epoch<K>.pt`` in the cache entry (the run's ``checkpoints/``
    with the cache off)."""
    name = "init" if point == "init" else "epoch" + str(int(point.partition(":")[2]))
    return Path(directory) / f"rewind_{name}.pt"


def save_rewind_point(directory: Path, point: str, model: nn.Module) -> None:
    """Save ``model``'s weights now as rewind point ``point`` (atomically; rank 0 only)."""
    save_checkpoint(
        rewind_point_path(directory, point),
        {"model": model.state_dict(), "point": point},
    )


def saved_rewind_points(directory: Path) -> list[str]:
    """The rewind points kept in ``directory``, ``init`` first, then by epoch."""
    found = []
    for path in Path(directory).glob("rewind_*.pt"):
        name = path.stem.removeprefix("rewind_")
        if name == "init":
            found.append((0, "init"))
        elif name.startswith("epoch") and name[5:].isdigit():
            found.append((int(name[5:]), f"epoch:{int(name[5:])}"))
    return [point for _, point in sorted(found)]


def load_rewind_point(directory: Path, point: str, device: torch.device) -> dict[str, Any]:
    """The state dict saved as rewind point ``point`` (``FileNotFoundError`` if absent)."""
    path = rewind_point_path(directory, point)
    if not path.is_file():
        raise FileNotFoundError(path)
    return dict(load_checkpoint(path, device)["model"])


class RewindSaver(TrainHooks):
    """A training hook that saves rewind point ``epoch:K`` after the last step of epoch K,
    for every K in ``epochs`` (before the schedule steps and the epoch is evaluated)."""

    def __init__(self, directory: Path, epochs: Iterable[int]) -> None:
        self.directory = Path(directory)
        self.epochs = {int(k) for k in epochs}

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        if epoch + 1 in self.epochs:
            save_rewind_point(self.directory, f"epoch:{epoch + 1}", model)
