"""vitmix: SCHEME channel mixers and Group-Mix Attention for timm.

Importing vitmix registers every vitmix model with timm.
"""

from . import layers, models  # noqa: F401  (models registers with timm on import)
from .accelerate import accelerate
from .compression import compress
from .surgery import deploy, schemify

__version__ = "0.1.0"
__all__ = ["accelerate", "compress", "deploy", "layers", "models", "save_for_hub", "schemify"]


def __getattr__(name: str):
    # Imported on first use: `import vitmix` (which every model user runs) stays as light as
    # registering the models needs.
    if name == "save_for_hub":
        from .hub import save_for_hub

        return save_for_hub
    raise AttributeError(f"module 'vitmix' has no attribute {name!r}")
