"""Extension points of the training loop.

Methods change training through these hooks and nothing else, so the loop stays ignorant of any
particular method. Every hook is a no-op by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class TrainHooks:
    """Called by :func:`prune_cli.engine.fit` around every optimisation step."""

    def on_fit_start(self, model: nn.Module, epochs: int, steps_per_epoch: int) -> None:
        """Once before the first step of a stage (e.g. a sparsity schedule over all steps)."""

    def before_step(self, model: nn.Module, step: int, epoch: int) -> None:
        """Before the forward pass of global iteration ``step`` (e.g. recompute dynamic masks)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A regulariser added to the task loss (e.g. a decorrelation penalty)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """After ``backward()`` on unscaled gradients, before the step (e.g. BN L1 sub-gradient)."""

    def after_step(self, model: nn.Module) -> None:
        """After ``optimizer.step()`` (e.g. re-apply masks so that pruned weights stay zero)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """After the last step of ``epoch``."""


class CompositeHooks(TrainHooks):
    """Several hooks called in order."""

    def __init__(self, hooks: Iterable[TrainHooks]) -> None:
        self.hooks = [h for h in hooks if h is not None]

    def on_fit_start(self, model: nn.Module, epochs: int, steps_per_epoch: int) -> None:
        for h in self.hooks:
            h.on_fit_start(model, epochs, steps_per_epoch)

    def before_step(self, model: nn.Module, step: int, epoch: int) -> None:
        for h in self.hooks:
            h.before_step(model, step, epoch)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        total = None
        for h in self.hooks:
            term = h.extra_loss(model)
            if term is not None:
                total = term if total is None else total + term
        return total

    def after_backward(self, model: nn.Module) -> None:
        for h in self.hooks:
            h.after_backward(model)

    def after_step(self, model: nn.Module) -> None:
        for h in self.hooks:
            h.after_step(model)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        for h in self.hooks:
            h.on_epoch_end(model, epoch)
