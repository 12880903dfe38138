"""Small file helpers shared by every layer (no project imports here)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def _nonzero_rank() -> bool:
    """True on ranks other than 0 of a torchrun job (prune_cli.distributed): they do not write.

    Looked up without importing torch, so that light tools (prune-report) stay light.
    """
    dist = sys.modules.get("torch.distributed")
    return bool(dist and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and ``os.replace``: never half-written.

    In a distributed run only rank 0 writes (the other ranks hold the same content).
    """
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes."""
    if _nonzero_rank():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk: name the file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def atomic_save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure (PNG) through a temporary file in the same directory, then
    rename: a plot people compare is never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
