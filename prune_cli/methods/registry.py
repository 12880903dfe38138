"""The method registry (its own module so that method modules can import it without cycles).

``@METHODS.register("magnitude")`` both registers a method class and names it (``cls.name``): the
name is written once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prune_cli.registry import Registry

T = TypeVar("T")


class MethodRegistry(Registry):
    """A :class:`~prune_cli.registry.Registry` that also sets a registered class's ``name``."""

    def register(self, name: str) -> Callable[[T], T]:
        add = super().register(name)

        def named(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            return add(cls)

        return named


METHODS: MethodRegistry = MethodRegistry("method")
