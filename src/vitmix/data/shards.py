"""Webdataset tar shards, read so that every sample comes once per epoch across DDP ranks and
DataLoader workers.

A folder holds ``train-*.tar`` and ``val-*.tar`` (or the files its ``_info.json`` names, in
timm's layout); a sample is the run of files in a shard that share a key: an image (``.jpg``,
``.png``, ...) and a ``.cls`` file holding its class index as text. ``classes.txt`` beside the
shards names the classes, one per line in label order (timm's class-map format).

Why not timm's ReaderWds: it hands whole shards to the (rank, worker) pairs round-robin and then
cuts or repeats each worker's stream to the same length (webdataset's ``with_epoch``), so some
samples come twice in an epoch and others not at all (shards of 7, 3, 5 and 9 samples read by
two workers: 2 of the 24 twice, 2 never).
Here the epoch is one sequence: the shards in an order drawn from (seed, epoch), their samples in
file order. Rank r of W takes the r-th of W equal ranges of it, and each DataLoader worker a
contiguous part of its rank's range, so the ranges cover every sample exactly once while each
process reads little more than its own shards. In training each rank's range is cut to the same
whole number of batches (what DistributedSampler(drop_last=True) and drop_last do for the other
sources), each worker gets whole batches, and a damaged sample is replaced by the next one, so
every rank takes the same number of steps; in evaluation nothing is cut and damaged samples are
left out. The reading, the grouping into samples and the shuffle buffer are webdataset's.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import random
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..limits import MAX_COUNT, MAX_LABEL_FILE_BYTES
from ..paths import check_input_file
from ..structured_text import load_json, read_bounded_text
from .damaged import UNREADABLE, check_largest_label, count_failed, failure_flags
from .image_folder import IMAGE_EXTENSIONS
from .images import open_checked
from .optional import require
from .seeding import SharedEpoch, in_worker, seed_sample
from .skipping import worker_continuation

__all__ = ["CLASSES_FILE", "INFO_FILE", "ShardList", "ShardStream", "StreamPlan", "epoch_order",
           "find_shards", "holds_shards", "load_shard_splits", "pieces", "split_range"]

INFO_FILE = "_info.json"
LABEL_EXTENSION = "cls"  # the label file of a sample, unless data_label_key names another
CLASSES_FILE = "classes.txt"
# The file-name prefixes of each split's shards; an _info.json may name the split either way.
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation")}
IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTENSIONS)
SHUFFLE_BUFFER = 1000  # samples, undecoded (webdataset's usual size; ~100 MB of ImageNet JPEGs)
# webdataset's tar_file_iterator passes over these names (metadata, not sample files).
_META = re.compile(r"__[^/]*__($|/)")


def _webdataset():
    return require("webdataset", "webdataset tar shards")


def holds_shards(root: Path) -> bool:
    return (root / INFO_FILE).is_file() or any(
        next(root.glob(f"{name}-*.tar"), None) is not None
        for names in SPLIT_NAMES.values() for name in names)


def split_range(length: int, parts: int, part: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous ranges covering range(length), sizes within 1."""
    return length * part // parts, length * (part + 1) // parts


def epoch_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which an epoch reads the shards: the same on every rank and worker."""
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch]).permutation(num_shards).tolist()


def pieces(lengths: list[int] | tuple[int, ...], order: list[int], start: int,
           stop: int) -> list[tuple[int, int, int]]:
    """(shard, first, end) sample ranges that cover positions [start, stop) of the sequence the
    shards make in ``order``."""
    out, position = [], 0
    for shard in order:
        first, end = max(start - position, 0), min(stop - position, lengths[shard])
        if first < end:
            out.append((shard, first, end))
        position += lengths[shard]
        if position >= stop:
            break
    return out


@dataclass(frozen=True)
class ShardList:
    """One split's shards, their sample counts and where those counts came from."""

    paths: tuple[str, ...]
    lengths: tuple[int, ...]
    counted_by: str  # "_info.json", or "reading the shards' headers"
    offsets: tuple[int, ...] = field(init=False)  # a shard's first sample in the whole split

    def __post_init__(self):
        object.__setattr__(self, "offsets", (0, *accumulate(self.lengths))[:-1])

    @property
    def total(self) -> int:
        return sum(self.lengths)


@dataclass(frozen=True)
class StreamPlan:
    """Which part of each epoch a process reads. ``batch_size`` set: training (whole batches,
    the same number on every rank, damaged samples replaced); None: evaluation (every sample of
    the range, damaged ones left out)."""

    rank: int = 0
    world_size: int = 1
    batch_size: int | None = None
    shuffle: bool = False
    seed: int = 0


