"""`vitmix hub-export`: a run's weights, or converted ones, as a folder timm loads from the
Hugging Face Hub or from disk (``local-dir:``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "hub-export"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        NAME, help="write a run's weights (or import-weights output) as a Hugging Face Hub "
                   "folder for timm",
        description="Write config.json, model.safetensors and a model card (README.md) in the "
                    "layout timm reads from the Hugging Face Hub. SOURCE is a run folder (its "
                    "final weights, last.pth, which summary.json reports), a run's last.pth or "
                    "best.pth, or a .safetensors file that `vitmix import-weights` wrote. Load "
                    "the folder with `import vitmix; timm.create_model('local-dir:OUT', "
                    "pretrained=True)`, or upload it and use 'hf-hub:OWNER/REPO'.",
    )
    p.add_argument("source", type=Path, help="run folder, .pth checkpoint or .safetensors file")
    p.add_argument("out", type=Path, help="the folder to write (it must not exist, or see --force)")
    p.add_argument("--model", default=None,
                   help="timm model name, for a .safetensors file that does not name its model "
                        "(default: the name the source holds)")
    p.add_argument("--pytorch-bin", action="store_true",
                   help="also write pytorch_model.bin (the same tensors, pickled): timm 1.0.22's "
                        "local-dir: loader reads only that")
    p.add_argument("--force", action="store_true",
                   help="replace OUT when it holds an earlier export (replaced only once the new "
                        "folder is whole; a folder with other files is never replaced)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import vitmix  # noqa: F401  (registers vitmix's models)

    from ..factory import check_model_name
    from ..hub import check_hub_output, save_for_hub

    # Before anything is read or built.
    if args.model is not None:
        check_model_name(args.model)
    if not args.source.exists():
        raise FileNotFoundError(f"source {args.source} does not exist")
    check_hub_output(args.out, args.force)
    done = save_for_hub(args.source, args.out, model=args.model, force=args.force,
                        pytorch_bin=args.pytorch_bin)
    print(f"wrote {done.folder}: {', '.join(done.files)}")
    print(f"  model: {done.model}, arguments {json.dumps(done.model_args)}; the card shows "
          f"{done.results} measured result(s)")
    print(f"  load it: import vitmix, timm; timm.create_model('local-dir:{done.folder}', "
          f"pretrained=True)")
    return 0
