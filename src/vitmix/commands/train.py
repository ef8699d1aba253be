"""`vitmix train`: train a model on Fashion-MNIST, an ImageFolder tree, webdataset shards or a
saved Hugging Face dataset (also under torchrun)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

from .. import exit_codes
from ..data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_ENV
from ..data.hf_saved import IMAGE_COLUMNS, LABEL_COLUMNS
from ..data.image_folder import AUTO_DECODE_LIMIT
from ..data.shards import LABEL_EXTENSION
from ..data.split import FASHION_MNIST_VAL_SPLIT
from ..messages import quoted
from ..structured_text import load_json
from ..train.config import CPU_LOADER_WORKERS, MAX_GPU_LOADER_WORKERS, TrainConfig

HELP = {
    "model": "timm model name (vitmix registers schemeformer_* and metaformer_*)",
    "model_kwargs": "extra timm.create_model arguments as JSON, "
                    "e.g. '{\"cca_schedule\": \"cosine\"}'",
    "schemify": "put SCHEME into the model: vitmix.schemify's arguments as JSON, e.g. "
                "'{\"groups\": 2, \"cca\": false}' (groups, expansion, cca, cca_schedule)",
    "init_from": "a dense model's checkpoint (a run's last.pth, or .safetensors) whose weights "
                 "the --schemify model starts from, copied through the --grouping "
                 "(`vitmix compress` sets it)",
    "grouping": "with --init-from: search (the grouping of hidden units that keeps the most "
                "weight) or diagonal (the units in stored order)",
    "teacher": "distil from this checkpoint's model: its soft targets join the label loss",
    "distill_weight": "weight of the teacher's soft targets; the labels get 1 minus it",
    "distill_temperature": "temperature of the soft targets (the KL term is scaled by its "
                           "square)",
    "data": "'fashion-mnist' (Debian package dataset-fashion-mnist) or a folder: an "
            "ImageFolder tree (train/, val/), webdataset shards (train-*.tar, val-*.tar) or a "
            "Hugging Face DatasetDict saved with save_to_disk",
    "data_image_key": f"the image column of a saved Hugging Face dataset, or the image file "
                      f"extension of webdataset samples (default: {'/'.join(IMAGE_COLUMNS)}; "
                      f"any image)",
    "data_label_key": f"the label column of a saved Hugging Face dataset, or the label file "
                      f"extension of webdataset samples (default: {'/'.join(LABEL_COLUMNS)}; "
                      f"{LABEL_EXTENSION})",
    "data_dir": f"the folder of the Fashion-MNIST idx files (default: ${FASHION_MNIST_ENV}, "
                f"else {FASHION_MNIST_DIR})",
    "img_size": "input size the images are resized to (a multiple of 32 for MetaFormers)",
    "in_chans": "1: grey input (lighter), 3: RGB",
    "out_dir": "run folder: config.yaml, metrics.csv, checkpoints, report.md",
    "val_split": f"training images held out to validate on (every choice is made on them; the "
                 f"test split is evaluated once, at the end): auto = {FASHION_MNIST_VAL_SPLIT} "
                 f"for fashion-mnist, "
                 "none for a folder (its val/ validates); N > 0 makes a folder's val/ its test "
                 "split; 0 or none: no held-out images",
    "epochs": "epochs of the cosine schedule; the run trains these and then --cooldown-epochs "
              "(ignored with --time-budget)",
    "cooldown_epochs": "epochs at --min-lr after the cosine (timm's meaning)",
    "time_budget": "wall-clock minutes for the whole run, evaluations and checkpoints "
                   "included: the learning-rate, CCA and warm-up schedules span the updates "
                   "that fit, estimated from the measured speed as the run goes",
    "base_lr": "AdamW learning rate for an effective batch of --lr-base-size images (scaled "
               "linearly to batch x accumulation x processes)",
    "lr_base_size": "the effective batch --base-lr is given for: 1024 (SCHEME) or 512 "
                    "(GroupMixFormer)",
    "min_lr": "the floor of the cosine schedule",
    "warmup_epochs": "linear warm-up at the start of the cosine schedule",
    "warmup_lr": "learning rate the warm-up starts from (none: a thousandth of the learning "
                 "rate)",
    "scale_warmup_and_min_lr": "scale --warmup-lr and --min-lr with the batch as --base-lr is "
                               "(GroupMixFormer's release does)",
    "warmup_prefix": "start the cosine where the warm-up ends (--no-warmup-prefix: count it "
                     "from the first step, the warm-up overlaid, as timm's train script and "
                     "both releases do)",
    "sched_on": "set the learning rate after every 'update' or once per 'epoch' (timm 0.6's "
                "train script; whole warm-up epochs; not with --time-budget)",
    "clip_grad": "gradient-norm clipping (0 turns it off)",
    "drop_path": "stochastic depth rate",
    "ema_decay": "decay of the EMA of the weights",
    "ema_warmup": "ramp the EMA decay up from 0 over the first steps (timm's EMA warmup)",
    "final_weights": "weights the final evaluation and deployed model use: ema or model",
    "amp": "mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16",
    "channels_last": "keep images and weights in NHWC memory format (faster on CPU and GPU)",
    "compile": "compile the training forward with this torch.compile backend, e.g. inductor "
               "(about a minute of compiling first)",
    "accelerate": "vitmix.accelerate's fused CPU evaluation kernels (--no-accelerate: plain "
                  "layers)",
    "lean_training": "train the MLPs, CCA and attention projections through vitmix.accelerate's "
                     "memory-lean functions (less memory; faster for SCHEMEformer-S12 at 224 in "
                     "float32, slower for small images, CPU bf16 and GroupMixFormer)",
    "auto_augment": "timm RandAugment string ('none' turns it off)",
    "re_prob": "random-erasing probability",
    "color_jitter": "brightness/contrast/saturation jitter strength (0 turns it off)",
    "crop_scale": "random-resized-crop area range, two numbers",
    "train_interpolation": "resampling of the random-resized crop: random (bilinear or bicubic "
                           "per image), bicubic, bilinear, nearest, box, hamming, lanczos",
    "eval_crop_pct": "centre crop kept of validation and test images: the shorter side is "
                     "resized to img_size / FRACTION (timm's crop_pct; 1 keeps all)",
    "eval_interpolation": "resampling of that resize: bicubic, bilinear, nearest, box, hamming, "
                          "lanczos",
    "mixup": "Mixup alpha (0 turns it off)",
    "cutmix": "CutMix alpha (0 turns it off)",
    "workers": f"data-loading processes per training process (default: {CPU_LOADER_WORKERS} on "
               f"a CPU; on a GPU the cores of the machine per process, less one, at most "
               f"{MAX_GPU_LOADER_WORKERS})",
    "sync_bn": "synchronise BatchNorm statistics across the GPUs of a DDP run (SyncBatchNorm)",
    "tf32": "CUDA: TF32 tensor-core math for float32 matrix products and convolutions",
    "cudnn_benchmark": "CUDA: let cuDNN time its convolution algorithms and keep the fastest",
    "log_interval": "updates between progress lines (or bar updates on a terminal) and loss "
                    "checks",
    "progress_bar": "show progress: a bar on a terminal, one line per --log-interval updates in "
                    "a log file",
    "loader": "dataloader: timm's per-image transforms in worker processes; tensor: "
              "Fashion-MNIST augmented as whole batches in the training process (crop, flip, "
              "erasing; no RandAugment), much cheaper on a machine with few cores; auto: "
              "tensor for Fashion-MNIST without RandAugment or colour jitter, else dataloader",
    "threads": "torch intra-op threads per process",
    "max_train_batches": "stop each epoch after this many batches (smoke tests)",
    "max_val_batches": "evaluate on this many batches only (smoke tests)",
    "verify_images": f"ImageFolder: 'decode' every image once up front, check 'header's only, "
                     f"or 'none' (damaged images are found while loading, as in every source); "
                     f"'auto' decodes splits of up to {AUTO_DECODE_LIMIT:,} images",
}


def declared_default(f: dataclasses.Field):
    """A TrainConfig field's default as declared: what a run uses when nothing sets it (a made
    TrainConfig may have resolved it, e.g. loader 'auto' to 'tensor' for Fashion-MNIST)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def shown_default(value) -> str:
    """A default as --help shows it: as the flag takes it (none, two numbers, JSON)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _arg_type(hint):
    """The non-None type of an annotation such as ``int | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _arg_type(next(a for a in typing.get_args(hint) if a is not type(None)))
    return hint


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() in ("none", "off") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its message
    return parse


