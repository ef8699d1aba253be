"""The validation split held out of the training images: sizes, classes, disjointness, a draw
that no seed, process, resume or library version changes, and the roles the splits take."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from test_data import make_fashion_root
from tiny_runs import make_image_tree
from vitmix.data import AugmentSettings, build_transforms, load_splits
from vitmix.data.split import (
    FASHION_MNIST_VAL_SPLIT,
    VAL_SPLIT_SEED,
    _mix,
    held_out_indices,
    hold_out_validation,
    resolve_val_split,
    unwrap_subset,
)


def test_the_draw_is_stratified_sorted_and_sized():
    targets = np.repeat(np.arange(10), 6000)  # Fashion-MNIST's training labels: 6000 a class
    held = held_out_indices(targets, 5000)
    assert len(held) == 5000 and len(np.unique(held)) == 5000
    assert (np.diff(held) > 0).all()
    assert np.bincount(targets[held]).tolist() == [500] * 10
    # Unequal classes give in proportion, remainders to the largest fractions (then the lower
    # class): 7 of 10 images is 3.5, 2.1 and 1.4 by class, so 4, 2 and 1.
    targets = np.array([0] * 5 + [1] * 3 + [2] * 2)
    assert np.bincount(targets[held_out_indices(targets, 7)]).tolist() == [4, 2, 1]
    assert held_out_indices([0, 1] * 3, 0).tolist() == []


def test_the_draw_never_changes():
    # SplitMix64 from state 0: its first output is the published 0xE220A8397B1DCDAF.
    assert int(_mix(np.array([0]), 0)[0]) == 0xE220A8397B1DCDAF
    # Pinned: a NumPy or PyTorch version, a run's seed or a process's generators change nothing.
    for seed in (0, 7):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        assert held_out_indices([0, 1, 2] * 4, 6).tolist() == [3, 5, 7, 9, 10, 11]
    assert held_out_indices([0, 1, 2] * 4, 6, seed=1).tolist() != [3, 5, 7, 9, 10, 11]


def test_a_draw_that_would_empty_a_class_or_the_training_set_is_refused():
    with pytest.raises(ValueError, match=r"holding out 4 of 5 images would leave class 1 \(1 "
                                         r"images\) without training images; hold out fewer"):
        held_out_indices([0, 0, 0, 0, 1], 4)
    with pytest.raises(ValueError, match=r"would leave class 'zebra' \(1 images\) without"):
        held_out_indices([0, 0, 0, 0, 1], 4, class_names=["ant", "zebra"])
    with pytest.raises(ValueError, match="must leave items to train on: size 5 of 5"):
        held_out_indices([0, 1, 0, 1, 0], 5)


def test_auto_is_5000_for_fashion_mnist_and_none_for_a_folder():
    assert resolve_val_split("auto", "fashion-mnist") == FASHION_MNIST_VAL_SPLIT == 5000
    assert resolve_val_split("auto", "/data/imagenet") == 0
    assert resolve_val_split(None, "fashion-mnist") == 0
    assert resolve_val_split(0, "fashion-mnist") == 0
    assert resolve_val_split(12, "/data/x") == 12


def _transforms():
    return build_transforms(32, 1, AugmentSettings(auto_augment=None))


def test_fashion_mnist_validates_on_held_out_training_images_and_tests_on_its_test_split(
        tmp_path):
    make_fashion_root(tmp_path, n_train=60, n_test=6)
    train_tf, eval_tf = _transforms()
    loaded = load_splits("fashion-mnist", 1, train_tf, eval_tf, data_dir=tmp_path)
    splits = hold_out_validation(loaded, 12, eval_tf)
    train_base, train_index = unwrap_subset(splits.train)
    val_base, val_index = unwrap_subset(splits.val)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 6)
    # Disjoint, and together the training set: no validation image is ever trained on.
    assert not set(train_index) & set(val_index)
    assert sorted([*train_index, *val_index]) == list(range(60))
    assert val_index.tolist() == held_out_indices(loaded.train.labels, 12).tolist()
    # The validation images are evaluated as the test images are: the evaluation transform.
    assert train_base is loaded.train and train_base.transform is train_tf
    assert val_base.transform is eval_tf and val_base.images is loaded.train.images
    assert splits.test is loaded.val and splits.test.split == "test"
    assert splits.val_name == (f"12 of the 60 training images, held out (split seed "
                               f"{VAL_SPLIT_SEED})")
    assert splits.test_name == "Fashion-MNIST's test split, 6 images"
    assert not splits.val_is_test and splits.held_out.digest == hold_out_validation(
        load_splits("fashion-mnist", 1, data_dir=tmp_path), 12).held_out.digest
    # Without a held-out split the test images validate, and the names say so.
    plain = hold_out_validation(loaded, 0, eval_tf)
    assert plain.val is loaded.val and plain.test is None and plain.val_is_test
    assert "no held-out validation" in plain.val_name
    with pytest.raises(ValueError, match="^val_split must be smaller than the 60 training "
                                         "images of fashion-mnist .*, got 60$"):
        hold_out_validation(loaded, 60, eval_tf)


def test_a_folder_carves_validation_from_train_and_its_val_becomes_the_test(tmp_path):
    root = make_image_tree(tmp_path / "tree")
    (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    train_tf, eval_tf = _transforms()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_splits(str(root), 1, train_tf, eval_tf)
    default = hold_out_validation(loaded, 0, eval_tf)
    assert default.val is loaded.val and default.test is None and not default.val_is_test
    assert default.val_name == f"{root}/val, 12 images"
    splits = hold_out_validation(loaded, 6, eval_tf)
    assert (len(splits.train), len(splits.val), splits.test) == (18, 6, loaded.val)
    assert splits.test_name == f"{root}/val, 12 images"
    # Two of each class, in the order of the training set.
    assert sorted(label for _, label in splits.val) == [0, 0, 1, 1, 2, 2]
    # The training folder is one source: its unreadable image is counted once.
    assert splits.sources() == [loaded.train, loaded.val] and splits.skipped == 1

    # Without val/ the held-out images are the only validation, and nothing is left to test.
    for path in (root / "val").rglob("*.png"):
        path.unlink()
    for folder in sorted((root / "val").iterdir()):
        folder.rmdir()
    (root / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=r"has no val/ folder; .* or pass --val-split N "
                                                r"\(val_split\) to hold out N training images "
                                                r"for validation"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_splits(str(root), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_splits(str(root), 1, train_tf, eval_tf, require_val=False)
    assert loaded.val is None
    splits = hold_out_validation(loaded, 6, eval_tf)
    assert len(splits.val) == 6 and splits.test is None and splits.test_name is None
    with pytest.raises(ValueError, match="has no val/ folder; pass --val-split N"):
        hold_out_validation(loaded, 0, eval_tf)
