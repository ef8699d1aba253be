"""MetaFormer backbone (PoolFormer-v1 macro design) and the SCHEMEformer family built on it.

Each stage picks its token mixer (identity, pooling, self-attention, separable conv) and its
channel mixer (a dense timm Mlp on 1x1 convs, or a SchemeMlp with expansion E and groups G).
The whole network works on channels-first maps, like PoolFormer-v1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerScale2d,
    calculate_drop_path_rates,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from ..layers.checks import (
    check_non_negative_int,
    check_number,
    check_per_stage,
    check_positive_int,
    check_probability,
)
from ..layers.norm import GroupNorm1
from ..layers.scheme import BlockDiagonalLinear
from ..layers.stems import make_stem
from ..layers.token_mixers import TOKEN_MIXERS
from .common import (
    INPUT_MULTIPLE,
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

__all__ = ["MetaFormer", "MetaFormerBlock", "MetaFormerStage"]

class MetaFormerBlock(nn.Module):
    def __init__(self, dim: int, token_mixer: str, mlp_ratio: float, mlp_groups: int, cca: bool,
                 cca_schedule: str, drop: float, drop_path: float, layer_scale_init: float,
                 head_dim: int, channel_shuffle: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = GroupNorm1(dim, **dd)
        self.token_mixer = build_on(device, dtype, lambda: TOKEN_MIXERS[token_mixer](
            dim, head_dim=head_dim, proj_drop=drop))
        self.ls1 = LayerScale2d(dim, init_values=layer_scale_init, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = GroupNorm1(dim, **dd)
        # On the block's (B, C, H, W) maps; the dense baseline is timm's Mlp on 1x1 convs.
        self.mlp = make_channel_mixer(dim, mlp_ratio, mlp_groups, cca, cca_schedule, drop,
                                      use_conv=True, channel_shuffle=channel_shuffle, **dd)
        self.ls2 = LayerScale2d(dim, init_values=layer_scale_init, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def pos_embed_for(pos_embed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The (1, C, h, w) position embedding at the size of the (B, C, H, W) map ``x``: itself,
    or resized bicubically for another input size."""
    size = [x.shape[2], x.shape[3]]
    if pos_embed.shape[2] == size[0] and pos_embed.shape[3] == size[1]:
        return pos_embed
    return F.interpolate(pos_embed, size=size, mode="bicubic", align_corners=False)


# Recorded as calls by torch.fx (see vitmix.layers.tracing): they read shapes.
torch.fx.wrap("check_input")
torch.fx.wrap("pos_embed_for")


