"""Where the default of every config key is declared: the YAML file the user sees.

``configs/<group>/<name>.yaml`` (``configs/train/default.yaml``, ``configs/method/magnitude.yaml``
...) holds each key of its group with its default value and a comment; the typed options of the
group (:mod:`prune_cli.options`) give the key its type, range and choices and no default of
their own. A run composed by Hydra has every key from these files. Code that builds a group from
a few keys of its own (a method, a dataset or a training stage set up in Python) takes the keys
it leaves out from the same file: :func:`group_defaults` and :func:`with_defaults`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import ConfigError, one_line

#: The config tree shipped with the package (``prune_cli/configs`` links to ``configs/``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def group_file(group: str, name: str) -> Path:
    """``configs/<group>/<name>.yaml`` (``configs/<name>.yaml`` for the empty group)."""
    return CONFIG_DIR / group / f"{name}.yaml" if group else CONFIG_DIR / f"{name}.yaml"


@functools.cache
def _composed(group: str, name: str) -> DictConfig | None:
    """The group file with its own ``defaults`` list applied (files of the same group merged
    first, the file itself where ``_self_`` says, last when it does not)."""
    path = group_file(group, name)
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    listed = node.pop("defaults", None) if isinstance(node, DictConfig) else None
    if not listed:
        return node  # type: ignore[return-value]
    parts: list[Any] = []
    for entry in listed:
        if entry == "_self_":
            parts.append(node)
        elif isinstance(entry, str):
            parts.append(_composed(group, entry) or OmegaConf.create())
    if not any(part is node for part in parts):
        parts.append(node)
    return OmegaConf.merge(*parts)  # type: ignore[return-value]


def group_defaults(group: str, name: str, key: str | None = None, **root: Any) -> Any:
    """The keys of ``configs/<group>/<name>.yaml`` (of its node ``key``, if given) and their
    defaults, as plain data (None when there is no such file). Interpolations of top-level keys
    (``${ratio}``) take their value from ``root``; environment interpolations
    (``${oc.env:...}``) are resolved as Hydra would."""
    return copy.deepcopy(_resolved(group, name, key, tuple(sorted(root.items()))))


@functools.lru_cache(maxsize=256)
def _resolved(group: str, name: str, key: str | None, root: tuple[tuple[str, Any], ...]) -> Any:
    node = _composed(group, name)
    if node is None:
        return None
    if key is not None:
        node = OmegaConf.select(node, key)
    whole = OmegaConf.create({**dict(root), "__group__": node})
    try:
        return OmegaConf.to_container(whole, resolve=True)["__group__"]  # type: ignore[index]
    except Exception as exc:  # any OmegaConf resolution error: one line naming the file
        raise ConfigError(
            f"cannot read the defaults of {group_file(group, name).name}: {one_line(exc)}"
        ) from None


def with_defaults(defaults: Mapping[str, Any] | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with the keys it leaves out taken from ``defaults`` (nested groups merged key
    by key; a value ``given`` sets is never replaced)."""
    out = dict(defaults or {})
    for key, value in given.items():
        base = out.get(key)
        if isinstance(value, Mapping) and isinstance(base, Mapping):
            out[key] = with_defaults(base, value)
        else:
            out[key] = value
    return out