def _parse_label(data: bytes) -> int:
    # A label is a class index: a few digits. A longer file is no label (and Python refuses to
    # read an integer of more than 4,300 digits anyway).
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise ValueError(f"the label file holds {len(data):,} bytes, more than the "
                         f"{MAX_LABEL_FILE_BYTES} a label may have")
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"the label {data[:20]!r} is not an integer") from None


def _scan(path: str, label_key: str) -> list[int | None]:
    """Each sample's label (None when it has none that reads), from the tar headers and the label
    files alone: one sample per run of files sharing a key, as webdataset groups them."""
    base_plus_ext = _webdataset().tariterators.base_plus_ext
    labels: list[int | None] = []
    key = None
    try:
        with tarfile.open(path, "r:") as tar:  # seekable: the images are passed over unread
            for member in tar:
                if not member.isreg() or _META.match(member.name):
                    continue
                prefix, suffix = base_plus_ext(member.name)
                if prefix is None:
                    continue
                if prefix != key:
                    labels.append(None)
                    key = prefix
                if suffix.lower() == label_key and member.size <= MAX_LABEL_FILE_BYTES:
                    try:
                        labels[-1] = _parse_label(tar.extractfile(member).read())
                    except ValueError:
                        pass  # a damaged sample, counted when it is met while loading
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"webdataset shard {path} cannot be read as a tar file ({err})") from None
    return labels


def _info_split(root: Path, info: dict, split: str) -> tuple[list[str], list[int]]:
    splits = info.get("splits") if isinstance(info, dict) else None
    names = [n for n in SPLIT_NAMES[split] if isinstance(splits, dict) and n in splits]
    if not names:
        raise ValueError(f"{root / INFO_FILE} has no split named {' or '.join(SPLIT_NAMES[split])}"
                         f" under 'splits' (timm's layout: {{\"splits\": {{\"train\": "
                         f"{{\"filenames\": [...], \"shard_lengths\": [...]}}}}}})")
    entry = splits[names[0]]
    files, lengths = entry.get("filenames"), entry.get("shard_lengths")
    if (not isinstance(files, list) or not isinstance(lengths, list) or len(files) != len(lengths)
            or not all(isinstance(n, int) and n >= 0 for n in lengths)):
        raise ValueError(f"{root / INFO_FILE}: split {names[0]!r} needs 'filenames' and "
                         f"'shard_lengths', two lists of the same length (names and sample "
                         f"counts)")
    return [str(root / f) for f in files], lengths


def _read_info(root: Path) -> dict | None:
    path = root / INFO_FILE
    if not path.exists():
        return None
    check_input_file(path, "the shard index")
    try:
        return load_json(read_bounded_text(path, "the shard index"), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def find_shards(root: Path, split: str, label_key: str = LABEL_EXTENSION,
                info: dict | None = None) -> tuple[ShardList, list[int | None] | None]:
    """The shards of ``split`` ("train" or "val") and, when no _info.json gave their lengths,
    every sample's label as read while counting them."""
    if info is not None:
        paths, lengths = _info_split(root, info, split)
        labels = None
        counted_by = str(root / INFO_FILE)
    else:
        paths = [str(p) for name in SPLIT_NAMES[split] for p in sorted(root.glob(f"{name}-*.tar"))]
        if not paths:
            raise FileNotFoundError(f"{root} has no {split}-*.tar shards; webdataset data needs "
                                    f"train-*.tar and val-*.tar (or an {INFO_FILE} naming them)")
        per_shard = [_scan(p, label_key) for p in paths]
        lengths = [len(s) for s in per_shard]
        labels = [label for s in per_shard for label in s]
        counted_by = "reading the shards' headers"
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"webdataset shard {missing[0]} does not exist "
                                f"({len(missing)} of the {len(paths)} {split} shards are missing)")
    if sum(lengths) == 0:
        raise ValueError(f"the {split} shards of {root} hold no samples")
    if sum(lengths) > MAX_COUNT:  # one flag per sample is kept in shared memory
        raise ValueError(f"the {split} shards of {root} hold {sum(lengths):,} samples by "
                         f"{counted_by}, more than the {MAX_COUNT:,} vitmix reads")
    return ShardList(tuple(paths), tuple(lengths), counted_by), labels


def read_classes(root: Path) -> list[str] | None:
    """The names in classes.txt, one per line in label order; None without the file."""
    path = root / CLASSES_FILE
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not names or repeated:
        problem = f"names {repeated} more than once" if repeated else "is empty"
        raise ValueError(f"{path} {problem}; it needs one class name per line, in label order")
    return names


