"""The method registry (its own module so that method modules can import it without cycles)."""

from prune_cli.registry import Registry

METHODS: Registry = Registry("method")
