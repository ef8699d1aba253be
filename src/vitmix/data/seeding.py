"""Augmentations drawn per sample, from generators seeded by (seed, epoch, sample), in loader
workers.

A DataLoader's workers draw their augmentations from generators seeded once, when the workers
start. Workers that live for the whole run (``persistent_workers``, which spares every epoch the
start of a dozen processes that import torch) would then continue one random stream across
epochs, and a run resumed at epoch k (or in the middle of it) could not draw what the
uninterrupted run drew. Seeding Python's, NumPy's and torch's generators from (seed, epoch,
sample) before each sample makes every augmentation a function of those three numbers alone:
the same whatever the number of workers, the order in which they run, or where the run was
resumed. In the training process itself (``workers=0``) nothing is reseeded: the samples then
draw from the generators the run seeds each epoch and saves in its checkpoints.

The epoch lives in shared memory, so that ``set_epoch`` in the training process reaches workers
started epochs before.
"""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

__all__ = ["EpochSeeded", "SharedEpoch", "ignore_stop_signals", "seed_sample"]


def seed_sample(seed: int, epoch: int, position: int) -> None:
    """Seed this process's Python, NumPy and torch (CPU) generators for one sample."""
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(3)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.random.default_generator.manual_seed(int(state[1]) << 32 | int(state[2]))


def in_worker() -> bool:
    return get_worker_info() is not None


class SharedEpoch:
    """An epoch number that loader workers read from shared memory."""

    def __init__(self, epoch: int = 0):
        self._value = torch.full((1,), epoch, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value[0] = epoch

    def get(self) -> int:
        return int(self._value[0])


class EpochSeeded(Dataset):
    """``dataset`` whose samples, loaded in a worker, draw from generators seeded by (seed,
    epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self.epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if in_worker():
            seed_sample(self.seed, self.epoch.get(), index)
        return self.dataset[index]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a cluster's stop signal is for the training process.

    SLURM signals every process of a job step; a worker that died of SIGTERM would end the
    training process's last steps with "DataLoader worker killed" before it could save its
    checkpoint. The workers exit with the training process (they are daemons of it).
    """
    del worker_id
    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
