"""Training batches of an in-memory image set, augmented as whole tensors.

On a two-core machine the per-image PIL transforms of a DataLoader worker compete with the two
threads that train: feeding a tiny model at 32x32 took a third of each step. Fashion-MNIST
fits in memory as one uint8 tensor, so its training batches can be augmented in a few batched
tensor ops in the training process instead, with the light recipe of the short runs:

* random-resized crop (torchvision's area and aspect-ratio sampling, drawn once per image with
  the box clamped into the image instead of torchvision's ten rejection-sampling attempts),
  resampled bicubically by ``grid_sample``;
* horizontal flip;
* normalisation;
* random erasing as timm does it in "pixel" mode (one box, normal noise), drawn once per image
  with the box clamped instead of timm's ten attempts.

RandAugment works on PIL images and has no batched form here; the default DataLoader keeps it.
All randomness comes from torch's global generators, which the engine seeds every epoch and saves
in its checkpoints, so a resumed run draws the same batches. On a GPU the image tensor lives on
the device and the batched augmentation runs there: the per-image parameters (a few numbers
each) are drawn on the CPU as they are on a CPU run, the erasing noise on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

__all__ = ["TensorAugment", "TensorBatchLoader", "random_erase"]


def random_erase(x: torch.Tensor, prob: float, area: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3),
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """timm's pixel-mode random erasing of a (B, C, H, W) batch: with probability ``prob`` an
    image gets one box (``area`` of the image, aspect ``ratio`` drawn log-uniformly, clamped
    into the image instead of timm's ten attempts) of normal noise.

    The draws come from ``generator`` on its device, or else from the global generators: the
    box parameters on the CPU (a few numbers per image) and the noise on ``x``'s device.
    """
    b, c, height, width = x.shape
    draw_on = generator.device if generator is not None else torch.device("cpu")
    chosen = torch.rand(b, generator=generator, device=draw_on) < prob
    size = height * width * torch.empty(b, device=draw_on).uniform_(*area, generator=generator)
    aspect = torch.empty(b, device=draw_on).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                    generator=generator).exp()
    h = (size * aspect).sqrt().round().clamp(1, height - 1)
    w = (size / aspect).sqrt().round().clamp(1, width - 1)
    top = ((height - h + 1) * torch.rand(b, generator=generator, device=draw_on)).floor()
    left = ((width - w + 1) * torch.rand(b, generator=generator, device=draw_on)).floor()
    top, left, h, w, chosen = (t.to(x.device) for t in (top, left, h, w, chosen))
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
    mask = (inside & chosen.view(-1, 1, 1)).unsqueeze(1).expand(b, c, height, width)
    noise = torch.randn(b, c, height, width, dtype=x.dtype, generator=generator,
                        device=draw_on if generator is not None else x.device)
    return torch.where(mask, noise, x)


class TensorAugment:
    """uint8 (B, C, H, W) images -> augmented, normalised float32 (B, C, S, S)."""

    def __init__(self, img_size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 re_prob: float = 0.0, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,),
                 re_area: tuple[float, float] = (0.02, 1 / 3),
                 re_ratio: tuple[float, float] = (0.3, 1 / 0.3)):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio}")
        for name, p in (("hflip", hflip), ("re_prob", re_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        self.img_size = img_size
        self.scale, self.ratio = scale, ratio
        self.hflip, self.re_prob = hflip, re_prob
        self.re_area, self.re_ratio = re_area, re_ratio
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def sample_boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """(n, 4) crop boxes (x0, y0, w, h) in pixels, inside the image."""
        area = height * width * torch.empty(n).uniform_(*self.scale)
        log_ratio = torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = log_ratio.exp()
        w = (area * aspect).sqrt().clamp(max=width)
        h = (area / aspect).sqrt().clamp(max=height)
        x0 = (width - w) * torch.rand(n)
        y0 = (height - h) * torch.rand(n)
        return torch.stack([x0, y0, w, h], dim=1)

    def crop_resize(self, images: torch.Tensor, boxes: torch.Tensor,
                    flips: torch.Tensor) -> torch.Tensor:
        """Bicubic resampling of each box to img_size x img_size, mirrored where ``flips``.

        Float images in, float images out; boxes are in pixel-edge coordinates.
        """
        b, _, height, width = images.shape
        x0, y0, w, h = boxes.to(images.device, images.dtype).unbind(1)
        theta = images.new_zeros(b, 2, 3)
        # Output coordinates in [-1, 1] map onto the box (align_corners=False: pixel edges).
        sign = 1.0 - 2.0 * flips.to(images.device, images.dtype)
        theta[:, 0, 0] = sign * w / width
        theta[:, 0, 2] = (2 * x0 + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * y0 + h) / height - 1
        grid = F.affine_grid(theta, [b, images.shape[1], self.img_size, self.img_size],
                             align_corners=False)
        return F.grid_sample(images, grid, mode="bicubic", padding_mode="border",
                             align_corners=False)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """timm's pixel-mode random erasing, one box per chosen image."""
        return random_erase(x, self.re_prob, self.re_area, self.re_ratio)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {images.dtype} "
                             f"{tuple(images.shape)}")
        b, _, height, width = images.shape
        boxes = self.sample_boxes(b, height, width)
        flips = torch.rand(b) < self.hflip
        x = self.crop_resize(images.float().div_(255), boxes, flips)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.re_prob > 0:
            x = self.erase(x)
        return x


class TensorBatchLoader:
    """(images, targets) batches of a uint8 image tensor, in the order a sampler gives.

    Stands in for a DataLoader over the same sampler (a DistributedSampler shards it); the
    last incomplete batch is dropped, as the engine's training loader does. The batches are on
    the device the images are on.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 sampler: Sampler, augment: TensorAugment):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets
        self.batch_size, self.sampler, self.augment = batch_size, sampler, augment

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The sampler may start part-way through its epoch (a run resumed in the middle of one).
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device)
        whole = len(order) // self.batch_size * self.batch_size
        for start in range(0, whole, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.augment(self.images[index]), self.targets[index]
