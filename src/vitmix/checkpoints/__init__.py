"""Checkpoint files: vitmix's own, read and written by :mod:`.io` (training, evaluation,
benchmarks and export share it), and the authors' released ones, converted by
:mod:`.official`."""

from .io import (
    SavedModel,
    atomic_write,
    atomic_write_text,
    check_file,
    check_state_dict,
    load_checkpoint,
    load_model,
    load_torch_file,
    load_weights,
    read_model,
    save_checkpoint,
    save_weights,
)
from .official import ARCHS, describe_groupmixformer, from_official, unwrap_state_dict

__all__ = ["ARCHS", "SavedModel", "atomic_write", "atomic_write_text", "check_file",
           "check_state_dict", "describe_groupmixformer", "from_official", "load_checkpoint",
           "load_model", "load_torch_file", "load_weights", "read_model", "save_checkpoint",
           "save_weights", "unwrap_state_dict"]
