"""The trained-model cache: a sweep over ratios (or methods) trains the dense model once.

An entry is keyed by a hash of everything that affects dense training (model, dataset, training
settings, seed, determinism, and any training-time change a method makes, such as a sparsity
regulariser). Jobs that start at once take an exclusive ``flock`` on the entry: the first trains
(resumably, inside the entry), the others wait and then load the finished checkpoint, which is
written atomically, so nobody ever reads a torn file or trains twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def cache_key(payload: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able description of the training run."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
