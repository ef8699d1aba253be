"""The batched tensor augmentation and loader of in-memory Fashion-MNIST."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from vitmix.data import FASHION_MNIST_DIR
from vitmix.data.tensor_loader import TensorAugment, TensorBatchLoader
from vitmix.train import TrainConfig, fit

MEAN, STD = (0.3,), (0.4,)


def normalised(images: torch.Tensor) -> torch.Tensor:
    """The float64 reference of normalisation alone."""
    return (images.double() / 255 - MEAN[0]) / STD[0]


def plain(img_size: int, **kwargs) -> TensorAugment:
    values = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, re_prob=0.0, mean=MEAN,
                  std=STD)
    values.update(kwargs)
    return TensorAugment(img_size, **values)


def random_images(n: int = 5, size: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)


def test_full_box_at_the_same_size_is_normalisation_only():
    images = random_images()
    torch.testing.assert_close(plain(12)(images).double(), normalised(images),
                               rtol=1e-5, atol=1e-5)


def test_flip_mirrors_every_image():
    images = random_images()
    got = plain(12, hflip=1.0)(images)
    torch.testing.assert_close(got.double(), normalised(images).flip(-1), rtol=1e-5, atol=1e-5)


def test_a_pixel_aligned_box_at_its_own_size_is_the_sub_image():
    images = random_images(2, 10).float()
    boxes = torch.tensor([[2.0, 1.0, 4.0, 4.0], [5.0, 6.0, 4.0, 4.0]])
    got = plain(4).crop_resize(images, boxes, torch.tensor([False, True]))
    torch.testing.assert_close(got[0], images[0, :, 1:5, 2:6], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[1], images[1, :, 6:10, 5:9].flip(-1), rtol=1e-5, atol=1e-4)


def test_boxes_lie_inside_the_image_with_the_sampled_area_and_aspect():
    torch.manual_seed(0)
    aug = TensorAugment(32, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    x0, y0, w, h = aug.sample_boxes(4000, 28, 20).unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 20 + 1e-4).all() and (y0 + h <= 28 + 1e-4).all()
    unclamped = (w < 20) & (h < 28)
    area = (w * h / (28 * 20))[unclamped]
    assert area.min() >= 0.25 - 1e-4 and area.max() <= 0.5 + 1e-4
    aspect = (w / h)[unclamped]
    assert aspect.min() >= 0.5 - 1e-4 and aspect.max() <= 2.0 + 1e-4
    # log-uniform aspect: about half the boxes are wider than tall
    assert abs(float((aspect > 1).float().mean()) - 0.5) < 0.05


def test_erasing_replaces_one_rectangle_per_image():
    torch.manual_seed(1)
    images = torch.full((200, 1, 16, 16), 128, dtype=torch.uint8)
    base = float(normalised(images[:1]).flatten()[0])
    got = plain(16, re_prob=1.0)(images)
    for image in got[:, 0]:
        changed = (image - base).abs() > 1e-4
        rows = changed.any(1).nonzero().flatten()
        cols = changed.any(0).nonzero().flatten()
        assert len(rows) > 0
        # the changed pixels fill their bounding box (noise equal to the base value is
        # vanishingly rare), which lies inside the image
        box = changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all()
        fraction = box.numel() / 256
        assert 0.02 * 0.5 <= fraction <= 1 / 3 * 1.6  # rounding of small boxes
    assert torch.equal(plain(16, re_prob=0.0)(images), plain(16)(images))


def test_loader_follows_the_sampler_and_drops_the_last_batch():
    images = random_images(10, 8)
    targets = torch.arange(10)
    loader = TensorBatchLoader(images, targets, 4, SequentialSampler(range(10)), plain(8))
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    torch.testing.assert_close(batches[1][0].double(), normalised(images[4:8]),
                               rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        TensorBatchLoader(torch.zeros(4, 1, 8, 8), torch.arange(4), 2,
                          SequentialSampler(range(4)), plain(8))
    with pytest.raises(ValueError, match="4 images but 3 targets"):
        TensorBatchLoader(random_images(4, 8), torch.arange(3), 2, SequentialSampler(range(4)),
                          plain(8))
    with pytest.raises(ValueError, match="scale"):
        TensorAugment(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="hflip"):
        TensorAugment(8, hflip=2.0)
    with pytest.raises(ValueError, match="uint8"):
        plain(8)(torch.zeros(2, 1, 8, 8))


def test_config_rejects_what_the_tensor_loader_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="loader must be one of"):
        TrainConfig(loader="ffcv")
    with pytest.raises(ValueError, match="no RandAugment"):
        TrainConfig(loader="tensor", auto_augment="rand-m6")
    with pytest.raises(ValueError, match="no colour jitter"):
        TrainConfig(loader="tensor", color_jitter=0.4)
    image_dir = tmp_path / "images"
    for split in ("train", "val"):
        (image_dir / split / "a").mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 10 * i).save(image_dir / split / "a" / f"{i}.png")
    with pytest.raises(ValueError, match="in-memory dataset"):
        fit(TrainConfig(loader="tensor", auto_augment=None, color_jitter=0,
                        data=str(image_dir), out_dir=str(tmp_path / "run"), batch_size=2,
                        workers=0, progress_bar=False))


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("in_chans", [1, 3])
def test_short_fashion_mnist_run_with_the_tensor_loader(tmp_path, in_chans):
    config = TrainConfig(model="metaformer_ppaa_t", data="fashion-mnist", in_chans=in_chans,
                         img_size=32, loader="tensor", auto_augment=None, color_jitter=0,
                         mixup=0.2, epochs=1, batch_size=16, max_train_batches=3,
                         max_val_batches=1, workers=0, threads=1, progress_bar=False,
                         out_dir=str(tmp_path / "run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(config)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1 and math.isfinite(result.top1)
    # By default 5000 training images validate (the tensor loader trains on the other 55,000)
    # and the 10,000 test images are evaluated once, at the end.
    assert summary["val"]["held_out"]["images"] == summary["val"]["trained"]["count"] == 5000
    assert summary["test"]["trained"]["count"] == summary["test"]["deployed"]["count"] == 10000
    assert result.final_split == "test"
