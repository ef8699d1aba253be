"""Deprecated: schemify and deploy live in vitmix.surgery, from_official with the authors'
checkpoints; this path goes in vitmix 0.2."""

from . import surgery as _surgery
from ._deprecated import moved
from .checkpoints import official as _official

__getattr__ = moved(__name__, {
    **dict.fromkeys(("DeployReport", "SchemifyReport", "block_assignment", "deploy",
                     "dense_mlp_shape", "schemify"), _surgery),
    "from_official": _official,
})
