"""How a model is named: one string that identifies the architecture everywhere.

A *registered* model is named by its short name (``resnet56``, ``vgg16``, ``mobilenet_v2``...).
A model built from a library or from a user's factory is named ``<source>-<spec>``:

==========================================================  ===================================
command line                                                model name
==========================================================  ===================================
``model=torchvision model.arch=densenet121``                ``torchvision-densenet121``
``model=timm model.arch=resnet18d``                         ``timm-resnet18d``
``model=custom model._target_=mypkg.nets.small_cnn``        ``custom-mypkg.nets.small_cnn``
==========================================================  ===================================

The name is what ``configs/model/<source>.yaml`` sets as ``model.name``, so it appears unchanged
in the run directory (``hydra.run.dir``), ``metrics.json`` (``model``), the report, the
trained-model cache entry and the ``arch`` of every checkpoint, and :func:`build_model` takes it.
The ``-`` separator keeps it a valid file name; no registered name and no source contains one,
so the split is unambiguous (a timm name may contain ``-`` after the first one).
"""

from __future__ import annotations

#: Sources of models not in the registry, and the config key holding their spec.
SOURCE_KEYS: dict[str, str] = {"torchvision": "arch", "timm": "arch", "custom": "_target_"}
SEPARATOR = "-"


def source_model_name(source: str, spec: str) -> str:
    """The model name of ``spec`` (an architecture or a factory path) from ``source``."""
    if source not in SOURCE_KEYS:
        raise ValueError(f"unknown model source {source!r}; one of {', '.join(SOURCE_KEYS)}")
    return f"{source}{SEPARATOR}{spec}"


def split_model_name(name: str) -> tuple[str, str] | None:
    """``(source, spec)`` of a ``<source>-<spec>`` name, or ``None`` for a registered name."""
    source, sep, spec = name.partition(SEPARATOR)
    if sep and source in SOURCE_KEYS:
        return source, spec
    return None


def model_overrides(name: str) -> str:
    """The command-line overrides that select model ``name`` (for hints in error messages)."""
    parts = split_model_name(name)
    if parts is None:
        return f"model={name}"
    source, spec = parts
    return f"model={source} model.{SOURCE_KEYS[source]}={spec}"
