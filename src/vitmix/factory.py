"""Building a model by its timm name, with errors for people: where training, evaluation,
benchmarks and export all start."""

from __future__ import annotations

import timm
from torch import nn

from .messages import quoted

__all__ = ["build_model", "check_model_name"]


# The prefixes timm.create_model reads as a place to fetch a model from, not a model's name.
_SOURCE_PREFIXES = ("hf-hub:", "local-dir:")


def check_model_name(name: str) -> None:
    """ValueError for a name timm has no model for (a hub id or a folder among them: a name may
    come from a file, which must not make vitmix fetch anything)."""
    if isinstance(name, str) and timm.is_model(name):
        return
    if isinstance(name, str) and name.startswith(_SOURCE_PREFIXES):
        raise ValueError(f"unknown model {quoted(name)}: a place to fetch a model from, not a "
                         f"model registered with timm; vitmix builds registered models by name "
                         f"and loads weights from --checkpoint")
    raise ValueError(f"unknown model {quoted(name)}: not registered with timm (`vitmix list` "
                     f"shows vitmix's models, timm.list_models() all of them)")


def build_model(name: str, kwargs: dict) -> nn.Module:
    """timm.create_model(name, **kwargs), with a ValueError for names and arguments people get
    wrong."""
    check_model_name(name)
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        if "img_size" in kwargs and "img_size" in str(err):
            # Convolutional timm models take any input size and have no img_size argument.
            return build_model(name, {k: v for k, v in kwargs.items() if k != "img_size"})
        raise ValueError(f"cannot build {name} with {kwargs}: {err}") from None
