"""Which images each class folder of an image tree holds, in a few bytes: what lets a resumed run
tell that two class folders swapped their names.

An ImageFolder's classes are its folder names in sorted order, so folders whose names were
swapped give the same class list, and each label then names the other class's images: a
resumed run would train on silently, its validation accuracy collapsing. The fingerprint keeps,
per class, the digests of its first few images (their size and first 64 KiB): a resumed run
computes it again and finds where those images are now. Images added or removed since leave the
check silent rather than wrong; only an image found under another class's name is a finding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch.utils.data import Dataset

from .image_folder import SafeImageFolder

__all__ = ["IMAGES_PER_CLASS", "class_fingerprint", "moved_classes"]

IMAGES_PER_CLASS = 2  # read at every start and resume: two small reads per class
_READ = 1 << 16


def _image_digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(_READ)
        size = path.stat().st_size
    except OSError:  # found damaged or gone: it tells nothing
        return None
    return hashlib.sha256(size.to_bytes(8, "little") + head).hexdigest()[:16]


def class_fingerprint(dataset: Dataset) -> dict[str, list[str]] | None:
    """Per class name, the digests of its first images; None for data that is no image tree
    (shards and saved datasets name their classes in a list that a swap reorders)."""
    if not isinstance(dataset, SafeImageFolder):
        return None
    first: dict[int, list[Path]] = {}
    for path, label in dataset.samples:  # in sorted order within each class
        paths = first.setdefault(label, [])
        if len(paths) < IMAGES_PER_CLASS:
            paths.append(path)
    return {dataset.classes[label]: [d for d in map(_image_digest, paths) if d]
            for label, paths in first.items()}


def moved_classes(then: dict[str, list[str]], now: dict[str, list[str]]
                  ) -> list[tuple[str, str]]:
    """(class, class whose folder now holds its images) for every class whose first images are
    now found under another class's name and not under its own."""
    holder = {digest: name for name, digests in now.items() for digest in digests}
    moved = []
    for name, digests in then.items():
        own = set(now.get(name, ()))
        elsewhere = [holder[d] for d in digests if d in holder and d not in own
                     and holder[d] != name]
        if elsewhere:
            moved.append((name, elsewhere[0]))
    return moved