def _json_object(text: str) -> dict:
    """--model-kwargs: a JSON object, said so in argparse's one line when it is not (or when it
    is larger or nests deeper than vitmix.limits allows)."""
    try:
        value = load_json(text, "the JSON")
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {quoted(text)}") from None
    except ValueError as err:  # the bounds, or an integer of more digits than Python reads
        raise argparse.ArgumentTypeError(str(err)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as "
                                         f"'{{\"stem\": \"conv\"}}', got {quoted(text)}")
    return value


def _val_split(text: str) -> int | str | None:
    """--val-split: auto, none, or a number of images."""
    if text.lower() in ("auto", "none", "off"):
        return "auto" if text.lower() == "auto" else None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto, none or a number of images, got "
                                         f"{quoted(text)}") from None


METAVARS = {"val_split": "N", "time_budget": "MINUTES", "eval_crop_pct": "FRACTION"}


def _recipe_help() -> str:
    from ..train.recipes import recipe_names

    return (f"start from a shipped recipe, the authors' ImageNet-1K settings for a model: "
            f"{', '.join(recipe_names())} (`vitmix recipes` describes them; --data is "
            f"needed). --config and flags override its values")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (Fashion-MNIST, ImageFolder, webdataset shards, a saved "
                      "Hugging Face dataset); DDP under torchrun",
        description="Train a timm/vitmix model. Every option defaults to TrainConfig; a value "
                    "comes from the first that sets it: a flag given here, the --config YAML, "
                    "the --recipe (or the recipe the --config file names), the default.",
    )
    p.add_argument("--config", help="YAML file with TrainConfig keys (a run's config.yaml works)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    p.add_argument("--recipe", type=_none_or(str), metavar="NAME", default=argparse.SUPPRESS,
                   help=f"{_recipe_help()} (default: "
                        f"{shown_default(declared_default(fields['recipe']))})")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the killed run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in the --out folder instead of refusing (it "
                        "is set aside in OUT.previous once the new run has started, and "
                        "deleted when the new run finishes)")
    p.add_argument("--out", dest="out_dir", default=argparse.SUPPRESS,
                   help=f"{HELP['out_dir']} (default: "
                        f"{shown_default(declared_default(fields['out_dir']))})")
    add_config_options(p, skip=("out_dir", "recipe"))  # those two above
    p.set_defaults(func=run)


