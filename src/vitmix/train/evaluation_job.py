"""Evaluate a saved checkpoint: what `vitmix eval` runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..accelerate import accelerate
from ..checkpoints.io import read_model
from ..data import AugmentSettings, build_transforms, load_splits
from .distributed import resolve_device
from .evaluate import check_tta, evaluate
from .report import plot_confusion

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(model_name: str, checkpoint: str | Path, data: str = "fashion-mnist",
                        img_size: int | None = None, in_chans: int | None = None,
                        batch_size: int = 256, workers: int = 2, device: str = "auto",
                        out_dir: Path | None = None, tta: str | None = None) -> dict:
    """Top-1/top-5/per-class accuracy and images/s; writes eval.json and confusion.png."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_tta(tta)  # before any data is read
    checkpoint = Path(checkpoint)
    saved = read_model(checkpoint, model_name)  # checks the file before any data is read
    kwargs = dict(saved.kwargs)
    in_chans = in_chans or kwargs.get("in_chans", 3)
    img_size = img_size or kwargs.get("img_size", 224)
    kwargs.update(in_chans=in_chans, img_size=img_size)
    _, eval_tf = build_transforms(img_size, in_chans, AugmentSettings())
    splits = load_splits(data, in_chans, None, eval_tf)
    num_classes = len(splits.classes)
    if kwargs.setdefault("num_classes", num_classes) != num_classes:
        raise ValueError(f"checkpoint {checkpoint} classifies {kwargs['num_classes']} classes, "
                         f"the data {data} has {num_classes}")
    model = accelerate(saved.build(kwargs))  # fused CPU inference kernels, the same function
    dev = resolve_device(device, 0)
    model.to(dev, memory_format=torch.channels_last).eval()
    loader = DataLoader(splits.val, batch_size=batch_size, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    from .distributed import DistContext

    with torch.inference_mode():
        result = evaluate(model, loader, num_classes, DistContext(device=dev),
                          channels_last=True, tta=tta)
    out_dir = Path(out_dir) if out_dir else checkpoint.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = checkpoint.stem
    png = plot_confusion(result.confusion, splits.classes, out_dir / f"{stem}_confusion.png",
                         f"{model_name} on {splits.name}")
    summary = dict(result.summary(), data=splits.name, device=str(dev), classes=splits.classes,
                   per_class_top1=result.per_class, confusion=result.confusion.tolist(),
                   confusion_png=str(png), checkpoint=str(checkpoint), model=model_name,
                   tta=tta)
    (out_dir / f"{stem}_eval.json").write_text(json.dumps(summary, indent=2))
    return summary
