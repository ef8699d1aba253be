"""The training loss, summed where it is computed and read only when it is reported.

Reading a GPU tensor's value (``float(loss)``, ``.item()``) makes the host wait for the device to
finish everything queued before it, so the host can no longer queue the next step while the
device works on this one; doing it every micro-batch (and all-reducing the value across
processes each time, inside ``no_sync`` too) costs a GPU run its overlap. Here the loss stays on
the device: each micro-batch adds to a sum, and the update at which the first non-finite loss
appeared is kept there too, so the stop it causes still names that update. The sums cross to
the host and between processes at each report (every ``log_interval`` updates and at the end
of an epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .distributed import DistContext, all_reduce_min, all_reduce_sum

__all__ = ["LossReading", "RunningLoss"]

_NONE = 2**62  # "no non-finite loss yet": larger than any update number


@dataclass(frozen=True)
class LossReading:
    """The losses of all processes since the epoch began, and since the last reading."""

    epoch_mean: float
    epoch_total: float
    epoch_count: int
    interval_mean: float
    first_bad_update: int | None  # the update of the first non-finite loss this epoch


class RunningLoss:
    """Sums of one epoch's micro-batch losses, on ``device``."""

    def __init__(self, device: torch.device, carried: tuple[float, int] = (0.0, 0),
                 holds_carried: bool = True):
        """``carried``: the sums of all processes over the part of the epoch trained before a
        resume, held by one process (``holds_carried``) so that they count once."""
        total, count = carried if holds_carried else (0.0, 0)
        # float64: a sum of a few thousand losses keeps its digits; the adds are one kernel.
        self.total = torch.full((), total, dtype=torch.float64, device=device)
        self.count = count  # micro-batches: known on the host without asking the device
        self.first_bad = torch.full((), _NONE, dtype=torch.int64, device=device)
        self._last = (float(carried[0]), int(carried[1]))  # all processes', at the last reading
        self._reading: LossReading | None = None  # the last reading, until a loss is added

    def add(self, loss: torch.Tensor, update: int) -> None:
        """One micro-batch's (mean) loss; ``update`` is the number of updates done before it."""
        value = loss.detach().to(torch.float64)
        self.total += value
        bad = ~torch.isfinite(value)
        self.first_bad = torch.where(bad, torch.clamp(self.first_bad, max=update),
                                     self.first_bad)
        self.count += 1
        self._reading = None

    def read(self, ctx: DistContext) -> LossReading:
        """Every process's sums, brought together (a collective: all processes call it at the
        same micro-batch). Read again with nothing added since (the epoch's end right after a
        report), it is the same reading, without another collective."""
        if self._reading is not None:
            return self._reading
        sums = torch.stack([self.total, torch.tensor(float(self.count), dtype=torch.float64,
                                                     device=self.total.device)])
        all_reduce_sum(sums, ctx)
        first_bad = all_reduce_min(self.first_bad.clone(), ctx)
        total, count = sums.tolist()
        last_total, last_count = self._last
        self._last = (total, count)
        interval = count - last_count
        bad = int(first_bad)
        self._reading = LossReading(
            epoch_mean=total / count if count else math.nan, epoch_total=total,
            epoch_count=int(count),
            interval_mean=(total - last_total) / interval if interval else math.nan,
            first_bad_update=None if bad == _NONE else bad)
        return self._reading
