"""Knowledge distillation: the dense model teaches the SCHEME model it was compressed into.

The loss is ``(1 - w) * label_loss + w * T^2 * KL(teacher_T || student_T)`` on logits divided by
the temperature T (Hinton et al., 2015): the soft targets carry what the teacher knows about
every class, the labels (or Mixup's soft labels) keep the student honest where the teacher is
wrong. The T^2 keeps the soft term's gradients the size of the label term's as T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Distillation", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch, computed in
    float32 whatever the autocast dtype of the logits."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)


class Distillation:
    """Adds the teacher's soft targets to a run's label loss."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float):
        self.teacher, self.weight, self.temperature = teacher, weight, temperature

    def __call__(self, label_loss: torch.Tensor, student_logits: torch.Tensor,
                 images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        soft = distillation_loss(student_logits, teacher_logits, self.temperature)
        return (1.0 - self.weight) * label_loss + self.weight * soft
