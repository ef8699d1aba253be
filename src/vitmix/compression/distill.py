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

__all__ = ["Distillation", "distillation_loss", "load_teacher"]


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


def load_teacher(path: str, classes: list[str], device: torch.device,
                 channels_last: bool) -> nn.Module:
    """The model of checkpoint ``path`` (a run's file or a .safetensors), frozen, in eval mode,
    on ``device``; ValueError when it names other classes than the run's data."""
    from ..checkpoints.io import read_model, saved_model_name

    saved = read_model(path, saved_model_name(path))
    if saved.classes is not None and list(saved.classes) != list(classes):
        raise ValueError(f"the teacher {path} was trained on the classes {saved.classes[:5]}"
                         f"{'...' if len(saved.classes) > 5 else ''}, not the run's "
                         f"{classes[:5]}{'...' if len(classes) > 5 else ''}: it cannot teach them")
    teacher = saved.build().to(device).eval()
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
