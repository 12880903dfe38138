"""Training and evaluation: loops, optimizers and schedules, checkpoints, seeding."""

from prune_cli.engine.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from prune_cli.engine.hooks import CompositeHooks, TrainHooks
from prune_cli.engine.loop import EvalResult, FitResult, StageFiles, evaluate, fit
from prune_cli.engine.seed import resolve_device, seed_everything
from prune_cli.engine.settings import FitSettings, TrainOptions

__all__ = [
    "CompositeHooks",
    "EvalResult",
    "FitResult",
    "FitSettings",
    "StageFiles",
    "TrainHooks",
    "TrainOptions",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_state_into",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
