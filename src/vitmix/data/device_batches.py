"""Batches of uint8 images finished on the training device: normalised, erased, prefetched.

A loader worker that normalises hands the training process float32 images, four times the bytes
of the uint8 ones, through shared memory and then across PCIe; and normalising and erasing cost
the worker's core time that decoding needs. So the workers stop at uint8 (timm's transforms with
``use_prefetcher=True``), and this wrapper moves each batch to the device, converts, normalises
and erases it there. On a GPU it does so on a side stream one batch ahead, so the copy and the
conversion overlap the previous step's work.

Random erasing draws from a generator of its own, seeded from (seed, epoch, rank, batch), so a
batch is erased the same way however far ahead it was prepared and wherever a run resumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .tensor_loader import random_erase

__all__ = ["DeviceBatches"]


class DeviceBatches:
    """(images, targets) of ``loader`` (uint8 (B, C, H, W) images, integer targets) as
    normalised float32 images on ``device`` (channels-last when asked), erased with probability
    ``erase_prob`` per image (timm's pixel mode, one box)."""

    def __init__(self, loader: Iterable, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], channels_last: bool = False, erase_prob: float = 0.0,
                 seed: int = 0, rank: int = 0):
        if not 0.0 <= erase_prob <= 1.0:
            raise ValueError(f"erase_prob must lie in [0, 1], got {erase_prob}")
        self.loader, self.device = loader, device
        # uint8 pixels in [0, 255]: normalise with the mean and std scaled to that range.
        self.scale = (255 * torch.tensor(std, dtype=torch.float32)).view(1, -1, 1, 1).to(device)
        self.shift = (255 * torch.tensor(mean, dtype=torch.float32)).view(1, -1, 1, 1).to(device)
        self.channels_last = channels_last
        self.erase_prob, self.seed, self.rank = erase_prob, seed, rank
        self.epoch, self.first_batch = 0, 0
        self._generator = torch.Generator(device) if erase_prob > 0 else None

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """The next pass is epoch ``epoch``, starting at its batch ``first_batch`` (a run
        resumed in the middle of the epoch)."""
        self.epoch, self.first_batch = epoch, first_batch

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int | None:
        return getattr(self.loader, "batch_size", None)

    @property
    def dataset(self):
        return getattr(self.loader, "dataset", None)

    def finish(self, images: torch.Tensor, targets: torch.Tensor,
               batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch on the device as the model takes it; ``batch`` is its place in the epoch."""
        if images.dtype != torch.uint8:
            raise ValueError(f"DeviceBatches takes uint8 images (timm's transforms with "
                             f"use_prefetcher=True), got {images.dtype}")
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        x = images.float().sub_(self.shift).div_(self.scale)
        if self._generator is not None:
            state = np.random.SeedSequence([self.seed, self.epoch, self.rank, batch])
            self._generator.manual_seed(int(state.generate_state(1, np.uint64)[0]) >> 1)
            x = random_erase(x, self.erase_prob, generator=self._generator)
        return x, torch.as_tensor(targets).to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = self.first_batch
        self.first_batch = 0  # a resumed epoch's start applies to one pass
        if self.device.type != "cuda":
            for i, (images, targets) in enumerate(self.loader, start=first):
                yield self.finish(images, targets, i)
            return
        side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        ready = None
        for i, (images, targets) in enumerate(self.loader, start=first):
            with torch.cuda.stream(side):
                upcoming = self.finish(images, targets, i)
            if ready is not None:
                yield ready
            main.wait_stream(side)
            for t in upcoming:  # made on the side stream, used on the main one
                t.record_stream(main)
            ready = upcoming
        if ready is not None:
            yield ready
