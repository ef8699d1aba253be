"""Where a run's progress goes: a live bar on a terminal, one plain line per interval elsewhere.

A progress bar redraws itself with carriage returns; written to a file (a cluster job's log,
``> train.log``) every redraw stays, and a log of a few minutes holds thousands of them. So the
bar is drawn only when stderr is a terminal; otherwise the training loop prints one line every
``log_interval`` updates, and evaluations print nothing until their result.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["EpochProgress", "ProgressLog"]


class EpochProgress:
    """One epoch's progress: micro-batches counted as they pass, loss and lr at each report."""

    def __init__(self, log: ProgressLog, desc: str, total_images: int, done_images: int,
                 updates_in_epoch: int):
        self.log, self.desc = log, desc
        self.updates_in_epoch = updates_in_epoch  # planned (a budget may end it earlier)
        self.bar = None
        if log.enabled and log.is_terminal:
            self.bar = tqdm(total=total_images, initial=done_images, unit="img", unit_scale=True,
                            desc=desc, leave=False, dynamic_ncols=True, file=log.stream)
        self._since = time.perf_counter()
        self._images = 0

    def images(self, count: int) -> None:
        """``count`` more images trained on (by all processes)."""
        self._images += count
        if self.bar is not None:
            self.bar.update(count)

    def report(self, update_in_epoch: int, loss: float, lr: float) -> None:
        """The loss of the updates since the last report and the current learning rate."""
        now = time.perf_counter()
        rate = self._images / max(now - self._since, 1e-9)
        self._since, self._images = now, 0
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        elif self.log.enabled:
            share = 100 * update_in_epoch / max(self.updates_in_epoch, 1)
            print(f"{self.desc}: update {update_in_epoch}/{self.updates_in_epoch} "
                  f"({share:.0f}%), loss {loss:.4f}, lr {lr:.2e}, {rate:.0f} img/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressLog:
    """The run's progress output (only the main process shows any)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None,
                 is_terminal: bool | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.is_terminal = (self.stream.isatty() if is_terminal is None else is_terminal)

    def epoch(self, desc: str, total_images: int, done_images: int,
              updates_in_epoch: int) -> EpochProgress:
        return EpochProgress(self, desc, total_images, done_images, updates_in_epoch)

    def evaluation_bar(self, desc: str, total: int | None):
        """A bar for an evaluation on a terminal; elsewhere a silent one."""
        return tqdm(total=total, unit="img", unit_scale=True, desc=desc, leave=False,
                    dynamic_ncols=True, file=self.stream,
                    disable=not (self.enabled and self.is_terminal))
