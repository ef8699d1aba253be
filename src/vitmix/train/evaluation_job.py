"""Evaluate a saved checkpoint: what `vitmix eval` runs."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

from ..accelerate import accelerate
from ..checkpoints.io import (
    DEFAULT_IMG_SIZE,
    DEFAULT_IN_CHANS,
    SavedModel,
    atomic_write_text,
    read_model,
)
from ..data import SafeImageFolder, build_eval_transform, load_eval_split
from ..data.transforms import INTERPOLATIONS
from ..factory import check_model_name
from ..layers.checks import FRACTION, TEXT, int_up_to, one_of, optional
from ..limits import MAX_BATCH_SIZE, MAX_WORKERS
from ..paths import check_output_folder
from .config import DEVICES, IMG_SIZE
from .distributed import DistContext, resolve_device
from .evaluate import check_tta, evaluate
from .report import plot_confusion

__all__ = ["EvalTransform", "evaluate_checkpoint", "resolve_eval_transform"]


@dataclass(frozen=True)
class EvalTransform:
    """How evaluation images are cut: the crop fraction and resampling, and where each came
    from ("--crop-pct", "the checkpoint", "the model's pretrained_cfg", "the default")."""

    crop_pct: float
    interpolation: str
    crop_from: str
    interpolation_from: str

    def describe(self, img_size: int) -> str:
        where = (f"both from {self.crop_from}" if self.crop_from == self.interpolation_from
                 else f"crop from {self.crop_from}, interpolation from "
                      f"{self.interpolation_from}")
        return (f"crop {self.crop_pct:g} (resize to {math.floor(img_size / self.crop_pct)}, "
                f"centre {img_size}), {self.interpolation} ({where})")


def resolve_eval_transform(model_name: str, saved: SavedModel, crop_pct: float | None = None,
                           interpolation: str | None = None) -> EvalTransform:
    """Each value from the first that has it: the argument, the checkpoint (what its run
    validated with), the model's timm pretrained_cfg, else crop 1 and bicubic."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    sources = {
        "crop_pct": [("--crop-pct", crop_pct), ("the checkpoint", saved.eval_crop_pct),
                     ("the model's pretrained_cfg", getattr(cfg, "crop_pct", None)),
                     ("the default", 1.0)],
        "interpolation": [("--interpolation", interpolation),
                          ("the checkpoint", saved.eval_interpolation),
                          ("the model's pretrained_cfg", getattr(cfg, "interpolation", None)),
                          ("the default", "bicubic")],
    }
    crop_from, crop = next((s, v) for s, v in sources["crop_pct"] if v is not None)
    interp_from, interp = next((s, v) for s, v in sources["interpolation"] if v)
    if interp not in INTERPOLATIONS:
        raise ValueError(f"{interp_from} names the evaluation interpolation {interp!r}, not one "
                         f"of {', '.join(map(repr, INTERPOLATIONS))}; pass --interpolation")
    return EvalTransform(float(crop), interp, crop_from, interp_from)


def _check_arguments(model_name: str, img_size, in_chans, batch_size, workers, device, tta,
                     out_dir, image_key, label_key, crop_pct, interpolation) -> None:
    """Everything that needs no file read, so that a typo fails at once."""
    check_model_name(model_name)
    if img_size is not None:  # None: the checkpoint's
        IMG_SIZE.check("img_size (--img-size)", img_size)
    if in_chans is not None:
        one_of(1, 3).check("in_chans (--in-chans)", in_chans)
    int_up_to(MAX_BATCH_SIZE).check("batch_size (--batch-size)", batch_size)
    int_up_to(MAX_WORKERS, low=0).check("workers (--workers)", workers)
    one_of(*DEVICES).check("device (--device)", device)
    check_tta(tta)
    optional(TEXT).check("image_key (--data-image-key)", image_key)
    optional(TEXT).check("label_key (--data-label-key)", label_key)
    if crop_pct is not None:  # None: see resolve_eval_transform
        FRACTION.check("crop_pct (--crop-pct)", crop_pct)
    if interpolation is not None:
        one_of(*INTERPOLATIONS).check("interpolation (--interpolation)", interpolation)
    if out_dir is not None:
        check_output_folder(out_dir, "--out")


