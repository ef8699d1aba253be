"""oneDNN kernels for float32 CPU inference: 1x1 convolutions fused with bias and activation.

On the CPUs vitmix was measured on, a linear layer runs about twice as fast as a oneDNN 1x1
convolution as through ``F.linear``, and the fused kernel writes its output once where a
matmul, a bias and an activation cross memory three times (docs/performance.md has the
numbers and the commands). The kernel is PyTorch's private
``torch.ops.mkldnn._convolution_pointwise`` (the op torch.compile's CPU backend emits): only the
accelerated modules call it, and only after :func:`inference_allowed`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .switch import is_enabled

try:  # private API, only used to keep dispatch-mode tools (FLOP counting) on the plain path
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # another torch: no fused path rather than a failed import
    _get_current_dispatch_mode = None

HAS_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise"
)

# The hidden activation of one chunk of rows in the fused MLPs: small enough to stay in a
# server CPU's L3 while fc2 reads it, large enough that the per-chunk calls cost little, and one
# buffer the allocator reuses instead of fresh pages per call (docs/performance.md).
HIDDEN_CHUNK_BYTES = 8 << 20


def inference_allowed(x: torch.Tensor, *weights: torch.Tensor | None) -> bool:
    """Whether ``x`` may go through the fused kernels: the switch on, eager float32 CPU inference.

    Autograd needs the plain ops, GPUs and other dtypes have no fused kernel here, and
    compilers, exporters and dispatch-mode tools (FLOP counting, fake tensors) should see the
    plain ops, which they know how to count and fuse.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or not HAS_FUSED_CONV:
        return False
    if not is_enabled():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(
            w is not None and w.requires_grad for w in weights)):
        return False
    return eager_mode()


def eager_mode() -> bool:
    """Not scripting, tracing, compiling, exporting or under a dispatch mode (FLOP counting,
    fake tensors): the accelerated paths run only then, so those tools see the plain ops."""
    return not (_get_current_dispatch_mode is None or torch.jit.is_scripting()
                or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export() or _get_current_dispatch_mode() is not None)


