"""Train and eval transforms, built with timm's create_transform.

The defaults suit small grey images (Fashion-MNIST): a mild random-resized crop, RandAugment at a
lower magnitude than ImageNet's rand-m9, and random erasing; the model sees ``img_size`` inputs
with ``in_chans`` channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

__all__ = ["AugmentSettings", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "build_transforms"]

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
    interpolation: str = "bicubic"


def default_norm(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if in_chans == 1:
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if in_chans == 3:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")


def build_transforms(img_size: int, in_chans: int, augment: AugmentSettings,
                     mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, uint8_output: bool = False):
    """(train transform, eval transform) for PIL images of mode "L" (in_chans 1) or "RGB".

    ``uint8_output``: the transforms stop at uint8 (C, H, W) tensors, before normalisation and
    random erasing, which the training process then does on the device
    (:class:`vitmix.data.device_batches.DeviceBatches`).
    """
    if img_size <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    default_mean, default_std = default_norm(in_chans)
    mean, std = tuple(mean or default_mean), tuple(std or default_std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std need {in_chans} values, got {mean} and {std}")
    train = create_transform(
        img_size, is_training=True, scale=tuple(augment.scale), hflip=augment.hflip,
        color_jitter=augment.color_jitter or None,
        auto_augment=augment.auto_augment or None, re_prob=augment.re_prob, re_mode="pixel",
        interpolation=augment.interpolation, mean=mean, std=std, use_prefetcher=uint8_output,
    )
    # crop_pct=1: small images keep all their pixels, only resized.
    evaluate = create_transform(img_size, is_training=False, crop_pct=1.0,
                                interpolation=augment.interpolation, mean=mean, std=std,
                                use_prefetcher=uint8_output)
    return train, evaluate
