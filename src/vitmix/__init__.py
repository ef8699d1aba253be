"""vitmix: SCHEME channel mixers and Group-Mix Attention for timm.

Importing vitmix registers every vitmix model with timm.
"""

from . import layers, models  # noqa: F401  (models registers with timm on import)
from .accelerate import accelerate
from .surgery import deploy, schemify

__version__ = "0.1.0"
__all__ = ["accelerate", "deploy", "layers", "models", "schemify"]
