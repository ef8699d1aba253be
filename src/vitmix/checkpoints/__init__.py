"""Checkpoint files: vitmix's own, read and written by :mod:`.io` (training, evaluation,
benchmarks and export share it), and the authors' released ones, converted by
:mod:`.official` (GroupMixFormer; SCHEME's by :mod:`.scheme_vit`)."""

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
    saved_model_name,
)
from .official import ARCHS, describe_groupmixformer, from_official, unwrap_state_dict
from .scheme_vit import SchemeformerImport, convert_schemeformer

__all__ = ["ARCHS", "SavedModel", "SchemeformerImport", "atomic_write", "atomic_write_text",
           "check_file", "check_state_dict", "convert_schemeformer", "describe_groupmixformer",
           "from_official", "load_checkpoint", "load_model", "load_torch_file", "load_weights",
           "read_model", "save_checkpoint", "save_weights", "saved_model_name",
           "unwrap_state_dict"]
