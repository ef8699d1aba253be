"""Pick a dataset by name or path: ``fashion-mnist``, or a folder whose contents say what it is:
an ImageFolder tree (train/ and val/), webdataset tar shards (train-*.tar, val-*.tar) or a
Hugging Face DatasetDict saved with ``save_to_disk`` (dataset_dict.json).

Training reads both splits (an ImageFolder tree may lack val/ when validation is held out of
train/, see :mod:`.split`); evaluation reads the second split alone (Fashion-MNIST's test files,
``val/``, the val shards or the validation split), in the class order the checkpoint was
trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .fashion_mnist import FashionMNIST
from .hf_saved import DICT_FILE, holds_saved_dataset, load_saved_splits
from .image_folder import SafeImageFolder
from .shards import holds_shards, load_shard_splits

__all__ = ["IMAGE_FOLDER", "SAVED_DATASET", "SHARDS", "DataSplits", "EvalSplit", "detect",
           "load_eval_split", "load_splits"]

FASHION_MNIST = "fashion-mnist"
IMAGE_FOLDER = "an ImageFolder tree"
SHARDS = "webdataset shards"
SAVED_DATASET = "a Hugging Face dataset saved with save_to_disk"
# Checks up front are for image files in folders; the other sources are checked while loading.
_LOADING_CHECKS = ("auto", "none")


@dataclass
class DataSplits:
    """What a run trains on (``train``), validates on every epoch and chooses by (``val``), and
    evaluates once at the end (``test``, None when the data has no split left for it).

    As :func:`load_splits` reads them, ``val`` is the data's own second split (None for a tree
    without val/); :func:`.split.hold_out_validation` then sets the three roles and their names.
    """

    train: Dataset
    val: Dataset | None
    classes: list[str]
    name: str
    test: Dataset | None = None
    held_out: Any = None  # a split.HeldOut when val is a part of the training images
    val_name: str = ""  # for people: which images validate, and where they come from
    test_name: str | None = None
    val_is_test: bool = False  # Fashion-MNIST without a held-out split validates on its test

    def sources(self) -> list[Dataset]:
        """The datasets as read, each once (a held-out part shares its training set's)."""
        found = ([self.held_out.source, self.test] if self.held_out is not None
                 else [self.train, self.val, self.test])
        unique: list[Dataset] = []
        for dataset in found:
            if dataset is not None and all(dataset is not d for d in unique):
                unique.append(dataset)
        return unique

    @property
    def skipped(self) -> int:
        return sum(getattr(d, "skipped", 0) for d in self.sources())

    @property
    def skipped_up_front(self) -> int:
        """Images left out when the data was read (an image folder's up-front check)."""
        return sum(len(getattr(split, "skipped_paths", ())) for split in self.sources())


@dataclass
class EvalSplit:
    val: Dataset
    classes: list[str]
    name: str

    @property
    def skipped(self) -> int:
        return getattr(self.val, "skipped", 0)


def _check_in_chans(in_chans: int) -> str:
    """The PIL mode of ``in_chans`` channels."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")
    return "L" if in_chans == 1 else "RGB"


def _contents(root: Path, shown: int = 6) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return "it is empty"
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return f"it holds {', '.join(entries[:shown])}{more}"


def detect(data: str, splits: tuple[str, ...] = ("train", "val")) -> str:
    """Which of the three layouts the folder ``data`` holds, judged by what is in it.

    A dataset_dict.json (or the state.json and dataset_info.json of one saved Dataset) makes it
    a saved Hugging Face dataset, whose split folders are not an ImageFolder tree; otherwise
    train-*.tar / val-*.tar shards (or an _info.json) make webdataset shards, and train/ or val/
    folders an ImageFolder tree. Both of the last two, or none of the three, is refused.
    """
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data!r} is neither '{FASHION_MNIST}' nor a folder")
    if holds_saved_dataset(root):
        return SAVED_DATASET
    folder = any((root / split).is_dir() for split in ("train", "val"))
    if holds_shards(root) and folder:
        raise ValueError(f"{root} holds both webdataset shards (*.tar) and an ImageFolder tree "
                         f"(train/ or val/ folders); give --data a folder with one of them")
    if holds_shards(root):
        return SHARDS
    if folder:
        return IMAGE_FOLDER
    trees = " and ".join(f"{root}/{split}/<class>/<image>" for split in splits)
    shards = " and ".join(f"{split}-*.tar" for split in splits)
    raise FileNotFoundError(f"{root} holds none of the datasets vitmix reads: an ImageFolder tree "
                            f"({trees}), webdataset shards ({shards}) or a Hugging Face "
                            f"DatasetDict saved with save_to_disk ({DICT_FILE}); "
                            f"{_contents(root)}")


def _image_root(data: str, split: str, needs: str) -> Path:
    root = Path(data)
    if not (root / split).is_dir():
        raise FileNotFoundError(f"{root} has no {split}/ folder; {needs}")
    return root


def _check_loading_options(kind: str, data: str, verify: str, image_key: str | None,
                           label_key: str | None) -> None:
    if kind == IMAGE_FOLDER:
        if image_key is not None or label_key is not None:
            raise ValueError(f"data_image_key and data_label_key (--data-image-key, "
                             f"--data-label-key) name the columns of a Hugging Face dataset or "
                             f"the files of webdataset samples; {data} is {IMAGE_FOLDER}")
    elif verify not in _LOADING_CHECKS:
        raise ValueError(f"verify_images={verify!r} checks the image files of an ImageFolder tree "
                         f"up front; {data} holds {kind}, whose samples are checked while "
                         f"loading (verify_images 'auto' or 'none')")


def _load_other(kind: str, data: str, splits: tuple[str, ...], mode: str, transforms: dict,
                classes: list[str] | None, image_key: str | None, label_key: str | None,
                classes_from: str = "the checkpoint") -> tuple[dict, list[str]]:
    load = load_shard_splits if kind == SHARDS else load_saved_splits
    return load(Path(data), splits, mode, transforms, classes=classes, image_key=image_key,
                label_key=label_key, classes_from=classes_from)


def load_splits(data: str, in_chans: int, train_transform=None, eval_transform=None,
                verify: str = "auto", data_dir: str | Path | None = None,
                image_key: str | None = None, label_key: str | None = None,
                require_val: bool = True) -> DataSplits:
    """Fashion-MNIST (train / test, from ``data_dir`` when given), ``data/train`` and
    ``data/val`` of an ImageFolder tree, whose every training class must have images, or the
    train and validation splits of webdataset shards or a saved Hugging Face dataset
    (``image_key`` and ``label_key`` name their image and label; None finds them).
    ``require_val=False`` admits a tree without val/ (its validation is then held out of
    train/); ``val`` is None then."""
    mode = _check_in_chans(in_chans)
    if data == FASHION_MNIST:
        train = FashionMNIST("train", root=data_dir, transform=train_transform)
        val = FashionMNIST("test", root=data_dir, transform=eval_transform)
        train.mode = val.mode = mode
        return DataSplits(train, val, list(FashionMNIST.classes), FASHION_MNIST)
    kind = detect(data)
    _check_loading_options(kind, data, verify, image_key, label_key)
    if kind != IMAGE_FOLDER:
        loaded, classes = _load_other(kind, data, ("train", "val"), mode,
                                      {"train": train_transform, "val": eval_transform}, None,
                                      image_key, label_key)
        return DataSplits(loaded["train"], loaded["val"], classes, str(Path(data)))
    needs = (f"an ImageFolder dataset needs {data}/train/<class>/<image> and "
             f"{data}/val/<class>/<image>")
    root = _image_root(data, "train", needs)
    has_val = (root / "val").is_dir()
    if require_val and not has_val:
        _image_root(data, "val", f"{needs}, or pass --val-split N (val_split) to hold out N "
                                 f"training images for validation")
    train = SafeImageFolder(root / "train", train_transform, mode=mode, verify=verify)
    empty = [c for c, n in zip(train.classes, train.images_per_class(), strict=True) if n == 0]
    if empty:
        # A class without training images is an output the model never learns, and it would
        # shift every later class index.
        raise ValueError(f"{root / 'train'} has class folders without readable images: "
                         f"{empty}; add images to them or remove them")
    val = (SafeImageFolder(root / "val", eval_transform, mode=mode, classes=train.classes,
                           verify=verify) if has_val else None)
    return DataSplits(train, val, train.classes, str(root))


def load_eval_split(data: str, in_chans: int, transform=None, classes: list[str] | None = None,
                    data_dir: str | Path | None = None, verify: str = "auto",
                    classes_from: str = "the checkpoint", image_key: str | None = None,
                    label_key: str | None = None) -> EvalSplit:
    """Fashion-MNIST's test split, ``data/val``, or the validation split of webdataset shards or a
    saved Hugging Face dataset, labelled in the order of ``classes`` (the checkpoint's, when it
    names them), so that each image is scored against its own class.

    ValueError when the data has classes that ``classes`` lacks; classes without images are
    kept (the evaluation reports them as having none).
    """
    mode = _check_in_chans(in_chans)
    if data == FASHION_MNIST:
        if classes is not None and list(classes) != list(FashionMNIST.classes):
            raise ValueError(f"{classes_from} was trained on the classes {list(classes)}, not "
                             f"on Fashion-MNIST's {list(FashionMNIST.classes)}")
        val = FashionMNIST("test", root=data_dir, transform=transform)
        val.mode = mode
        return EvalSplit(val, list(FashionMNIST.classes), FASHION_MNIST)
    kind = detect(data, ("val",))
    _check_loading_options(kind, data, verify, image_key, label_key)
    if kind != IMAGE_FOLDER:
        loaded, classes = _load_other(kind, data, ("val",), mode, {"val": transform}, classes,
                                      image_key, label_key, classes_from)
        return EvalSplit(loaded["val"], classes, str(Path(data)))
    root = _image_root(data, "val", f"vitmix eval reads {data}/val/<class>/<image>")
    val = SafeImageFolder(root / "val", transform, mode=mode, classes=classes, verify=verify,
                          classes_from=classes_from)
    return EvalSplit(val, val.classes, str(root))
