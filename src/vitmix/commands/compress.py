"""`vitmix compress`: a trained dense model becomes a cheaper SCHEME model, fine-tuned with the
dense model as its teacher, in a run folder like `vitmix train`'s."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..checkpoints.io import load_checkpoint, load_weights
from ..compression.spec import check_schemify_spec
from ..layers.scheme import CCA_SCHEDULES
from ..messages import quoted
from ..paths import kind_of
from ..structured_text import load_json
from ..train.config import TrainConfig
from .train import add_config_options, clip_grad_zero_is_off, fit_and_report

# The file of a run folder holding its final weights (what its summary reports).
RUN_WEIGHTS = "last.pth"

# The fine-tune's own schedule: the dense run's learning rate would throw away much of what the
# copied weights know; a short warm-up lets the optimizer's moments settle first. Everything
# else (data, augmentation, precision, batch) is the dense run's.
FINE_TUNE = {"base_lr": 2e-3, "warmup_epochs": 0.05, "epochs": 2, "cooldown_epochs": 0,
             "warmup_lr": None, "min_lr": 1e-6}
# Settings of the dense run a fine-tune does not take over: its schedule (above), where it
# wrote, and what only made sense for it.
NOT_INHERITED = ("out_dir", "recipe", "time_budget", "sched_on", "max_train_batches",
                 "max_val_batches", "schemify", "init_from", "grouping", "teacher",
                 "distill_weight", "distill_temperature", *FINE_TUNE)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compress", help="make a trained dense model a SCHEME model and fine-tune it with "
                         "the dense model as teacher",
        description="Copy each dense MLP of a trained model into a block-diagonal SchemeMlp "
                    "through the grouping of hidden units that keeps the most weight (the kept "
                    "fraction per layer is printed and reported), then fine-tune it with "
                    "knowledge distillation from the dense model. The data, augmentation and "
                    "precision are the dense run's unless flags say otherwise; the schedule is "
                    "the fine-tune's own. The run folder is vitmix train's (continue a stopped "
                    "one with vitmix train --resume).",
    )
    p.add_argument("dense", metavar="DENSE",
                   help=f"the trained dense model: a vitmix run folder (its {RUN_WEIGHTS}, the "
                        f"final weights) or a checkpoint file (.pth or .safetensors)")
    p.add_argument("--groups", type=int, default=2, help="SCHEME groups G (default: 2)")
    p.add_argument("--expansion", type=float, default=None,
                   help="SCHEME hidden width over input width (default: the dense model's); a "
                        "whole multiple of the dense width, each dense unit then copied into "
                        "that many groups")
    p.add_argument("--cca", action=argparse.BooleanOptionalAction, default=False,
                   help="train with the CCA branch (removed for inference) (default: off)")
    p.add_argument("--cca-schedule", choices=CCA_SCHEDULES, default="learned",
                   help="the CCA weight's schedule, with --cca (default: learned)")
    p.add_argument("--no-distill", action="store_true",
                   help="fine-tune on the labels alone (no teacher)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in the --out folder (as vitmix train does)")
    p.add_argument("--out", dest="out_dir", default="runs/compress",
                   help="run folder (default: runs/compress)")
    add_config_options(p, skip=("out_dir", "recipe", "model", "model_kwargs", "schemify",
                                "init_from", "teacher"), defaults=FINE_TUNE)
    p.set_defaults(func=run)


def dense_weights_file(source: str) -> Path:
    """The checkpoint of ``source``: a run folder's final weights, or the file itself."""
    path = Path(source)
    if path.is_dir():
        path = path / RUN_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{source} holds no {RUN_WEIGHTS}: not a vitmix run folder "
                                    f"with a checkpoint (give the checkpoint file instead)")
    elif not path.exists():
        raise FileNotFoundError(f"the dense model {source} does not exist")
    elif not path.is_file():
        raise ValueError(f"the dense model {source} is {kind_of(path)}, not a run folder or a "
                         f"checkpoint file")
    return path


def _dense_run_settings(weights: Path) -> dict:
    """The dense model's name and arguments, and the settings of the run that trained it (the
    config a run's checkpoint holds; a .safetensors file has none)."""
    if weights.suffix == ".safetensors":
        _, meta = load_weights(weights)
        name, spec, config = meta.get("model"), meta.get("schemify"), None
        kwargs = load_json(meta.get("model_kwargs") or "{}", f"checkpoint {weights}")
    else:
        ckpt = load_checkpoint(weights)
        name, spec, config = ckpt["model_name"], ckpt.get("schemify"), ckpt.get("config")
        kwargs = ckpt.get("model_kwargs") or {}
    if spec:
        raise ValueError(f"{weights} holds a SCHEME model already (schemify {spec}); "
                         f"compress starts from a dense one")
    if not name:
        raise ValueError(f"{weights} does not name its model; compress needs a vitmix "
                         f"checkpoint (a run's files, or import-weights output)")
    values = {"model": name}
    if isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        values.update({k: v for k, v in config.items()
                       if k in fields and k not in NOT_INHERITED})
    else:
        # No run config: the arguments the file was saved with, less the run's own settings.
        values["model_kwargs"] = {k: v for k, v in kwargs.items()
                                  if k not in ("num_classes", "img_size", "in_chans")}
        for key in ("img_size", "in_chans"):
            if key in kwargs:
                values[key] = kwargs[key]
    return values


def run(args: argparse.Namespace) -> int:
    spec = {"groups": args.groups, "expansion": args.expansion, "cca": args.cca,
            "cca_schedule": args.cca_schedule}
    check_schemify_spec(spec, "--groups / --expansion")  # one line before any file is read
    weights = dense_weights_file(args.dense)
    if args.no_distill and any(k in vars(args) for k in ("distill_weight",
                                                         "distill_temperature")):
        raise ValueError("--no-distill fine-tunes without a teacher; drop --distill-weight and "
                         "--distill-temperature")
    values = _dense_run_settings(weights)
    values.update(FINE_TUNE)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = clip_grad_zero_is_off({**values, **{k: v for k, v in vars(args).items()
                                                 if k in names}})
    source = str(weights.resolve())
    values.update(schemify=spec, init_from=source, teacher=None if args.no_distill else source)
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as err:
        raise ValueError(f"cannot fine-tune {quoted(args.dense)}: {err}") from None
    return fit_and_report(config, None, args.overwrite)
