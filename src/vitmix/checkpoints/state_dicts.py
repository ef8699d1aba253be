"""The state dict inside a checkpoint file, however its writer wrapped it: shared by the
converters of the authors' releases."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["unwrap_state_dict"]


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: bare, or under "model" / "state_dict"; DDP's
    "module." prefix removed."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got "
                         f"{type(checkpoint).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor; "
                             f"is this a model state dict?")
        state[key.removeprefix("module.")] = value
    if not state:
        raise ValueError("the checkpoint holds no tensors")
    return state
