"""Datasets (Fashion-MNIST from the OS package, ImageFolder trees) and timm transforms."""

from .datasets import DataSplits, load_splits
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FashionMNIST, read_idx
from .image_folder import SafeImageFolder
from .transforms import AugmentSettings, build_transforms

__all__ = ["AugmentSettings", "DataSplits", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR",
           "FashionMNIST", "SafeImageFolder", "build_transforms", "load_splits", "read_idx"]
