"""User-facing errors.

Every error a user can cause by typing a bad value is a :class:`UserError`: the CLI prints its
message as one line (no traceback) and exits with status 2. The message must name the bad value
and the valid choices (or the files expected and where to get them).

Failures of the machine that a user can act on (out of memory, disk full, no permission to
write) arrive as PyTorch or OS exceptions; :func:`explain` turns them into a :class:`UserError`
with a hint. Anything else is a bug, reported as such (see ``prune_cli.cli``).

Error kinds, as ``metrics.json`` names them (``error: "<Kind>: <message>"``):

- :class:`ConfigError`: a bad value, key or name in the configuration.
- :class:`DataNotFoundError`, :class:`BadFileError`, :class:`DataLoaderWorkerError`: a missing
  dataset, an unreadable file or CSV row (named), a failing DataLoader worker.
- :class:`CheckpointError`: a missing, corrupt or foreign checkpoint.
- :class:`NonFiniteLossError`: the loss became NaN or infinite.
- :class:`ResourceError`: out of memory (GPU or CPU), disk full.
- :class:`AccessError`: no permission to read or write a path.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable


class UserError(Exception):
    """A bad input from the user: printed as one line, without a traceback."""


class ConfigError(UserError):
    """An unknown name or an out-of-range value in the configuration."""


class DataError(UserError):
    """A dataset cannot be read."""


class DataNotFoundError(DataError):
    """A dataset directory is missing or incomplete."""


class BadFileError(DataError):
    """A file (or a CSV row) of a dataset is corrupt, truncated, unreadable or malformed."""


class DataLoaderWorkerError(DataError):
    """A DataLoader worker process failed or died."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class ResourceError(UserError):
    """The machine ran out of something: GPU or CPU memory, disk space."""


class AccessError(UserError):
    """No permission to read or write a path (or a read-only file system)."""


class ExportError(UserError):
    """An exported copy of a model does not compute what the model computes."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The standard one-line error: ``unknown model 'resnet57'; choose one of: ...``."""
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name if it has none)."""
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


#: What to lower when memory runs out, by the pipeline stage that was running.
_MEMORY_HINTS = {
    "setup": "use a smaller model, dataset.image_size or dataset (train_size, test_size)",
    "train": "lower train.batch_size (or train.eval_batch_size)",
    "prune": "lower finetune.batch_size or the method's batch sizes",
    "finetune": "lower finetune.batch_size (or finetune.eval_batch_size)",
    "evaluate": "lower train.eval_batch_size or metrics.latency.batch_sizes",
}
_DEFAULT_MEMORY_HINT = "lower train.batch_size / finetune.batch_size or the eval batch sizes"
_CPU_OOM = (
    "can't allocate memory",
    "not enough memory",
    "DefaultCPUAllocator",
    "size calculation overflowed",  # a tensor too large to even count its bytes
)


#: A path that cannot be used as asked: a file where a directory should be, and the like.
_PATH_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP)


def _is_out_of_memory(exc: BaseException) -> str | None:
    """``"GPU"``/``"CPU"`` when ``exc`` reports exhausted memory, else None."""
    if isinstance(exc, MemoryError):
        return "CPU"
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc)
    if "OutOfMemoryError" in names or (isinstance(exc, RuntimeError) and "out of memory" in text):
        return "GPU"
    if isinstance(exc, RuntimeError) and any(s in text for s in _CPU_OOM):
        return "CPU"
    return None


def explain(exc: BaseException, stage: str | None = None) -> UserError | None:
    """``exc`` as a one-line :class:`UserError` if it is an expected failure, else None (a bug).

    ``stage`` (the pipeline stage that was running) picks the hint for out-of-memory errors.
    """
    if isinstance(exc, UserError):
        return exc
    where = f" during {stage}" if stage else ""
    memory = _is_out_of_memory(exc)
    if memory:
        hint = _MEMORY_HINTS.get(stage or "", _DEFAULT_MEMORY_HINT)
        size = re.search(r"[Tt]ried to allocate ([\d.]+ ?(?:[KMGT]i?B|bytes))", str(exc))
        detail = f" (tried to allocate {size.group(1)})" if size else ""
        device = "CUDA" if memory == "GPU" and "CUDA" in str(exc) else memory
        return ResourceError(f"{device} out of memory{where}{detail}; {hint}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        path = f" {exc.filename}" if exc.filename else ""
        return ResourceError(
            f"disk full{where} while writing{path} ({exc.strerror}); free some space or write "
            "elsewhere (hydra.run.dir=..., hydra.sweep.dir=..., cache.dir=...)"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        path = f" {exc.filename}" if exc.filename else ""
        return AccessError(
            f"no permission{where} to use{path} ({exc.strerror}); choose a writable directory "
            "(hydra.run.dir=..., hydra.sweep.dir=..., cache.dir=...) or fix its permissions"
        )
    if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS and exc.filename:
        return AccessError(
            f"cannot use {exc.filename}{where} ({exc.strerror}); choose another path "
            "(hydra.run.dir=..., hydra.sweep.dir=..., cache.dir=...)"
        )
    if isinstance(exc, RuntimeError) and str(exc).startswith("Error(s) in loading state_dict"):
        return CheckpointError(
            f"a checkpoint does not fit the model{where} ({one_line(exc)}); delete the stale "
            "checkpoint or start a fresh run directory"
        )
    return None