class ShardStream(IterableDataset):
    """The samples of one split's shards as (image, label), read as the plan and epoch say.

    ``len()`` is the number of samples in the split; ``failed_at_load`` flags damaged samples by
    their place in the split (shared memory, so workers' finds reach the training process).
    """

    def __init__(self, shards: ShardList, classes: list[str], mode: str = "RGB", transform=None,
                 image_key: str | None = None, label_key: str = LABEL_EXTENSION):
        self.shards, self.classes = shards, list(classes)
        self.mode, self.transform = mode, transform
        self.image_key, self.label_key = image_key, label_key
        self.plan = StreamPlan()
        # Shared memory: workers that persist across epochs read what the training process sets.
        self._epoch = SharedEpoch()
        self._resume = torch.zeros(2, dtype=torch.int64).share_memory_()  # (workers, batches)
        self.failed_at_load = failure_flags(shards.total)

    def planned(self, plan: StreamPlan) -> ShardStream:
        """This stream read as ``plan`` says; the failure flags are shared with this one."""
        other = copy.copy(self)
        other.plan = plan
        other._epoch = SharedEpoch(self.epoch)
        other._resume = torch.zeros(2, dtype=torch.int64).share_memory_()
        return other

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next, from its start."""
        self._epoch.set(epoch)
        self._resume.zero_()

    def resume_epoch(self, epoch: int, taken: int, workers: int) -> None:
        """Read epoch ``epoch`` next, without the first ``taken`` training batches of this rank
        that a loader with ``workers`` workers (0: none) had yielded: a run resumed where it
        stopped in the middle of an epoch. With as many workers as then, the batches that follow
        are the ones the first loader would have yielded, in its order; with another number,
        each remaining sample still comes once, in another order."""
        if self.plan.batch_size is None:
            raise ValueError("only a training stream (a plan with a batch size) can resume")
        self._epoch.set(epoch)
        self._resume[0], self._resume[1] = max(workers, 1), taken

    def __len__(self) -> int:
        return self.shards.total

    @property
    def skipped(self) -> int:
        return count_failed(self.failed_at_load)

    def batches_per_rank(self) -> int:
        """Training batches each rank takes per epoch (the same on every rank)."""
        return len(self) // self.plan.world_size // self.plan.batch_size

    def worker_range(self, worker: int, workers: int) -> tuple[int, int]:
        """The positions of the epoch's sequence that this rank's ``worker`` reads."""
        plan = self.plan
        start, stop = split_range(len(self), plan.world_size, plan.rank)
        if plan.batch_size is None:
            first, end = split_range(stop - start, workers, worker)
            return start + first, start + end
        first, end = split_range(self.batches_per_rank(), workers, worker)
        return start + first * plan.batch_size, start + end * plan.batch_size

    def _read(self, ranges: list[tuple[int, int, int]]) -> Iterator[tuple[int, dict]]:
        wds = _webdataset()
        for shard, first, end in ranges:
            path = self.shards.paths[shard]
            offset = self.shards.offsets[shard]
            seen = 0
            try:
                for index, sample in enumerate(wds.tarfile_samples([{"url": path}])):
                    if index >= first:
                        yield offset + index, sample
                    seen = index + 1
                    if seen == end:
                        break
            except (tarfile.TarError, OSError) as err:
                raise ValueError(f"webdataset shard {path} is damaged ({err})") from None
            if seen < end:
                raise ValueError(f"webdataset shard {path} holds {seen} samples, but "
                                 f"{self.shards.counted_by} gave {self.shards.lengths[shard]}")

    def _decode(self, sample: dict):
        key = self.image_key or next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or key not in sample:
            raise ValueError(f"no image file (.{key or ', .'.join(IMAGE_KEYS)})")
        if self.label_key not in sample:
            raise ValueError(f"no .{self.label_key} label file")
        label = _parse_label(sample[self.label_key])
        if not 0 <= label < len(self.classes):
            raise ValueError(f"label {label} is not one of the {len(self.classes)} classes")
        with open_checked(io.BytesIO(sample[key])) as img:
            return img.convert(self.mode), label

    def _decoded(self, samples) -> Iterator[tuple | None]:
        """(position, image, label) per sample; None for one that cannot be read (flagged and
        named)."""
        for position, sample in samples:
            try:
                yield (position, *self._decode(sample))
            except UNREADABLE as err:
                self.failed_at_load[position] = 1
                warnings.warn(f"skipping unreadable sample {sample.get('__key__')} of "
                              f"{sample.get('__url__')} ({err})", stacklevel=2)
                yield None

    def _parts(self, worker: int, workers: int) -> list[tuple[int, int]]:
        """(part, batches to pass over) that this ``worker`` reads, in order: a part being the
        range one worker reads in an epoch read from its start (:meth:`worker_range`)."""
        parts, taken = (int(v) for v in self._resume)
        if taken == 0:
            return [(worker, 0)]
        per_part = [split_range(self.batches_per_rank(), parts, p) for p in range(parts)]
        continuation = worker_continuation([end - first for first, end in per_part], taken)
        return continuation[worker::workers]

    def _part_samples(self, part: int, parts: int, skip_batches: int) -> Iterator[tuple[int, dict]]:
        """The undecoded (position, sample) pairs of one part, shuffled as the part always is,
        without the first ``skip_batches`` batches' worth (read, never decoded)."""
        plan = self.plan
        order = epoch_order(len(self.shards.paths), plan.seed, self.epoch, plan.shuffle)
        samples = self._read(pieces(self.shards.lengths, order, *self.worker_range(part, parts)))
        if plan.shuffle:
            seed = np.random.SeedSequence([plan.seed, self.epoch, plan.rank, part])
            rng = random.Random(int(seed.generate_state(1)[0]))
            samples = _webdataset().shuffle(bufsize=SHUFFLE_BUFFER, rng=rng)(samples)
        if skip_batches:
            samples = itertools.islice(samples, skip_batches * plan.batch_size, None)
        return samples

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resumed_parts = int(self._resume[0]) if int(self._resume[1]) else workers
        plan, epoch, seeded = self.plan, self.epoch, in_worker()
        for part, skip in self._parts(worker, workers):
            items = self._decoded(self._part_samples(part, resumed_parts, skip))
            items = (_replace_damaged(items) if plan.batch_size is not None
                     else (item for item in items if item is not None))
            for position, image, label in items:
                if seeded:  # see vitmix.data.seeding: the same draws in any worker
                    seed_sample(plan.seed, epoch, position)
                yield (self.transform(image) if self.transform is not None else image), label


