"""Fused CPU inference kernels, applied to a model by one explicit transform.

vitmix's layers and models have one plain PyTorch forward each. ``accelerate(model)`` turns the
modules that have an accelerated twin into it (see :mod:`.modules`); ``VITMIX_ACCELERATE=0`` or
``set_enabled(False)`` turns every twin back to its plain forward without touching the model.
``vitmix.deploy`` calls ``accelerate`` unless told not to.
"""

from .kernels import HAS_FUSED_CONV
from .switch import ENV_VAR, is_enabled, set_enabled
from .transform import accelerate, accelerated_modules, restore

__all__ = ["ENV_VAR", "HAS_FUSED_CONV", "accelerate", "accelerated_modules", "is_enabled",
           "restore", "set_enabled"]
