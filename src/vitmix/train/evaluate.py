"""Accuracy of a model over a loader: top-1, top-5, per class, confusion matrix, images/s."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistContext, all_reduce_sum

__all__ = ["TTA_MODES", "EvalResult", "check_tta", "evaluate"]

# Test-time augmentation: None, or "flip" (the mean of the class probabilities of each image and
# of its mirror image; twice the inference cost).
TTA_MODES = (None, "flip")


def check_tta(tta: str | None) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {TTA_MODES}")


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float
    loss: float
    count: int
    confusion: torch.Tensor  # (true class, predicted class) counts
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def per_class(self) -> list[float | None]:
        """Top-1 (%) of each class; None for a class without images (no accuracy at all,
        rather than a 0% that reads as a class never recognised)."""
        totals = self.confusion.sum(dim=1).tolist()
        hits = self.confusion.diag().tolist()
        return [100.0 * h / n if n else None for h, n in zip(hits, totals, strict=True)]

    def summary(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count,
                "images_per_s": self.images_per_s}


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, ctx: DistContext | None = None,
             autocast=contextlib.nullcontext, max_batches: int | None = None,
             progress=None, channels_last: bool = False, tta: str | None = None) -> EvalResult:
    """Evaluate on this process's shard of ``loader``; counts are summed over all ranks."""
    check_tta(tta)
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    device = ctx.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-5 hits, count
    k = min(5, num_classes)
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images = images.to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
            mirrored = model(images.flip(-1)) if tta == "flip" else None
        logits = logits.float()
        if mirrored is not None:
            # Log of the mean probability, so the loss and top-k are those of the average.
            logits = torch.logaddexp(F.log_softmax(logits, dim=1),
                                     F.log_softmax(mirrored.float(), dim=1)) - math.log(2)
        sums[0] += F.cross_entropy(logits, targets, reduction="sum").double()
        topk = logits.topk(k, dim=1).indices
        sums[1] += (topk == targets[:, None]).any(dim=1).sum()
        sums[2] += targets.numel()
        flat = targets * num_classes + topk[:, 0]
        confusion += torch.bincount(flat, minlength=num_classes**2).view_as(confusion)
        if progress is not None:
            progress.update(targets.numel())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    all_reduce_sum(confusion, ctx)
    all_reduce_sum(sums, ctx)
    model.train(was_training)
    count = int(sums[2].item())
    if count == 0:
        raise ValueError("the evaluation set is empty")
    correct = float(confusion.diag().sum())
    # Throughput is this process's; the images of all ranks pass in the same wall time.
    return EvalResult(top1=100.0 * correct / count, top5=100.0 * float(sums[1]) / count,
                      loss=float(sums[0]) / count, count=count,
                      confusion=confusion.cpu().long(), seconds=seconds * 1.0)
