"""Datasets (Fashion-MNIST from the OS package, ImageFolder trees, webdataset tar shards, Hugging
Face datasets saved on disk) and timm transforms."""

from .datasets import (
    IMAGE_FOLDER,
    SAVED_DATASET,
    SHARDS,
    DataSplits,
    EvalSplit,
    detect,
    load_eval_split,
    load_splits,
)
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    FashionMNIST,
    fashion_mnist_root,
    read_idx,
)
from .hf_saved import SavedImageDataset
from .image_folder import SafeImageFolder
from .shards import ShardStream, StreamPlan
from .transforms import AugmentSettings, build_eval_transform, build_transforms

__all__ = ["AugmentSettings", "DataSplits", "EvalSplit", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_DIR", "FASHION_MNIST_ENV", "FashionMNIST", "IMAGE_FOLDER",
           "SAVED_DATASET", "SHARDS", "SafeImageFolder", "SavedImageDataset", "ShardStream",
           "StreamPlan", "build_eval_transform", "build_transforms", "detect",
           "fashion_mnist_root", "load_eval_split", "load_splits", "read_idx"]
