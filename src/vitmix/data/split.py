"""A validation split held out of the training images, for data that ships none.

Fashion-MNIST has a training and a test split only. Validating every epoch on the test images,
and choosing the best checkpoint, the epoch count or the recipe by them, makes the test score
an optimistic one. So a fixed part of the training images validates instead, and the test split
is evaluated once, at the end. An ImageFolder tree may do the same (its val/ then becomes the
test split), or carve its only validation split from train/ when it has no val/.

The held-out images are drawn by a seed of their own (:data:`VAL_SPLIT_SEED`), never the run's:
runs of every seed, a resumed run and every DDP process hold out the same images, so their
validation numbers compare. The draw is stratified (each class gives the share of the held-out
images it has of the training images) so that a small split still sees every class in
proportion, and it orders images by a fixed integer hash rather than by NumPy's generators,
whose streams may change between NumPy versions: the split of a dataset is the same wherever
and whenever it is drawn.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset, Subset

from .datasets import FASHION_MNIST, DataSplits

__all__ = ["AUTO", "FASHION_MNIST_VAL_SPLIT", "VAL_SPLIT_SEED", "HeldOut", "held_out_indices",
           "hold_out_validation", "resolve_val_split", "unwrap_subset"]

# The default: the data's usual validation. Fashion-MNIST holds out 5000 of its 60,000 training
# images (1/12, as many as MNIST's customary 55,000 / 5000 split); a folder validates on val/.
AUTO = "auto"
FASHION_MNIST_VAL_SPLIT = 5000
VAL_SPLIT_SEED = 0


def resolve_val_split(val_split: int | str | None, data: str) -> int:
    """The number of training images to hold out: ``"auto"`` is 5000 for Fashion-MNIST and 0
    (validate on val/) for a folder; None and 0 hold out none."""
    if val_split == AUTO:
        return FASHION_MNIST_VAL_SPLIT if data == FASHION_MNIST else 0
    return int(val_split or 0)


@dataclass(frozen=True)
class HeldOut:
    """Which training images validate: ``indices`` (sorted) of the ``source`` training set."""

    indices: np.ndarray
    source: Dataset
    seed: int = VAL_SPLIT_SEED

    @property
    def digest(self) -> str:
        """A fingerprint of the split (the indices and the size of the set they come from):
        the same split gives the same digest in every process, on every machine."""
        data = np.asarray([len(self.source), *self.indices], dtype="<i8").tobytes()
        return hashlib.sha256(data).hexdigest()[:16]


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 of (seed, value): a fixed pseudo-random key per value, in plain integer
    arithmetic, so that the order it gives never depends on a library's random generator."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def held_out_indices(targets: Any, size: int, seed: int = VAL_SPLIT_SEED,
                     class_names: list[str] | None = None) -> np.ndarray:
    """Sorted indices of ``size`` items of ``targets`` (one class label per item), stratified.

    Each class gives ``size * class_count / total`` items, rounded by largest remainders (ties
    to the lower class), chosen by the order of a fixed hash of (seed, index). ValueError when
    ``size`` is not in [0, len(targets)) or a class would keep no item (named by
    ``class_names[label]`` when given).
    """
    targets = np.asarray(targets)
    total = len(targets)
    if not 0 <= size < total:
        raise ValueError(f"a held-out split must leave items to train on: size {size} of "
                         f"{total}")
    classes, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    exact = size * counts / total
    quota = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[:size - int(quota.sum())]] += 1
    emptied = [(c, int(n)) for c, n, q in zip(classes.tolist(), counts, quota, strict=True)
               if q >= n]
    if emptied:
        label, count = emptied[0]
        name = repr(class_names[label]) if class_names is not None else label
        raise ValueError(f"holding out {size} of {total} images would leave class {name} "
                         f"({count} images) without training images; hold out fewer")
    keys = _mix(np.arange(total), seed)
    chosen = []
    for c, q in enumerate(quota):
        members = np.flatnonzero(inverse == c)
        chosen.append(members[np.argsort(keys[members], kind="stable")[:q]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _targets(dataset: Dataset, name: str) -> list[int]:
    if isinstance(dataset, IterableDataset):
        raise ValueError(f"cannot hold out a validation split of {name}: its training set is "
                         f"read as a stream (webdataset shards), without the random access "
                         f"that picks images out of it; give it val-*.tar shards and "
                         f"--val-split 0")
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(f"cannot hold out a validation split of {name}: its training set does "
                         f"not list its labels (random access by index is needed)")
    return targets


def _eval_view(dataset: Dataset, transform) -> Dataset:
    """The same images under the evaluation transform: a shallow copy shares the image data
    (and an ImageFolder's record of images found damaged while loading)."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


def hold_out_validation(splits: DataSplits, size: int, eval_transform=None,
                        asked: int | str | None = None) -> DataSplits:
    """``splits`` with ``size`` training images validating and its validation split, if any,
    becoming the test split; with ``size`` 0, ``splits`` as read, with their names filled in.

    ``splits.val`` is the data's own second split (Fashion-MNIST's test files, or val/; None
    for a folder without val/). ValueError when ``size`` leaves no training images, or none of
    a class; ``asked`` is the val_split setting ``size`` came from, for the message.
    """
    name = splits.name
    fashion = name == FASHION_MNIST
    own = "Fashion-MNIST's test split" if fashion else f"{name}/val"
    if size == 0:
        if splits.val is None:
            raise ValueError(f"{name} has no val/ folder; pass --val-split N (val_split) to "
                             f"hold out N training images for validation")
        note = " (no held-out validation: the epochs were validated on the test images)"
        return DataSplits(splits.train, splits.val, splits.classes, name, test=None,
                          val_name=f"{own}, {len(splits.val)} images" + (note if fashion else ""),
                          val_is_test=fashion)
    train = splits.train
    if size >= len(train):
        got = f"{asked!r} ({size} for {name})" if asked == AUTO else size
        raise ValueError(f"val_split must be smaller than the {len(train)} training images of "
                         f"{name} (it holds that many out of training), got {got}")
    held = HeldOut(held_out_indices(_targets(train, name), size,
                                    class_names=list(splits.classes)), train)
    keep = np.setdiff1d(np.arange(len(train)), held.indices)
    where = "training images" if fashion else f"images of {name}/train"
    test_name = None if splits.val is None else f"{own}, {len(splits.val)} images"
    return DataSplits(
        Subset(train, keep.tolist()), Subset(_eval_view(train, eval_transform),
                                             held.indices.tolist()),
        splits.classes, name, test=splits.val, held_out=held,
        val_name=f"{size} of the {len(train)} {where}, held out (split seed {held.seed})",
        test_name=test_name)


def unwrap_subset(dataset: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """The dataset a :class:`Subset` draws from and its indices (None: the whole dataset)."""
    if isinstance(dataset, Subset):
        return dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)
    return dataset, None
