"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped idx files), or from
any folder holding the same four files (``root``, or the environment variable
``VITMIX_FASHION_MNIST_DIR``)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_ENV", "FashionMNIST",
           "fashion_mnist_root", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "VITMIX_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = "install it with: sudo apt-get install dataset-fashion-mnist"
_FILES = {"train": "train", "test": "t10k"}
# idx magic numbers: two zero bytes, the element type (0x08 = uint8), the number of dimensions.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def fashion_mnist_root(root: str | Path | None = None) -> tuple[Path, str | None]:
    """(folder, where it was named) of the Fashion-MNIST files: ``root`` when given, else the
    environment variable, else Debian's folder (named by nobody: None)."""
    if root is not None:
        return Path(root), "data_dir (--data-dir)"
    if os.environ.get(FASHION_MNIST_ENV):
        return Path(os.environ[FASHION_MNIST_ENV]), f"${FASHION_MNIST_ENV}"
    return FASHION_MNIST_DIR, None


def read_idx(path: Path, expect_magic: int, fix: str = "") -> np.ndarray:
    """Read one gzipped idx file into a uint8 array; ValueError when it is damaged.

    ``fix`` ends the message (how to get a good copy), e.g. "; reinstall it with: ...".
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is damaged ({err}){fix}") from None
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

    def __init__(self, split: str = "train", root: str | Path | None = None, transform=None):
        if split not in _FILES:
            raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
        root, named_by = fashion_mnist_root(root)
        prefix = _FILES[split]
        images_path = root / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        # The package's install hint only where the package puts its files.
        if named_by is None:
            missing_fix = f"; {INSTALL_HINT} (or name another folder with --data-dir)"
            damaged_fix = ("; reinstall it with: sudo apt-get install --reinstall "
                           "dataset-fashion-mnist")
        else:
            missing_fix = f" (the folder named by {named_by})"
            damaged_fix = ""
        if not root.is_dir():
            raise FileNotFoundError(f"the Fashion-MNIST folder {root} does not exist"
                                    f"{missing_fix}")
        for path in (images_path, labels_path):
            if not path.is_file():
                raise FileNotFoundError(f"Fashion-MNIST file {path} is missing{missing_fix}")
        self.images = read_idx(images_path, _IMAGES_MAGIC, damaged_fix)
        self.labels = read_idx(labels_path, _LABELS_MAGIC, damaged_fix).astype(np.int64)
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
