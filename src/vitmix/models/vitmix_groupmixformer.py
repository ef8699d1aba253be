"""GroupMixFormer: a convolutional stem, four stages of Group-Mix Attention blocks, a BN head.

Registered with timm as ``groupmixformer_{m,t,s,b,l}`` (the authors' five sizes) and
``groupmixformer_{m,t}_scheme_e8_g4`` (their MLPs replaced by SCHEME's SchemeMlp, E=8, G=4).
Inside a stage the blocks work on channels-last maps (B, H, W, C); stages take and return
channels-first maps, so ``features_only=True`` yields the usual (B, C, H, W) pyramid at strides
4, 8, 16 and 32. Key names differ from the release; :func:`vitmix.checkpoints.from_official` maps
the authors' checkpoints onto these models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import DropPath, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from ..layers.checks import (
    check_bool,
    check_choice,
    check_non_negative_int,
    check_positive_int,
    check_probability,
)
from ..layers.group_mix import (
    ATTN_MODES,
    IMPLS,
    GroupMixAttention,
    SeparableConv2d,
    depthwise_conv_channels_last,
    to_conv_layout,
)
from ..layers.scheme import BlockDiagonalLinear
from .common import (
    PooledClassifierMixin,
    build_on,
    check_global_pool,
    check_img_size,
    check_input,
    check_scheme_args,
    check_stage_sizes,
    make_channel_mixer,
    reject_extra_kwargs,
)

__all__ = ["ConvStem", "GroupMixBlock", "GroupMixFormer", "GroupMixStage", "PatchEmbed"]

# Recorded as calls by torch.fx (see vitmix.layers.tracing): they read shapes and dtypes.
torch.fx.wrap("check_input")
torch.fx.wrap("to_conv_layout")
torch.fx.wrap("depthwise_conv_channels_last")

class ConvStem(nn.Module):
    """Two 3x3 stride-2 convs (with bias), each followed by BatchNorm and Hardswish.

    It also checks the images, so the check runs in forward() and under features_only alike.
    """

    def __init__(self, in_chans: int, dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(dim // 2, **dd)
        self.act1 = nn.Hardswish()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        self.act2 = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans)
        # Channels-last from here on: every later conv is depthwise or follows a channels-last
        # block, and oneDNN's depthwise kernels are much faster on that layout.
        x = to_conv_layout(x)
        x = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(x)))


class PatchEmbed(nn.Module):
    """Separable 3x3 conv (stride 1 before stage 1, 2 after), BatchNorm, Hardswish."""

    def __init__(self, in_dim: int, dim: int, stride: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.conv = build_on(device, dtype, lambda: SeparableConv2d(in_dim, dim, 3, stride=stride))
        self.norm = nn.BatchNorm2d(dim, device=device, dtype=dtype)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class GroupMixBlock(nn.Module):
    """x + dwconv(x) (position encoding); x + GMA(LN(x)); x + MLP(LN(x)), on (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, mlp_groups: int, cca: bool,
                 qkv_bias: bool, attn: str, impl: str, proj_drop: float, drop_path: float,
                 cca_schedule: str = "learned", channel_shuffle: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pos_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = build_on(device, dtype, lambda: GroupMixAttention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn=attn, impl=impl,
            proj_drop=proj_drop))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        # On the block's (B, H, W, C) tokens; the dense baseline is timm's Mlp.
        self.mlp = make_channel_mixer(dim, mlp_ratio, mlp_groups, cca, cca_schedule, proj_drop,
                                      use_conv=False, channel_shuffle=channel_shuffle, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The (B, H, W, C) map is channels-last memory: the conv reads it without a copy.
        x = x + depthwise_conv_channels_last(x, self.pos_conv.weight, self.pos_conv.bias)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GroupMixStage(nn.Module):
    """Patch embedding, then the blocks; (B, C_in, H, W) -> (B, C, H/s, W/s)."""

    def __init__(self, in_dim: int, dim: int, depth: int, stride: int, block_kwargs: dict,
                 drop_path_rates: Sequence[float], device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.downsample = PatchEmbed(in_dim, dim, stride, device=device, dtype=dtype)
        self.blocks = nn.Sequential(*[
            GroupMixBlock(dim, drop_path=drop_path_rates[i], **block_kwargs, device=device,
                          dtype=dtype)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class GroupMixFormer(PooledClassifierMixin, nn.Module):
    """GroupMixFormer (Ge et al., "Advancing Vision Transformers with Group-Mix Attention").

    Args:
        dims, depths, mlp_ratios: width, blocks and MLP expansion per stage.
        num_heads: heads of every Group-Mix Attention (8 in all released models).
        attn: "factorized" (the release) or "softmax" (the paper's formulation).
        impl: "fast" or "reference" implementation of the attention (same function).
        mlp_groups, cca, cca_schedule, channel_shuffle: SCHEME's block-diagonal MLP with G
            groups (one value or one per stage), the CCA branch with its schedule and the
            shuffle of the hidden channels (see SchemeMlp); the dense timm Mlp where G == 1 and
            cca is False. The same arguments as MetaFormer's.
        drop_rate: dropout before the classifier; proj_drop_rate: after the attention
            projection and in the MLP; drop_path_rate: stochastic depth, linear over blocks.
        device, dtype: where the parameters are made and their type; with device="meta",
            ``to_empty(device=...)`` then :meth:`init_weights` gives a model ready to train.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | Sequence[int] = 224,
        dims: Sequence[int] = (80, 160, 200, 240),
        depths: Sequence[int] = (4, 4, 12, 4),
        mlp_ratios: float | Sequence[float] = 4,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn: str = "factorized",
        impl: str = "fast",
        mlp_groups: int | Sequence[int] = 1,
        cca: bool = False,
        cca_schedule: str = "learned",
        channel_shuffle: bool = False,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ):
        super().__init__()
        reject_extra_kwargs("GroupMixFormer", kwargs)
        num_classes = check_non_negative_int("num_classes", num_classes)
        in_chans = check_positive_int("in_chans", in_chans)
        num_stages = check_stage_sizes(depths, dims)
        mlp_ratios, mlp_groups = check_scheme_args(num_stages, mlp_ratios, mlp_groups, cca,
                                                   cca_schedule, channel_shuffle)
        check_positive_int("num_heads", num_heads)
        check_bool("qkv_bias", qkv_bias)
        check_choice("attn", attn, ATTN_MODES)
        check_choice("impl", impl, IMPLS)
        for name, rate in (("drop_rate", drop_rate), ("proj_drop_rate", proj_drop_rate),
                           ("drop_path_rate", drop_path_rate)):
            check_probability(name, rate)
        check_global_pool(global_pool)
        self.img_size = check_img_size(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        dd = dict(device=device, dtype=dtype)

        self.stem = ConvStem(in_chans, dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        prev_dim, reduction = dims[0], 4
        for i in range(num_stages):
            stride = 1 if i == 0 else 2
            reduction *= stride
            block_kwargs = dict(num_heads=num_heads, mlp_ratio=mlp_ratios[i],
                                mlp_groups=mlp_groups[i], cca=cca, cca_schedule=cca_schedule,
                                channel_shuffle=channel_shuffle,
                                qkv_bias=qkv_bias, attn=attn, impl=impl,
                                proj_drop=proj_drop_rate)
            stages.append(GroupMixStage(prev_dim, dims[i], depths[i], stride, block_kwargs,
                                        dpr[i], **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction,
                                          module=f"stages.{i}"))
            prev_dim = dims[i]
        self.stages = nn.Sequential(*stages)

        self.norm = nn.BatchNorm2d(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = (nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0
                     else nn.Identity())
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, BlockDiagonalLinear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_attention(self, attn: str | None = None, impl: str | None = None) -> None:
        """Switch every Group-Mix Attention's mode or implementation (parameters unchanged)."""
        for m in self.modules():
            if isinstance(m, GroupMixAttention):
                if attn is not None:
                    if attn not in ("factorized", "softmax"):
                        raise ValueError(f"attn must be 'factorized' or 'softmax', got {attn!r}")
                    m.attn = attn
                if impl is not None:
                    if impl not in ("fast", "reference"):
                        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
                    m.impl = impl

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _create(variant: str, pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """The registered variant, its sizes from MODEL_SPECS, any of them overridden by kwargs."""
    return build_model_with_cfg(
        GroupMixFormer, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **dict(MODEL_SPECS[variant], **kwargs),
    )


def _cfg(**kwargs) -> dict:
    """timm's pretrained_cfg; crop 0.875 is the release's evaluation (resize to 256, centre
    224)."""
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv="stem.conv1", classifier="head", license="mit", **kwargs,
    )


# The authors' sizes: name -> (dims, depths, mlp ratios).
ARCHS = {
    "m": ((40, 80, 160, 160), (3, 3, 12, 4), (4, 4, 4, 4)),
    "t": ((80, 160, 200, 240), (4, 4, 12, 4), (4, 4, 4, 4)),
    "s": ((80, 160, 320, 320), (2, 4, 12, 4), (4, 4, 4, 4)),
    "b": ((200, 240, 320, 480), (8, 8, 12, 8), (2, 2, 4, 4)),
    "l": ((240, 320, 360, 480), (8, 10, 30, 10), (4, 4, 2, 2)),
}
# The authors' MLPs replaced by SCHEME's: E=8, G=4, with CCA.
SCHEME_MLP = dict(mlp_ratios=8, mlp_groups=4, cca=True)


def _size(arch: str) -> dict:
    dims, depths, mlp_ratios = ARCHS[arch]
    return dict(dims=dims, depths=depths, mlp_ratios=mlp_ratios)


# Every registered variant with its constructor arguments (official_weights matches converted
# checkpoints against these).
MODEL_SPECS = {
    "groupmixformer_m": _size("m"),
    "groupmixformer_t": _size("t"),
    "groupmixformer_s": _size("s"),
    "groupmixformer_b": _size("b"),
    "groupmixformer_l": _size("l"),
    "groupmixformer_m_scheme_e8_g4": dict(_size("m"), **SCHEME_MLP),
    "groupmixformer_t_scheme_e8_g4": dict(_size("t"), **SCHEME_MLP),
}
default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_SPECS})


@register_model
def groupmixformer_m(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-M, the authors' MLPs: 5.73M params, 1.35G MACs at 224; 79.6% ImageNet-1K
    top-1 (published)."""
    return _create("groupmixformer_m", pretrained, **kwargs)


@register_model
def groupmixformer_t(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-T, the authors' MLPs: 10.95M params, 3.72G MACs at 224; 82.6% ImageNet-1K
    top-1 (published)."""
    return _create("groupmixformer_t", pretrained, **kwargs)


@register_model
def groupmixformer_s(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-S, the authors' MLPs: 22.42M params, 5.16G MACs at 224; 83.4% ImageNet-1K
    top-1 (published)."""
    return _create("groupmixformer_s", pretrained, **kwargs)


@register_model
def groupmixformer_b(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-B, the authors' MLPs: 45.83M params, 17.55G MACs at 224; 84.7% ImageNet-1K
    top-1 (published)."""
    return _create("groupmixformer_b", pretrained, **kwargs)


@register_model
def groupmixformer_l(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-L, the authors' MLPs: 71.83M params, 38.25G MACs at 224; 85.0% ImageNet-1K
    top-1 (published)."""
    return _create("groupmixformer_l", pretrained, **kwargs)


@register_model
def groupmixformer_m_scheme_e8_g4(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-M with SCHEME's MLP in every block: BD-MLP E=8, G=4, and CCA."""
    return _create("groupmixformer_m_scheme_e8_g4", pretrained, **kwargs)


@register_model
def groupmixformer_t_scheme_e8_g4(pretrained: bool = False, **kwargs) -> GroupMixFormer:
    """GroupMixFormer-T with SCHEME's MLP in every block: BD-MLP E=8, G=4, and CCA."""
    return _create("groupmixformer_t_scheme_e8_g4", pretrained, **kwargs)
