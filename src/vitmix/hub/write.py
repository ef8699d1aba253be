"""Writing a Hub-ready folder: config.json and model.safetensors in the layout timm reads from the
Hugging Face Hub (written by timm's own save_for_hf, so the format is timm's, not a copy of it),
and README.md, the model card.

The folder is written under a temporary name beside its target, checked by rebuilding the model
from it, and only then renamed into place: a failure leaves no half-written folder, and a folder
replaced with ``force`` stays whole until its replacement is.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import PretrainedCfg
from timm.models._hub import save_for_hf
from torch import nn

from ..data.transforms import default_norm
from ..paths import check_output_folder
from .card import model_card
from .source import ExportSource, read_source

__all__ = ["HUB_FILES", "HubExport", "check_hub_output", "load_hub_folder", "save_for_hub"]

# Everything an export writes; a folder holding anything else is not replaced (see --force).
HUB_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "README.md")
# Keys of create_model that place a model, rather than describe it.
_PLACEMENT_ARGS = ("device", "dtype")


@dataclass(frozen=True)
class HubExport:
    """What :func:`save_for_hub` wrote."""

    folder: Path
    model: str
    model_args: dict
    files: tuple[str, ...]
    results: int  # how many measured accuracies the card shows


def check_hub_output(folder: str | Path, force: bool = False) -> Path:
    """``folder`` as a Path, after checking that an export may be written there: ValueError
    when it is a file, exists without ``force``, or holds files an export does not write
    (``force`` replaces only a folder an export wrote, never one with other files)."""
    folder = check_output_folder(folder, "output folder")
    if folder.exists():
        if not force:
            raise ValueError(f"output folder {folder} exists; pass --force to replace it")
        others = sorted(p.name for p in folder.iterdir() if p.name not in HUB_FILES)
        if others:
            raise ValueError(f"output folder {folder} holds files an export does not write "
                             f"({', '.join(others[:3])}); --force replaces only a folder "
                             f"written by vitmix hub-export: choose another folder")
    return folder


def _size(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _pretrained_cfg(model: nn.Module, source: ExportSource) -> dict:
    """The model's pretrained_cfg with the values the weights were trained and evaluated with."""
    cfg = dict(model.pretrained_cfg)
    kwargs = source.saved.kwargs
    default_size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans = int(kwargs.get("in_chans", default_size[0]))
    img_size = _size(kwargs.get("img_size", default_size[1:]))
    cfg["input_size"] = (in_chans, *img_size)
    if img_size != default_size[1:]:
        cfg["pool_size"] = None  # the default's final map size no longer holds
    cfg["num_classes"] = model.num_classes
    if source.saved.eval_crop_pct is not None:
        cfg["crop_pct"] = source.saved.eval_crop_pct
    if source.saved.eval_interpolation is not None:
        cfg["interpolation"] = source.saved.eval_interpolation
    mean = cfg.get("mean")
    # A vitmix run normalises with default_norm(in_chans); other weights keep the model's
    # statistics unless they have the wrong number of channels.
    if source.config is not None or (mean is not None and len(mean) != in_chans):
        if in_chans in (1, 3):
            cfg["mean"], cfg["std"] = default_norm(in_chans)
    return cfg


def _takes_img_size(model: nn.Module) -> bool:
    """Whether the model's class takes img_size; vitmix's build_model leaves it out for the
    convolutional timm models that do not, and config.json must too."""
    params = inspect.signature(type(model).__init__).parameters
    return "img_size" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _model_args(source: ExportSource, model: nn.Module) -> dict:
    args = {k: v for k, v in source.saved.kwargs.items() if k not in _PLACEMENT_ARGS}
    if not _takes_img_size(model):
        args.pop("img_size", None)
    args["num_classes"] = model.num_classes
    for key, value in args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(f"model argument {key}={value!r} of {source.weights_file} cannot "
                             f"be written to config.json (not JSON)") from None
    return args


