"""oneDNN kernels for float32 inference on the CPU: 1x1 convolutions fused with bias and activation.

Linear layers on this machine's CPU run about twice as fast as oneDNN 1x1 convolutions than
through ``F.linear`` (measured in benchmarks/models.py and benchmarks/gma_speed.py), and the
fused kernel writes its output once where a matmul, a bias and an activation cross memory three
times. The kernels are PyTorch's private ``torch.ops.mkldnn._convolution_pointwise`` (the op
torch.compile's CPU backend emits), so every caller asks :func:`fused_inference_allowed` first
and otherwise takes its plain path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

try:  # private API, only used to keep dispatch-mode tools (FLOP counting) on the plain path
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # another torch: no fused path rather than a failed import
    _get_current_dispatch_mode = None

__all__ = ["HAS_FUSED_CONV", "HIDDEN_CHUNK_BYTES", "RowKernel", "add_mlp_", "apply_linear",
           "apply_mlp", "chunk_rows", "conv1x1", "fusable_activation",
           "fused_inference_allowed", "in_row_chunks", "linear", "linear_inference",
           "mlp_row_kernel", "mlp_rows", "row_chunks", "timm_mlp_row_kernel"]

HAS_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise"
)


# Hidden activation per chunk of rows in the fused MLP paths, well inside this machine's L3
# (32 MiB): fc2 then reads it from cache, and the allocator reuses one buffer instead of mapping
# fresh pages for every call. SCHEMEformer-S12 (E=8, G=4), batch 32 at 224, one process, ms per
# MLP for chunks of 2 / 4 / 8 / 16 / 64 MiB / unchunked: stage 1 35.6 / 26.3 / 27.5 / 34.8 /
# 85.0 / 87.3, stage 2 19.4 / 16.0 / 16.3 / 16.4 / 25.2 / 31.0, stage 3 22.6 / 18.0 / 17.5 /
# 16.8 / 32.0 / 33.2, stage 4 15.4 / 12.3 / 11.7 / 10.3 / 9.5 / 10.8.
HIDDEN_CHUNK_BYTES = 8 << 20


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


def fused_inference_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x`` may go through the fused kernels: eager float32 CPU inference only.

    Autograd needs the plain ops, GPUs and other dtypes have no fused kernel here, and
    compilers, exporters and dispatch-mode tools (FLOP counting, fake tensors) should see the
    plain ops, which they know how to count and fuse.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or not HAS_FUSED_CONV:
        return False
    if _get_current_dispatch_mode is None:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return not (torch.jit.is_scripting() or torch.jit.is_tracing()
                or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
                or _get_current_dispatch_mode() is not None)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1,
            activation: str = "none", algorithm: str = "") -> torch.Tensor:
    """activation(grouped 1x1 conv(x) + bias) as one oneDNN kernel; ``weight`` is
    (out, in/G, 1, 1). oneDNN works channels-last: give it channels-last maps."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [0, 0], [1, 1], [1, 1], groups, activation, [], algorithm
    )


def _rows_as_map(rows: torch.Tensor) -> torch.Tensor:
    """Contiguous (M, C) rows as the (1, C, M, 1) map stored channels-last: a view, no copy."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def _map_as_rows(y: torch.Tensor) -> torch.Tensor:
    """The (1, C, M, 1) output map back as (M, C) rows."""
    return y.permute(0, 2, 3, 1).reshape(y.shape[2], y.shape[1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for (..., in) tokens, through the 1x1 convolution kernel.

    (M, in) rows are a (1, in, M, 1) map stored channels-last: a view, no copy either way.
    """
    out_features, in_features = weight.shape
    y = conv1x1(_rows_as_map(x.reshape(-1, in_features)),
                weight.view(out_features, in_features, 1, 1), bias)
    return _map_as_rows(y).reshape(*x.shape[:-1], out_features)


