"""The training engine: config, loop, evaluation, checkpoints, reports, DDP helpers.

``vitmix.train.fit(config)`` is the Python entry; ``vitmix train`` the command line.
"""

from .. import factory as _factory
from .._deprecated import moved
from .config import TrainConfig
from .engine import (
    FitResult,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingPreempted,
    fit,
    scheme_layers,
)
from .evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "FitResult", "TrainConfig", "TrainingDiverged", "TrainingInterrupted",
           "TrainingPreempted", "evaluate", "fit", "scheme_layers"]
# vitmix.train.build_model until 0.2: evaluation, benchmarks and export build models too.
__getattr__ = moved(__name__, {"build_model": _factory})
