"""The teacher of a distilling run (vitmix compress): a checkpoint's model, frozen."""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoints.io import SavedModel, read_model, saved_model_name

__all__ = ["load_teacher"]


def load_teacher(path: str, classes: list[str], device: torch.device, channels_last: bool,
                 saved: SavedModel | None = None) -> nn.Module:
    """The model of checkpoint ``path`` (a run's file or a .safetensors), frozen, in eval mode,
    on ``device``; ValueError when it names other classes than the run's data. ``saved``: the
    file as already read, when the run has read it."""
    if saved is None:
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
