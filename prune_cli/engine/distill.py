"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural
network"): the student learns from the teacher's softened outputs as well as from the labels.

    loss = (1 - alpha)·CE(student, labels) + alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T))

The T² keeps the soft term's gradients on the scale of the hard term's when T changes (Hinton
et al., Section 2). The KL is averaged over the batch (``batchmean``: the true KL per image, not per
logit). The teacher runs in eval mode without gradients: it is never updated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The distillation loss of a batch (module docstring); ``alpha == 0`` is exactly the
    plain cross-entropy (the teacher's logits are then not used at all)."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    soft = kl * (t * t)
    return soft if alpha == 1 else (1.0 - alpha) * ce + alpha * soft


class Distiller:
    """The training criterion of a distilled fine-tune: call it as
    ``distiller(images, student_logits, labels, label_smoothing)``.

    ``teacher`` is put in eval mode and its parameters stop requiring gradients; it stays on
    its device (the student's), is not part of the optimizer, and is not wrapped in
    DistributedDataParallel (each rank runs it on its own shard of the batch).
    """

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha} must be in [0, 1]")
        if not temperature > 0:
            raise ValueError(f"temperature {temperature} must be > 0")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def __call__(
        self,
        images: torch.Tensor,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        if self.alpha == 0:
            return kd_loss(student_logits, student_logits, labels, 0.0, 1.0, label_smoothing)
        self.teacher.eval()  # whoever called .train() on it, BN statistics must not move
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        return kd_loss(
            student_logits, teacher_logits, labels, self.alpha, self.temperature, label_smoothing
        )
