"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped idx files)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FashionMNIST", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = "install it with: sudo apt-get install dataset-fashion-mnist"
_FILES = {"train": "train", "test": "t10k"}
# idx magic numbers: two zero bytes, the element type (0x08 = uint8), the number of dimensions.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Read one gzipped idx file into a uint8 array; ValueError when it is damaged."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is damaged ({err}); reinstall it with: "
                         f"sudo apt-get install --reinstall dataset-fashion-mnist") from None
    ndim = expect_magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is damaged: {len(raw)} bytes, shorter than its header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expect_magic:
        raise ValueError(f"{path} is not an idx file of the expected kind: magic number "
                         f"{magic:#010x}, expected {expect_magic:#010x}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise ValueError(f"{path} is damaged: the header promises {size} values of shape "
                         f"{shape}, the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNIST(Dataset):
    """The train (60,000) or test (10,000) split as grey PIL images and int labels."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = "train", root: str | Path = FASHION_MNIST_DIR,
                 transform=None):
        if split not in _FILES:
            raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
        root = Path(root)
        prefix = _FILES[split]
        images_path = root / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (images_path, labels_path):
            if not path.is_file():
                raise FileNotFoundError(f"Fashion-MNIST file {path} is missing; {INSTALL_HINT}")
        self.images = read_idx(images_path, _IMAGES_MAGIC)
        self.labels = read_idx(labels_path, _LABELS_MAGIC).astype(np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{images_path} holds {len(self.images)} images but {labels_path} "
                             f"holds {len(self.labels)} labels")
        if self.labels.size and self.labels.max() >= len(self.classes):
            raise ValueError(f"{labels_path} is damaged: label {self.labels.max()} is outside "
                             f"0..{len(self.classes) - 1}")
        self.split = split
        self.transform = transform
        self.mode = "L"  # "RGB" repeats the grey channel for 3-channel models
        self.skipped = 0  # the idx files have no per-image failures

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.mode != "L":
            image = image.convert(self.mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
