"""`vitmix import-weights`: turn an authors' released checkpoint into one vitmix models load.

Named for what comes in and where from: "convert" (its name in 0.1) could as well mean schemify,
deploy or export, which convert models too. `vitmix convert` still runs it until 0.2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..checkpoints.checksum import CHECKSUM_KEY
from ..checkpoints.io import (
    check_file,
    load_torch_file,
    save_checkpoint,
    save_weights,
    verify_checkpoint,
)
from ..checkpoints.official import ARCHS, describe_groupmixformer, from_official
from ..checkpoints.release_models import (
    ReleaseModel,
    find_release_model,
    release_model_name,
    stored_entry,
)
from ..checkpoints.scheme_vit import SchemeformerImport, convert_schemeformer

NAME = "import-weights"
OUTPUT_SUFFIXES = (".safetensors", ".pth", ".pt")
DESCRIPTION = ("Convert an authors' released checkpoint (bare state dict or {'model': ...}) "
               "to the keys of the vitmix model, and save it as safetensors (or .pth). Load "
               "the result with timm.create_model(name, checkpoint_path=OUT) or "
               "pretrained_cfg_overlay=dict(file=OUT); a .safetensors output names its model, "
               "so `vitmix eval --checkpoint OUT` needs no --model. A checkpoint of timm's "
               "train script (the SCHEME release's) names its model in args.model: the "
               "family and the channel shuffle are then read from it.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="the released checkpoint (.pth)")
    parser.add_argument("output", type=Path, help="where to write (.safetensors, .pth or .pt)")
    parser.add_argument("--arch", default=None, choices=ARCHS,
                        help="model family of the checkpoint: groupmixformer (the GroupMixFormer "
                             "release) or schemeformer (the SCHEME release, scheme_vit) "
                             "(default: the family of the model the checkpoint's args.model "
                             "names, else groupmixformer)")
    parser.add_argument("--channel-shuffle", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="schemeformer: the release's MLPs shuffled their hidden channels "
                             "(--channel-shuffle for its shufflegrouporgattnmlpformer_* models, "
                             "--no-channel-shuffle for GroupLiteAttMlp); required when the MLPs "
                             "are grouped and the checkpoint's args.model does not say, since "
                             "the weights cannot tell")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME, help="convert an authors' released checkpoint (GroupMixFormer, SCHEME) for vitmix",
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


# timm's train script (the SCHEME release's models are timm models) saves its argparse
# arguments beside the weights: allowed, still without running any pickled code.
RELEASE_GLOBALS = (argparse.Namespace,)


def _load(path: Path, notes: list[str]) -> dict:
    """The released file, its tensors verified when it carries vitmix's checksum (a release
    does not: ``notes`` gets a note saying so, printed once the conversion is done, so that a
    refusal stays one line)."""
    obj = load_torch_file(path, allowed=RELEASE_GLOBALS)
    verify_checkpoint(obj, f"checkpoint {path}", notes)
    if isinstance(obj, dict):
        obj.pop(CHECKSUM_KEY, None)
    return obj


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _save(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
          ) -> None:
    if path.suffix == ".safetensors":
        save_weights(state, path, metadata={"format": "pt", "source": f"vitmix {NAME}",
                                            **(metadata or {})})
    else:
        save_checkpoint(state, path)  # atomically, and a full disk is an OSError


# What `vitmix eval` and vitmix.checkpoints.read_model read back: the model and its arguments.
def _model_metadata(converted: SchemeformerImport) -> dict[str, str]:
    return {"model": converted.model, "model_kwargs": json.dumps(converted.model_kwargs),
            "deployed": "0", "official_arch": "schemeformer",
            "eval_function": "the release's: fc2 holds its fc2 divided by the mixing weight a"}


def _source_metadata(entry: str | None, release_name: str | None) -> dict[str, str]:
    """Where in the release's file the weights came from."""
    found = {"converted_entry": entry or "the bare state dict"}
    if release_name:
        found["release_model"] = release_name
    return found


def _resolve_arch(args: argparse.Namespace, release: ReleaseModel | None,
                  release_name: str | None) -> str:
    """--arch, else the family args.model names, else groupmixformer; ValueError when --arch or
    --channel-shuffle contradict the stored name."""
    if release is None:
        return args.arch or "groupmixformer"
    stored = f"the checkpoint's args.model {release_name!r}"
    if args.arch is not None and args.arch != release.arch:
        raise ValueError(f"--arch {args.arch} contradicts {stored}, a model of the "
                         f"{release.arch} release; leave --arch out")
    # With dense MLPs the option changes nothing, so it contradicts nothing either.
    if None not in (args.channel_shuffle, release.channel_shuffle) \
            and args.channel_shuffle != release.channel_shuffle:
        flag = "--channel-shuffle" if args.channel_shuffle else "--no-channel-shuffle"
        does = "shuffles" if release.channel_shuffle else "does not shuffle"
        raise ValueError(f"{flag} contradicts {stored}, whose {release.mlp} {does} its hidden "
                         f"channels; leave {flag} out")
    return release.arch


