"""A Hugging Face dataset saved with ``DatasetDict.save_to_disk``: splits of an image column and
an integer or ClassLabel label column, read through ``datasets.load_from_disk``.

The arrow files are memory-mapped where they lie and rows are read at random, so the training
engine samples them as it does an image folder (DistributedSampler, reshuffled each epoch).
timm's hfds reader goes through ``datasets.load_dataset``, which copies a saved folder into the
Hugging Face cache before reading it (the whole dataset, once more on disk); it is not used here.
Images are decoded here, one row at a time, so that a damaged one is replaced and counted
rather than stopping the run.
"""

from __future__ import annotations

import io
from pathlib import Path

from torch.utils.data import Dataset

from .damaged import check_largest_label, count_failed, failure_flags, first_readable
from .images import open_checked
from .optional import require

__all__ = ["DICT_FILE", "IMAGE_COLUMNS", "LABEL_COLUMNS", "VAL_SPLITS", "SavedImageDataset",
           "holds_saved_dataset", "load_saved_splits"]

DICT_FILE = "dataset_dict.json"  # what DatasetDict.save_to_disk writes beside its split folders
SINGLE_FILES = ("state.json", "dataset_info.json")  # what Dataset.save_to_disk writes
VAL_SPLITS = ("validation", "val", "valid", "test")  # the first one present is evaluated on
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")


def _datasets():
    return require("datasets", "Hugging Face datasets saved with save_to_disk")


def holds_saved_dataset(root: Path) -> bool:
    return (root / DICT_FILE).is_file() or all((root / f).is_file() for f in SINGLE_FILES)


class SavedImageDataset(Dataset):
    """(image, label) rows of one split; a row whose image cannot be read is replaced by the
    next one and flagged in ``failed_at_load`` (shared memory, as for image folders)."""

    def __init__(self, table, image_key: str, label_key: str, classes: list[str],
                 mode: str = "RGB", transform=None, name: str = ""):
        datasets = _datasets()
        self.table = table.select_columns([image_key, label_key]).cast_column(
            image_key, datasets.Image(decode=False))  # bytes and path: decoded here, per row
        self.image_key, self.label_key = image_key, label_key
        self.classes, self.mode, self.transform, self.name = list(classes), mode, transform, name
        self.failed_at_load = failure_flags(len(self.table))

    def __len__(self) -> int:
        return len(self.table)

    @property
    def skipped(self) -> int:
        return count_failed(self.failed_at_load)

    @property
    def targets(self) -> list[int]:
        """The label of every row (the label column alone is read): what a validation split
        held out of this one is drawn by, class by class."""
        return list(self.table[self.label_key])

    def _load(self, position: int):
        row = self.table[position]
        image = row[self.image_key]
        data = image.get("bytes")
        if data:
            source = io.BytesIO(data)
        elif image.get("path"):
            source = image["path"]
        else:
            raise ValueError("the row holds neither image bytes nor a path")
        with open_checked(source) as img:
            return img.convert(self.mode), row[self.label_key]

    def __getitem__(self, index: int):
        image, label = first_readable(self._load, index, self.failed_at_load,
                                      lambda position: f"row {position} of {self.name}")
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def _pick_column(table, given: str | None, candidates: tuple[str, ...], what: str,
                 flag: str, where: str) -> str:
    columns = list(table.features)
    if given is not None:
        if given not in columns:
            raise ValueError(f"{where} has no column {given!r} ({flag}); its columns: {columns}")
        return given
    found = [c for c in candidates if c in columns]
    if not found:
        raise ValueError(f"{where} has none of the {what} columns {list(candidates)}; name its "
                         f"{what} column with {flag} (its columns: {columns})")
    return found[0]


def _class_names(datasets, table, label_key: str, where: str) -> list[str] | None:
    """The ClassLabel names of the label column; None for plain integers."""
    feature = table.features[label_key]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return None
    raise ValueError(f"{where}: the label column {label_key!r} is a {feature}, not integers or a "
                     f"ClassLabel")


def _check_labels(table, label_key: str, num_classes: int, where: str) -> None:
    bad = [v for v in table[label_key] if v is None or not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"{where}: the label column {label_key!r} holds {bad[0]}, outside the "
                         f"{num_classes} classes (0 to {num_classes - 1})")


def load_saved_splits(root: Path, splits: tuple[str, ...], mode: str, transforms: dict,
                      classes: list[str] | None = None, image_key: str | None = None,
                      label_key: str | None = None,
                      classes_from: str = "the checkpoint") -> tuple[dict, list[str]]:
    """{split: SavedImageDataset} and the class names, for ``splits`` of ("train", "val").

    "train" reads the split named train, "val" the first of VAL_SPLITS present. The classes are
    the training split's ClassLabel names, else ``classes`` (a checkpoint's), else "0" to "K-1"
    with K one more than the largest training label.
    """
    datasets = _datasets()
    if not (root / DICT_FILE).is_file():
        raise ValueError(f"{root} holds one Hugging Face Dataset without splits; vitmix reads a "
                         f"DatasetDict with a 'train' and a 'validation' (or 'test') split, as "
                         f"DatasetDict(train=..., validation=...).save_to_disk(PATH) writes it")
    try:
        saved = datasets.load_from_disk(str(root))
    except Exception as err:  # datasets raises many kinds for a damaged or foreign folder
        raise ValueError(f"{root} cannot be read as a saved Hugging Face dataset ({err})") from None
    names = {}
    for split in splits:
        options = ("train",) if split == "train" else VAL_SPLITS
        present = [n for n in options if n in saved]
        if not present:
            raise ValueError(f"{root} has no {' or '.join(repr(n) for n in options)} split; its "
                             f"splits: {list(saved)}")
        names[split] = present[0]
    tables = {split: saved[name] for split, name in names.items()}
    where = {split: f"split {name!r} of {root}" for split, name in names.items()}
    image_keys = {s: _pick_column(t, image_key, IMAGE_COLUMNS, "image", "--data-image-key",
                                  where[s]) for s, t in tables.items()}
    label_keys = {s: _pick_column(t, label_key, LABEL_COLUMNS, "label", "--data-label-key",
                                  where[s]) for s, t in tables.items()}
    for split, table in tables.items():
        if not isinstance(table.features[image_keys[split]], datasets.Image):
            raise ValueError(f"{where[split]}: the column {image_keys[split]!r} is a "
                             f"{table.features[image_keys[split]]}, not an Image feature")
    named = {s: _class_names(datasets, t, label_keys[s], where[s]) for s, t in tables.items()}
    first = splits[0]
    data_classes = named[first]
    for split in splits[1:]:
        if named[split] is not None and data_classes is not None and named[split] != data_classes:
            raise ValueError(f"{where[split]} names the classes {named[split]}, but "
                             f"{where[first]} names {data_classes}")
    if data_classes is not None and classes is not None and data_classes != list(classes):
        raise ValueError(f"{classes_from} was trained on the classes {list(classes)}, but "
                         f"{where[first]} names {data_classes}")
    classes = data_classes or (list(classes) if classes is not None else None)
    if classes is None:
        largest = max((v for v in tables[first][label_keys[first]] if v is not None), default=-1)
        check_largest_label(largest, where[first], "give the label column a ClassLabel "
                                                   "feature that names the classes")
        classes = [str(k) for k in range(largest + 1)]
    for split, table in tables.items():
        _check_labels(table, label_keys[split], len(classes), where[split])
    loaded = {split: SavedImageDataset(table, image_keys[split], label_keys[split], classes, mode,
                                       transforms.get(split), where[split])
              for split, table in tables.items()}
    return loaded, classes
