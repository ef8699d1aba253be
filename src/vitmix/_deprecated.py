"""Old import paths, kept for one release after a move: each old name warns, then hands over
the object from its new home, so code written against 0.1 keeps running while it is updated."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

REMOVED_IN = "0.2"


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    """The DeprecationWarning for a use of ``old``, now ``new``; stacklevel 3 points at the line
    that called the function calling this."""
    warnings.warn(f"{old} is now {new}; the old path will be removed in vitmix {REMOVED_IN}",
                  DeprecationWarning, stacklevel=stacklevel)


def moved(old_module: str, new_homes: dict[str, ModuleType | tuple[ModuleType, str]]
          ) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``old_module``, whose names now live elsewhere.

    ``new_homes`` maps each old name to the module it moved to, or to (module, new name) when it
    was renamed too. The warning names both paths; it is issued on every access, not once at
    import, so a caller is warned even when another module imported the old one first.
    """

    def __getattr__(name: str) -> object:
        home = new_homes.get(name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, new_name = home if isinstance(home, tuple) else (home, name)
        warn_moved(f"{old_module}.{name}", f"{module.__name__}.{new_name}")
        return getattr(module, new_name)

    return __getattr__
