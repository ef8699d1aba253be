"""Checkpoint files: the authors' released checkpoints (:mod:`.official`)."""

from .official import ARCHS, describe_groupmixformer, from_official, unwrap_state_dict

__all__ = ["ARCHS", "describe_groupmixformer", "from_official", "unwrap_state_dict"]
