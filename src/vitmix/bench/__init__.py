"""Measuring deployed models: throughput and latency, reports, charts and the model table.

Params and MACs are counted by :mod:`vitmix.complexity`.
"""

from .. import complexity as _complexity
from .._deprecated import moved

# vitmix.bench.count_macs / count_params until 0.2.
__getattr__ = moved(__name__, {"count_macs": _complexity, "count_params": _complexity})
