"""Tiny training runs for the tests: a generated image tree, a config that trains on it in about
a second, and the command line a child process runs it with."""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vitmix.train import TrainConfig, fit

TINY = dict(depths=[1, 1, 1, 1], dims=[16, 32, 32, 32])
CLASSES = ("circle", "square", "stripes")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _pattern(kind: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    if kind == 0:
        img = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 200.0
    elif kind == 1:
        img = ((abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)) * 200.0
    else:
        img = ((xx // 4) % 2) * 200.0
    return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


def make_image_tree(root: Path, per_split: dict[str, int] | None = None,
                    classes=CLASSES) -> Path:
    """root/train and root/val of grey PNGs of simple shapes (8 and 4 per class)."""
    rng = np.random.default_rng(0)
    for split, n in (per_split or {"train": 8, "val": 4}).items():
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_pattern(k % 3, rng)).save(root / split / name / f"{i}.png")
    return root


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _shuffled_samples(n: int, classes, rng: np.random.Generator,
                      damaged: int | None = None) -> list[tuple[int, bytes]]:
    """(label, PNG) pairs in random order; the one at ``damaged`` cut in half (its header reads,
    its pixels do not)."""
    samples = [(k, _png(_pattern(k % 3, rng))) for k in range(len(classes)) for _ in range(n)]
    samples = [samples[i] for i in rng.permutation(len(samples))]
    if damaged is not None:
        label, png = samples[damaged]
        samples[damaged] = label, png[: len(png) // 2]
    return samples


def make_shards(root: Path, per_split: dict[str, int] | None = None, shard_size: int = 5,
                classes=CLASSES, write_classes: bool = True,
                damaged: dict[str, int] | None = None) -> Path:
    """root/train-*.tar and root/val-*.tar, webdataset samples of a PNG and a .cls label (8 and
    4 per class, in random order, as shards should be written), and classes.txt; ``damaged``
    maps a split to the sample whose image is cut short."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (per_split or {"train": 8, "val": 4}).items():
        with wds.ShardWriter(str(root / f"{split}-%04d.tar"), maxcount=shard_size,
                             verbose=0) as sink:
            samples = _shuffled_samples(n, classes, rng, (damaged or {}).get(split))
            for i, (label, png) in enumerate(samples):
                sink.write({"__key__": f"{split}{i:05d}", "png": png, "cls": label})
    if write_classes:
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


def make_saved_dataset(root: Path, per_split: dict[str, int] | None = None, classes=CLASSES,
                       image_key: str = "image", label_key: str = "label",
                       class_names: bool = True, damaged: dict[str, int] | None = None) -> Path:
    """A Hugging Face DatasetDict (train 8 and validation 4 per class) saved with save_to_disk:
    an Image column and a ClassLabel (or, without ``class_names``, integer) column; ``damaged``
    maps a split to the row whose image is cut short."""
    import datasets

    datasets.disable_progress_bars()
    rng = np.random.default_rng(0)
    label = datasets.ClassLabel(names=list(classes)) if class_names else datasets.Value("int64")
    features = datasets.Features({image_key: datasets.Image(), label_key: label})
    splits = {}
    for split, n in (per_split or {"train": 8, "validation": 4}).items():
        samples = _shuffled_samples(n, classes, rng, (damaged or {}).get(split))
        splits[split] = datasets.Dataset.from_dict(
            {image_key: [{"bytes": png, "path": None} for _, png in samples],
             label_key: [k for k, _ in samples]}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def tiny_config(image_tree: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model="schemeformer_ppaa_t_e8_g4", model_kwargs=dict(TINY), data=str(image_tree),
                  img_size=32, in_chans=1, out_dir=str(out), epochs=2, batch_size=8,
                  base_lr=4e-2, warmup_epochs=0.5, workers=0, threads=1, progress_bar=False,
                  ema_decay=0.5, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_args(image_tree: Path, out: Path, epochs: int = 2) -> list[str]:
    """`vitmix train` arguments of the same run as tiny_config's."""
    return ["--model", "schemeformer_ppaa_t_e8_g4", "--data", str(image_tree), "--out", str(out),
            "--model-kwargs", json.dumps(TINY),
            "--epochs", str(epochs), "--batch-size", "8", "--base-lr", "4e-2",
            "--warmup-epochs", "0.5", "--workers", "0", "--threads", "1", "--ema-decay", "0.5",
            "--seed", "3", "--no-progress-bar"]


def one_epoch_run(base: Path) -> tuple[Path, Path]:
    """(image tree, run folder) of a one-epoch run on circle / square / stripes in ``base``."""
    root = make_image_tree(base / "data")
    quiet_fit(tiny_config(root, base / "run", epochs=1))
    return root, base / "run"


def quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken PNG of the fixture warns by design
        return fit(*args, **kwargs)


def child_env() -> dict[str, str]:
    """The environment of a child process that imports this checkout's vitmix."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