def linear_inference(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where :func:`fused_inference_allowed`."""
    if fused_inference_allowed(x, weight):
        return linear(x, weight, bias)
    return F.linear(x, weight, bias)


def apply_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, through oneDNN where :func:`fused_inference_allowed`; otherwise the module
    itself is called, so hooks and tools that look at modules see it."""
    if fused_inference_allowed(x, layer.weight):
        return linear(x, layer.weight, layer.bias)
    return layer(x)


def mlp_rows(rows: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
             b2: torch.Tensor | None, act: nn.Module, drop1: Callable[[torch.Tensor], torch.Tensor],
             drop2: Callable[[torch.Tensor], torch.Tensor], groups: int = 1) -> torch.Tensor:
    """drop2(fc2(drop1(act(fc1(rows))))) on (T, in) contiguous rows -> (T, out), fc1 with its
    bias and (where oneDNN has it) activation in one kernel, fc2 in another. Weights are
    (out, in / groups, 1, 1)."""
    after, (post_op, algorithm) = fusable_activation(act)
    h = drop1(after(conv1x1(_rows_as_map(rows), w1, b1, groups, post_op, algorithm)))
    return _map_as_rows(drop2(conv1x1(h, w2, b2, groups, "none", "")))


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


def _is_pointwise(layer: nn.Module) -> bool:
    if type(layer) is nn.Linear:
        return True
    return (type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.padding == (0, 0) and layer.dilation == (1, 1) and layer.groups == 1)


# A fused MLP on rows: (a function from (T, in) contiguous rows to (T, out) rows, the width of
# the hidden activation it makes, which sets the chunk size).
RowKernel = tuple[Callable[[torch.Tensor], torch.Tensor], int]


def timm_mlp_row_kernel(mlp: nn.Module) -> RowKernel | None:
    """The fused row kernel of a timm ``Mlp`` (linear layers or 1x1 convolutions), or None for
    any other module (it has to run as it is)."""
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if not (_is_pointwise(fc1) and type(fc2) is type(fc1) and _is_pointwise(fc2)
            and type(getattr(mlp, "norm", None)) is nn.Identity):
        return None
    w1 = fc1.weight.reshape(fc1.weight.shape[0], -1, 1, 1)
    w2 = fc2.weight.reshape(fc2.weight.shape[0], -1, 1, 1)
    return (lambda rows: mlp_rows(rows, w1, fc1.bias, w2, fc2.bias, mlp.act, mlp.drop1,
                                  mlp.drop2), w1.shape[0])


def mlp_row_kernel(mlp: nn.Module) -> RowKernel | None:
    """The fused row kernel of ``mlp``: a module's own ``fused_row_kernel()`` (vitmix's
    SchemeMlp), or timm's Mlp; None when there is none."""
    own = getattr(mlp, "fused_row_kernel", None)
    return own() if own is not None else timm_mlp_row_kernel(mlp)


def _token_rows(x: torch.Tensor, maps: bool) -> torch.Tensor:
    """(B, C, H, W) maps or (..., C) tokens as (T, C) rows: a view where channels are
    innermost in memory, else a copy."""
    last = x.permute(0, 2, 3, 1) if maps else x
    return last.reshape(-1, last.shape[-1])


def _first_weight(mlp: nn.Module) -> torch.Tensor | None:
    fc1 = getattr(mlp, "fc1", None)
    return getattr(fc1, "weight", None)


def apply_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for a timm ``Mlp`` (linear layers on (..., C) tokens, or 1x1 convolutions on
    (B, C, H, W) maps); float32 CPU inference runs fc1 with its bias and activation, then fc2,
    as fused oneDNN kernels over chunks of rows (see :func:`chunk_rows`). Anything else, and
    every other case, calls the module, so the state dict and hooks stay timm's."""
    kernel = timm_mlp_row_kernel(mlp)
    if kernel is None or not fused_inference_allowed(x, mlp.fc1.weight):
        return mlp(x)
    maps = type(mlp.fc1) is nn.Conv2d
    if maps and x.dim() != 4:
        return mlp(x)
    fn, hidden = kernel
    out_width = mlp.fc2.weight.shape[0]
    y = in_row_chunks(fn, _token_rows(x, maps), out_width, hidden)
    if not maps:
        return y.view(*x.shape[:-1], out_width)
    y = y.view(x.shape[0], x.shape[2], x.shape[3], out_width).permute(0, 3, 1, 2)
    return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


def add_mlp_(residual: torch.Tensor, mlp: nn.Module, x: torch.Tensor,
             scale: torch.Tensor | None = None, channels_first: bool = False) -> torch.Tensor:
    """``residual + scale * mlp(x)``, a block's second residual branch (``scale`` is its
    per-channel layer scale, or None).

    In float32 CPU inference, with channels innermost in ``residual``'s memory, the fused
    kernels run over chunks of rows and each chunk's output, still in cache, is scaled and
    added into ``residual`` in place (one ``addcmul_``). Compared with the plain expression
    this skips writing the MLP's output, scaling it, and adding it as three passes over the
    whole activation. The caller must own ``residual`` (a tensor it made itself).
    ``channels_first``: ``x`` and ``residual`` are (B, C, H, W) maps, else (..., C) tokens.
    """
    weight = _first_weight(mlp)
    kernel = None
    if (weight is not None and fused_inference_allowed(x, weight)
            and residual.shape == x.shape and residual.dtype == x.dtype):
        target = residual.permute(0, 2, 3, 1) if channels_first else residual
        if target.is_contiguous():
            kernel = mlp_row_kernel(mlp)
    if kernel is None:
        y = apply_mlp(mlp, x)
        if scale is not None:
            y = y * (scale.view(1, -1, *[1] * (y.dim() - 2)) if channels_first else scale)
        return residual + y
    fn, hidden = kernel
    rows, out = _token_rows(x, channels_first), target.view(-1, target.shape[-1])
    for chunk in row_chunks(rows.shape[0], hidden, rows.element_size()):
        if scale is None:
            out[chunk].add_(fn(rows[chunk]))
        else:
            out[chunk].addcmul_(fn(rows[chunk]), scale)
    return residual