def _check_mlp_kind(converted: SchemeformerImport, release: ReleaseModel, name: str) -> None:
    """The weights must have the MLPs the stored name says: dense, or grouped."""
    grouped = any(key.endswith("mlp.fc1.weight") and tensor.dim() == 3 and tensor.shape[0] > 1
                  for key, tensor in converted.state.items())
    dense_name = release.channel_shuffle is None
    if grouped == dense_name:
        has, says = ("grouped", "dense") if grouped else ("dense", "grouped")
        raise ValueError(f"the checkpoint's args.model {name!r} has {says} MLPs "
                         f"({release.mlp}), but its weights hold {has} ones; the file does not "
                         f"hold the model it names")


def _run_schemeformer(args: argparse.Namespace, checkpoint: object, release: ReleaseModel | None,
                      release_name: str | None) -> int:
    shuffle = args.channel_shuffle
    if shuffle is None and release is not None:
        # A dense name says nothing of a shuffle; False lets grouped weights convert, so that
        # the check below names the contradiction rather than asking for the option.
        shuffle = bool(release.channel_shuffle)
    converted = convert_schemeformer(checkpoint, channel_shuffle=shuffle)
    if release is not None:
        _check_mlp_kind(converted, release, release_name)
    entry, why = stored_entry(checkpoint)
    _save(converted.state, args.output,
          {**_model_metadata(converted), **_source_metadata(entry, release_name)})
    kwargs = json.dumps(converted.model_kwargs)
    kind = "registered" if converted.registered else "a base MetaFormer with these arguments"
    print(f"wrote {len(converted.state)} tensors to {args.output}")
    print(f"  converted {why}")
    if release is not None:
        print(f"  args.model: {release_name} ({release.mlp}; its sizes make "
              f"{release.vitmix_model})")
    elif release_name is not None:
        print(f"  args.model: {release_name}, not a SCHEME release model vitmix knows: the "
              f"architecture was read from the shapes")
    print(f"  model: {converted.model} ({kind}), arguments {kwargs}")
    if converted.mixing_weights:
        weights = converted.mixing_weights.values()
        print(f"  eval mode computes the release's eval function: fc2 divided by the mixing "
              f"weight a ({min(weights):.3g} to {max(weights):.3g} over "
              f"{len(converted.mixing_weights)} MLPs); training continues from the release's "
              f"mixing logits, with vitmix's true-covariance CCA")
    if args.output.suffix != ".safetensors":
        print(f"  {args.output.suffix} holds the tensors only: build the model above yourself, "
              f"or write .safetensors, which names it")
    return 0


def _groupmixformer_metadata(info: dict) -> dict[str, str]:
    """The model the converted sizes match, for `vitmix eval` and `vitmix hub-export`; nothing
    when no registered variant has them."""
    if not info["model"]:
        return {}
    kwargs = {"num_classes": info["num_classes"] or 0}
    return {"model": info["model"], "model_kwargs": json.dumps(kwargs), "deployed": "0",
            "official_arch": "groupmixformer"}


def run(args: argparse.Namespace) -> int:
    _check_paths(args)
    notes: list[str] = []
    checkpoint = _load(args.input, notes)
    release_name = release_model_name(checkpoint)
    release = find_release_model(release_name)
    arch = _resolve_arch(args, release, release_name)
    if arch == "schemeformer":
        code = _run_schemeformer(args, checkpoint, release, release_name)
        _print_notes(notes)
        return code
    state = from_official(checkpoint, arch=arch, channel_shuffle=args.channel_shuffle)
    info = describe_groupmixformer(state)
    entry, why = stored_entry(checkpoint)
    _save(state, args.output, {**_groupmixformer_metadata(info),
                               **_source_metadata(entry, release_name)})
    model = info["model"] or "no registered variant (build GroupMixFormer with these sizes)"
    print(f"wrote {len(state)} tensors to {args.output}")
    print(f"  converted {why}")
    print(f"  dims {info['dims']}, depths {info['depths']}, mlp ratios "
          f"{[round(r, 3) for r in info['mlp_ratios']]}, {info['num_classes']} classes")
    print(f"  matches: {model}")
    _print_notes(notes)
    return 0
