"""Argument checks shared by the layers and the models.

Each raises one ValueError line that names the argument, the value given and what it must be,
so a bad constructor argument fails before any weight is made. Each returns the value in the
form the caller keeps (a plain int or float, a tuple of per-stage values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_positive_number(name: str, value: Any) -> float:
    if not _is_real(value) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def check_number(name: str, value: Any) -> float:
    if not _is_real(value) or value != value:  # NaN is no setting
        raise ValueError(f"{name} must be a number, got {value!r}")
    return value


def check_probability(name: str, value: Any) -> float:
    if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    # Only True and False: a truthy string such as "false" would silently mean True.
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if not any(isinstance(value, type(choice)) and value == choice for choice in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_callable(name: str, value: Any, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not callable(value):
        what = "a module class or factory (or None)" if optional else "a module class or factory"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_pair(name: str, value: Any, check: Callable[[str, Any], Any]) -> tuple[Any, Any]:
    """A value or a 2-tuple of values (timm's Mlp takes bias and drop either way)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be one value or a pair, got {value!r}")
        return check(f"{name}[0]", value[0]), check(f"{name}[1]", value[1])
    value = check(name, value)
    return value, value


def check_per_stage(name: str, value: Any, num_stages: int,
                    check: Callable[[str, Any], Any]) -> tuple[Any, ...]:
    """One value for every stage, or a sequence of exactly ``num_stages`` values."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        value = check(name, value)
        return (value,) * num_stages
    if len(value) != num_stages:
        raise ValueError(f"{name} needs one value or one entry per stage ({num_stages} stages), "
                         f"got {value!r}")
    return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))
