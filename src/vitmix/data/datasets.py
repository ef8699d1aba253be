"""Pick a dataset by name or path: ``fashion-mnist`` or an ImageFolder tree with train/ and val/.

Training reads both splits (a tree may lack val/ when validation is held out of train/, see
:mod:`.split`); evaluation reads the second split alone (Fashion-MNIST's test files, or
``val/``), in the class order the checkpoint was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .fashion_mnist import FashionMNIST
from .image_folder import SafeImageFolder

__all__ = ["DataSplits", "EvalSplit", "load_eval_split", "load_splits"]

FASHION_MNIST = "fashion-mnist"


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


def _image_root(data: str, split: str, needs: str) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data!r} is neither '{FASHION_MNIST}' nor a folder")
    if not (root / split).is_dir():
        raise FileNotFoundError(f"{root} has no {split}/ folder; {needs}")
    return root


def load_splits(data: str, in_chans: int, train_transform=None, eval_transform=None,
                verify: str = "decode", data_dir: str | Path | None = None,
                require_val: bool = True) -> DataSplits:
    """Fashion-MNIST (train / test, from ``data_dir`` when given) or ``data/train`` and
    ``data/val`` of an ImageFolder tree, whose every training class must have images.
    ``require_val=False`` admits a tree without val/ (its validation is then held out of
    train/); ``val`` is None then."""
    mode = _check_in_chans(in_chans)
    if data == FASHION_MNIST:
        train = FashionMNIST("train", root=data_dir, transform=train_transform)
        val = FashionMNIST("test", root=data_dir, transform=eval_transform)
        train.mode = val.mode = mode
        return DataSplits(train, val, list(FashionMNIST.classes), FASHION_MNIST)
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
                    data_dir: str | Path | None = None, verify: str = "decode",
                    classes_from: str = "the checkpoint") -> EvalSplit:
    """Fashion-MNIST's test split or ``data/val``, labelled in the order of ``classes`` (the
    checkpoint's, when it names them), so that each image is scored against its own class.

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
    root = _image_root(data, "val", f"vitmix eval reads {data}/val/<class>/<image>")
    val = SafeImageFolder(root / "val", transform, mode=mode, classes=classes, verify=verify,
                          classes_from=classes_from)
    return EvalSplit(val, val.classes, str(root))