class MetaFormerStage(nn.Module):
    """Downsampling, then an optional learned position embedding, then the blocks."""

    def __init__(self, dim: int, depth: int, downsample: nn.Module,
                 pos_embed_size: tuple[int, int] | None, block_kwargs: dict,
                 drop_path_rates: Sequence[float], input_chans: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        # The first stage checks the images, so forward() and features_only both reject a bad
        # input before any work.
        self.input_chans = input_chans
        self.downsample = downsample
        if pos_embed_size is not None:
            self.pos_embed = nn.Parameter(torch.empty(1, dim, *pos_embed_size, device=device,
                                                      dtype=dtype))
        else:
            self.pos_embed = None
        self.reset_parameters()
        self.blocks = nn.Sequential(*[
            MetaFormerBlock(dim, drop_path=drop_path_rates[i], **block_kwargs, device=device,
                            dtype=dtype)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_chans is not None:
            check_input(x, self.input_chans)
        x = self.downsample(x)
        if self.pos_embed is not None:
            x = x + pos_embed_for(self.pos_embed, x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MetaFormer(PooledClassifierMixin, nn.Module):
    """PoolFormer-v1 style MetaFormer with per-stage token and channel mixers.

    Args:
        depths, dims: blocks and width per stage.
        token_mixers: per stage (or one for all), "identity", "pool", "attn" or "sepconv".
        mlp_ratios: expansion E of the channel mixer, one value or one per stage.
        mlp_groups: groups G, one value or one per stage; G > 1 (or cca=True) makes the mixer
            a SchemeMlp, else it is timm's Mlp.
        cca, cca_schedule: the SCHEME training-only branch (see SchemeMlp), in every stage.
        channel_shuffle: shuffle the hidden channels of every SchemeMlp between fc1 and fc2,
            as the authors' ShuffleGroupLiteAttMlp does (see SchemeMlp).
        pos_embed_stage: index of the stage that adds a learned position embedding, or None.
        stem: "patch" (PoolFormer's 7x7 stride-4 convolution) or "conv" (three 3x3
            convolutions with BatchNorm; better on small images, see layers.stems.ConvStem).
        device, dtype: where the parameters are made and their type; with device="meta",
            ``to_empty(device=...)`` then :meth:`init_weights` gives a model ready to train.
    """

    stem_pattern = r"^stages\.0\.downsample"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | Sequence[int] = 224,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        token_mixers: Sequence[str] = ("pool", "pool", "attn", "attn"),
        mlp_ratios: float | Sequence[float] = 4,
        mlp_groups: int | Sequence[int] = 1,
        cca: bool = False,
        cca_schedule: str = "learned",
        channel_shuffle: bool = False,
        pos_embed_stage: int | None = 2,
        head_dim: int = 32,
        layer_scale_init: float = 1e-5,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        stem: str = "patch",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ):
        super().__init__()
        reject_extra_kwargs("MetaFormer", kwargs)
        num_classes = check_non_negative_int("num_classes", num_classes)
        in_chans = check_positive_int("in_chans", in_chans)
        num_stages = check_stage_sizes(depths, dims)
        token_mixers = check_per_stage("token_mixers", token_mixers, num_stages, _check_mixer)
        mlp_ratios, mlp_groups = check_scheme_args(num_stages, mlp_ratios, mlp_groups, cca,
                                                   cca_schedule, channel_shuffle)
        if pos_embed_stage is not None and (isinstance(pos_embed_stage, bool) or pos_embed_stage
                                            not in range(num_stages)):
            raise ValueError(f"pos_embed_stage must be None or a stage index from 0 to "
                             f"{num_stages - 1}, got {pos_embed_stage!r}")
        check_positive_int("head_dim", head_dim)
        check_number("layer_scale_init", layer_scale_init)
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

        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        prev_dim, reduction = in_chans, 1
        for i in range(num_stages):
            if i == 0:
                downsample = make_stem(stem, in_chans, dims[0], **dd)
                reduction = 4
            else:
                downsample = nn.Conv2d(prev_dim, dims[i], kernel_size=3, stride=2, padding=1,
                                       **dd)
                reduction *= 2
            pos_size = None
            if pos_embed_stage == i:
                pos_size = (self.img_size[0] // reduction, self.img_size[1] // reduction)
            block_kwargs = dict(
                token_mixer=token_mixers[i], mlp_ratio=mlp_ratios[i], mlp_groups=mlp_groups[i],
                cca=cca, cca_schedule=cca_schedule, drop=proj_drop_rate,
                layer_scale_init=layer_scale_init, head_dim=head_dim,
                channel_shuffle=channel_shuffle,
            )
            stages.append(MetaFormerStage(dims[i], depths[i], downsample, pos_size, block_kwargs,
                                          dpr[i], input_chans=in_chans if i == 0 else None,
                                          **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction,
                                          module=f"stages.{i}"))
            prev_dim = dims[i]
        self.stages = nn.Sequential(*stages)

        self.norm = GroupNorm1(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = (nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0
                     else nn.Identity())
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d, BlockDiagonalLinear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith("pos_embed")}

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # The stem is the first stage's downsampling, where the images are checked.
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def _check_mixer(name: str, value: str) -> str:
    if value not in TOKEN_MIXERS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, sorted(TOKEN_MIXERS)))}, "
                         f"got {value!r}")
    return value


