"""ImageFolder trees (root/CLASS/IMAGE) that skip and count unreadable images instead of failing."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "SafeImageFolder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


VERIFY_MODES = ("decode", "header")
_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def _readable(path: Path, mode: str, verify: str) -> bool:
    try:
        with Image.open(path) as img:
            if verify == "decode":
                img.convert(mode).load()  # truncated files fail here, not in the middle of training
        return True
    except _UNREADABLE:
        return False


class SafeImageFolder(Dataset):
    """Images under ``root/<class>/`` with classes sorted by name, as torchvision's ImageFolder.

    With ``verify="decode"`` every file is decoded once when the dataset is built; files that
    cannot be read are left out and counted in ``skipped`` (their paths in ``skipped_paths``).
    ``verify="header"`` only reads headers (fast for ImageNet-sized trees); a file whose body
    turns out damaged while training is then replaced by the next sample and counted once in
    ``skipped_at_load``, in whichever DataLoader worker met it (the record of which images
    failed lives in shared memory). ``skipped`` counts both kinds. ``classes`` may be given to
    keep the class order of another split (``classes_from`` names it in messages). ``mode`` is
    the PIL mode images are converted to.
    """

    def __init__(self, root: str | Path, transform=None, mode: str = "RGB",
                 classes: list[str] | None = None, verify: str = "decode",
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
        self.samples: list[tuple[Path, int]] = []
        self.skipped_paths: list[Path] = []
        for name in found:
            for path in sorted((root / name).rglob("*")):
                if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if _readable(path, mode, verify):
                    self.samples.append((path, self.class_to_idx[name]))
                else:
                    self.skipped_paths.append(path)
        if not self.samples:
            raise ValueError(f"image folder {root} has no readable images with extensions "
                             f"{IMAGE_EXTENSIONS} ({len(self.skipped_paths)} unreadable)")
        if self.skipped_paths:
            warnings.warn(f"{root}: skipped {len(self.skipped_paths)} unreadable images, "
                          f"e.g. {self.skipped_paths[0]}", stacklevel=2)
        # One flag per sample, in shared memory: DataLoader workers hold copies of the dataset,
        # and what they meet must reach the process that writes the report.
        self.failed_at_load = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()

    @property
    def skipped_at_load(self) -> int:
        """Images that passed the check at build time but could not be read when loaded."""
        return int(self.failed_at_load.count_nonzero())

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

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            position = (index + attempt) % len(self.samples)
            path, label = self.samples[position]
            try:
                with Image.open(path) as img:
                    image = img.convert(self.mode)
                break
            except _UNREADABLE:
                self.failed_at_load[position] = 1
                warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
        else:
            raise ValueError(f"no image under {self.root} could be read")
        if self.transform is not None:
            image = self.transform(image)
        return image, label
