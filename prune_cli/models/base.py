"""The model registry shared by every architecture module.

A model factory is called as ``factory(num_classes, in_channels, image_size, **options)`` and
returns a plain ``nn.Module`` mapping a batch ``(N, in_channels, image_size, image_size)`` to
logits ``(N, num_classes)``. ``num_classes``, ``in_channels`` and ``image_size`` come from the
dataset; ``options`` are the extra keys of ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


class InputSizeError(ConfigError):
    """A model that cannot take the dataset's input size (raised before or by its forward)."""


def init_conv_bn(model: nn.Module, zero_linear_bias: bool = False) -> None:
    """The CIFAR-model initialisation: convs Kaiming-normal (fan-out, ReLU gain), BN gamma 1 and
    beta 0; linear layers PyTorch's default, with a zero bias if ``zero_linear_bias``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and zero_linear_bias and m.bias is not None:
            nn.init.zeros_(m.bias)


def unknown_options(model: str, unknown: Iterable[str], valid: Iterable[str]) -> ConfigError:
    """The one-line error for config options a model does not take."""
    choices = ", ".join(sorted(valid)) or "(none)"
    return ConfigError(
        f"unknown option(s) {', '.join(sorted(unknown))} for model {model!r}; "
        f"valid options: {choices}"
    )


@dataclass(frozen=True)
class KeyMap:
    """How other implementations of a model family name their checkpoint keys, declared next
    to the model (timm's ``checkpoint_filter_fn``, as data rather than code).

    ``rules`` are ``(pattern, replacement)`` regular expressions; a key of a file that the
    model does not have is renamed by the first rule whose result the model has, and is left as
    it is otherwise (then the load refuses it, naming it). ``hints`` are ``(side, pattern,
    text)``: when a key the model expects but the file lacks (``side`` "missing") or a key of the
    file the model lacks ("unexpected") matches ``pattern``, ``text`` says what that usually
    means (an option of the model that does not match the file); it ends the one-line refusal.
    ``sources`` says whose layouts these are.
    """

    sources: str
    rules: tuple[tuple[str, str], ...] = ()
    hints: tuple[tuple[str, str, str], ...] = ()

    def rename(self, key: str, fits: Callable[[str], bool]) -> str:
        """``key`` in the model's naming: the first rule's result that ``fits`` the model, or
        ``key`` itself when it fits already or no rule maps it onto the model."""
        if fits(key):
            return key
        for pattern, replacement in self.rules:
            renamed = re.sub(pattern, replacement, key)
            if renamed != key and fits(renamed):
                return renamed
        return key

    def hint(self, missing: Iterable[str], unexpected: Iterable[str]) -> str | None:
        """What the first hint that matches a missing or an unexpected key says, or None."""
        keys = {"missing": list(missing), "unexpected": list(unexpected)}
        for side, pattern, text in self.hints:
            if any(re.search(pattern, key) for key in keys[side]):
                return text
        return None


#: Model name -> the checkpoint key map of its family (:func:`register_key_map`).
KEY_MAPS: dict[str, KeyMap] = {}


def register_key_map(names: Iterable[str], key_map: KeyMap) -> None:
    """Declare ``key_map`` for the models ``names`` (called by the module defining them)."""
    for name in names:
        KEY_MAPS[name] = key_map


def key_map_of(name: str) -> KeyMap | None:
    """The declared checkpoint key map of model ``name``, if its family has one."""
    return KEY_MAPS.get(name)
