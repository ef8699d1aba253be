"""The global switch of the accelerated inference path.

On by default; ``VITMIX_ACCELERATE=0`` in the environment or ``set_enabled(False)`` turns it off,
and every accelerated module then runs its plain PyTorch forward (like timm's
``TIMM_FUSED_ATTN`` / ``set_fused_attn``).
"""

from __future__ import annotations

import os

ENV_VAR = "VITMIX_ACCELERATE"
_CHOICES = {"1": True, "0": False}
_override: bool | None = None


def _from_environment() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip()
    if value not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r} is not understood; expected 1 (on) or 0 (off)")
    return _CHOICES[value]


def is_enabled() -> bool:
    """Whether accelerated modules may take their fused kernels (they still check the input)."""
    return _from_environment() if _override is None else _override


def set_enabled(enabled: bool | None) -> None:
    """Turn the accelerated path on or off for this process; None returns to the environment
    variable's setting."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_enabled takes True, False or None, got {enabled!r}")
    _override = enabled