def check_class_count(checkpoint: Path, classifies: int, names: list[str] | None, data: str,
                      num_classes: int) -> None:
    """ValueError when the model's class count is not the data's, naming the side at fault: a
    checkpoint that names its classes labels the data by them, so a count unlike its own names
    is a fault of the checkpoint, not of the data."""
    if classifies == num_classes:
        return
    if names is not None:
        raise ValueError(f"checkpoint {checkpoint} is damaged: its model classifies {classifies} "
                         f"classes, but it names {len(names)}")
    raise ValueError(f"checkpoint {checkpoint} classifies {classifies} classes, but the "
                     f"evaluation data {data} has {num_classes}")


def evaluate_checkpoint(model_name: str, checkpoint: str | Path, data: str = "fashion-mnist",
                        img_size: int | None = None, in_chans: int | None = None,
                        batch_size: int = 256, workers: int = 2, device: str = "auto",
                        out_dir: Path | None = None, tta: str | None = None,
                        data_dir: str | Path | None = None, image_key: str | None = None,
                        label_key: str | None = None, crop_pct: float | None = None,
                        interpolation: str | None = None) -> dict:
    """Top-1/top-5/per-class accuracy and images/s; writes eval.json and confusion.png.

    Only the validation split is read (Fashion-MNIST's test files, ``data/val``, the val shards
    or the validation split of a saved Hugging Face dataset). When the
    checkpoint names its classes, the images are labelled by those names, so a folder whose
    classes differ from the checkpoint's is refused rather than scored by position; a class
    without images gets None (no accuracy) in ``per_class_top1``.

    ``crop_pct`` and ``interpolation`` (None: see :func:`resolve_eval_transform`) cut the
    images as timm does: the shorter side resized to img_size / crop_pct, the centre kept.
    """
    _check_arguments(model_name, img_size, in_chans, batch_size, workers, device, tta, out_dir,
                     image_key, label_key, crop_pct, interpolation)
    dev = resolve_device(device, 0)  # cuda asked for on a machine without: before any reading
    checkpoint = Path(checkpoint)
    saved = read_model(checkpoint, model_name)  # checks the file before any data is read
    kwargs = dict(saved.kwargs)
    in_chans = in_chans or kwargs.get("in_chans", DEFAULT_IN_CHANS)
    img_size = img_size or kwargs.get("img_size", DEFAULT_IMG_SIZE)
    kwargs.update(in_chans=in_chans, img_size=img_size)
    cut = resolve_eval_transform(model_name, saved, crop_pct, interpolation)
    eval_tf = build_eval_transform(img_size, in_chans, cut.crop_pct, cut.interpolation)
    split = load_eval_split(data, in_chans, eval_tf, classes=saved.classes, data_dir=data_dir,
                            classes_from=f"the checkpoint {checkpoint}", image_key=image_key,
                            label_key=label_key)
    if saved.classes is None and isinstance(split.val, SafeImageFolder):
        print(f"vitmix eval: note: {checkpoint} does not name its classes; they are taken to be "
              f"the folders of {split.name}/val in sorted order", file=sys.stderr)
    num_classes = len(split.classes)
    check_class_count(checkpoint, kwargs.setdefault("num_classes", num_classes), saved.classes,
                      split.name, num_classes)
    model = accelerate(saved.build(kwargs))  # fused CPU inference kernels, the same function
    model.to(dev, memory_format=torch.channels_last).eval()
    loader = DataLoader(split.val, batch_size=batch_size, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    with torch.inference_mode():
        result = evaluate(model, loader, num_classes, DistContext(device=dev),
                          channels_last=True, tta=tta)
    out_dir = Path(out_dir) if out_dir else checkpoint.parent
    stem = checkpoint.stem
    png = plot_confusion(result.confusion, split.classes, out_dir / f"{stem}_confusion.png",
                         f"{model_name} on {split.name}")
    summary = dict(result.summary(), data=split.name, device=str(dev), classes=split.classes,
                   per_class_top1=result.per_class, confusion=result.confusion.tolist(),
                   confusion_png=str(png), checkpoint=str(checkpoint), model=model_name,
                   tta=tta, skipped_images=split.skipped, crop_pct=cut.crop_pct,
                   interpolation=cut.interpolation, eval_transform=cut.describe(img_size))
    atomic_write_text(out_dir / f"{stem}_eval.json", json.dumps(summary, indent=2))
    return summary
