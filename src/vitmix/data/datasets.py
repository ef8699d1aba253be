"""Pick a dataset by name or path: ``fashion-mnist`` or an ImageFolder tree with train/ and val/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from .fashion_mnist import FashionMNIST
from .image_folder import SafeImageFolder

__all__ = ["DataSplits", "load_splits"]

FASHION_MNIST = "fashion-mnist"


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    classes: list[str]
    name: str

    @property
    def skipped(self) -> int:
        return getattr(self.train, "skipped", 0) + getattr(self.val, "skipped", 0)


def load_splits(data: str, in_chans: int, train_transform=None, eval_transform=None,
                verify: str = "decode") -> DataSplits:
    """Fashion-MNIST (train / test) or ``data/train`` and ``data/val`` of an ImageFolder tree."""
    if data == FASHION_MNIST:
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3 for Fashion-MNIST, got {in_chans}")
        train = FashionMNIST("train", transform=train_transform)
        val = FashionMNIST("test", transform=eval_transform)
        if in_chans == 3:
            train.mode = val.mode = "RGB"
        return DataSplits(train, val, list(FashionMNIST.classes), FASHION_MNIST)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data!r} is neither '{FASHION_MNIST}' nor a folder")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ folder; an ImageFolder dataset "
                                    f"needs {root}/train/<class>/<image> and {root}/val/...")
    mode = "L" if in_chans == 1 else "RGB"
    train = SafeImageFolder(root / "train", train_transform, mode=mode, verify=verify)
    val = SafeImageFolder(root / "val", eval_transform, mode=mode, classes=train.classes,
                          verify=verify)
    return DataSplits(train, val, train.classes, str(root))
