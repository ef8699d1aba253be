"""Old import paths, kept for one release after a move: each old name warns, then hands over
the object from its new home, so code written against 0.1 keeps running while it is updated."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

REMOVED_IN = "0.2"


def moved(old_module: str, new_homes: dict[str, ModuleType | tuple[ModuleType, str]]
          ) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``old_module``, whose names now live elsewhere.

    ``new_homes`` maps each old name to the module it moved to, or to (module, new name) when it
    was renamed too. The warning names both paths; it is raised on every use, not once per
    process, so a test of one caller is not silenced by another that imported it first.
    """

    def __getattr__(name: str) -> object:
        home = new_homes.get(name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, new_name = home if isinstance(home, tuple) else (home, name)
        warnings.warn(f"{old_module}.{name} is now {module.__name__}.{new_name}; the old path "
                      f"will be removed in vitmix {REMOVED_IN}", DeprecationWarning, stacklevel=2)
        return getattr(module, new_name)

    return __getattr__
