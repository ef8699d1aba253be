"""Train and eval transforms, built with timm's create_transform.

The defaults suit small grey images (Fashion-MNIST): a mild random-resized crop, RandAugment at a
lower magnitude than ImageNet's rand-m9, and random erasing; the model sees ``img_size`` inputs
with ``in_chans`` channels. The evaluation transform resizes the shorter side to
``img_size / crop_pct`` and centre-crops ``img_size`` (timm's crop_pct); the default, 1, keeps
every pixel of a small image.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_auto_augment

__all__ = ["AugmentSettings", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "INTERPOLATIONS",
           "TRAIN_INTERPOLATIONS", "build_eval_transform", "build_transforms",
           "keep_posterize_zero_bits"]

# PIL's resampling filters by timm's names; for training timm also takes "random" (bilinear or
# bicubic, drawn per image: the default of timm's train script).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")
TRAIN_INTERPOLATIONS = ("random", *INTERPOLATIONS)

# Measured over the 60,000 training images of Fashion-MNIST (pixel values scaled to [0, 1]).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@dataclass
class AugmentSettings:
    auto_augment: str | None = "rand-m6-mstd0.5-inc1"
    re_prob: float = 0.25
    scale: tuple[float, float] = (0.6, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    interpolation: str = "bicubic"  # of the random-resized crop


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off: black, as Pillow < 13 gave
    return timm_auto_augment.posterize(img, bits_to_keep, **kwargs)


def keep_posterize_zero_bits(transform):
    """``transform`` with its RandAugment's posterize taking 0 bits as Pillow before 13 did.

    timm's increasing posterize ("inc1", as in the authors' rand-m9-mstd0.5-inc1) keeps
    4 - int(magnitude * 0.4) bits: none at magnitude 10, which m9 with a magnitude std of 0.5
    reaches about once in 700 RandAugment calls. Pillow 13 refuses 0 bits with a ValueError,
    which would stop a training run (or count a good image as damaged). Only this transform's
    operations change, not timm's tables.
    """
    for step in getattr(transform, "transforms", ()):
        if isinstance(step, timm_auto_augment.RandAugment):
            for op in step.ops:
                if op.aug_fn is timm_auto_augment.posterize:
                    op.aug_fn = _posterize
    return transform


def default_norm(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if in_chans == 1:
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if in_chans == 3:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")


def _norm(img_size: int, in_chans: int, mean: tuple[float, ...] | None,
          std: tuple[float, ...] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if img_size <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    default_mean, default_std = default_norm(in_chans)
    mean, std = tuple(mean or default_mean), tuple(std or default_std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std need {in_chans} values, got {mean} and {std}")
    return mean, std


def build_eval_transform(img_size: int, in_chans: int, crop_pct: float = 1.0,
                         interpolation: str = "bicubic",
                         mean: tuple[float, ...] | None = None,
                         std: tuple[float, ...] | None = None, uint8_output: bool = False):
    """The evaluation transform: resize the shorter side to floor(img_size / crop_pct) with
    ``interpolation``, centre-crop img_size, normalise (not with ``uint8_output``)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, "
                         f"got {interpolation!r}")
    mean, std = _norm(img_size, in_chans, mean, std)
    return create_transform(img_size, is_training=False, crop_pct=crop_pct,
                            interpolation=interpolation, mean=mean, std=std,
                            use_prefetcher=uint8_output)


def build_transforms(img_size: int, in_chans: int, augment: AugmentSettings,
                     mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, eval_crop_pct: float = 1.0,
                     eval_interpolation: str = "bicubic", uint8_output: bool = False):
    """(train transform, eval transform) for PIL images of mode "L" (in_chans 1) or "RGB".

    ``uint8_output``: the transforms stop at uint8 (C, H, W) tensors, before normalisation and
    random erasing, which the training process then does on the device
    (:class:`vitmix.data.device_batches.DeviceBatches`).
    """
    mean, std = _norm(img_size, in_chans, mean, std)
    train = create_transform(
        img_size, is_training=True, scale=tuple(augment.scale), hflip=augment.hflip,
        color_jitter=augment.color_jitter or None,
        auto_augment=augment.auto_augment or None, re_prob=augment.re_prob, re_mode="pixel",
        interpolation=augment.interpolation, mean=mean, std=std, use_prefetcher=uint8_output,
    )
    keep_posterize_zero_bits(train)
    evaluate = build_eval_transform(img_size, in_chans, eval_crop_pct, eval_interpolation,
                                    mean, std, uint8_output)
    return train, evaluate
