"""A user's own model: ``model=custom model._target_=pkg.module.factory``.

The factory (a function or an ``nn.Module`` class) is imported and called as
``factory(num_classes=..., in_channels=..., image_size=..., **options)`` with the sizes of the
dataset and the extra ``model.*`` keys as ``options``; it must return an ``nn.Module`` mapping
``(N, in_channels, image_size, image_size)`` to ``(N, num_classes)`` logits. The module is looked
up on ``sys.path`` and, after it, in the directory ``prune-run`` was started from (so a file
``mynets.py`` there works as ``model._target_=mynets.small_cnn`` without installing anything).
The model name is ``custom-<target>`` (:mod:`prune_cli.models.names`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable

from torch import nn

from prune_cli.errors import ConfigError

#: The arguments every factory is called with.
SIZE_ARGUMENTS = ("num_classes", "in_channels", "image_size")


def _error(target: str, reason: str) -> ConfigError:
    return ConfigError(f"model._target_={target!r}: {' '.join(reason.split())}")


def _import_module(target: str, module_name: str) -> object | None:
    """The module, or ``None`` if ``module_name`` itself (not an import inside it) is missing."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            return None
        raise _error(target, f"importing {module_name} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while importing: say what
        raise _error(
            target, f"importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None


def locate(target: str) -> Callable[..., object]:
    """Import ``pkg.module.attr`` (attributes may nest, e.g. ``pkg.module.Class.build``)."""
    parts = target.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise _error(target, "not a dotted path to a factory; expected pkg.module.factory")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # after installed packages: the start directory never shadows them
    for i in range(len(parts) - 1, 0, -1):
        module = _import_module(target, ".".join(parts[:i]))
        if module is None:
            continue
        obj: object = module
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise _error(target, f"{'.'.join(parts[:i])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        if not callable(obj):
            raise _error(target, f"{type(obj).__name__} {target} is not callable")
        return obj
    raise _error(
        target,
        f"no module named {parts[0]!r} (on sys.path or in {cwd}); expected pkg.module.factory",
    )


def build_custom(
    target: str, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    """Import ``target`` and call it with the dataset's sizes and ``options``."""
    factory = locate(target)
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    clash = sorted(set(options) & set(kwargs))
    if clash:
        raise _error(target, f"option(s) {', '.join(clash)} come from the dataset; remove them")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs, **options)
        except TypeError as exc:
            given = ", ".join([*kwargs, *options])
            raise _error(
                target, f"{target}{signature} cannot be called with ({given}): {exc}"
            ) from None
    model = factory(**kwargs, **options)
    if not isinstance(model, nn.Module):
        raise _error(target, f"returned a {type(model).__name__}, not a torch.nn.Module")
    return model
