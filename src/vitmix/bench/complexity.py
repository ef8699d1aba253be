"""Deprecated: params and MACs are counted by vitmix.complexity (models, surgery and training
use them, so they no longer sit under bench); this path goes in vitmix 0.2."""

from .. import complexity as _complexity
from .._deprecated import moved

__getattr__ = moved(__name__, dict.fromkeys(
    ("attention_flop_formulas", "count_macs", "count_params", "plain_kernels"), _complexity))
