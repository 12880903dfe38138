"""Test evaluations a run has already made, found again by the weights they were made on.

A fine-tune stage evaluates its model on the selection split after every epoch. Without a
validation split that split is the test split, and the evaluation after the last epoch is the
final stage's test evaluation made early: the same weights, split, batch size and precision
(:func:`~prune_cli.engine.loop.fit` evaluates as the pipeline does). Evaluating again gives the
same figures after another full pass over the test set: on the default setup with 2,000
training images, a tenth of every job of a sweep. So the run keeps what it evaluated under a
digest of everything its forward depends on (:func:`state_fingerprint`) and the evaluation
setting, and takes it from there when the same model comes back.

The digest covers the module tree (its ``repr``: layer types, shapes and options), the forward
hooks each module holds, and the bytes, dtype and shape of every parameter and buffer; one bit
changed anywhere, a hook added or removed, or a layer swapped, and the evaluation runs again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

#: An evaluation setting: (split, batch size, precision) — what else the figures depend on.
Setting = tuple[str, int, str]


def state_fingerprint(model: nn.Module) -> str:
    """A digest of what ``model``'s forward depends on (module docstring): equal digests,
    equal outputs on the same input and device."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr(model).encode())
    for name, module in model.named_modules():
        hooks = len(module._forward_pre_hooks) + len(module._forward_hooks)
        if hooks:
            digest.update(f"hooks {name} {hooks}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1).contiguous()
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class EvalMemo:
    """Evaluations by (model digest, setting), each with where it was made."""

    seen: dict[tuple[str, Setting], tuple[dict[str, float], str]] = field(default_factory=dict)

    def add(
        self, fingerprint: str, setting: Setting, values: Mapping[str, float], source: str
    ) -> None:
        self.seen[(fingerprint, setting)] = (dict(values), source)

    def get(self, fingerprint: str, setting: Setting) -> tuple[dict[str, float], str] | None:
        """``(figures, where they were measured)`` or None."""
        found = self.seen.get((fingerprint, setting))
        return (dict(found[0]), found[1]) if found is not None else None
