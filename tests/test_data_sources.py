"""The three kinds of --data folder: how each is recognised, webdataset shards read once per
epoch across ranks and DataLoader workers, saved Hugging Face datasets, and damaged samples
counted wherever they are met."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tiny_runs import CLASSES, make_image_tree, make_saved_dataset, make_shards
from vitmix.data import (
    IMAGE_FOLDER,
    SAVED_DATASET,
    SHARDS,
    ShardStream,
    StreamPlan,
    detect,
    load_eval_split,
    load_splits,
)
from vitmix.data.shards import epoch_order, load_shard_splits, pieces, split_range

pytestmark = pytest.mark.filterwarnings("ignore:skipping unreadable:UserWarning")


def _ids(image: Image.Image) -> int:
    """The sample number written into the two pixels of an image by _numbered_shards."""
    high, low = np.asarray(image).ravel().tolist()
    return high * 256 + low


def _numbered_shards(root: Path, lengths: list[int], split: str = "train",
                     damaged: tuple[int, ...] = ()) -> list[int]:
    """Shards of the given lengths whose sample i is a 2x1 image holding i (label i % 3), the
    samples in ``damaged`` with bytes that are no image; the labels, in order."""
    root.mkdir(parents=True, exist_ok=True)
    number = 0
    for shard, length in enumerate(lengths):
        with tarfile.open(root / f"{split}-{shard:03d}.tar", "w") as tar:
            for _ in range(length):
                buffer = io.BytesIO()
                Image.fromarray(np.array([[number // 256, number % 256]], np.uint8)).save(
                    buffer, format="PNG")
                png = b"not a png" if number in damaged else buffer.getvalue()
                for suffix, data in (("png", png), ("cls", str(number % 3).encode())):
                    info = tarfile.TarInfo(f"s{number:05d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                number += 1
    (root / "classes.txt").write_text("a\nb\nc\n")
    return [i % 3 for i in range(number)]


def _stream(root: Path, split: str = "train") -> ShardStream:
    """The split's samples as (sample number, label)."""
    streams, _ = load_shard_splits(root, (split,), "L", {split: _ids})
    return streams[split]


def _read(stream: ShardStream, workers: int, batch_size: int) -> list[list[int]]:
    """The batches of sample numbers one process's DataLoader yields."""
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers)
    return [batch[0].tolist() for batch in loader]


# Recognising the folder --------------------------------------------------------------------------
def test_each_layout_is_recognised_by_what_the_folder_holds(tmp_path):
    assert detect(str(make_image_tree(tmp_path / "tree"))) == IMAGE_FOLDER
    assert detect(str(make_shards(tmp_path / "shards"))) == SHARDS
    # The split folders of a saved DatasetDict are not an ImageFolder tree.
    assert detect(str(make_saved_dataset(tmp_path / "saved"))) == SAVED_DATASET
    mixed = make_shards(tmp_path / "mixed")
    (mixed / "train").mkdir()
    with pytest.raises(ValueError, match=r"mixed holds both webdataset shards \(\*.tar\) and an "
                       r"ImageFolder tree \(train/ or val/ folders\); give --data a folder with "
                       r"one of them$"):
        detect(str(mixed))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("")
    (tmp_path / "other" / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"other holds none of the datasets vitmix reads: "
                       r"an ImageFolder tree \(.*other/train/<class>/<image> and .*other/val/"
                       r"<class>/<image>\), webdataset shards \(train-\*.tar and val-\*.tar\) or "
                       r"a Hugging Face DatasetDict saved with save_to_disk \(dataset_dict.json\)"
                       r"; it holds images/, notes.txt$"):
        detect(str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="'nowhere' is neither 'fashion-mnist' nor a "
                       "folder"):
        detect("nowhere")


def test_a_missing_optional_package_is_one_line_naming_it_and_the_extra(tmp_path, monkeypatch):
    shards = make_shards(tmp_path / "shards")
    saved = make_saved_dataset(tmp_path / "saved")
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"^webdataset tar shards need the package 'webdataset', "
                       r"which cannot be imported; install it with: pip install 'vitmix\[data\]'$"):
        load_splits(str(shards), 1)
    with pytest.raises(ValueError, match=r"^Hugging Face datasets saved with save_to_disk need "
                       r"the package 'datasets', .*pip install 'vitmix\[data\]'$"):
        load_eval_split(str(saved), 1)


