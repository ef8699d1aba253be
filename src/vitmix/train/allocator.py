"""Keep freed memory for reuse: glibc's malloc settings for training.

By default glibc gives every large block (above a threshold that adapts up to 32 MiB) its own
fresh pages from the kernel and returns them when freed, and trims the heap's free top. Training
allocates and frees activations of tens of megabytes thousands of times a minute, so every step
pays page faults and zeroing for memory it had a moment ago. On the project's machine (a KVM
guest, where a page fault is expensive) that cost up to half of a step's time; keeping freed
memory made a MetaFormer-S12 training step 1.2x to 2x faster (docs/performance.md). The price
is that a process keeps its peak memory until it exits, which a training process does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ENV_VAR", "keep_freed_memory"]

ENV_VAR = "VITMIX_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused; larger ones still get their own
# pages (a glibc maximum applies only to the adaptive threshold, not to one set explicitly).
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim in practice


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory in this process (``VITMIX_KEEP_FREED_MEMORY=0``
    leaves it alone). Returns whether the settings were applied: not on other C libraries."""
    value = os.environ.get(ENV_VAR, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_VAR}={value!r} is not understood; expected 1 (on) or 0 (off)")
    if value == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
