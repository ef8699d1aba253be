"""ImageFolder trees (root/CLASS/IMAGE) that skip and count unreadable images instead of failing."""

from __future__ import annotations

import warnings
from pathlib import Path

from torch.utils.data import Dataset

from .damaged import UNREADABLE, count_failed, failure_flags, first_readable
from .images import open_checked

__all__ = ["AUTO_DECODE_LIMIT", "IMAGE_EXTENSIONS", "VERIFY_MODES", "SafeImageFolder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# How images are checked before training: "decode" every one, read each "header", or "none"
# (damaged images are then found while loading); "auto" decodes a split of at most
# AUTO_DECODE_LIMIT images (seconds) and checks nothing up front in a larger one, where decoding
# would cost minutes of one core in every process, on every start and resume.
VERIFY_MODES = ("auto", "decode", "header", "none")
AUTO_DECODE_LIMIT = 10_000


def _readable(path: Path, mode: str, verify: str) -> bool:
    if verify == "none":
        return True
    try:
        with open_checked(path) as img:  # an image over the pixel bound: its header says so
            if verify == "decode":
                img.convert(mode).load()  # truncated files fail here, not in the middle of training
        return True
    except UNREADABLE:
        return False


class SafeImageFolder(Dataset):
    """Images under ``root/<class>/`` with classes sorted by name, as torchvision's ImageFolder.

    With ``verify="decode"`` every file is decoded once when the dataset is built; files that
    cannot be read are left out and counted in ``skipped`` (their paths in ``skipped_paths``).
    ``verify="header"`` only reads headers, and ``"none"`` checks nothing up front (fast for
    ImageNet-sized trees); a file that turns out damaged while training is then replaced by the
    next sample and counted once in ``skipped_at_load``, in whichever DataLoader worker met it
    (the record of which images failed lives in shared memory). ``skipped`` counts both kinds.
    ``"auto"`` (the default) decodes up to AUTO_DECODE_LIMIT images and checks none beyond;
    ``verify`` holds the mode it chose. ``classes`` may be given to keep the class order of
    another split (``classes_from`` names it in messages). ``mode`` is the PIL mode images are
    converted to.
    """

    def __init__(self, root: str | Path, transform=None, mode: str = "RGB",
                 classes: list[str] | None = None, verify: str = "auto",
                 classes_from: str = "the training split"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not found:
            raise ValueError(f"image folder {root} has no class sub-folders "
                             f"(expected {root}/<class>/<image>)")
        if classes is None:
            classes = found
        elif set(found) - set(classes):
            raise ValueError(f"{root} has classes {sorted(set(found) - set(classes))} that "
                             f"{classes_from} does not have (its classes: {list(classes)})")
        self.root, self.mode, self.transform = root, mode, transform
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        candidates = [(path, self.class_to_idx[name]) for name in found
                      for path in sorted((root / name).rglob("*"))
                      if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
        if verify == "auto":
            verify = "decode" if len(candidates) <= AUTO_DECODE_LIMIT else "none"
        self.verify = verify
        self.samples: list[tuple[Path, int]] = []
        self.skipped_paths: list[Path] = []
        for path, label in candidates:
            if _readable(path, mode, verify):
                self.samples.append((path, label))
            else:
                self.skipped_paths.append(path)
        if not self.samples:
            raise ValueError(f"image folder {root} has no readable images with extensions "
                             f"{IMAGE_EXTENSIONS} ({len(self.skipped_paths)} unreadable)")
        if self.skipped_paths:
            warnings.warn(f"{root}: skipped {len(self.skipped_paths)} unreadable images, "
                          f"e.g. {self.skipped_paths[0]}", stacklevel=2)
        # What DataLoader workers find while loading must reach the process that reports it.
        self.failed_at_load = failure_flags(len(self.samples))

    @property
    def skipped_at_load(self) -> int:
        """Images that passed the check at build time but could not be read when loaded."""
        return count_failed(self.failed_at_load)

    @property
    def skipped(self) -> int:
        """Unreadable images left out at build time or replaced at load time."""
        return len(self.skipped_paths) + self.skipped_at_load

    def images_per_class(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, position: int):
        path, label = self.samples[position]
        with open_checked(path) as img:
            return img.convert(self.mode), label

    def __getitem__(self, index: int):
        image, label = first_readable(self._load, index, self.failed_at_load,
                                      lambda position: f"image {self.samples[position][0]}")
        if self.transform is not None:
            image = self.transform(image)
        return image, label