def test_options_that_do_not_fit_the_source_are_refused(tmp_path):
    tree = make_image_tree(tmp_path / "tree")
    with pytest.raises(ValueError, match="data_image_key and data_label_key .* name the columns "
                       "of a Hugging Face dataset or the files of webdataset samples; .*tree is "
                       "an ImageFolder tree"):
        load_splits(str(tree), 1, label_key="label")
    shards = make_shards(tmp_path / "shards")
    with pytest.raises(ValueError, match="verify_images='decode' checks the image files of an "
                       "ImageFolder tree up front; .*shards holds webdataset shards, whose "
                       "samples are checked while loading"):
        load_splits(str(shards), 1, verify="decode")


# Webdataset shards ----------------------------------------------------------------------------
def test_shards_give_their_samples_labels_and_classes(tmp_path):
    root = make_shards(tmp_path / "shards")
    splits = load_splits(str(root), 1)
    assert splits.classes == list(CLASSES)
    assert (len(splits.train), len(splits.val)) == (24, 12)
    samples = list(splits.val)
    assert len(samples) == 12 and Counter(label for _, label in samples) == {0: 4, 1: 4, 2: 4}
    image = samples[0][0]
    assert image.mode == "L" and image.size == (28, 28)
    # Without classes.txt the labels were read while counting: classes "0" to "K-1".
    (root / "classes.txt").unlink()
    assert load_splits(str(root), 1).classes == ["0", "1", "2"]
    # An evaluation takes the checkpoint's names; classes.txt must agree with them.
    assert load_eval_split(str(root), 1, classes=["x", "y", "z"]).classes == ["x", "y", "z"]
    (root / "classes.txt").write_text("x\ny\nw\n")
    with pytest.raises(ValueError, match=r"the checkpoint m.pth was trained on the classes "
                       r"\['x', 'y', 'z'\], but .*classes.txt names \['x', 'y', 'w'\]"):
        load_eval_split(str(root), 1, classes=["x", "y", "z"], classes_from="the checkpoint m.pth")


def test_shard_lengths_come_from_timms_info_file_when_there_is_one(tmp_path):
    root = tmp_path / "shards"
    _numbered_shards(root, [3, 4], "train")
    _numbered_shards(root, [2], "validation")
    info = {"splits": {"train": {"filenames": ["train-000.tar", "train-001.tar"],
                                 "shard_lengths": [3, 4]},
                       "validation": {"filenames": ["validation-000.tar"], "shard_lengths": [2]}}}
    (root / "_info.json").write_text(json.dumps(info))
    stream = _stream(root)
    assert stream.shards.lengths == (3, 4) and stream.shards.counted_by.endswith("_info.json")
    assert sorted(i for i, _ in stream.planned(StreamPlan())) == list(range(7))
    # With lengths from _info.json the labels are not read up front: the classes must be named.
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match="_info.json gives the shard lengths, so the labels are "
                       "not read up front; name the classes in .*classes.txt, one per line"):
        load_splits(str(root), 1)
    (root / "classes.txt").write_text("a\nb\nc\n")
    # A wrong length is named when the shard is read, not passed over.
    info["splits"]["train"]["shard_lengths"] = [5, 4]
    (root / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"train-000.tar holds 3 samples, but .*_info.json gave 5"):
        list(_stream(root).planned(StreamPlan()))


