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
from torch.utils.data import DataLoader

from vitmix.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    AugmentSettings,
    FashionMNIST,
    SafeImageFolder,
    build_transforms,
    fashion_mnist,
    image_folder,
    load_eval_split,
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


def test_missing_dataset_names_the_install_command_only_for_the_default_folder(
        tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIR", tmp_path / "debian")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train")
    # A folder someone named: what is missing where, and who named it, but no package advice.
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz is missing \(the "
                       r"folder named by data_dir \(--data-dir\)\)$"):
        FashionMNIST("train", root=tmp_path / "mine")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"folder .*elsewhere does not exist \(the "
                       r"folder named by \$VITMIX_FASHION_MNIST_DIR\)$"):
        FashionMNIST("train")


def test_the_fashion_mnist_folder_can_be_named(tmp_path, monkeypatch):
    for name in ("by_env", "by_flag"):
        (tmp_path / name).mkdir()
    arrays = make_fashion_root(tmp_path / "by_env", n_test=5)
    make_fashion_root(tmp_path / "by_flag", n_test=3)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "by_env"))
    assert len(FashionMNIST("test")) == 5
    np.testing.assert_array_equal(FashionMNIST("test").images, arrays["t10k"][0])
    # The flag (root, data_dir) wins over the environment.
    assert len(FashionMNIST("test", root=tmp_path / "by_flag")) == 3
    assert len(load_splits("fashion-mnist", 1, data_dir=tmp_path / "by_flag").val) == 3
    assert len(load_eval_split("fashion-mnist", 1, data_dir=tmp_path / "by_flag").val) == 3


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


def test_auto_verification_decodes_small_trees_and_checks_large_ones_while_loading(
        tmp_path, monkeypatch):
    make_image_folder(tmp_path, classes=("a",), per_class=3)
    good = (tmp_path / "a" / "1.png").read_bytes()
    (tmp_path / "a" / "1.png").write_bytes(good[: len(good) - 40])
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        small = SafeImageFolder(tmp_path, mode="L")  # 3 images: decoded up front
    assert (small.verify, len(small), small.skipped) == ("decode", 2, 1)
    monkeypatch.setattr(image_folder, "AUTO_DECODE_LIMIT", 2)
    for verify in ("auto", "none"):  # more images than the limit: nothing is opened up front
        large = SafeImageFolder(tmp_path, mode="L", verify=verify)
        assert (large.verify, len(large), large.skipped) == ("none", 3, 0)
        with pytest.warns(UserWarning, match="1.png"):
            large[1]
        assert large.skipped_at_load == 1


def test_images_found_damaged_in_dataloader_workers_are_counted_once(tmp_path):
    """With --verify-images header a damaged body shows only when a worker process loads it;
    the count must reach the process that writes the report, once per image, not per epoch."""
    make_image_folder(tmp_path, classes=("a",), per_class=4)
    good = (tmp_path / "a" / "2.png").read_bytes()
    (tmp_path / "a" / "2.png").write_bytes(good[: len(good) - 40])
    to_tensor = build_transforms(8, 1, AugmentSettings())[1]
    ds = SafeImageFolder(tmp_path, to_tensor, mode="L", verify="header")
    loader = DataLoader(ds, batch_size=2, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the workers warn about the damaged file
        for _ in range(2):  # two epochs, two fresh worker processes
            assert sum(len(labels) for _, labels in loader) == 4
    assert ds.skipped_at_load == 1 and ds.skipped == 1


def test_a_training_class_without_images_is_refused(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b"))
    make_image_folder(tmp_path / "val", classes=("a", "b"), per_class=1)
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "val" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"train has class folders without readable images: "
                       r"\['empty'\]; add images to them or remove them"):
        load_splits(str(tmp_path), in_chans=3)
    # In a validation split a class may have no images; its accuracy is then reported as such.
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "val" / "empty").rmdir()
    (tmp_path / "val" / "b" / "0.png").unlink()
    splits = load_splits(str(tmp_path), in_chans=3)
    assert splits.classes == ["a", "b"] and splits.val.images_per_class() == [1, 0]


def test_the_evaluation_split_reads_val_alone_in_the_checkpoint_class_order(tmp_path):
    make_image_folder(tmp_path / "val", classes=("cat", "ant"), per_class=1)
    split = load_eval_split(str(tmp_path), in_chans=3)  # no train/ folder needed
    assert split.classes == ["ant", "cat"] and len(split.val) == 2
    # The checkpoint's class order decides the labels, so each image meets its own class.
    split = load_eval_split(str(tmp_path), 3, classes=["cat", "dog", "ant"])
    assert split.classes == ["cat", "dog", "ant"]
    assert sorted((p.parent.name, label) for p, label in split.val.samples) == [
        ("ant", 2), ("cat", 0)]
    with pytest.raises(ValueError, match=r"classes \['ant'\] that the checkpoint m.pth does "
                       r"not have \(its classes: \['cat', 'dog'\]\)"):
        load_eval_split(str(tmp_path), 3, classes=["cat", "dog"],
                        classes_from="the checkpoint m.pth")
    with pytest.raises(FileNotFoundError, match=r"val holds none of the datasets vitmix reads: "
                       r"an ImageFolder tree \(.*/val/val/<class>/<image>\), webdataset shards "
                       r"\(val-\*.tar\) or .*; it holds ant/, cat/$"):
        load_eval_split(str(tmp_path / "val"), 3)
    (tmp_path / "only_train" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no val/ folder; vitmix eval reads"):
        load_eval_split(str(tmp_path / "only_train"), 3)


def test_the_fashion_mnist_evaluation_reads_the_test_files_alone(tmp_path):
    make_fashion_root(tmp_path)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).unlink()
    split = load_eval_split("fashion-mnist", 1, data_dir=tmp_path)
    assert len(split.val) == 6 and split.classes == list(FashionMNIST.classes)
    with pytest.raises(ValueError, match=r"trained on the classes \['a', 'b'\], not on "
                       r"Fashion-MNIST's"):
        load_eval_split("fashion-mnist", 1, classes=["a", "b"], data_dir=tmp_path)


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


def test_randaugment_posterize_at_zero_bits_gives_black_as_pillow_before_13():
    # rand-m9-mstd0.5-inc1 (both authors' recipes) reaches magnitude 10, where timm's
    # increasing posterize keeps 0 bits; Pillow 13 refuses 0 bits, Pillow 12 gave black.
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    train, _ = build_transforms(32, 3, AugmentSettings(auto_augment="rand-m9-mstd0.5-inc1"))
    ops = [op for step in train.transforms if isinstance(step, RandAugment) for op in step.ops
           if op.name == "PosterizeIncreasing"]
    assert len(ops) == 1
    image = Image.new("RGB", (8, 8), (200, 120, 77))
    assert ops[0].aug_fn(image, 0).getextrema() == ((0, 0),) * 3
    assert ops[0].aug_fn(image, 4).getpixel((0, 0)) == (192, 112, 64)  # 4 high bits kept
    op = ops[0]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # always 0 bits
    assert op(image).getextrema() == ((0, 0),) * 3