def add_config_options(p: argparse.ArgumentParser, skip: typing.Iterable[str] = (),
                       defaults: dict | None = None) -> None:
    """A flag for every TrainConfig field but ``skip``; none sets a value unless given.
    ``defaults``: what --help shows where the command's default is not TrainConfig's."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = defaults or {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        text = HELP.get(f.name, f.name.replace("_", " "))
        if "(default: " not in text:  # else the text says what None resolves to
            default = defaults.get(f.name, declared_default(f))
            text = f"{text} (default: {shown_default(default)})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.name == "model_kwargs":
            p.add_argument(flag, type=_json_object, metavar="JSON", **kwargs)
        elif f.name == "schemify":
            p.add_argument(flag, type=_none_or(_json_object), metavar="JSON", **kwargs)
        elif f.name == "crop_scale":
            p.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), **kwargs)
        elif f.name == "val_split":
            p.add_argument(flag, type=_val_split, metavar=METAVARS[f.name], **kwargs)
        else:
            base = _arg_type(hint)
            optional = type(None) in typing.get_args(hint)
            p.add_argument(flag, type=_none_or(base) if optional else base,
                           metavar=METAVARS.get(f.name), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Each value from the first that sets it: a flag, the --config file, the recipe (--recipe,
    else the one the --config file names), TrainConfig's default."""
    from ..train.recipes import load_recipe

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    from_file = TrainConfig.read_values(args.config) if args.config else {}
    values = clip_grad_zero_is_off({**from_file, **given})
    recipe = values.pop("recipe", None)
    if recipe is None:
        return TrainConfig.from_dict(values)
    return load_recipe(recipe).config(values)


