"""What the layers need to stay scriptable (``torch.jit.script``) and traceable (``torch.fx``).

Both compilers see a forward differently from eager mode:

- TorchScript compiles every line it reaches, and cannot compile Python-side checks (tuples of
  shapes, f-strings over them) or read Python globals. Such code sits under
  ``if not torch.jit.is_scripting():``, a condition TorchScript decides while compiling, so it
  never compiles the block. (It must be a nested ``if``: TorchScript decides a lone call, not an
  ``and`` of it with something else.)
- torch.fx records the forward with proxies for tensors, so a shape is a proxy too and a Python
  ``if`` on it, or a loop over it, cannot be recorded. The input checks and the shape helpers
  are therefore *wrapped* (``torch.fx.wrap`` in the module that calls them): the graph holds a
  call to the real function, which runs on real tensors when the graph runs, so a traced model
  still refuses a bad input in the same one line.
- A choice of kernel by memory layout (channels-last maps read in place) is made on real
  tensors only; while fx traces, :func:`is_fx_tracing` says so and the layers record their
  layout-free path, which computes the same function.

The shape helpers below are written in TorchScript's subset, so one function serves eager mode,
TorchScript and (wrapped) torch.fx.
"""

from __future__ import annotations

import torch
from torch.fx import _symbolic_trace

__all__ = ["is_fx_tracing", "shape_text", "shape_with"]


def is_fx_tracing() -> bool:
    """True while torch.fx records a module symbolically; False in eager mode, under TorchScript
    and under torch.compile (which traces real shapes and must see the fast layouts)."""
    if torch.jit.is_scripting():
        return False
    else:
        if torch.compiler.is_compiling():
            return False
        return _symbolic_trace.is_fx_symbolic_tracing()


def shape_text(shape: list[int]) -> str:
    """A shape as Python prints a tuple, ``(2, 3, 32, 32)``, in TorchScript too."""
    if len(shape) == 1:
        return "(" + str(shape[0]) + ",)"
    return "(" + ", ".join([str(s) for s in shape]) + ")"


def shape_with(shape: list[int], dim: int, size: int) -> list[int]:
    """``shape`` with dimension ``dim`` (negative counts from the end) set to ``size``."""
    # Copied element by element, not converted: under torch.jit.trace (ONNX export) the
    # sizes of a tensor's shape are recorded, and int() would freeze them to this input's.
    out = list(shape)
    out[dim] = size
    return out
