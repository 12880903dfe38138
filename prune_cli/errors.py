"""User-facing errors.

Every error a user can cause by typing a bad value is a :class:`UserError`: the CLI prints its
message as one line (no traceback) and exits with status 2. The message must name the bad value
and the valid choices (or the files expected and where to get them).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A bad input from the user: printed as one line, without a traceback."""


class ConfigError(UserError):
    """An unknown name or an out-of-range value in the configuration."""


class DataNotFoundError(UserError):
    """A dataset directory is missing or incomplete."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The standard one-line error: ``unknown model 'resnet57'; choose one of: ...``."""
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")
