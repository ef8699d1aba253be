"""Deprecated: checkpoint files are read and written by vitmix.checkpoints.io (training,
evaluation, benchmarks and export share it); this path goes in vitmix 0.2."""

from .._deprecated import moved
from ..checkpoints import io as _io

__getattr__ = moved(__name__, {
    "atomic_save": (_io, "save_checkpoint"),
    "save_safetensors": (_io, "save_weights"),
    **dict.fromkeys(("check_state_dict", "load_checkpoint", "load_weights"), _io),
})
