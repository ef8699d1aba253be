"""The training engine: config, loop, evaluation, checkpoints, reports, DDP helpers.

``vitmix.train.fit(config)`` is the Python entry; ``vitmix train`` the command line.
"""

from .config import TrainConfig
from .engine import FitResult, TrainingDiverged, build_model, fit, scheme_layers
from .evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "FitResult", "TrainConfig", "TrainingDiverged", "build_model",
           "evaluate", "fit", "scheme_layers"]
