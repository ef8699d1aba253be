"""Damaged samples found while loading: flagged in shared memory, replaced or skipped, counted.

A DataLoader worker holds its own copy of the dataset, so whatever it learns about a sample dies
with it unless it is written where the training process can read it. Every dataset that can meet
a damaged sample while loading keeps one flag per sample in a shared-memory tensor,
``failed_at_load``; the engine sums the flags over DDP ranks, so a sample met by several
workers, ranks or epochs counts once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from PIL import UnidentifiedImageError

from ..limits import MAX_CLASSES

__all__ = ["UNREADABLE", "check_largest_label", "count_failed", "failure_flags",
           "first_readable"]

# What PIL raises for an image it cannot read (and the ValueError of a label that is no label).
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError)

T = TypeVar("T")


def check_largest_label(largest: int, where: str, fix: str) -> None:
    """ValueError when a data set whose classes are counted from its labels (0 to the largest)
    holds a label at or above MAX_CLASSES: one label of 10**12 would otherwise size a list of
    class names, and a classifier, beyond any memory. ``fix`` says how to name the classes."""
    if largest >= MAX_CLASSES:
        raise ValueError(f"{where}: the label {largest} is past the bound of {MAX_CLASSES:,} "
                         f"classes (labels 0 to {MAX_CLASSES - 1}); a label that large is a "
                         f"damaged label, or {fix}")


def failure_flags(count: int) -> torch.Tensor:
    """One uint8 flag per sample, in shared memory so that DataLoader workers' writes are seen."""
    return torch.zeros(count, dtype=torch.uint8).share_memory_()


def count_failed(flags: torch.Tensor) -> int:
    return int(flags.count_nonzero())


def first_readable(load: Callable[[int], T], index: int, failed: torch.Tensor,
                   describe: Callable[[int], str]) -> T:
    """``load(index)``, or else the next position that loads (wrapping around).

    Each position that fails is flagged in ``failed`` and named in a warning. A map-style
    dataset must hand the sampler a sample for every index it asks for, so a damaged one is
    replaced by its neighbour rather than dropped.
    """
    length = len(failed)
    for attempt in range(length):
        position = (index + attempt) % length
        try:
            return load(position)
        except UNREADABLE as err:
            failed[position] = 1
            warnings.warn(f"skipping unreadable {describe(position)} ({err})", stacklevel=3)
    raise ValueError(f"no sample could be read: every one of the {length} is damaged")
