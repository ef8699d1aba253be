"""`vitmix import-weights`: turn an authors' released checkpoint into one vitmix models load.

Named for what comes in and where from: "convert" (its name in 0.1) could as well mean schemify,
deploy or export, which convert models too. `vitmix convert` still runs it until 0.2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoints.io import check_file, load_torch_file, save_checkpoint, save_weights
from ..checkpoints.official import ARCHS, describe_groupmixformer, from_official

NAME = "import-weights"
OUTPUT_SUFFIXES = (".safetensors", ".pth", ".pt")
DESCRIPTION = ("Rename the keys of an authors' released checkpoint (bare state dict or "
               "{'model': ...}) to those of the vitmix model, and save it as safetensors "
               "(or .pth). Load the result with timm.create_model(name, checkpoint_path=OUT) "
               "or pretrained_cfg_overlay=dict(file=OUT).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="the released checkpoint (.pth)")
    parser.add_argument("output", type=Path, help="where to write (.safetensors, .pth or .pt)")
    parser.add_argument("--arch", default="groupmixformer", choices=ARCHS,
                        help="model family of the checkpoint (default: groupmixformer)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME, help="convert an authors' released checkpoint (GroupMixFormer) to vitmix keys",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _check_paths(args: argparse.Namespace) -> None:
    check_file(args.input)
    if args.output.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {args.output} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.output.is_dir():
        raise ValueError(f"output {args.output} is a folder; give the path of the file to write")
    if args.output.exists() and not args.force:
        raise ValueError(f"output {args.output} exists; pass --force to overwrite it")
    if not args.output.resolve().parent.is_dir():
        raise FileNotFoundError(f"output folder {args.output.resolve().parent} does not exist")


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        save_weights(state, path, metadata={"format": "pt", "source": f"vitmix {NAME}"})
    else:
        save_checkpoint(state, path)  # atomically, and a full disk is an OSError


def run(args: argparse.Namespace) -> int:
    _check_paths(args)
    state = from_official(load_torch_file(args.input), arch=args.arch)
    info = describe_groupmixformer(state)
    _save(state, args.output)
    model = info["model"] or "no registered variant (build GroupMixFormer with these sizes)"
    print(f"wrote {len(state)} tensors to {args.output}")
    print(f"  dims {info['dims']}, depths {info['depths']}, mlp ratios "
          f"{[round(r, 3) for r in info['mlp_ratios']]}, {info['num_classes']} classes")
    print(f"  matches: {model}")
    return 0
