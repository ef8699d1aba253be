"""Token mixers for channels-first (B, C, H, W) feature maps, as used by the MetaFormer backbone."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Pooling", "SelfAttention", "SepConv", "IdentityMixer", "TOKEN_MIXERS"]


class IdentityMixer(nn.Module):
    def __init__(self, dim: int, **_):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Pooling(nn.Module):
    """PoolFormer's mixer: 3x3 average pooling minus the input (the block adds the input back)."""

    def __init__(self, dim: int, pool_size: int = 3, **_):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2,
                                 count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W tokens, through scaled_dot_product_attention."""

    def __init__(self, dim: int, head_dim: int = 32, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, **_):
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(f"attention width {dim} is not divisible by head_dim={head_dim}")
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(b, h * w, c)
        out = self.proj_drop(self.proj(out))
        return out.transpose(1, 2).reshape(b, c, h, w)


class SepConv(nn.Module):
    """ConvFormer's inverted separable convolution: pointwise up, depthwise 7x7, pointwise down."""

    def __init__(self, dim: int, expansion: int = 2, kernel_size: int = 7,
                 act_layer: Callable[..., nn.Module] = nn.GELU, **_):
        super().__init__()
        hidden = expansion * dim
        self.pwconv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.act = act_layer()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2,
                                groups=hidden, bias=False)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.dwconv(self.act(self.pwconv1(x))))


TOKEN_MIXERS: dict[str, type[nn.Module]] = {
    "identity": IdentityMixer,
    "pool": Pooling,
    "attn": SelfAttention,
    "sepconv": SepConv,
}
