"""`vitmix export`: the deployed model as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoints.io import DEFAULT_IMG_SIZE, DEFAULT_IN_CHANS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a deployed model to ONNX or TorchScript",
        description="Build the model (optionally from a vitmix checkpoint), deploy it (CCA "
                    "folded away, eval mode), export it, then run the file (onnxruntime or "
                    "torch.jit) beside PyTorch and fail if they differ by more than "
                    "--tolerance.",
    )
    p.add_argument("out", help="file to write, e.g. model.onnx or model.pt")
    p.add_argument("--model", required=True, help="timm model name")
    p.add_argument("--checkpoint", default=None, help="a vitmix .safetensors or .pth file")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--img-size", type=int, default=None,
                   help=f"input size (default: the checkpoint's, else {DEFAULT_IMG_SIZE})")
    p.add_argument("--in-chans", type=int, default=None,
                   help=f"input channels (default: the checkpoint's, else {DEFAULT_IN_CHANS})")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |exported - PyTorch| (default: %(default)g)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists (it is replaced only once the new file has "
                        "passed its check)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import vitmix  # noqa: F401  (registers vitmix's models)

    from ..checkpoints.io import load_model
    from ..export import EXPORT_FORMATS, check_export_path, export_model
    from ..layers.checks import NON_NEGATIVE_NUMBER, int_up_to
    from ..limits import MAX_IMG_SIZE, MAX_IN_CHANS

    # Before minutes of building and tracing.
    if args.format not in EXPORT_FORMATS:
        raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {args.format!r}")
    for flag, value, bound in (("--img-size", args.img_size, MAX_IMG_SIZE),
                               ("--in-chans", args.in_chans, MAX_IN_CHANS)):
        if value is not None:
            int_up_to(bound).check(flag, value)
    NON_NEGATIVE_NUMBER.check("--tolerance", args.tolerance)
    check_export_path(Path(args.out), args.force, how="--force")
    model, kwargs = load_model(args.model, args.checkpoint, img_size=args.img_size,
                               in_chans=args.in_chans, deploy=True)
    report = export_model(model, args.out, args.format, img_size=kwargs["img_size"],
                          in_chans=kwargs["in_chans"], tolerance=args.tolerance,
                          overwrite=args.force)
    print(report)
    return 0
