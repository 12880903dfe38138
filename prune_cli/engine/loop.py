"""The training and evaluation loops (plain PyTorch, in the style of torchvision's references).

``fit`` trains for ``cfg.epochs`` epochs with SGD, evaluates after each epoch on the validation
split (the test split when there is none: then "best" is chosen on test and labelled so),
checkpoints after each epoch so that an interrupted run resumes from its last completed epoch, and
stops with a clear error on a NaN/inf loss, keeping the last good checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prune_cli import distributed
from prune_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from prune_cli.engine.hooks import TrainHooks
from prune_cli.engine.memo import state_fingerprint
from prune_cli.engine.optim import build_optimizer, build_scheduler, step_lr_setter
from prune_cli.engine.precision import Precision, choose_memory_format, resolve_precision
from prune_cli.engine.settings import FitSettings, TrainOptions
from prune_cli.errors import NonFiniteLossError
from prune_cli.io import atomic_write_text

log = logging.getLogger("prune_cli")

#: A training loss: ``criterion(inputs, logits, labels, label_smoothing)`` -> a scalar.
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

HISTORY_FIELDS = (
    "stage",
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "eval_split",
    "eval_loss",
    "eval_top1",
    "eval_top5",
    "time_s",
)


@dataclass
class EvalResult:
    """Mean cross-entropy and top-1/top-5 accuracy in percent over ``n`` images."""

    loss: float
    top1: float
    top5: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class FitResult:
    """What a training stage produced. ``best_*`` refer to the epoch chosen on ``select_split``."""

    history: list[dict[str, Any]] = field(default_factory=list)
    select_split: str = "test"
    best_epoch: int | None = None
    best_top1: float | None = None
    best_path: Path | None = None
    seconds: float = 0.0
    #: The evaluation after the last epoch this call trained (:func:`evaluate` of the returned
    #: model, NCHW, on ``select_split`` in batches of ``eval_batch_size``, in
    #: ``eval_precision``). Evaluating that model again the same way gives the same figures,
    #: so a caller may take these instead.
    last_eval: EvalResult | None = None
    eval_batch_size: int | None = None
    eval_precision: str | None = None
    #: :func:`~prune_cli.engine.memo.state_fingerprint` of the returned model when
    #: ``last_eval`` is its evaluation (the run reuses it for a later evaluation of it).
    last_state: str | None = None
    #: What the stage trained in: precision (:meth:`Precision.record`) and memory format.
    numerics: dict[str, Any] = field(default_factory=dict)
    #: What the stage did otherwise than asked (a memory format that fell back), for the
    #: run's warnings.
    notes: list[str] = field(default_factory=list)


def autocast_context(device: torch.device, precision: str | Precision = "fp32") -> Any:
    """The autocast context of ``precision`` (a name, resolved for ``device``, or a
    :class:`Precision`); nothing for fp32."""
    if not isinstance(precision, Precision):
        precision = resolve_precision(precision, device)
    return precision.autocast()


def _channels_last(x: torch.Tensor, on: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if on else x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device | str = "cpu",
    *,
    precision: str | Precision = "fp32",
) -> EvalResult:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``,
    computed in ``precision`` (``metrics.precision``; fp32 keeps figures comparable with
    published ones).

    Top-5 is computed over ``min(5, num_classes)`` classes, so it is 100% with <= 5 classes.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for images, labels in loader:
        with autocast_context(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk.eq(labels[:, None])
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += labels.numel()
    model.train(was_training)
    if distributed.is_distributed():  # each rank saw its shard of the split: add them up
        counts = torch.stack([correct1, correct5, torch.tensor(n, device=device)])
        distributed.all_reduce_sum(loss_sum)
        distributed.all_reduce_sum(counts)
        correct1, correct5, n = counts[0], counts[1], int(counts[2])
    if n == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0)
    return EvalResult(
        loss=loss_sum.item() / n,
        top1=100.0 * correct1.item() / n,
        top5=100.0 * correct5.item() / n,
        n=n,
    )


def write_history(path: Path, stage: str, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``history.csv`` atomically: rows of other stages kept, this stage's replaced."""
    kept: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("stage") != stage]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in [*kept, *rows]:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _check_finite(loss_sum: torch.Tensor, stage: str, epoch: int, step: int, last: Path) -> None:
    value = loss_sum.item()
    if not torch.isfinite(torch.tensor(value)):
        where = f"last good checkpoint kept at {last}" if last.is_file() else "no epoch completed"
        raise NonFiniteLossError(
            f"{stage}: training loss became {value} at epoch {epoch + 1}, step {step + 1}; "
            f"stopped ({where}); lower the learning rate or check the data"
        )


