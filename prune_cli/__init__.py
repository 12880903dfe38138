"""prune-cli: a Hydra experiment runner for neural-network pruning and parameter sharing.

Public API: :func:`load_pruned` (``prune_cli.load_pruned(path)``) rebuilds the final model of a
run from its portable checkpoint (:mod:`prune_cli.portable`). It is imported on first use
(PEP 562), so that ``import prune_cli`` stays light for the tools that need no torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_pruned"]


def __getattr__(name: str) -> Any:
    if name == "load_pruned":
        from prune_cli.portable import load_pruned

        return load_pruned
    raise AttributeError(f"module 'prune_cli' has no attribute {name!r}")
