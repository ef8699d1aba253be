"""Datasets (Fashion-MNIST from the OS package, ImageFolder trees) and timm transforms."""

from .datasets import DataSplits, EvalSplit, load_eval_split, load_splits
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    FashionMNIST,
    fashion_mnist_root,
    read_idx,
)
from .image_folder import SafeImageFolder
from .transforms import AugmentSettings, build_transforms

__all__ = ["AugmentSettings", "DataSplits", "EvalSplit", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_DIR", "FASHION_MNIST_ENV", "FashionMNIST", "SafeImageFolder",
           "build_transforms", "fashion_mnist_root", "load_eval_split", "load_splits",
           "read_idx"]