def _reduced(total: torch.Tensor) -> torch.Tensor:
    """The objective summed over ranks, so that all ranks stop together on a NaN (a rank that
    stopped alone would leave the others waiting in the next gradient all-reduce)."""
    if not distributed.is_distributed():
        return total
    return distributed.all_reduce_sum(total.detach().clone())


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    hooks: TrainHooks,
    *,
    device: torch.device,
    epoch: int = 0,
    steps_per_epoch: int = 0,
    smoothing: float = 0.0,
    precision: str | Precision = "fp32",
    channels_last: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    on_check: Callable[[torch.Tensor, int], None] | None = None,
    forward: nn.Module | None = None,
    criterion: Criterion | None = None,
    max_batches: int | None = None,
    set_lr: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over ``batches``; returns (sum of per-image losses, correct count, images).

    ``set_lr(epoch, i)``, when given, sets the learning rate before step ``i`` (a per-step
    schedule, :func:`~prune_cli.engine.optim.step_lr_setter`).

    ``precision`` is the autocast precision; ``channels_last`` converts each batch to NHWC
    (the model must be in that format already); ``scaler`` scales the loss of fp16 training,
    and unscales the gradients before the hooks see them.

    ``forward`` (default ``model``) computes the logits: the DistributedDataParallel wrapper of
    ``model`` in a distributed run; hooks always get ``model`` itself. ``criterion`` replaces
    the cross-entropy (a :class:`~prune_cli.engine.distill.Distiller`); ``max_batches`` stops
    the pass early (a step budget that ends inside an epoch).

    Sums stay on the device (no per-step host sync on GPU); ``on_check`` sees the running sum of
    the objective every step on the CPU, every 25 steps on the GPU and after the last step, so a
    NaN or inf stops the run early.
    """
    check_every = 1 if device.type == "cpu" else 25
    if not isinstance(precision, Precision):
        precision = resolve_precision(precision, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    # The objective (task loss + regulariser) is summed apart: a NaN regulariser must stop
    # training too, even while the task loss is still finite.
    objective_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    i = -1
    for i, (images, labels) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            i -= 1  # the last step taken, for the final check
            break
        if set_lr is not None:
            set_lr(epoch, i)
        hooks.before_step(model, epoch * steps_per_epoch + i, epoch)
        with precision.autocast():
            inputs = _channels_last(images, channels_last)
            logits = (model if forward is None else forward)(inputs)
            if criterion is None:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
            else:
                loss = criterion(inputs, logits.float(), labels, smoothing)
            extra = hooks.extra_loss(model)
            total = loss if extra is None else loss + extra
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            total.backward()
            hooks.after_backward(model)
            optimizer.step()
        else:  # the hooks (a regulariser's subgradient, masked gradients) need true gradients
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            hooks.after_backward(model)
            scaler.step(optimizer)
            scaler.update()
        hooks.after_step(model)
        batch = labels.numel()
        loss_sum += loss.detach().double() * batch
        objective_sum += total.detach().double()
        correct += logits.detach().argmax(1).eq(labels).sum()
        seen += batch
        if on_check is not None and (i + 1) % check_every == 0:
            on_check(objective_sum, i)
    if on_check is not None:
        on_check(objective_sum, i)
    return loss_sum, correct, seen


@dataclass(frozen=True)
class StageFiles:
    """Where a training stage writes, and whether it resumes from what is there.

    ``ckpt_dir/{stage}_last.pt`` is written after every epoch, with ``extra_state`` (e.g. the
    masks) added to it, and ``{stage}_best.pt`` whenever the selection accuracy improves; the
    stage's rows of ``history_csv`` (None: no CSV) are rewritten after every epoch. ``stage``
    also names the stage in the history rows and the log. ``on_epoch`` (if given) sees each
    new history row as soon as its epoch ends (the experiment trackers' curves).
    """

    stage: str
    ckpt_dir: Path
    history_csv: Path | None = None
    resume: bool = True
    extra_state: Mapping[str, Any] = field(default_factory=dict)
    on_epoch: Callable[[dict[str, Any]], None] | None = None

    @property
    def last(self) -> Path:
        return Path(self.ckpt_dir) / f"{self.stage}_last.pt"

    @property
    def best(self) -> Path:
        return Path(self.ckpt_dir) / f"{self.stage}_best.pt"


@dataclass
class _Trainer:
    """What one :func:`fit` call trains with."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    hooks: TrainHooks
    train_loader: Any
    set_lr: Callable[[int, int], None] | None
    eval_loader: Any
    select_split: str
    device: torch.device
    precision: Precision
    eval_precision: Precision
    channels_last: bool
    scaler: torch.amp.GradScaler | None = None
    forward: nn.Module | None = None  # the DDP wrapper of ``model`` in a distributed run
    criterion: Criterion | None = None  # None: cross-entropy


def fit(
    model: nn.Module,
    data: Any,
    cfg: FitSettings | TrainOptions | Mapping[str, Any],
    *,
    device: torch.device,
    files: StageFiles,
    hooks: TrainHooks | None = None,
    seed: int = 0,
    criterion: Criterion | None = None,
) -> FitResult:
    """Train ``model`` in place for ``epochs`` epochs on ``data`` (a DatasetBundle).

    ``cfg``: the stage's :class:`~prune_cli.engine.settings.FitSettings` (or its typed options,
    or a ``train`` mapping: :meth:`FitSettings.from_cfg`). ``files`` names
    the stage and where it writes; with ``files.resume`` an existing ``{stage}_last.pt`` is
    loaded and training continues after its last completed epoch. ``seed`` seeds the shuffle
    and augmentation of the training batches. Each epoch is evaluated on the validation split
    (the test split when there is none: then "best" is chosen on test and labelled so).

    With ``compile`` the training forward runs through ``torch.compile`` of the model this
    call gets (of its DDP wrapper in a distributed run), so a model changed in structure since
    the last stage is compiled afresh; the hooks, the evaluation and the checkpoints use the
    model itself (state-dict keys without ``_orig_mod.``).

    ``criterion(inputs, logits, labels, label_smoothing)`` replaces the cross-entropy (e.g.
    a :class:`~prune_cli.engine.distill.Distiller`); ``history.csv``'s ``train_loss`` is then
    its value.
    """
    settings = FitSettings.from_cfg(cfg)
    trainer = _build_trainer(model, data, settings, device, hooks or TrainHooks(), seed)
    trainer.criterion = criterion
    result = FitResult(select_split=trainer.select_split)
    result.numerics, note = _choose_numerics(trainer, settings)
    if note is not None:
        log.warning("%s: %s", files.stage, note)
        result.notes.append(note)
    start_epoch = _restore_last(trainer, files, result) if files.resume else 0
    if result.best_epoch is not None and files.best.is_file():
        result.best_path = files.best
    trainer.hooks.on_fit_start(model, settings.epochs, len(trainer.train_loader))
    trainer.forward = _training_forward(model, device, settings.options.compile)
    model.train()
    for epoch in range(start_epoch, settings.epochs):
        tic = time.perf_counter()
        lr = trainer.optimizer.param_groups[0]["lr"]
        train_stats, ev = _train_and_evaluate(trainer, settings, files, epoch)
        elapsed = time.perf_counter() - tic
        result.last_eval = ev
        result.eval_batch_size = settings.options.eval_batch_size
        result.eval_precision = trainer.eval_precision.name
        result.seconds += elapsed
        row = _history_row(files.stage, epoch, lr, train_stats, trainer.select_split, ev, elapsed)
        result.history.append(row)
        _save_epoch(trainer, files, result, epoch, ev.top1, settings.options.select_best)
        if files.history_csv is not None:
            write_history(files.history_csv, files.stage, result.history)
        if files.on_epoch is not None:
            files.on_epoch(row)
        log.info(
            f"[{files.stage}] epoch {epoch + 1}/{settings.epochs} lr {lr:.4g} "
            f"loss {row['train_loss']:.4f} train {row['train_top1']:.2f}% "
            f"{trainer.select_split} {ev.top1:.2f}% ({elapsed:.1f}s)"
        )
    if files.history_csv is not None and result.history:
        write_history(files.history_csv, files.stage, result.history)
    if trainer.channels_last:  # the model leaves as it came: the stages after it expect NCHW
        model.to(memory_format=torch.contiguous_format)
    if result.last_eval is not None:
        result.last_state = state_fingerprint(model)
    distributed.barrier()  # rank 0's checkpoints are on disk before any rank reads them
    return result


def _training_forward(model: nn.Module, device: torch.device, compile: bool) -> nn.Module | None:
    """What computes the training logits: the DDP wrapper of ``model`` in a distributed run,
    compiled when asked (DDP first, then compile: the order PyTorch documents); None for
    ``model`` itself."""
    forward = distributed.wrap_ddp(model, device) if distributed.is_distributed() else model
    if compile:
        # Static shapes: the last, smaller batch of an epoch gets its own graph once instead
        # of turning every graph dynamic (slower kernels); both are reused every epoch.
        forward = torch.compile(forward, dynamic=False)
        log.info("training through torch.compile (the first steps compile)")
    return None if forward is model else forward


def _choose_numerics(trainer: _Trainer, settings: FitSettings) -> tuple[dict[str, Any], str | None]:
    """Settle the memory format (``auto``: channels-last if the model passes the check on one
    evaluation batch, :func:`~.precision.choose_memory_format`), put the model in it, and say
    what the stage trains in: ``(record for metrics.json, warning or None)``."""
    batch = next(iter(trainer.eval_loader), None)
    images = batch[0][:16] if batch is not None else torch.zeros(0)
    channels_last, note = choose_memory_format(
        settings.options.memory_format, trainer.model, images, trainer.precision
    )
    if channels_last:
        trainer.model.to(memory_format=torch.channels_last)
    trainer.channels_last = channels_last
    record = {
        **trainer.precision.record(),
        "memory_format": {
            "requested": settings.options.memory_format,
            "used": "channels_last" if channels_last else "contiguous",
        },
        "eval_precision": trainer.eval_precision.name,
    }
    if not trainer.precision.native:
        note = "; ".join(filter(None, [note, trainer.precision.why]))
    return record, note


def _build_trainer(
    model: nn.Module,
    data: Any,
    settings: FitSettings,
    device: torch.device,
    hooks: TrainHooks,
    seed: int,
) -> _Trainer:
    """Optimizer, schedule, loaders and numerics of a stage (the memory format is settled by
    :func:`_choose_numerics`)."""
    precision = resolve_precision(settings.options.precision, device)
    span = {"schedule_epochs": settings.schedule_epochs, "schedule_start": settings.schedule_start}
    optimizer = build_optimizer(model, settings.options)
    scheduler = build_scheduler(optimizer, settings.options, settings.epochs, **span)
    # Distributed: the batch size is the global batch, split evenly across ranks.
    distributed.local_batch_size(settings.options.batch_size)
    train_loader = data.loader(
        "train", settings.options.batch_size, train=True, device=device, seed=seed, drop_last=False
    )
    select_split = "val" if data.has_split("val") else "test"
    eval_loader = data.loader(
        select_split, settings.options.eval_batch_size, train=False, device=device
    )
    return _Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        hooks=hooks,
        train_loader=train_loader,
        set_lr=step_lr_setter(
            optimizer, scheduler, settings.options, settings.epochs, len(train_loader), **span
        ),
        eval_loader=eval_loader,
        select_split=select_split,
        device=device,
        precision=precision,
        eval_precision=resolve_precision(settings.eval_precision, device),
        channels_last=False,
        scaler=precision.grad_scaler(),
    )


