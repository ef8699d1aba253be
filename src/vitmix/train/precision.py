"""Mixed precision: which autocast dtype a run trains in, and whether it scales gradients.

``auto`` picks bf16 only on GPUs whose matrix units compute it natively (compute capability 8.0
and newer: A100, H100, L4, RTX 30xx and later). ``torch.cuda.is_bf16_supported()`` also says
yes where bf16 is emulated (a T4 or V100 runs it, slowly), so it is not the test here: on those
GPUs ``auto`` picks fp16 with a gradient scaler, the precision their tensor cores have. On a CPU
``auto`` trains in float32: bf16 autocast pays only on CPUs with native bf16 instructions, which
``--amp bf16`` asks for explicitly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..layers.checks import one_of
from .config import AMP_MODES

__all__ = ["NATIVE_BF16_CAPABILITY", "Precision", "has_native_bf16", "resolve_precision"]

NATIVE_BF16_CAPABILITY = (8, 0)


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` (a CUDA device) computes bf16 in hardware."""
    return torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY


@dataclass(frozen=True)
class Precision:
    """What ``--amp`` resolved to on the run's device."""

    name: str  # "off", "bf16" or "fp16"
    device_type: str
    note: str | None = None  # said once at the start, when the choice deserves a word

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def scales_gradients(self) -> bool:
        """fp16's narrow range needs a GradScaler; bf16 has float32's range."""
        return self.name == "fp16"

    def autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of the context the forward runs in."""
        if self.dtype is None:
            return contextlib.nullcontext
        device_type, dtype = self.device_type, self.dtype
        return lambda: torch.autocast(device_type, dtype=dtype)


def resolve_precision(amp: str, device: torch.device,
                      native_bf16: Callable[[torch.device], bool] = has_native_bf16) -> Precision:
    """The precision ``amp`` ("auto", "off", "bf16", "fp16") means on ``device``."""
    one_of(*AMP_MODES).check("amp", amp)
    if device.type != "cuda":
        return Precision("off" if amp == "auto" else amp, device.type)
    native = native_bf16(device)
    if amp == "auto":
        return Precision("bf16" if native else "fp16", "cuda")
    if amp == "bf16" and not native:
        major, minor = torch.cuda.get_device_capability(device)
        return Precision("bf16", "cuda", note=(
            f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
            f"native bf16: it is emulated and slow; --amp fp16 (or auto) uses its tensor cores"))
    return Precision(amp, "cuda")
