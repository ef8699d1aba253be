"""Group-Mix Attention (GMA), the token mixer of GroupMixFormer.

The input is a channels-last map (B, H, W, C). A linear layer makes q, k and v; each is cut into
five channel segments of C/5. Segments 1-4 become *group proxies*: the first passes through as
single tokens, the next three are aggregated over 3x3, 5x5 and 7x7 neighbourhoods by a
depthwise-separable convolution (each followed by BatchNorm and Hardswish). The aggregator weights
and BatchNorm statistics are shared by q, k and v, as in the authors' release. The four
segments are concatenated (4C/5 channels, split over the heads) and attended:

* ``attn="factorized"`` (the release): softmax of k over the tokens, ``scale * q (k^T v)`` with
  ``scale = (C // heads) ** -0.5``, plus a convolutional relative position term ``q * dwconv(v)``
  whose heads are split 2/3/3 over kernels 3/5/7.
* ``attn="softmax"`` (the paper's formulation): ordinary softmax attention of q over k
  (``scaled_dot_product_attention``, scale ``head_dim ** -0.5``), plus the same relative position
  term, so both modes have the same parameters and load the same checkpoints.

Segment 5 of q, k and v skips attention: concatenated (3C/5 channels), a depthwise-separable 3x3
conv brings it to C/5, then LayerNorm and Hardswish. Attended and skipped channels are
concatenated and projected.

Two implementations share every parameter and compute the same function, in training too:
``impl="reference"`` is the plain per-segment form of the release; ``impl="fast"`` (default)
works segment by segment on channels-last memory with BatchNorm folded in eval mode (see
:meth:`GroupMixAttention._forward_fast`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .tracing import is_fx_tracing, shape_text

__all__ = ["ConvRelPosEnc", "FastWeights", "GroupAggregator", "GroupMixAttention",
           "SeparableConv2d", "SkipBranch", "depthwise_conv_channels_last", "to_conv_layout"]

ATTN_MODES = ("factorized", "softmax")
IMPLS = ("fast", "reference")
NUM_SEGMENTS = 5
# Kernel sizes of the four attended segments; 1 means the segment's tokens are used as they are.
PROXY_KERNELS = (1, 3, 5, 7)


def to_conv_layout(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) map stored channels-last, except where PyTorch has no fast channels-last
    depthwise kernel (float64 on CPU falls back to one tiny convolution per channel)."""
    if x.dtype == torch.float64 and x.device.type == "cpu":
        return x.contiguous()
    return x.contiguous(memory_format=torch.channels_last)