def clip_grad_zero_is_off(values: dict) -> dict:
    """``values`` with a clip_grad of 0 (the flag's way to say off) as None, TrainConfig's."""
    if values.get("clip_grad") == 0:
        values["clip_grad"] = None
    return values


def _trains_on_cpu(config: TrainConfig | None, resume: str | None) -> bool:
    """Whether the run will train on the CPU (the allocator setting is measured to pay there)."""
    from ..train.distributed import resolve_device

    device = config.device if config is not None else "auto"
    if config is None:
        with contextlib.suppress(OSError, ValueError):  # fit() reports a broken folder
            device = TrainConfig.load(Path(resume) / "config.yaml").device
    with contextlib.suppress(ValueError):  # a GPU asked for and missing: fit() says so
        return resolve_device(device, 0).type == "cpu"
    return False


def run(args: argparse.Namespace) -> int:
    if args.resume:
        extra = {f.name for f in dataclasses.fields(TrainConfig)} & set(vars(args))
        if extra or args.config:
            raise ValueError(f"--resume continues a run with its saved config.yaml; drop "
                             f"{sorted(extra) or ['--config']}")
        config = None
    else:
        config = config_from_args(args)
    return fit_and_report(config, args.resume, args.overwrite)


def fit_and_report(config: TrainConfig | None, resume: str | None, overwrite: bool) -> int:
    """Train ``config`` (or resume the run in folder ``resume``), print the result line and
    return the exit code."""
    from ..train.allocator import keep_freed_memory
    from ..train.engine import TrainingDiverged, TrainingPreempted, fit

    if _trains_on_cpu(config, resume):
        keep_freed_memory()  # before the first large allocation; see vitmix.train.allocator
    try:
        result = fit(config, resume=resume, overwrite=overwrite)
    except TrainingDiverged as err:
        print(f"vitmix train: stopped: {err}", file=sys.stderr)
        return exit_codes.DIVERGED
    except TrainingPreempted as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"vitmix train: preempted: {err}", file=sys.stderr)
        return exit_codes.PREEMPTED
    if os.environ.get("RANK", "0") == "0":
        print(result_line(result))
        print(f"report: {result.report}")
    return 0


def result_line(result) -> str:
    """The line a run ends with: the test split's numbers, and the validation split's apart."""
    summary = result.summary
    numbers = (f"top-1 {result.top1:.2f}% (top-5 {result.top5:.2f}%), deployed model "
               f"{result.deployed_top1:.2f}%")
    if summary["val"]["is_test"]:
        line = f"test {numbers}; no held-out validation (the epochs were validated on the test)"
    elif result.final_split == "test":
        line = f"test {numbers}; validation top-1 {result.val_top1:.2f}%"
    else:
        line = f"validation {numbers}; no test split"
    budget = summary.get("budget")
    if budget:
        return (f"{line}; wall time {budget['seconds_used']:.0f} s of a "
                f"{budget['minutes']:g}-minute budget")
    return f"{line}; wall time {summary['train_seconds']:.0f} s"