def _restore_last(trainer: _Trainer, files: StageFiles, result: FitResult) -> int:
    """Load ``{stage}_last.pt`` when there is one: weights, optimizer, schedule, CPU RNG and
    the bookkeeping so far go back into ``trainer`` and ``result``. Returns the first epoch
    still to train (0 when there is nothing to resume)."""
    if not files.last.is_file():
        return 0
    state = load_checkpoint(files.last, map_location=trainer.device)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if trainer.scaler is not None and "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    result.history = list(state["history"])
    result.best_epoch = state.get("best_epoch")
    result.best_top1 = state.get("best_top1")
    result.seconds = float(state.get("seconds", 0.0))
    return int(state["epoch"])


def _train_and_evaluate(
    trainer: _Trainer, settings: FitSettings, files: StageFiles, epoch: int
) -> tuple[tuple[torch.Tensor, torch.Tensor, int], EvalResult]:
    """One epoch of training, the end-of-epoch hook and schedule step, then the evaluation.

    Returns (loss sum, correct count, images) over the epoch, summed over ranks, and the
    evaluation on the selection split.
    """
    model, device = trainer.model, trainer.device
    trainer.train_loader.set_epoch(epoch)
    bar = tqdm(
        trainer.train_loader,
        desc=f"{files.stage} {epoch + 1}/{settings.epochs}",
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    loss_sum, correct, seen = train_one_epoch(
        model,
        bar,
        trainer.optimizer,
        trainer.hooks,
        device=device,
        epoch=epoch,
        steps_per_epoch=len(trainer.train_loader),
        smoothing=settings.options.label_smoothing,
        precision=trainer.precision,
        channels_last=trainer.channels_last,
        scaler=trainer.scaler,
        on_check=lambda total, i: _check_finite(_reduced(total), files.stage, epoch, i, files.last),
        forward=trainer.forward,
        criterion=trainer.criterion,
        max_batches=_batches_left(settings.max_steps, epoch, len(trainer.train_loader)),
        set_lr=trainer.set_lr,
    )
    if distributed.is_distributed():
        distributed.sync_buffers(model)
        images = torch.tensor(float(seen), dtype=torch.float64, device=device)
        sums = torch.stack([loss_sum, correct.double(), images])
        distributed.all_reduce_sum(sums)
        loss_sum, correct, seen = sums[0], sums[1].long(), int(sums[2])
    trainer.hooks.on_epoch_end(model, epoch)
    trainer.scheduler.step()
    # Evaluated as the pipeline evaluates a stage's model (NCHW, metrics.precision), so that
    # the last epoch's figures are the ones evaluating the returned model would give.
    if trainer.channels_last:
        model.to(memory_format=torch.contiguous_format)
    ev = evaluate(model, trainer.eval_loader, device, precision=trainer.eval_precision)
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    return (loss_sum, correct, seen), ev


def _batches_left(max_steps: int | None, epoch: int, steps_per_epoch: int) -> int | None:
    """How many steps epoch ``epoch`` may take under a total budget of ``max_steps``."""
    if max_steps is None:
        return None
    return max(0, min(steps_per_epoch, max_steps - epoch * steps_per_epoch))


def _history_row(
    stage: str,
    epoch: int,
    lr: float,
    train_stats: tuple[torch.Tensor, torch.Tensor, int],
    eval_split: str,
    ev: EvalResult,
    seconds: float,
) -> dict[str, Any]:
    """The ``history.csv`` row of one epoch (``epoch`` counted from 0; the row counts from 1)."""
    loss_sum, correct, seen = train_stats
    return {
        "stage": stage,
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": round(loss_sum.item() / max(seen, 1), 6),
        "train_top1": round(100.0 * correct.item() / max(seen, 1), 4),
        "eval_split": eval_split,
        "eval_loss": round(ev.loss, 6),
        "eval_top1": round(ev.top1, 4),
        "eval_top5": round(ev.top5, 4),
        "time_s": round(seconds, 3),
    }


def _save_epoch(
    trainer: _Trainer,
    files: StageFiles,
    result: FitResult,
    epoch: int,
    top1: float,
    select_best: bool,
) -> None:
    """After epoch ``epoch``: ``{stage}_best.pt`` when ``top1`` beats the best so far (and
    ``select_best``), then ``{stage}_last.pt``, everything a resume needs."""
    model = trainer.model
    if select_best and (result.best_top1 is None or top1 > result.best_top1):
        result.best_epoch, result.best_top1 = epoch + 1, top1
        save_checkpoint(files.best, {"model": model.state_dict(), "epoch": epoch + 1})
        result.best_path = files.best
    save_checkpoint(
        files.last,
        {
            "model": model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "epoch": epoch + 1,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_top1": result.best_top1,
            "seconds": result.seconds,
            **({"scaler": trainer.scaler.state_dict()} if trainer.scaler is not None else {}),
            **files.extra_state,
        },
    )
