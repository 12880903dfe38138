"""Numeric precision and memory format of training and evaluation: what was asked, what the
hardware does natively, and what was used.

``precision`` (``train.precision``, ``finetune.precision``, ``metrics.precision``):

- ``fp32``: no autocast;
- ``bf16``: ``torch.autocast`` to bfloat16 (CPU or CUDA); no loss scaling is needed, bf16 has
  fp32's exponent range;
- ``fp16``: autocast to float16 with a gradient scaler, for GPUs without bf16 (refused on a CPU,
  which has no fast fp16 path in PyTorch);
- ``auto``: bf16 on a CPU that has native bf16 instructions (``avx512_bf16`` or AMX,
  :func:`cpu_bf16_native`) and on a GPU that supports it, fp16 on an older GPU, fp32 otherwise.

Measured on this project's CPU (AVX-512 with avx512_bf16 and AMX, 2 cores, one process, ratios
only): a training step of ResNet-20 at batch 128 runs 2.3x faster with bf16 autocast and
channels-last than in fp32 NCHW (``scripts/bench_train.py``).

``memory_format`` (``train.memory_format``): ``channels_last`` (NHWC, the layout oneDNN's and
cuDNN's fast convolution kernels use), ``contiguous`` (NCHW), or ``auto``: channels-last for a
model with 2-D convolutions that passes :func:`channels_last_failure` (one forward/backward of a
batch in that format, logits equal to the contiguous ones), contiguous otherwise, said in the
run's warnings: a user model that calls ``.view`` on an activation fails in channels-last.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX-512 BF16 and AMX.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (Linux ``/proc/cpuinfo``; none found elsewhere,
    where ``auto`` then stays fp32: PyTorch has no portable query for them)."""
    if platform.system() != "Linux":
        return ()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def cpu_bf16_native() -> bool:
    """Does this CPU do bf16 arithmetic natively (:data:`CPU_BF16_FLAGS`)?"""
    return bool(cpu_bf16_flags())


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``fp32``, ``bf16`` or ``fp16``; ``requested`` what the
    config said; ``why`` how ``auto`` chose, or a note on an explicit choice."""

    name: str
    requested: str
    device_type: str
    why: str = ""
    native: bool = True

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this precision (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 not."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` says about it."""
        out: dict[str, Any] = {"requested": self.requested, "used": self.name}
        if self.why:
            out["why"] = self.why
        if self.device_type == "cpu":
            out["cpu_bf16"] = list(cpu_bf16_flags())
        return out


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """The precision to run ``requested`` in on ``device`` (module docstring).

    Raises:
        ConfigError: an unknown name; fp16 on a CPU; bf16 on a GPU without it.
    """
    device = torch.device(device)
    kind = device.type
    if requested not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {requested!r}; choose one of: {', '.join(PRECISIONS)}"
        )
    if kind == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            name = "bf16" if bf16 else "fp16"
            why = "GPU with bf16" if bf16 else "GPU without bf16: fp16 with loss scaling"
            return Precision(name, requested, kind, why)
        if requested == "bf16" and not bf16:
            raise ConfigError("precision bf16: this GPU does not support bf16; use fp16 or auto")
        return Precision(requested, requested, kind)
    if requested == "fp16":
        raise ConfigError(
            "precision fp16 is for GPUs (PyTorch has no fast fp16 path on a CPU); "
            "on a CPU choose one of: auto, fp32, bf16"
        )
    flags = cpu_bf16_flags() if kind == "cpu" else ()
    if requested == "auto":
        if flags:
            return Precision("bf16", requested, kind, f"CPU with native bf16 ({', '.join(flags)})")
        return Precision("fp32", requested, kind, f"no native bf16 on this {kind}")
    if requested == "bf16" and not flags:
        return Precision(
            "bf16",
            requested,
            kind,
            f"bf16 asked for on a {kind} without native bf16 ({' / '.join(CPU_BF16_FLAGS)} not "
            "found): emulated, likely slower than fp32",
            native=False,
        )
    return Precision(requested, requested, kind)


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_failure(
    model: nn.Module, batch: torch.Tensor, precision: Precision
) -> str | None:
    """Why ``model`` cannot train in channels-last, or None when it can.

    One forward and backward of ``batch`` in channels-last, in eval mode (BatchNorm statistics
    and every other buffer stay as they were; the gradients it leaves are cleared), must run and
    give the logits of the contiguous model: a ``.view`` on a channels-last activation raises,
    and an operation that assumes NCHW strides would give other logits.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), precision.autocast():
            reference = model(batch).float()
        model.to(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(batch.contiguous(memory_format=torch.channels_last)).float()
        logits.sum().backward()
    except RuntimeError as exc:
        return " ".join(str(exc).split())
    finally:
        model.zero_grad(set_to_none=True)
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    # bf16 rounds differently in the two layouts; fp32 agrees to rounding of the sums.
    tolerance = 5e-2 if precision.dtype is not None else 1e-3
    scale = reference.abs().max().clamp_min(1.0)
    if logits.shape != reference.shape or (logits - reference).abs().max() > tolerance * scale:
        return "its logits in channels-last differ from its logits in NCHW"
    return None


def choose_memory_format(
    requested: str, model: nn.Module, batch: torch.Tensor, precision: Precision
) -> tuple[bool, str | None]:
    """``(channels_last, note)`` for training ``model``: ``note`` is the warning of an ``auto``
    that fell back to contiguous (None otherwise). An explicit ``channels_last`` that fails the
    check is a one-line :class:`ConfigError` (it would fail in the first step anyway)."""
    if requested == "contiguous" or batch.dim() != 4 or not has_conv2d(model):
        return False, None
    reason = channels_last_failure(model, batch, precision)
    if reason is None:
        return True, None
    if requested == "channels_last":
        raise ConfigError(
            f"memory_format channels_last: the model fails in channels-last ({reason}); "
            "use auto or contiguous"
        )
    return False, (
        f"memory_format auto: training contiguous (NCHW), the model fails in channels-last "
        f"({reason})"
    )
