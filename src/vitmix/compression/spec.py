"""The SCHEME form a run or a weights file asks for: :func:`vitmix.schemify`'s arguments as a
small mapping (``{"groups": 2, "cca": false}``), checked before any model is built: it comes
from config.yaml, checkpoints and safetensors metadata, which no file may use to steer vitmix
beyond these four values."""

from __future__ import annotations

from typing import Any

from ..layers.checks import Rule
from ..layers.scheme import CCA_SCHEDULES
from ..messages import quoted

__all__ = ["MAX_EXPANSION", "MAX_GROUPS", "SCHEMIFY_SPEC", "check_schemify_spec",
           "schemify_arguments"]

# Far above any published design (G <= 8, E <= 16), far below a width that could exhaust memory
# when the model is built.
MAX_GROUPS = 1024
MAX_EXPANSION = 64.0

_KEYS = {
    "groups": (f"an integer from 1 to {MAX_GROUPS}",
               lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_GROUPS),
    "expansion": (f"None or a number in (0, {MAX_EXPANSION:g}]",
                  lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and 0 < v <= MAX_EXPANSION)),
    "cca": ("true or false", lambda v: isinstance(v, bool)),
    "cca_schedule": (f"one of {', '.join(map(repr, CCA_SCHEDULES))}",
                     lambda v: v in CCA_SCHEDULES),
}


def _problem(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return f"must be a mapping of {', '.join(_KEYS)}, got {quoted(spec)}"
    if "groups" not in spec:
        return "must name its groups, e.g. {\"groups\": 2}"
    for key, value in spec.items():
        if key not in _KEYS:
            return f"takes {', '.join(_KEYS)}, got {quoted(key)}"
        allowed, test = _KEYS[key]
        if not test(value):
            return f"{key} must be {allowed}, got {quoted(value)}"
    return None


SCHEMIFY_SPEC = Rule(f"None or a mapping of {', '.join(_KEYS)} (vitmix.schemify's arguments, "
                     f"groups required)", lambda v: v is None or _problem(v) is None)


def check_schemify_spec(spec: Any, source: str) -> dict:
    """``spec`` when it is a valid SCHEME form, else ValueError naming ``source`` and what is
    wrong."""
    problem = _problem(spec)
    if problem:
        raise ValueError(f"{source}: the SCHEME form (schemify) {problem}")
    return spec


def schemify_arguments(spec: dict) -> dict:
    """The keyword arguments of :func:`vitmix.schemify` for a checked ``spec``."""
    return {"groups": spec["groups"], "expansion": spec.get("expansion"),
            "cca": spec.get("cca", False), "cca_schedule": spec.get("cca_schedule", "learned")}
