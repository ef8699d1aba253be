"""Argument checks shared by the layers, the models, the training config and the commands.

Each raises one ValueError line that names the argument, the value given and what it must be,
so a bad argument fails before any weight is made or any file is read. Each returns the value
in the form the caller keeps (a plain int or float, a tuple of per-stage values).

A :class:`Rule` is such a check as a value: what it allows in words, and the test. Tables of
settings (TrainConfig's fields) keep one rule per entry, and rules combine (``optional``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from ..messages import quoted


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_real(value) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What a value may be: ``allowed`` in words (completes "must be ..."), and ``test``."""

    allowed: str
    test: Callable[[Any], bool]

    def check(self, name: str, value: Any) -> Any:
        if not self.test(value):
            raise ValueError(f"{name} must be {self.allowed}, got {quoted(value)}")
        return value


def optional(rule: Rule) -> Rule:
    """``rule``, or None (null in YAML)."""
    return Rule(f"{rule.allowed} or None", lambda v: v is None or rule.test(v))


def _same_kind(value: Any, choice: Any) -> bool:
    # True == 1, but True is no choice among (1, 3); nor is 1.0.
    if isinstance(value, bool) != isinstance(choice, bool):
        return False
    return isinstance(value, type(choice))


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of {', '.join(map(repr, choices))}",
                lambda v: any(_same_kind(v, c) and v == c for c in choices))


def number_in(low: float, high: float, *, high_open: bool = False) -> Rule:
    """A finite number in [low, high], or [low, high) with ``high_open``."""
    bracket = ")" if high_open else "]"
    return Rule(f"a number in [{low:g}, {high:g}{bracket}",
                lambda v: _is_finite(v) and low <= v and (v < high if high_open else v <= high))


def int_up_to(high: int, low: int = 1) -> Rule:
    """An integer in [low, high], low 0 or 1: a setting with a bound (vitmix.limits)."""
    kind = "a positive integer" if low == 1 else "a non-negative integer"
    return Rule(f"{kind} up to {high}", lambda v: _is_int(v) and low <= v <= high)


POSITIVE_INT = Rule("a positive integer", lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE_INT = Rule("a non-negative integer", lambda v: _is_int(v) and v >= 0)
# Finite: an infinite learning rate or ratio is no setting either.
POSITIVE_NUMBER = Rule("a positive number", lambda v: _is_finite(v) and v > 0)
NON_NEGATIVE_NUMBER = Rule("a non-negative number", lambda v: _is_finite(v) and v >= 0)
NUMBER = Rule("a number", lambda v: _is_real(v) and v == v)  # NaN is no setting
PROBABILITY = Rule("a probability in [0, 1]", lambda v: _is_real(v) and 0.0 <= v <= 1.0)
# A part of an image kept (timm's crop_pct): none of it is no crop.
FRACTION = Rule("a number in (0, 1]", lambda v: _is_finite(v) and 0.0 < v <= 1.0)
# Only True and False: a truthy string such as "false" would silently mean True.
BOOL = Rule("True or False", lambda v: isinstance(v, bool))
TEXT = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
KEYWORDS = Rule("a mapping of argument names to values (a JSON object)",
                lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v))


def check_positive_int(name: str, value: Any) -> int:
    return int(POSITIVE_INT.check(name, value))


def check_non_negative_int(name: str, value: Any) -> int:
    return int(NON_NEGATIVE_INT.check(name, value))


def check_positive_number(name: str, value: Any) -> float:
    return POSITIVE_NUMBER.check(name, value)


def check_number(name: str, value: Any) -> float:
    return NUMBER.check(name, value)


def check_probability(name: str, value: Any) -> float:
    return float(PROBABILITY.check(name, value))


def check_bool(name: str, value: Any) -> bool:
    return BOOL.check(name, value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    return one_of(*choices).check(name, value)


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
