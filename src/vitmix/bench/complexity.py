"""Parameter and MAC counts.

MACs are torch.utils.flop_counter's FLOPs divided by two: it counts matmul, linear, conv, bmm,
einsum and attention kernels, as fvcore does for the reference figures; elementwise ops, norms
and pooling are left out on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.group_mix import GroupMixAttention


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
    try:
        with plain_kernels(model), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