def load_hub_folder(folder: str | Path, **kwargs) -> nn.Module:
    """The model of a Hub-ready folder, on any timm version vitmix supports: what
    ``timm.create_model("local-dir:FOLDER", pretrained=True)`` does on timm 1.0.31, written
    out for timm 1.0.22, whose local-dir loader reads only pickled weight files. ``kwargs``
    override the saved model arguments."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    overlay = dict(config["pretrained_cfg"], file=str(folder / "model.safetensors"))
    # Top-level fields of config.json that timm's loader moves into the pretrained_cfg.
    for key in ("num_classes", "label_names", "label_descriptions"):
        if config.get(key) is not None:
            overlay[key] = config[key]
    # A folder written by a newer timm may hold fields this one's PretrainedCfg lacks.
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    overlay = {k: v for k, v in overlay.items() if k in known}
    args = dict(config.get("model_args", {}), **kwargs)
    return timm.create_model(config["architecture"], pretrained=True,
                             pretrained_cfg_overlay=overlay, **args)


def _check_rebuilds(folder: Path, model: nn.Module) -> None:
    """The folder must rebuild the same modules holding the same tensors."""
    try:
        rebuilt = load_hub_folder(folder)
    except RuntimeError as err:
        # torch's strict load: a header line, then one line per key that does not fit.
        lines = [line.strip() for line in str(err).strip().splitlines()]
        reason = lines[1] if len(lines) > 1 else lines[0]
        raise ValueError(f"the written config.json does not rebuild the model exactly "
                         f"({reason}); nothing was written") from None
    expected, got = model.state_dict(), rebuilt.state_dict()
    differ = [k for k, v in expected.items() if k not in got or not torch.equal(v, got[k])]
    if repr(rebuilt) != repr(model) or differ or set(got) != set(expected):
        detail = f"tensor {differ[0]} differs" if differ else "the modules differ"
        raise ValueError(f"the written config.json does not rebuild the model exactly "
                         f"({detail}); nothing was written")


def _fsync_tree(folder: Path) -> None:
    # A rename can reach the disk before the data it points at: flush the files first.
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # some file systems cannot sync a folder; the data is written anyway
            pass
        finally:
            os.close(fd)


def _move_into_place(staged: Path, folder: Path) -> None:
    """Rename ``staged`` to ``folder``; an existing ``folder`` is moved aside first and deleted
    only once the new one is in place (put back if the rename fails)."""
    aside = None
    if folder.exists():
        aside = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
        os.replace(folder, aside)
    try:
        os.replace(staged, folder)
    except BaseException:
        if aside is not None:
            os.replace(aside, folder)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def save_for_hub(source: str | Path, folder: str | Path, model: str | None = None,
                 force: bool = False, pytorch_bin: bool = False) -> HubExport:
    """Write the weights at ``source`` as a Hub-ready folder ``folder``: config.json (the
    architecture, its arguments, and a pretrained_cfg with the input size, crop, interpolation,
    mean and std the weights were evaluated with, and the class names when known),
    model.safetensors and README.md (the model card: results, settings, data, citations).

    ``source``: a vitmix run folder (its final weights, last.pth), a run's last.pth or best.pth,
    or a .safetensors file (`vitmix import-weights` output) that is not deployed. ``model``: the
    timm name, for a .safetensors file that does not name its model. ``force``: replace an
    existing export. ``pytorch_bin``: also write pytorch_model.bin, the same tensors pickled,
    which timm 1.0.22's ``local-dir:`` loader needs.

    Load the folder with ``import vitmix; timm.create_model("local-dir:FOLDER",
    pretrained=True)`` (or push it to the Hub and use ``"hf-hub:OWNER/REPO"``). ValueError or
    FileNotFoundError, one line, for bad input, before anything is written.
    """
    folder = check_hub_output(folder, force)
    found = read_source(source, model)
    built = found.saved.build()
    built.eval()
    built.pretrained_cfg = built.default_cfg = _pretrained_cfg(built, found)
    model_args = _model_args(found, built)
    model_config = {"label_names": list(found.saved.classes)} if found.saved.classes else {}

    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        save_for_hf(built, str(staged), model_config=model_config, model_args=model_args,
                    safe_serialization="both" if pytorch_bin else True)
        config = json.loads((staged / "config.json").read_text())
        (staged / "README.md").write_text(model_card(found, built, config))
        _check_rebuilds(staged, built)
        _fsync_tree(staged)
        _move_into_place(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    files = tuple(name for name in HUB_FILES if (folder / name).is_file())
    return HubExport(folder, config["architecture"], config.get("model_args", {}), files,
                     len(found.results))