def _replace_damaged(items) -> Iterator[tuple]:
    """Every None replaced by the next item (by the last one at the end), so that the count of
    samples, and with it every rank's number of steps, stays what the plan says."""
    pending, last = 0, None
    for item in items:
        if item is None:
            pending += 1
            continue
        for _ in range(pending + 1):
            yield item
        pending, last = 0, item
    if pending:
        if last is None:
            raise ValueError(f"none of the {pending} samples this process read could be read")
        for _ in range(pending):
            yield last


def load_shard_splits(root: Path, splits: tuple[str, ...], mode: str, transforms: dict,
                      classes: list[str] | None = None, image_key: str | None = None,
                      label_key: str | None = None,
                      classes_from: str = "the checkpoint") -> tuple[dict, list[str]]:
    """{split: ShardStream} and the class names, for ``splits`` of ("train", "val").

    The classes come from classes.txt, else from ``classes`` (a checkpoint's), else are "0" to
    "K-1" with K one more than the largest training label (known only when the shards were
    counted; with an _info.json a classes.txt is needed).
    """
    _webdataset()
    label_key = label_key or LABEL_EXTENSION
    info = _read_info(root)
    found = {split: find_shards(root, split, label_key, info) for split in splits}
    named = read_classes(root)
    if named is not None and classes is not None and named != list(classes):
        raise ValueError(f"{classes_from} was trained on the classes {list(classes)}, but "
                         f"{root / CLASSES_FILE} names {named}")
    classes = named or (list(classes) if classes is not None else None)
    if classes is None:
        labels = found[splits[0]][1]
        if labels is None:
            raise ValueError(f"{root / INFO_FILE} gives the shard lengths, so the labels are not "
                             f"read up front; name the classes in {root / CLASSES_FILE}, one per "
                             f"line in label order (line 1 is label 0)")
        largest = max((x for x in labels if x is not None), default=-1)
        check_largest_label(largest, f"the {splits[0]} shards of {root}",
                            f"name the classes in {root / CLASSES_FILE}")
        classes = [str(k) for k in range(largest + 1)]
        if not classes:
            raise ValueError(f"no sample of the {splits[0]} shards of {root} has a readable "
                             f".{label_key} label")
    for split, (_, labels) in found.items():
        bad = [x for x in labels or () if x is not None and not 0 <= x < len(classes)]
        if bad:
            raise ValueError(f"the {split} shards of {root} hold the label {bad[0]}, outside the "
                             f"{len(classes)} classes (0 to {len(classes) - 1}); name them all "
                             f"in {root / CLASSES_FILE}")
    streams = {split: ShardStream(shards, classes, mode, transforms.get(split), image_key,
                                  label_key) for split, (shards, _) in found.items()}
    return streams, classes
