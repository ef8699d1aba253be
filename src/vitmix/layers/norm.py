"""GroupNorm with one group (timm's ``GroupNorm1``), safe from a PyTorch 2.11-2.13 CPU crash.

PyTorch 2.11, 2.12 and 2.13 (fixed in 2.14.0) kill the process with a segmentation fault in
the CPU backward of ``native_group_norm`` (``GroupNormBackwardKernelImplChannelsLastInternal``)
when the input is stored channels-last and autograd wants the gradient of the weight or bias
but not of the input (``output_mask`` ``[False, True, True]``). That happens when what comes
before the norm needs no gradient: a MetaFormer block or head trained on top of frozen layers,
or a block run on its own. torch.compile with the inductor backend is safe (it decomposes the
backward), the ``eager`` and ``aot_eager`` backends crash as eager mode does. On those
versions, and in that case only, this norm runs on a contiguous copy of the input and gives
its output back channels-last: the same values, two more copies, no crash.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import GroupNorm1 as _TimmGroupNorm1
from timm.layers.fast_norm import fast_group_norm
from torch.torch_version import TorchVersion

from .tracing import is_fx_tracing

__all__ = ["GROUP_NORM_CHANNELS_LAST_BACKWARD_CRASHES", "GroupNorm1", "crashing_backward_case"]

# 2.11.0, 2.12.1 and 2.13.0 were seen to crash, 2.14.0, 2.14.1 and 2.15.0 not;
# tests/test_norm.py runs the bare case in a subprocess and checks this flag against it.
GROUP_NORM_CHANNELS_LAST_BACKWARD_CRASHES = TorchVersion(torch.__version__) < (2, 14)


def crashing_backward_case(x: torch.Tensor, weight: torch.Tensor | None,
                           bias: torch.Tensor | None) -> bool:
    """Whether autograd could run the crashing CPU backward on ``x``: grad mode, a CPU map
    (4-D or 5-D) not stored contiguously that needs no gradient, and a weight or bias that
    does. (Tracing is left alone: a traced graph is for inference.)"""
    if is_fx_tracing():
        return False
    if x.requires_grad or not torch.is_grad_enabled() or x.device.type != "cpu":
        return False
    if x.dim() not in (4, 5) or x.is_contiguous():
        return False
    if not any(p is not None and p.requires_grad for p in (weight, bias)):
        return False
    return not torch.jit.is_tracing()


def _channels_last_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last or channels_last_3d where ``x`` is stored so, else contiguous_format."""
    for fmt, dim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == dim and x.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


class GroupNorm1(_TimmGroupNorm1):
    """timm's ``GroupNorm1`` (the same parameters, state dict and output); on PyTorch < 2.14 it
    steers clear of the crashing CPU backward (see the module's doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in TorchScript (an inference graph, and the check reads a Python global).
        if not torch.jit.is_scripting():
            if GROUP_NORM_CHANNELS_LAST_BACKWARD_CRASHES and crashing_backward_case(
                    x, self.weight, self.bias):
                y = super().forward(x.contiguous())
                return y.contiguous(memory_format=_channels_last_format(x))
        # timm's forward, written out: TorchScript cannot compile a call through super().
        if self._fast_norm:
            return fast_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
