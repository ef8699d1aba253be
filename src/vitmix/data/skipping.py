"""Starting an epoch part-way through: what a run resumed from a checkpoint saved in the middle of
an epoch (a preempted run) needs from its loaders.

The sampler's order for an epoch is a function of (seed, epoch), and each sample's augmentation
one of (seed, epoch, sample) (see :mod:`.seeding`), so leaving out the batches the run had
already trained on continues the epoch exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

__all__ = ["SkippingSampler", "worker_continuation"]


class SkippingSampler(Sampler[int]):
    """``sampler``'s indices, less the first ``skip`` of the next epoch asked for.

    The skip applies to one pass only (the resumed epoch); later epochs are whole. The sampler
    is read in the training process, so a DataLoader whose workers persist sees the skip too.
    """

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip_next(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"cannot skip {count} samples")
        self._skip = count

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for position, index in enumerate(self.sampler):
            if position >= skip:
                yield index


def worker_continuation(batches: list[int], taken: int) -> list[tuple[int, int]]:
    """Where each worker of a DataLoader over an iterable dataset stood once it had yielded
    ``taken`` batches, the workers holding ``batches[w]`` batches each: (worker, batches it
    had yielded) for every worker, in the order the loader would ask them next (the workers it
    had run dry last).

    The DataLoader asks its workers in turn, one batch each, and passes over a worker once it
    has run out. A loader whose workers take these parts in this order yields what the first
    loader would have yielded next, batch for batch.
    """
    if not 0 <= taken <= sum(batches):
        raise ValueError(f"{taken} batches cannot have been taken from workers holding {batches}")
    done = [0] * len(batches)
    active = [w for w, n in enumerate(batches) if n > 0]
    turn = 0  # the place in ``active`` of the worker asked next
    for _ in range(taken):
        w = active[turn]
        done[w] += 1
        if done[w] == batches[w]:
            active.pop(turn)
        else:
            turn += 1
        turn = turn % len(active) if active else 0
    order = active[turn:] + active[:turn]
    order += [w for w in range(len(batches)) if w not in order]
    return [(w, done[w]) for w in order]
