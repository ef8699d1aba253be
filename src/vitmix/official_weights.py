"""Deprecated: the authors' checkpoints are read by vitmix.checkpoints.official; this path goes
in vitmix 0.2."""

from ._deprecated import moved
from .checkpoints import official as _official

__getattr__ = moved(__name__, dict.fromkeys(
    ("ARCHS", "describe_groupmixformer", "from_official", "unwrap_state_dict"), _official))