def _create(variant: str, pretrained: bool = False, **kwargs) -> MetaFormer:
    return build_model_with_cfg(
        MetaFormer, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(input_size: int = 224, stem: str = "patch", crop_pct: float = 0.95, **kwargs) -> dict:
    """timm's pretrained_cfg: ``pool_size`` is the last map's size (the input over 32), and
    ``first_conv`` the convolution that sees the image (timm adapts its weight to another
    ``in_chans``): the patch stem is one, the conv stem's is its first layer. ``crop_pct``
    0.95 is the SCHEME release's evaluation crop (its recipes' too); the tiny models, vitmix's
    own, keep 0.9."""
    return dict(
        url="", num_classes=1000, input_size=(3, input_size, input_size),
        pool_size=(input_size // INPUT_MULTIPLE, input_size // INPUT_MULTIPLE),
        crop_pct=crop_pct, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), first_conv=STEM_FIRST_CONV[stem], classifier="head",
        license="apache-2.0", **kwargs,
    )


STEM_FIRST_CONV = {"patch": "stages.0.downsample", "conv": "stages.0.downsample.0"}


# Macro designs: name -> (depths, dims, default input size). "t" is a small design for small
# images; s12, s24 and s36 are PoolFormer's.
ARCHS = {
    "t": ((2, 2, 4, 2), (32, 64, 128, 256), 64),
    "s12": ((2, 2, 6, 2), (64, 128, 320, 512), 224),
    "s24": ((4, 4, 12, 4), (64, 128, 320, 512), 224),
    "s36": ((6, 6, 18, 6), (64, 128, 320, 512), 224),
}
PPAA = ("pool", "pool", "attn", "attn")


def _ppaa(arch: str, **kwargs) -> dict:
    """The PPAA design (pooling in stages 1-2, attention in 3-4) at one macro size."""
    depths, dims, img_size = ARCHS[arch]
    return dict(depths=depths, dims=dims, token_mixers=PPAA, img_size=img_size, **kwargs)


default_cfgs = generate_default_cfgs({
    "metaformer_ppaa_t": _cfg(input_size=64, crop_pct=0.9),
    "schemeformer_ppaa_t_e4_g2": _cfg(input_size=64, crop_pct=0.9),
    "schemeformer_ppaa_t_e8_g2": _cfg(input_size=64, crop_pct=0.9),
    "schemeformer_ppaa_t_e8_g4": _cfg(input_size=64, crop_pct=0.9),
    "schemeformer_ppaa_t_e8_g8": _cfg(input_size=64, crop_pct=0.9),
    "schemeformer_ppaa_t_e16_g8": _cfg(input_size=64, crop_pct=0.9),
    "metaformer_ppaa_t_convstem": _cfg(input_size=64, stem="conv", crop_pct=0.9),
    "schemeformer_ppaa_t_e8_g4_convstem": _cfg(input_size=64, stem="conv", crop_pct=0.9),
    "metaformer_ppaa_s12": _cfg(),
    "schemeformer_ppaa_s12_e4_g2": _cfg(),
    "schemeformer_ppaa_s12_e8_g2": _cfg(),
    "schemeformer_ppaa_s12_e8_g4": _cfg(),
    "schemeformer_ppaa_s12_e8_g4_shuffle": _cfg(),
    "schemeformer_ppaa_s12_e8_g8": _cfg(),
    "schemeformer_ppaa_s12_e16_g8": _cfg(),
    "metaformer_ppaa_s24": _cfg(),
    "schemeformer_ppaa_s24_e4_g2": _cfg(),
    "schemeformer_ppaa_s24_e8_g2": _cfg(),
    "schemeformer_ppaa_s24_e8_g4": _cfg(),
    "schemeformer_ppaa_s24_e8_g8": _cfg(),
    "schemeformer_ppaa_s24_e16_g8": _cfg(),
    "metaformer_ppaa_s36": _cfg(),
    "schemeformer_ppaa_s36_e4_g2": _cfg(),
    "schemeformer_ppaa_s36_e8_g2": _cfg(),
    "schemeformer_ppaa_s36_e8_g4": _cfg(),
    "schemeformer_ppaa_s36_e8_g8": _cfg(),
    "schemeformer_ppaa_s36_e16_g8": _cfg(),
})


@register_model
def metaformer_ppaa_t(pretrained: bool = False, **kwargs) -> MetaFormer:
    """MetaFormer PPAA-T, dense MLP (timm's Mlp) with E=4; 64x64 input by default."""
    model_args = _ppaa("t", mlp_ratios=4, mlp_groups=1, cca=False)
    return _create("metaformer_ppaa_t", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_t_e4_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-T, BD-MLP with E=4, G=2, and CCA; 64x64 input by default."""
    model_args = _ppaa("t", mlp_ratios=4, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_t_e4_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_t_e8_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-T, BD-MLP with E=8, G=2, and CCA; 64x64 input by default."""
    model_args = _ppaa("t", mlp_ratios=8, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_t_e8_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_t_e8_g4(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-T, BD-MLP with E=8, G=4, and CCA; 64x64 input by default."""
    model_args = _ppaa("t", mlp_ratios=8, mlp_groups=4, cca=True)
    return _create("schemeformer_ppaa_t_e8_g4", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_t_e8_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-T, BD-MLP with E=8, G=8, and CCA; 64x64 input by default."""
    model_args = _ppaa("t", mlp_ratios=8, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_t_e8_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_t_e16_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-T, BD-MLP with E=16, G=8, and CCA; 64x64 input by default."""
    model_args = _ppaa("t", mlp_ratios=16, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_t_e16_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def metaformer_ppaa_t_convstem(pretrained: bool = False, **kwargs) -> MetaFormer:
    """metaformer_ppaa_t with the conv stem (three 3x3 convolutions) instead of the 7x7 patch
    stem: more accuracy per epoch on small images (docs/models.md)."""
    model_args = _ppaa("t", mlp_ratios=4, mlp_groups=1, cca=False, stem="conv")
    return _create("metaformer_ppaa_t_convstem", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_t_e8_g4_convstem(pretrained: bool = False, **kwargs) -> MetaFormer:
    """schemeformer_ppaa_t_e8_g4 with the conv stem: vitmix train's default model for
    Fashion-MNIST at 32x32 (docs/models.md)."""
    model_args = _ppaa("t", mlp_ratios=8, mlp_groups=4, cca=True, stem="conv")
    return _create("schemeformer_ppaa_t_e8_g4_convstem", pretrained, **dict(model_args, **kwargs))


@register_model
def metaformer_ppaa_s12(pretrained: bool = False, **kwargs) -> MetaFormer:
    """MetaFormer PPAA-S12, dense MLP (timm's Mlp) with E=4: 16.54M params, 2.56G MACs at 224;
    81.0% ImageNet-1K top-1 (published)."""
    model_args = _ppaa("s12", mlp_ratios=4, mlp_groups=1, cca=False)
    return _create("metaformer_ppaa_s12", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s12_e4_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S12, BD-MLP with E=4, G=2, and CCA: 11.82M params, 1.77G MACs at 224."""
    model_args = _ppaa("s12", mlp_ratios=4, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_s12_e4_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s12_e8_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S12, BD-MLP with E=8, G=2, and CCA: 16.55M params, 2.56G MACs at 224."""
    model_args = _ppaa("s12", mlp_ratios=8, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_s12_e8_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s12_e8_g4(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S12, BD-MLP with E=8, G=4, and CCA: 11.83M params, 1.77G MACs at 224;
    79.7% ImageNet-1K top-1 (published)."""
    model_args = _ppaa("s12", mlp_ratios=8, mlp_groups=4, cca=True)
    return _create("schemeformer_ppaa_s12_e8_g4", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s12_e8_g4_shuffle(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S12, BD-MLP with E=8, G=4, CCA, and the hidden channels shuffled
    between fc1 and fc2: the authors' release's ``shufflegrouporgattnmlpformer_ppaa_s12_224``
    (its only registered SCHEME model with CCA), whose checkpoints ``vitmix import-weights
    --arch schemeformer --channel-shuffle`` converts. 11.83M params, 1.77G MACs at 224."""
    model_args = _ppaa("s12", mlp_ratios=8, mlp_groups=4, cca=True, channel_shuffle=True)
    return _create("schemeformer_ppaa_s12_e8_g4_shuffle", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s12_e8_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S12, BD-MLP with E=8, G=8, and CCA: 9.47M params, 1.37G MACs at 224."""
    model_args = _ppaa("s12", mlp_ratios=8, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_s12_e8_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s12_e16_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S12, BD-MLP with E=16, G=8, and CCA: 11.86M params, 1.77G MACs at 224."""
    model_args = _ppaa("s12", mlp_ratios=16, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_s12_e16_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def metaformer_ppaa_s24(pretrained: bool = False, **kwargs) -> MetaFormer:
    """MetaFormer PPAA-S24, dense MLP (timm's Mlp) with E=4: 30.57M params, 4.89G MACs at 224."""
    model_args = _ppaa("s24", mlp_ratios=4, mlp_groups=1, cca=False)
    return _create("metaformer_ppaa_s24", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s24_e4_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S24, BD-MLP with E=4, G=2, and CCA."""
    model_args = _ppaa("s24", mlp_ratios=4, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_s24_e4_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s24_e8_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S24, BD-MLP with E=8, G=2, and CCA."""
    model_args = _ppaa("s24", mlp_ratios=8, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_s24_e8_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s24_e8_g4(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S24, BD-MLP with E=8, G=4, and CCA: 21.16M params, 3.31G MACs at 224."""
    model_args = _ppaa("s24", mlp_ratios=8, mlp_groups=4, cca=True)
    return _create("schemeformer_ppaa_s24_e8_g4", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s24_e8_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S24, BD-MLP with E=8, G=8, and CCA."""
    model_args = _ppaa("s24", mlp_ratios=8, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_s24_e8_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s24_e16_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S24, BD-MLP with E=16, G=8, and CCA."""
    model_args = _ppaa("s24", mlp_ratios=16, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_s24_e16_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def metaformer_ppaa_s36(pretrained: bool = False, **kwargs) -> MetaFormer:
    """MetaFormer PPAA-S36, dense MLP (timm's Mlp) with E=4: 44.60M params, 7.21G MACs at 224."""
    model_args = _ppaa("s36", mlp_ratios=4, mlp_groups=1, cca=False)
    return _create("metaformer_ppaa_s36", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s36_e4_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S36, BD-MLP with E=4, G=2, and CCA."""
    model_args = _ppaa("s36", mlp_ratios=4, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_s36_e4_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s36_e8_g2(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S36, BD-MLP with E=8, G=2, and CCA."""
    model_args = _ppaa("s36", mlp_ratios=8, mlp_groups=2, cca=True)
    return _create("schemeformer_ppaa_s36_e8_g2", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s36_e8_g4(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S36, BD-MLP with E=8, G=4, and CCA: 30.48M params, 4.84G MACs at 224."""
    model_args = _ppaa("s36", mlp_ratios=8, mlp_groups=4, cca=True)
    return _create("schemeformer_ppaa_s36_e8_g4", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s36_e8_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S36, BD-MLP with E=8, G=8, and CCA."""
    model_args = _ppaa("s36", mlp_ratios=8, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_s36_e8_g8", pretrained, **dict(model_args, **kwargs))


@register_model
def schemeformer_ppaa_s36_e16_g8(pretrained: bool = False, **kwargs) -> MetaFormer:
    """SCHEMEformer PPAA-S36, BD-MLP with E=16, G=8, and CCA."""
    model_args = _ppaa("s36", mlp_ratios=16, mlp_groups=8, cca=True)
    return _create("schemeformer_ppaa_s36_e16_g8", pretrained, **dict(model_args, **kwargs))