def depthwise_conv_channels_last(x: torch.Tensor, weight: torch.Tensor,
                                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise 'same' conv of a channels-last map (B, H, W, C) -> (B, H, W, C).

    oneDNN's depthwise kernels are many times faster on channels-last memory than on NCHW,
    and this layout is the one the linear layers around it produce and consume.
    """
    x = to_conv_layout(x.permute(0, 3, 1, 2))
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, padding=k // 2, groups=weight.shape[0]).permute(0, 2, 3, 1)


def check_channels_last_map(x: torch.Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError("GroupMixAttention expects channels-last maps (B, H, W, " + str(dim)
                         + "), got " + shape_text(x.shape))


# Recorded as calls by torch.fx (see vitmix.layers.tracing): they read dtypes and shapes.
torch.fx.wrap("to_conv_layout")
torch.fx.wrap("check_channels_last_map")


def batchnorm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with norm(x) == x * scale + shift when it uses its running statistics."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv then pointwise 1x1 conv, both without bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, kernel_size, stride,
                                 padding=kernel_size // 2, groups=in_channels, bias=False)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


class GroupAggregator(nn.Module):
    """One segment's proxy maker: k x k separable conv (none for k = 1), BatchNorm, Hardswish."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = SeparableConv2d(channels, channels, kernel_size) if kernel_size > 1 else None
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        return self.act(self.norm(x))


class SkipBranch(nn.Module):
    """The fifth segment of q, k and v, mixed by a separable 3x3 conv instead of attention."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = SeparableConv2d(in_channels, out_channels, kernel_size)
        # The release uses nn.LayerNorm's default eps here (the blocks use 1e-6).
        self.norm = nn.LayerNorm(out_channels)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> channels-last (B, H, W, out)."""
        return self.act(self.norm(self.conv(x).permute(0, 2, 3, 1)))


class ConvRelPosEnc(nn.Module):
    """Convolutional relative position term ``q * dwconv(v)``, heads split over kernel sizes."""

    def __init__(self, head_dim: int, head_splits: Sequence[int], kernel_sizes: Sequence[int]):
        super().__init__()
        self.head_dim = head_dim
        self.channel_splits = [n * head_dim for n in head_splits]
        self.convs = nn.ModuleList([
            nn.Conv2d(c, c, k, padding=k // 2, groups=c)
            for c, k in zip(self.channel_splits, kernel_sizes, strict=True)
        ])

    def position_term(self, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """dwconv of v (B, heads, N, head_dim), returned in the same layout."""
        b, h, n, d = v.shape
        v_map = v.transpose(-1, -2).reshape(b, h * d, size[0], size[1])
        splits = v_map.split(self.channel_splits, 1)
        parts = [conv(splits[i]) for i, conv in enumerate(self.convs)]
        return torch.cat(parts, dim=1).reshape(b, h, d, n).transpose(-1, -2)

    def channel_kernel_sizes(self) -> list[int]:
        return [conv.kernel_size[0] for conv in self.convs for _ in range(conv.in_channels)]

    def channel_slice(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise weight and bias of channels start..stop-1, kernels zero-padded to the
        largest among them (a zero tap adds nothing)."""
        size = max(self.channel_kernel_sizes()[start:stop])
        weights, biases, offset = [], [], 0
        for conv in self.convs:
            lo, hi = max(start - offset, 0), min(stop - offset, conv.in_channels)
            if lo < hi:
                pad = (size - conv.kernel_size[0]) // 2
                weights.append(F.pad(conv.weight[lo:hi], (pad, pad, pad, pad)))
                biases.append(conv.bias[lo:hi])
            offset += conv.in_channels
        return torch.cat(weights), torch.cat(biases)

    def forward(self, q: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return q * self.position_term(v, size)


class FastWeights(NamedTuple):
    """What the fast path computes with, derived from GroupMixAttention's parameters (in eval
    mode with BatchNorm folded in): the same for every input, so a caller may keep it."""

    folded: bool  # eval-mode BatchNorm is folded into the weights below
    qkv_weight: torch.Tensor  # (3C, C), rows ordered (segment, q|k|v, channel)
    qkv_bias: torch.Tensor | None
    depthwise: list[torch.Tensor | None]  # per aggregator: its 3x3/5x5/7x7 weight for q, k, v
    pointwise: list[torch.Tensor | None]  # per aggregator: (seg, seg), applied as t @ w
    shifts: list[torch.Tensor | None]  # per aggregator: the folded BatchNorm's shift, or None
    position: list[tuple[torch.Tensor, torch.Tensor]]  # per segment: its position conv
    skip_pointwise: torch.Tensor  # (seg, 3 seg)


class GroupMixAttention(nn.Module):
    """Group-Mix Attention on channels-last maps (B, H, W, dim).

    Args:
        dim: channels; must be divisible by 5, and 4*dim/5 by ``num_heads``.
        num_heads: attention heads of the attended 4/5 of the channels.
        qkv_bias: bias of the q, k, v projection.
        attn: "factorized" (the authors' release) or "softmax" (the paper's formulation).
        impl: "fast" or "reference"; same parameters, same function.
        rel_pos_heads, rel_pos_kernels: how the heads split over the kernels of the relative
            position term; the heads must add up to ``num_heads``.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn: str = "factorized",
        impl: str = "fast",
        rel_pos_heads: Sequence[int] = (2, 3, 3),
        rel_pos_kernels: Sequence[int] = (3, 5, 7),
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if attn not in ATTN_MODES:
            raise ValueError(f"attn must be one of {ATTN_MODES}, got {attn!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if dim <= 0 or dim % NUM_SEGMENTS:
            raise ValueError(f"GroupMixAttention dim {dim} must be a positive multiple of "
                             f"{NUM_SEGMENTS} (q, k and v are cut into {NUM_SEGMENTS} segments)")
        seg = dim // NUM_SEGMENTS
        attended = 4 * seg
        if num_heads <= 0 or attended % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the attended channels "
                             f"4*dim/5 = {attended} (dim {dim})")
        if len(rel_pos_heads) != len(rel_pos_kernels) or sum(rel_pos_heads) != num_heads:
            raise ValueError(f"rel_pos_heads {tuple(rel_pos_heads)} must give one head count per "
                             f"kernel in {tuple(rel_pos_kernels)} and add up to num_heads "
                             f"{num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.seg_dim = seg
        self.head_dim = attended // num_heads
        # The release scales by the head width of the full dim, not of the attended channels.
        self.scale = (dim // num_heads) ** -0.5
        self.attn = attn
        self.impl = impl

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.aggregators = nn.ModuleList([GroupAggregator(seg, k) for k in PROXY_KERNELS])
        self.skip_branch = SkipBranch(3 * seg, seg)
        self.rel_pos = ConvRelPosEnc(self.head_dim, rel_pos_heads, rel_pos_kernels)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, attn={self.attn}, impl={self.impl}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels_last_map(x, self.dim)
        # The fast path in eager mode and under torch.compile; TorchScript compiles the
        # reference only (the fast path's Python is beyond it).
        if not torch.jit.is_scripting():
            if self._runs_fast():
                return self.proj_drop(self._forward_fast(x))
        return self.proj_drop(self.proj(self._forward_reference(x)))

    def _runs_fast(self) -> bool:
        """The reference handles heads that straddle two segments; it is what ONNX export
        records (the exporter mistranslates the fast path's writes into strided views) and
        what torch.fx records (the plain form, free of in-place writes into strided views)."""
        return (self.impl == "fast" and self.num_heads % (NUM_SEGMENTS - 1) == 0
                and not torch.onnx.is_in_onnx_export() and not is_fx_tracing())

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B, heads, N, head_dim) -> the same layout, without the position term."""
        if self.attn == "softmax":
            return F.scaled_dot_product_attention(q, k, v)
        context = k.softmax(dim=2).transpose(-1, -2) @ v  # (B, heads, head_dim, head_dim)
        return self.scale * (q @ context)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n, seg = h * w, self.seg_dim
        # q, k and v stacked on the batch axis: the aggregators are shared by all three, and
        # in training their BatchNorm statistics are taken over all three together.
        qkv = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 3, 1).reshape(3 * b, c, h, w)
        segments = qkv.split(seg, dim=1)
        proxies = torch.cat([agg(segments[i]) for i, agg in enumerate(self.aggregators)], dim=1)
        q, k, v = proxies.reshape(3, b, self.num_heads, self.head_dim, n).transpose(-1, -2
                                                                                  ).unbind(0)

        skipped = segments[4].reshape(3, b, seg, h, w).transpose(0, 1).reshape(b, 3 * seg, h, w)
        skipped = self.skip_branch(skipped)

        attended = self._attend(q, k, v) + self.rel_pos(q, v, (h, w))
        attended = attended.transpose(1, 2).reshape(b, h, w, 4 * seg)
        return torch.cat([attended, skipped], dim=-1)

    def _forward_fast(self, x: torch.Tensor, weights: FastWeights | None = None,
                      qkv_linear: Callable[..., torch.Tensor] = F.linear) -> torch.Tensor:
        """The reference computation regrouped by segment, projection included.

        With heads a multiple of 4 every head lies inside one segment, so each attended
        segment is handled on its own and written into its columns of the projection's input:

        * the qkv weight rows are reordered so that one matmul gives, per pixel,
          [q_i, k_i, v_i] for each segment i side by side on a channels-last map;
        * depthwise convs run on channels-last memory (oneDNN's kernels are far faster there
          than on NCHW); the pointwise conv is one matmul for q, k and v, which share weights;
        * in eval mode BatchNorm folds into the linear map before it (see :meth:`fast_weights`,
          which ``weights`` may give precomputed); in training it runs on a (rows, C, 1, 1)
          view of all q, k, v positions, so its statistics are the reference's;
        * attention takes a segment's heads together (one context matmul, cross-head blocks
          masked) and writes its result in place: nothing is concatenated or transposed.

        It executes about 1% more multiply-adds than the reference (the masked blocks, and one
        head's 5x5 position kernel padded to 7x7 where a segment holds heads of both sizes);
        count the architecture's MACs on ``impl="reference"``. ``qkv_linear`` computes the
        qkv projection with the reordered weights (``F.linear``, or a fused kernel).
        """
        b, h, w, c = x.shape
        n, seg = h * w, self.seg_dim
        fw = self.fast_weights() if weights is None else weights
        inplace = not torch.is_grad_enabled()  # autograd needs the intermediate tensors
        heads = self.num_heads // (NUM_SEGMENTS - 1)

        qkv = qkv_linear(x, fw.qkv_weight, fw.qkv_bias).view(b, h, w, NUM_SEGMENTS, 3 * seg)
        mixed = x.new_empty(b, h, w, c)  # the projection's input
        for i, agg in enumerate(self.aggregators):
            t = qkv[..., i, :]  # (B, H, W, 3 * seg), a strided view
            if agg.conv is not None:
                t = depthwise_conv_channels_last(t, fw.depthwise[i])
                # One batched matmul for q, k and v, written as (3, B*N, seg): each of q, k, v
                # comes out contiguous.
                t = t.reshape(b * n, 3, seg).transpose(0, 1)
                if fw.folded:
                    t = torch.baddbmm(fw.shifts[i], t, fw.pointwise[i].expand(3, seg, seg))
                else:
                    t = agg.norm(torch.matmul(t, fw.pointwise[i]).reshape(-1, seg, 1, 1))
                t = F.hardswish(t.view(3, b, n, seg), inplace=inplace)
                q, k, v = t.unbind(0)
            else:
                if not fw.folded:
                    t = agg.norm(t.reshape(-1, seg, 1, 1))
                t = F.hardswish(t.reshape(b, n, 3, seg), inplace=inplace)
                q, k, v = t.unbind(2)  # strided views of qkv

            pos_w, pos_b = fw.position[i]
            position = depthwise_conv_channels_last(v.reshape(b, h, w, seg), pos_w, pos_b)
            out = mixed[..., i * seg:(i + 1) * seg].view(b, n, seg)
            self._attend_segment(q, k, v, position.reshape(b, n, seg), heads, out, inplace)

        branch = self.skip_branch
        skipped = depthwise_conv_channels_last(qkv[..., NUM_SEGMENTS - 1, :],
                                               branch.conv.conv_dw.weight)
        mixed[..., 4 * seg:] = branch.act(branch.norm(F.linear(skipped, fw.skip_pointwise)))
        return self.proj(mixed)

    def fast_weights(self) -> FastWeights:
        """The fast path's weights, derived from the parameters as they are now.

        In eval mode each aggregator's BatchNorm folds into the linear map before it (the
        pointwise conv, or for the identity segment its qkv rows); folding needs running
        statistics (BatchNorm built without them uses batch statistics).
        """
        c, seg = self.dim, self.seg_dim
        folded = not self.training and all(a.norm.running_var is not None
                                           for a in self.aggregators)
        # Rows (q|k|v, segment, channel) -> (segment, q|k|v, channel).
        weight = self.qkv.weight.view(3, NUM_SEGMENTS, seg, c).transpose(0, 1)
        bias = self.qkv.bias
        if bias is not None:
            bias = bias.view(3, NUM_SEGMENTS, seg).transpose(0, 1)
        if folded:  # the identity segment's BatchNorm goes into its qkv rows
            scale, shift = batchnorm_affine(self.aggregators[0].norm)
            weight = torch.cat([weight[:1] * scale[:, None], weight[1:]])
            if bias is None:
                bias = weight.new_zeros(NUM_SEGMENTS, 3, seg)
            bias = torch.cat([bias[:1] * scale + shift, bias[1:]])
        depthwise, pointwise, shifts = [], [], []
        for agg in self.aggregators:
            if agg.conv is None:
                depthwise.append(None), pointwise.append(None), shifts.append(None)
                continue
            depthwise.append(agg.conv.conv_dw.weight.repeat(3, 1, 1, 1))
            pw = agg.conv.conv_pw.weight.view(seg, seg)
            if folded:
                scale, shift = batchnorm_affine(agg.norm)
                pw, shift = pw * scale[:, None], shift.view(1, 1, seg)
            else:
                shift = None
            pointwise.append(pw.t())
            shifts.append(shift)
        position = [self.rel_pos.channel_slice(i * seg, (i + 1) * seg)
                    for i in range(NUM_SEGMENTS - 1)]
        return FastWeights(
            folded=folded, qkv_weight=weight.reshape(3 * c, c),
            qkv_bias=None if bias is None else bias.reshape(-1), depthwise=depthwise,
            pointwise=pointwise, shifts=shifts, position=position,
            skip_pointwise=self.skip_branch.conv.conv_pw.weight.view(seg, 3 * seg),
        )

    def _attend_segment(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        position: torch.Tensor, heads: int, out: torch.Tensor,
                        inplace: bool) -> None:
        """out = attention(q, k, v) + q * position for one segment's heads; all (B, N, seg).

        Written straight into ``out`` (a strided view) unless autograd is recording.
        """
        b, n, seg = q.shape
        d = seg // heads

        def write(dst: torch.Tensor, a: torch.Tensor, q_part: torch.Tensor,
                  pos_part: torch.Tensor) -> None:
            if inplace:
                torch.addcmul(a, q_part, pos_part, out=dst)
            else:
                dst.copy_(torch.addcmul(a, q_part, pos_part))

        if self.attn == "softmax":
            qh, kh, vh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
            attended = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2)
            split = (b, n, heads, d)
            write(out.view(split), attended, q.view(split), position.view(split))
            return
        # All head pairs of the segment in one matmul, the cross-head blocks then zeroed:
        # a few more multiply-adds, far fewer (and better shaped) matmul calls.
        context = torch.bmm(k.softmax(dim=1).transpose(1, 2), v)  # (B, seg, seg)
        block = torch.full((d, d), self.scale, dtype=q.dtype, device=q.device)
        context = context.mul_(torch.block_diag(*[block] * heads))
        write(out, torch.bmm(q, context), q, position)
