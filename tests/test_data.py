"""Fashion-MNIST idx reading, the ImageFolder that skips unreadable images, and transforms."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitmix.data import (
    FASHION_MNIST_DIR,
    AugmentSettings,
    FashionMNIST,
    SafeImageFolder,
    build_transforms,
    load_splits,
    read_idx,
)


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """The idx format written out byte by byte: magic, big-endian dims, raw uint8 values."""
    if magic is None:
        magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_root(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_read_idx_matches_the_bytes_written(tmp_path):
    arrays = make_fashion_root(tmp_path)
    got = read_idx(tmp_path / "train-images-idx3-ubyte.gz", 0x0803)
    np.testing.assert_array_equal(got, arrays["train"][0])
    ds = FashionMNIST("test", root=tmp_path)
    assert len(ds) == 6
    image, label = ds[3]
    assert image.mode == "L" and image.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(image), arrays["t10k"][0][3])
    assert label == int(arrays["t10k"][1][3])


def test_missing_dataset_names_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train", root=tmp_path)


@pytest.mark.parametrize("damage", ["truncated_gzip", "not_gzip", "bad_magic", "short_payload",
                                    "label_out_of_range", "count_mismatch"])
def test_damaged_files_raise_value_error(tmp_path, damage):
    make_fashion_root(tmp_path)
    images_path = tmp_path / "train-images-idx3-ubyte.gz"
    labels_path = tmp_path / "train-labels-idx1-ubyte.gz"
    if damage == "truncated_gzip":
        data = images_path.read_bytes()
        images_path.write_bytes(data[: len(data) // 2])
    elif damage == "not_gzip":
        images_path.write_bytes(b"this is not a gzip file at all")
    elif damage == "bad_magic":
        write_idx(images_path, np.zeros((2, 28, 28)), magic=0x0801)
    elif damage == "short_payload":
        raw = gzip.decompress(images_path.read_bytes())
        images_path.write_bytes(gzip.compress(raw[:-5]))
    elif damage == "label_out_of_range":
        write_idx(labels_path, np.full(12, 10))
    else:
        write_idx(labels_path, np.zeros(11))
    with pytest.raises(ValueError, match="train-"):
        FashionMNIST("train", root=tmp_path)


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        FashionMNIST("validation", root="/nonexistent")


def test_installed_fashion_mnist_has_balanced_test_labels():
    # `make test` installs the OS package; a missing one is a failed set-up, not a skip.
    assert (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), (
        f"Debian's dataset-fashion-mnist is not installed in {FASHION_MNIST_DIR}")
    ds = FashionMNIST("test")
    assert len(ds) == 10_000 and ds.images.shape == (10_000, 28, 28)
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10


def make_image_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 4,
                      size: int = 20, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            path = root / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


def test_image_folder_skips_and_counts_unreadable_images(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "ant" / "empty.jpg").write_bytes(b"")
    (tmp_path / "bee" / "text.png").write_text("not an image")
    good = (tmp_path / "cat" / "0.png").read_bytes()
    (tmp_path / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "cat" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        ds = SafeImageFolder(tmp_path, mode="RGB")
    assert ds.skipped == 3 and len(ds) == 12
    assert ds.classes == ["ant", "bee", "cat"]
    assert sorted(p.name for p in ds.skipped_paths) == ["empty.jpg", "text.png", "truncated.png"]
    assert ds.targets == [0] * 4 + [1] * 4 + [2] * 4
    image, label = ds[5]
    assert image.size == (20, 20) and label == 1


def test_image_folder_header_mode_replaces_a_damaged_body_at_load_time(tmp_path):
    make_image_folder(tmp_path, classes=("a",), per_class=3)
    good = (tmp_path / "a" / "1.png").read_bytes()
    (tmp_path / "a" / "1.png").write_bytes(good[: len(good) - 40])
    ds = SafeImageFolder(tmp_path, mode="L", verify="header")
    assert ds.skipped == 0 and len(ds) == 3  # the header still reads
    with pytest.warns(UserWarning, match="1.png"):
        image, _ = ds[1]
    assert ds.skipped_at_load == 1
    np.testing.assert_array_equal(np.asarray(image), np.asarray(ds[2][0]))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SafeImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        SafeImageFolder(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="no readable images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SafeImageFolder(tmp_path)
    with pytest.raises(ValueError, match="verify"):
        SafeImageFolder(tmp_path, verify="quick")


def test_load_splits_keeps_the_train_class_order_and_rejects_unknown_val_classes(tmp_path):
    make_image_folder(tmp_path / "train", classes=("b", "a"))
    make_image_folder(tmp_path / "val", classes=("a",), per_class=2)
    splits = load_splits(str(tmp_path), in_chans=3)
    assert splits.classes == ["a", "b"] and len(splits.val) == 2
    make_image_folder(tmp_path / "val", classes=("zebra",), per_class=1)
    with pytest.raises(ValueError, match="zebra"):
        load_splits(str(tmp_path), in_chans=3)
    with pytest.raises(FileNotFoundError, match="val/"):
        load_splits(str(tmp_path / "train"), in_chans=3)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_splits(str(tmp_path / "nowhere"), in_chans=3)


def test_eval_transform_normalises_like_the_formula():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    _, evaluate = build_transforms(32, 1, AugmentSettings())
    got = evaluate(Image.fromarray(pixels)).double()
    expected = (torch.from_numpy(pixels).double() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


def test_train_transform_shapes_and_randomness():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8))
    train, _ = build_transforms(32, 1, AugmentSettings(re_prob=0.5))
    outs = torch.stack([train(image) for _ in range(8)])
    assert outs.shape == (8, 1, 32, 32) and outs.dtype == torch.float32
    assert (outs - outs[0]).abs().amax() > 0  # the augmentation changes from call to call
    rgb_train, _ = build_transforms(64, 3, AugmentSettings())
    assert rgb_train(image.convert("RGB")).shape == (3, 64, 64)


def test_transform_errors():
    with pytest.raises(ValueError, match="in_chans"):
        build_transforms(32, 2, AugmentSettings())
    with pytest.raises(ValueError, match="mean and std"):
        build_transforms(32, 1, AugmentSettings(), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="img_size"):
        build_transforms(0, 1, AugmentSettings())