def chunk_rows(hidden_width: int, element_size: int = 4) -> int:
    """Rows per chunk so that a chunk's hidden activation takes about HIDDEN_CHUNK_BYTES."""
    return max(1, HIDDEN_CHUNK_BYTES // (element_size * hidden_width))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def fusable_activation(act: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                tuple[str, str]]:
    """(what is left to apply after the kernel, (oneDNN post-op, algorithm)) for ``act``."""
    if type(act) is nn.GELU:
        return _identity, ("gelu", act.approximate)
    if type(act) is nn.ReLU:
        return _identity, ("relu", "")
    if type(act) is nn.SiLU:
        return _identity, ("swish", "")
    if type(act) is nn.Identity:
        return _identity, ("none", "")
    return act, ("none", "")


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1,
            activation: str = "none", algorithm: str = "") -> torch.Tensor:
    """activation(grouped 1x1 conv(x) + bias) as one oneDNN kernel; ``weight`` is
    (out, in/G, 1, 1). oneDNN works channels-last: give it channels-last maps."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [0, 0], [1, 1], [1, 1], groups, activation, [], algorithm
    )


def rows_as_map(rows: torch.Tensor) -> torch.Tensor:
    """Contiguous (M, C) rows as the (1, C, M, 1) map stored channels-last: a view, no copy."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def map_as_rows(y: torch.Tensor) -> torch.Tensor:
    """The (1, C, M, 1) output map back as (M, C) rows."""
    return y.permute(0, 2, 3, 1).reshape(y.shape[2], y.shape[1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for (..., in) tokens, through the 1x1 convolution kernel.

    (M, in) rows are a (1, in, M, 1) map stored channels-last: a view, no copy either way.
    """
    out_features, in_features = weight.shape
    y = conv1x1(rows_as_map(x.reshape(-1, in_features)),
                weight.view(out_features, in_features, 1, 1), bias)
    return map_as_rows(y).reshape(*x.shape[:-1], out_features)


def mlp_rows(rows: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
             b2: torch.Tensor | None, act: nn.Module, drop1: Callable[[torch.Tensor], torch.Tensor],
             drop2: Callable[[torch.Tensor], torch.Tensor], groups: int = 1) -> torch.Tensor:
    """drop2(fc2(drop1(act(fc1(rows))))) on (T, in) contiguous rows -> (T, out), fc1 with its
    bias and (where oneDNN has it) activation in one kernel, fc2 in another. Weights are
    (out, in / groups, 1, 1)."""
    after, (post_op, algorithm) = fusable_activation(act)
    h = drop1(after(conv1x1(rows_as_map(rows), w1, b1, groups, post_op, algorithm)))
    return map_as_rows(drop2(conv1x1(h, w2, b2, groups, "none", "")))


def row_chunks(num_rows: int, hidden_width: int, element_size: int = 4) -> list[slice]:
    """The row ranges of :func:`chunk_rows` rows each that cover ``num_rows`` rows."""
    step = chunk_rows(hidden_width, element_size)
    return [slice(start, start + step) for start in range(0, num_rows, step)]


def in_row_chunks(fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                  out_width: int, hidden_width: int) -> torch.Tensor:
    """``fn`` ((T, in) rows -> (T, out_width)) over ``tokens`` in chunks of
    :func:`chunk_rows` rows for a hidden activation ``hidden_width`` wide."""
    chunks = row_chunks(tokens.shape[0], hidden_width, tokens.element_size())
    if len(chunks) <= 1:
        return fn(tokens)
    out = tokens.new_empty(tokens.shape[0], out_width)
    for rows in chunks:
        out[rows] = fn(tokens[rows])
    return out


# A fused MLP on rows: (a function from (T, in) contiguous rows to (T, out) rows, the width of
# the hidden activation it makes, which sets the chunk size).
RowKernel = tuple[Callable[[torch.Tensor], torch.Tensor], int]


def channels_to_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) as a (B, *spatial, C) view."""
    return x.permute(0, *range(2, x.dim()), 1)


def rows_and_back(x: torch.Tensor, channels_first: bool
                  ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``x`` ((B, C, *spatial) maps when ``channels_first``, else (..., C) tokens) as (T, C)
    rows, and the function that takes (T, C') rows back to ``x``'s shape convention and memory
    layout. The rows are a view where channels are innermost in memory, else a copy."""
    if not channels_first:
        return x.reshape(-1, x.shape[-1]), lambda y: y.view(*x.shape[:-1], y.shape[-1])
    last = channels_to_last(x)

    def back(y: torch.Tensor) -> torch.Tensor:
        y = y.view(*last.shape[:-1], y.shape[-1]).permute(0, x.dim() - 1, *range(1, x.dim() - 1))
        return y if last.is_contiguous() else y.contiguous()

    return last.reshape(-1, last.shape[-1]), back


def token_rows(x: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """(B, C, *spatial) maps or (..., C) tokens as (T, C) rows: a view where channels are
    innermost in memory, else a copy."""
    last = channels_to_last(x) if channels_first else x
    return last.reshape(-1, last.shape[-1])


def apply_row_kernel(kernel: RowKernel, x: torch.Tensor, out_width: int,
                     channels_first: bool) -> torch.Tensor:
    """The row kernel over ``x`` ((B, C, *spatial) maps when ``channels_first``, else (..., C)
    tokens) in chunks of rows; the output keeps ``x``'s shape convention and memory layout."""
    fn, hidden = kernel
    if not channels_first:
        y = in_row_chunks(fn, token_rows(x, False), out_width, hidden)
        return y.view(*x.shape[:-1], out_width)
    last = channels_to_last(x)
    y = in_row_chunks(fn, last.reshape(-1, last.shape[-1]), out_width, hidden)
    y = y.view(*last.shape[:-1], out_width).permute(0, x.dim() - 1, *range(1, x.dim() - 1))
    return y if last.is_contiguous() else y.contiguous()


def add_rows_(residual: torch.Tensor, kernel: RowKernel, x: torch.Tensor,
              scale: torch.Tensor | None, channels_first: bool) -> torch.Tensor | None:
    """``residual += scale * kernel(x)`` chunk by chunk while each chunk's output is in cache, or
    None (nothing done) when ``residual``'s channels are not innermost in memory.

    Compared with the plain expression this skips writing the MLP's output, scaling it and adding
    it as three passes over the whole activation. The caller must own ``residual``.
    """
    target = channels_to_last(residual) if channels_first else residual
    if residual.shape != x.shape or residual.dtype != x.dtype or not target.is_contiguous():
        return None
    fn, hidden = kernel
    rows, out = token_rows(x, channels_first), target.view(-1, target.shape[-1])
    for chunk in row_chunks(rows.shape[0], hidden, rows.element_size()):
        if scale is None:
            out[chunk].add_(fn(rows[chunk]))
        else:
            out[chunk].addcmul_(fn(rows[chunk]), scale)
    return residual
