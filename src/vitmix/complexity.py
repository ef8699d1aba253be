"""Parameter and MAC counts.

MACs are torch.utils.flop_counter's FLOPs divided by two: it counts matmul, linear, conv, bmm,
einsum and attention kernels, as fvcore does for the reference figures; elementwise ops, norms
and pooling are left out on both sides.

Which fused attention kernels torch's counter knows differs between releases (2.11 to 2.14
count nothing for the CPU flash kernel that ``scaled_dot_product_attention`` dispatches to on the
CPU, 2.15 counts it), so vitmix gives the counter its own formulas for those kernels: the count
is the same on every supported torch, and the same as the math path's matmuls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers.group_mix import GroupMixAttention

__all__ = ["attention_flop_formulas", "count_macs", "count_params", "plain_kernels"]


def _attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of softmax(Q K^T) V: the two matmuls, for (B, Hq, L, E) queries and (B, Hkv, S, *)
    keys and values (grouped-query attention repeats each key/value head over Hq / Hkv)."""
    b, heads, q_len, qk_dim = query_shape
    kv_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * b * heads * q_len * kv_len * (qk_dim + v_dim)


def _attention_backward_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of the backward pass: Q K^T recomputed, then the gradients of the scores, of V, Q
    and K, one matmul each."""
    b, heads, q_len, qk_dim = query_shape
    kv_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * b * heads * q_len * kv_len * (3 * qk_dim + 2 * v_dim)


def _fused_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query_shape, key_shape, value_shape)


def _fused_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                    out_shape=None, **kwargs) -> int:
    return _attention_backward_flops(query_shape, key_shape, value_shape)


def attention_flop_formulas() -> dict:
    """FlopCounterMode ``custom_mapping`` for the fused attention kernels whose (B, H, L, E)
    arguments lead with query, key and value, where this torch build has them."""
    forward_ops = ("_scaled_dot_product_flash_attention_for_cpu",
                   "_scaled_dot_product_fused_attention_overrideable")
    formulas = {}
    for name in forward_ops:
        for op_name, formula in ((name, _fused_forward), (name + "_backward", _fused_backward)):
            op = getattr(torch.ops.aten, op_name, None)
            if op is not None:
                formulas[op] = formula
    return formulas


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def plain_kernels(model: nn.Module) -> Iterator[None]:
    """Run Group-Mix Attention in its reference form for the duration.

    Its fast kernels do some masked extra work (two heads in one matmul, a 5x5 kernel padded to
    7x7); MACs describe the architecture, so they are counted on the plain form.
    """
    attns = [m for m in model.modules() if isinstance(m, GroupMixAttention)]
    saved = [m.impl for m in attns]
    for m in attns:
        m.impl = "reference"
    try:
        yield
    finally:
        for m, impl in zip(attns, saved, strict=True):
            m.impl = impl


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3,
               batch_size: int = 1) -> int:
    """Multiply-accumulates of one eval-mode forward pass on ``batch_size`` images."""
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(batch_size, in_chans, *img_size, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=attention_flop_formulas())
    try:
        with plain_kernels(model), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
