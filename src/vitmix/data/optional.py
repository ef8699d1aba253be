"""The packages of the `data` extra (webdataset, datasets), imported only by the sources that use
them, with one line saying how to install them when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["INSTALL_HINT", "require"]

INSTALL_HINT = "pip install 'vitmix[data]'"


def require(module: str, what: str) -> ModuleType:
    """``module`` imported, or ValueError naming it, what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        detail = "" if isinstance(err, ModuleNotFoundError) else f" ({err})"
        raise ValueError(f"{what} need the package '{module}', which cannot be imported"
                         f"{detail}; install it with: {INSTALL_HINT}") from None