@pytest.mark.parametrize("damage,message", [
    ("no_val", "has no val-\\*.tar shards; webdataset data needs train-\\*.tar and val-\\*.tar"),
    ("not_a_tar", "train-000.tar cannot be read as a tar file"),
    ("label_out_of_range", "the val shards of .* hold the label 3, outside the 3 classes"),
    ("bad_info", "_info.json is not valid JSON"),
    ("info_without_split", "_info.json has no split named val or validation under 'splits'"),
    ("missing_shard", "webdataset shard .*train-009.tar does not exist \\(1 of the 2 train"),
    ("repeated_class", "classes.txt names \\['a'\\] more than once"),
])
def test_bad_shard_folders_are_one_line(tmp_path, damage, message):
    root = tmp_path / "shards"
    _numbered_shards(root, [3], "train")
    _numbered_shards(root, [3], "val")
    if damage == "no_val":
        (root / "val-000.tar").unlink()
    elif damage == "not_a_tar":
        (root / "train-000.tar").write_bytes(b"x" * 1000)
    elif damage == "label_out_of_range":  # classes.txt names three classes
        with tarfile.open(root / "val-001.tar", "w") as tar:
            info = tarfile.TarInfo("x.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"3"))
    elif damage in ("bad_info", "info_without_split", "missing_shard"):
        text = {"bad_info": "{", "info_without_split": json.dumps({"splits": {"train": {
                    "filenames": ["train-000.tar"], "shard_lengths": [3]}}}),
                "missing_shard": json.dumps({"splits": {
                    "train": {"filenames": ["train-000.tar", "train-009.tar"],
                              "shard_lengths": [3, 3]},
                    "val": {"filenames": ["val-000.tar"], "shard_lengths": [3]}}})}[damage]
        (root / "_info.json").write_text(text)
    else:
        (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_splits(str(root), 1)


def test_the_epoch_ranges_cover_every_sample_once():
    lengths = [7, 3, 0, 5, 9]
    order = epoch_order(len(lengths), seed=1, epoch=4, shuffle=True)
    assert sorted(order) == list(range(5)) and order != epoch_order(5, 1, 5, True)
    total = sum(lengths)
    seen = []
    for part in range(3):
        start, stop = split_range(total, 3, part)
        for shard, first, end in pieces(lengths, order, start, stop):
            assert 0 <= first < end <= lengths[shard]
            seen += [(shard, i) for i in range(first, end)]
    assert sorted(seen) == [(s, i) for s in range(5) for i in range(lengths[s])]


@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.filterwarnings("ignore:This DataLoader will create 6 worker processes")
def test_two_ranks_and_two_workers_read_every_sample_once_per_epoch(tmp_path, epoch):
    """Uneven shards (29 samples), 2 ranks x 2 DataLoader worker processes, as under DDP: in
    evaluation every sample once; in training every rank the same whole batches and no sample
    twice, the few left out fewer than a batch per rank."""
    root = tmp_path / "shards"
    _numbered_shards(root, [7, 3, 5, 9, 1, 4])
    stream = _stream(root)
    every = []
    for rank in range(2):
        plan = StreamPlan(rank=rank, world_size=2)
        stream.set_epoch(epoch)
        every += [i for batch in _read(stream.planned(plan), workers=2, batch_size=4)
                  for i in batch]
    assert sorted(every) == list(range(29))

    batch_size, trained, orders = 3, [], []
    for rank in range(2):
        train = stream.planned(StreamPlan(rank, 2, batch_size, shuffle=True, seed=5))
        train.set_epoch(epoch)
        assert train.batches_per_rank() == 4  # 14 samples per rank, whole batches of 3
        batches = _read(train, workers=2, batch_size=batch_size)
        assert [len(b) for b in batches] == [batch_size] * 4
        trained += [i for b in batches for i in b]
        orders.append(batches)
    assert len(set(trained)) == len(trained) == 24
    # The same epoch reads the same order again (a resumed run), with or without workers.
    again = stream.planned(StreamPlan(0, 2, batch_size, shuffle=True, seed=5))
    again.set_epoch(epoch)
    assert _read(again, workers=2, batch_size=batch_size) == orders[0]
    assert sorted(sum(_read(again, workers=0, batch_size=batch_size), [])) == sorted(
        sum(orders[0], []))
    # More workers than batches: the idle ones end at once.
    assert len(_read(again, workers=6, batch_size=batch_size)) == 4


def test_damaged_samples_are_left_out_of_evaluation_and_replaced_in_training(tmp_path):
    root = tmp_path / "shards"
    _numbered_shards(root, [4, 4], damaged=(2, 7))
    stream = _stream(root)
    with pytest.warns(UserWarning, match=r"skipping unreadable sample s00002 of .*train-000.tar"):
        evaluated = [i for i, _ in stream.planned(StreamPlan())]
    assert evaluated == [0, 1, 3, 4, 5, 6]
    assert stream.skipped == 2  # the flags the copies share
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = _read(stream.planned(StreamPlan(batch_size=4)), workers=2, batch_size=4)
    # Each worker's damaged sample gave way to its next one (the last one to the one before).
    assert trained == [[0, 1, 3, 3], [4, 5, 6, 6]]
    assert int(stream.failed_at_load.sum()) == 2  # found again, counted once


# Saved Hugging Face datasets ---------------------------------------------------------------------
def test_a_saved_dataset_gives_its_splits_and_class_names(tmp_path):
    root = make_saved_dataset(tmp_path / "saved")
    splits = load_splits(str(root), 3)
    assert splits.classes == list(CLASSES)
    assert (len(splits.train), len(splits.val)) == (24, 12)
    image, label = splits.val[5]
    assert image.mode == "RGB" and image.size == (28, 28) and 0 <= label < 3
    assert sorted(Counter(splits.val[i][1] for i in range(12)).values()) == [4, 4, 4]
    # Other column names, found or named; integer labels: classes "0" to "K-1"; "test" is the
    # split evaluated when there is no validation split.
    other = make_saved_dataset(tmp_path / "other", {"train": 2, "test": 1}, image_key="img",
                               label_key="labels", class_names=False)
    assert load_splits(str(other), 1).classes == ["0", "1", "2"]
    assert len(load_eval_split(str(other), 1).val) == 3
    named = make_saved_dataset(tmp_path / "named", {"train": 2, "validation": 1},
                               image_key="picture", label_key="fine")
    with pytest.raises(ValueError, match=r"split 'train' of .*named has none of the image columns "
                       r"\['image', 'img'\]; name its image column with --data-image-key \(its "
                       r"columns: \['picture', 'fine'\]\)"):
        load_splits(str(named), 1)
    assert len(load_splits(str(named), 1, image_key="picture", label_key="fine").train) == 6
    with pytest.raises(ValueError, match=r"has no column 'fine_label' \(--data-label-key\)"):
        load_splits(str(named), 1, image_key="picture", label_key="fine_label")


def test_bad_saved_datasets_are_one_line(tmp_path):
    import datasets

    no_val = make_saved_dataset(tmp_path / "no_val", {"train": 1})
    with pytest.raises(ValueError, match=r"no_val has no 'validation' or 'val' or 'valid' or "
                       r"'test' split; its splits: \['train'\]"):
        load_splits(str(no_val), 1)
    with pytest.raises(ValueError, match=r"the checkpoint was trained on the classes \['a'\], "
                       r"but split 'validation' of .* names \['circle', 'square', 'stripes'\]"):
        load_eval_split(str(make_saved_dataset(tmp_path / "ok", {"validation": 1})), 1,
                        classes=["a"])
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"label": [0]}).save_to_disk(str(single))
    with pytest.raises(ValueError, match="single holds one Hugging Face Dataset without splits; "
                       "vitmix reads a DatasetDict"):
        load_splits(str(single), 1)
    not_images = tmp_path / "not_images"
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"image": ["a"], "label": [0]}),
                         val=datasets.Dataset.from_dict({"image": ["b"], "label": [1]})
                         ).save_to_disk(str(not_images))
    with pytest.raises(ValueError, match="the column 'image' is a .*string.*, not an Image "
                       "feature"):
        load_splits(str(not_images), 1)
    negative = make_saved_dataset(tmp_path / "negative", {"train": 1, "test": 1},
                                  class_names=False)
    table = datasets.load_from_disk(str(negative))
    table["test"] = table["test"].map(lambda row: {"label": -1})
    table.save_to_disk(str(tmp_path / "negative2"))
    with pytest.raises(ValueError, match=r"split 'test' of .*negative2: the label column 'label' "
                       r"holds -1, outside the 3 classes \(0 to 2\)"):
        load_splits(str(tmp_path / "negative2"), 1)


def test_damaged_rows_found_in_dataloader_workers_are_counted_once(tmp_path):
    import datasets

    root = make_saved_dataset(tmp_path / "saved", {"train": 2, "validation": 1})
    table = datasets.load_from_disk(str(root))
    broken = table["train"].cast_column("image", datasets.Image(decode=False)).map(
        lambda row, i: {"image": {"bytes": b"\x89PNG broken" if i == 3 else row["image"]["bytes"],
                                  "path": None}}, with_indices=True)
    datasets.DatasetDict(train=broken.cast_column("image", datasets.Image()),
                         validation=table["validation"]).save_to_disk(str(tmp_path / "broken"))
    train = load_splits(str(tmp_path / "broken"), 1).train
    loader = DataLoader(train, batch_size=2, num_workers=1, collate_fn=lambda b: b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the worker warns about the damaged row
        for _ in range(2):  # two epochs, two fresh worker processes
            assert sum(len(batch) for batch in loader) == 6
    assert train.skipped == 1 and bool(train.failed_at_load[3])
    with pytest.warns(UserWarning, match="skipping unreadable row 3 of split 'train'"):
        image, _ = train[3]
    assert torch.equal(torch.tensor(np.asarray(image)), torch.tensor(np.asarray(train[4][0])))
