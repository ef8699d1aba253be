"""`vitmix eval`: top-1, top-5, per-class accuracy, confusion matrix and images/s."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checkpoints.io import DEFAULT_IMG_SIZE, DEFAULT_IN_CHANS
from .train import HELP as TRAIN_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on Fashion-MNIST's test split or a dataset's "
                     "validation split",
        description="Evaluate a trained model: a run's model_deployed.safetensors, or its "
                    "last.pth / best.pth (their EMA weights when the run kept an EMA).",
    )
    p.add_argument("--model", default=None,
                   help="timm model name the checkpoint was saved from (default: the name the "
                        "checkpoint holds, as vitmix's runs and `vitmix import-weights "
                        "--arch schemeformer` write it)")
    p.add_argument("--checkpoint", required=True, help=".safetensors or .pth checkpoint")
    p.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist' (its test split), or a folder: val/<class>/<image>, "
                        "webdataset shards val-*.tar, or a Hugging Face DatasetDict saved with "
                        "save_to_disk (its validation or test split) (default: %(default)s)")
    p.add_argument("--data-image-key", default=None, help=TRAIN_HELP["data_image_key"])
    p.add_argument("--data-label-key", default=None, help=TRAIN_HELP["data_label_key"])
    p.add_argument("--data-dir", default=None, help=TRAIN_HELP["data_dir"])
    p.add_argument("--img-size", type=int, default=None,
                   help=f"input size (default: the size the checkpoint was trained at, else "
                        f"{DEFAULT_IMG_SIZE})")
    p.add_argument("--in-chans", type=int, default=None,
                   help=f"1 or 3 (default: from the checkpoint, else {DEFAULT_IN_CHANS})")
    p.add_argument("--crop-pct", type=float, default=None, metavar="FRACTION",
                   help="centre crop kept of each image, timm's crop_pct: the shorter side is "
                        "resized to img_size / FRACTION (default: what the checkpoint's run "
                        "validated with, else the model's pretrained_cfg, else 1)")
    p.add_argument("--interpolation", default=None, metavar="NAME",
                   help="resampling of that resize: bicubic, bilinear, nearest, box, hamming or "
                        "lanczos (default: the checkpoint's, else the model's pretrained_cfg, "
                        "else bicubic)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per batch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="data-loading processes (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto (cuda when available), cpu or cuda (default: %(default)s)")
    p.add_argument("--tta", choices=["flip"], default=None,
                   help="test-time augmentation: 'flip' averages the class probabilities of each "
                        "image and its mirror image (twice the cost; default: none)")
    p.add_argument("--out", default=None,
                   help="folder for eval.json and confusion.png (default: beside the checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints.io import saved_model_name
    from ..train.evaluation_job import evaluate_checkpoint
    from ..train.report import format_top1

    if args.model is None:
        args.model = saved_model_name(args.checkpoint)
    result = evaluate_checkpoint(
        model_name=args.model, checkpoint=args.checkpoint, data=args.data,
        img_size=args.img_size, in_chans=args.in_chans, batch_size=args.batch_size,
        workers=args.workers, device=args.device,
        out_dir=Path(args.out) if args.out else None, tta=args.tta, data_dir=args.data_dir,
        image_key=args.data_image_key, label_key=args.data_label_key,
        crop_pct=args.crop_pct, interpolation=args.interpolation,
    )
    tta = f", {args.tta} test-time augmentation" if args.tta else ""
    print(f"{args.model} on {result['data']} ({result['count']} images{tta}): "
          f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, "
          f"{result['images_per_s']:.0f} images/s on {result['device']}")
    print(f"  eval transform: {result['eval_transform']}")
    if result["skipped_images"]:
        print(f"  {result['skipped_images']} unreadable images skipped")
    width = max(len(c) for c in result["classes"])
    for name, acc in zip(result["classes"], result["per_class_top1"], strict=True):
        print(f"  {name:<{width}}  {format_top1(acc, 2):>6}{'' if acc is None else '%'}")
    print(f"confusion matrix: {result['confusion_png']}")
    print(json.dumps({k: result[k] for k in ("top1", "top5", "images_per_s")}))
    return 0
