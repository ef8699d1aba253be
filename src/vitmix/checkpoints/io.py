"""vitmix's own checkpoint files, read and written in one place: a run's full training state
(.pth), weights with the settings that rebuild their model (.safetensors), a model loaded back
from either, and the atomic write that every file a run keeps goes through.

A file is written under a temporary name beside the target, flushed to the disk and renamed over
it, so a run killed (or a machine losing power) while writing keeps the previous file whole.
A .pth file is read with ``weights_only=True``: tensors and plain values, never pickled objects,
whose unpickling could run code. Weights files and training checkpoints carry the checksum of
their tensors (:mod:`.checksum`), verified when they are read; the model arguments a file names
pass :mod:`vitmix.model_arguments`' allowlist before any model is built from them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from .. import surgery
from ..compression.spec import check_schemify_spec, schemify_arguments
from ..factory import build_model, check_model_name
from ..layers.checks import FRACTION
from ..limits import MAX_CLASSES
from ..model_arguments import check_model_kwargs
from ..paths import check_input_file
from ..structured_text import load_json
from .checksum import (
    CHECKSUM_KEY,
    checkpoint_digest,
    tensors_digest,
    unverified_note,
    verify_digest,
)

__all__ = ["SavedModel", "atomic_write", "atomic_write_text", "check_file", "check_state_dict",
           "load_checkpoint", "load_model", "load_torch_file", "load_weights", "read_model",
           "save_checkpoint", "save_weights", "saved_model_name", "verify_checkpoint"]


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Create or replace ``path`` with what ``write(tmp)`` writes to the path it is given.

    The file appears whole or not at all: on an error (or a kill) the old file stays and the
    temporary one is removed. The folder is created when missing. An OSError (a full disk, a
    folder without write permission) names ``path``, not the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600); a checkpoint or a metrics.csv should
    # get the permissions of any other file the user writes.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        write(str(tmp))
        # A rename can reach the disk before the data it points at: flush the data first.
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err  # the same subclass
        raise
    if os.name == "posix":
        try:  # and the rename itself, which lives in the folder
            _fsync(path.parent, os.O_RDONLY)
        except OSError:  # some file systems cannot sync a folder; the file is written anyway
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """A text file (JSON, Markdown, YAML, CSV), written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _is_training_checkpoint(obj: object) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("model"), dict)
            and isinstance(obj.get("model_name"), str))


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """A training checkpoint (any dict torch.save takes), written atomically.

    Keep it to what :func:`load_torch_file` reads back: tensors, numbers, strings, None, and
    lists, tuples and dicts of them. A training checkpoint (a model state and its name) gets
    the checksum of all its tensors under ``tensors_sha256``; a bare state dict is saved as it
    is, since timm and PyTorch load it key for key.
    """
    if _is_training_checkpoint(obj):
        obj = {**obj, CHECKSUM_KEY: checkpoint_digest(obj)}

    def write(tmp: str) -> None:
        # Through a Python file, whose failed write raises OSError (ENOSPC on a full disk);
        # torch.save given a path reports the same as a RuntimeError about stream positions.
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def save_weights(state_dict: dict, path: str | Path, metadata: dict[str, str]) -> None:
    """A state dict as safetensors, with string metadata and the checksum of its tensors
    (``tensors_sha256``), written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    metadata = {**metadata, CHECKSUM_KEY: tensors_digest(tensors)}
    data = save_safetensors_bytes(tensors, metadata=metadata)
    # Written by Python, so that a full disk raises OSError as for every other file.
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
# The input of a model whose checkpoint (or command) does not say: ImageNet's RGB at 224 pixels,
# what timm's models are made for.
DEFAULT_IMG_SIZE = 224
DEFAULT_IN_CHANS = 3


def check_file(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` as a Path; FileNotFoundError when missing, ValueError when a folder."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        hint = (f"; it holds {', '.join(inside)}" if inside else "")
        raise ValueError(f"{what} {path} is a folder, not a file: give the path of a "
                         f"checkpoint file{hint}")
    return check_input_file(path, what)


def _legacy_numpy_globals() -> list:
    """What the NumPy random state of checkpoints written before vitmix saved it as tensors
    unpickles from: an array of a plain dtype (the allow-list names both of NumPy's module
    paths, so files written under NumPy 1 and 2 load under either)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return [(_reconstruct, "numpy._core.multiarray._reconstruct"),
            (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]  # the key's dtype: its class, since NumPy 1.25


def load_torch_file(path: str | Path, what: str = "checkpoint", allowed: Sequence = ()) -> object:
    """torch.load with ``weights_only=True``: tensors and plain values only, so a file holding
    a pickled object (which could run code while it is read) is refused, not run. ``allowed``
    adds classes that are plain data too (argparse.Namespace, for timm's train script).

    ValueError with one line naming the file and the reason when it cannot be read.
    """
    path = check_file(path, what)
    try:
        with torch.serialization.safe_globals([*_legacy_numpy_globals(), *allowed]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a truncated or foreign file
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise ValueError(f"{what} {path} holds a Python object ({found.group(1)}) besides "
                             f"tensors and plain values; vitmix does not load such files, "
                             f"because reading them can run code") from None
        # Only the reason: torch's message goes on to advise weights_only=False, which would
        # run whatever the file holds.
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = (reason.group(1) if reason else text).strip().splitlines()[0].strip()
        raise ValueError(f"{what} {path} is damaged or not a PyTorch checkpoint "
                         f"({type(err).__name__}: {reason})") from None


def _note(notes: list[str] | None, text: str) -> None:
    """A note for the person loading a file: kept in ``notes``, else one line on stderr."""
    if notes is None:
        print(f"note: {text}", file=sys.stderr)
    else:
        notes.append(text)


def verify_checkpoint(obj: object, source: str, notes: list[str] | None = None) -> None:
    """Check the tensors of a loaded .pth against the checksum it was saved with (ValueError
    when they differ); a file without one gets a note that it loads unverified."""
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        try:
            computed = checkpoint_digest(obj)
        except ValueError as err:  # nested too deep to be a checkpoint
            raise ValueError(f"{source} is damaged: it {err}") from None
        verify_digest(obj[CHECKSUM_KEY], computed, source)
    else:
        _note(notes, unverified_note(source))


def load_checkpoint(path: str | Path, notes: list[str] | None = None) -> dict:
    """A training checkpoint written by :func:`save_checkpoint`, its tensors verified against
    their checksum; ValueError when unreadable or damaged. A file without a checksum (of an
    earlier vitmix) loads, with a note in ``notes`` (or on stderr when None)."""
    path = Path(path)
    ckpt = load_torch_file(path)
    if not _is_training_checkpoint(ckpt):
        raise ValueError(f"{path} is not a vitmix training checkpoint (no model state and name)")
    if not isinstance(ckpt.get("model_kwargs", {}), dict):
        raise ValueError(f"{path} is damaged: its model_kwargs are "
                         f"{type(ckpt['model_kwargs']).__name__}, not a mapping")
    # Before anything walks them (json.dumps of a value nested thousands deep recurses).
    check_model_kwargs(ckpt.get("model_kwargs") or {}, f"checkpoint {path}")
    _check_class_names(ckpt.get("classes"), path)
    verify_checkpoint(ckpt, f"checkpoint {path}", notes)
    ckpt.pop(CHECKSUM_KEY, None)
    return ckpt


def load_weights(path: str | Path, notes: list[str] | None = None) -> tuple[dict, dict]:
    """(state_dict, metadata) from a .safetensors file or a training checkpoint (.pth), its
    tensors verified against the checksum the file was written with (ValueError when they
    differ; a file without one loads with a note, see :func:`load_checkpoint`).

    A training checkpoint gives its EMA weights when it has them (what the run reports), and
    metadata in the form a .safetensors file keeps it (strings; JSON for kwargs and classes).
    The files of a vitmix run name the evaluation transform the run validated with
    (eval_crop_pct, eval_interpolation); those written before runs recorded it get what every
    run used then: the whole image (crop 1), bicubic.
    """
    path = check_file(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"checkpoint {path} is damaged or not safetensors ({err})") from None
        recorded = metadata.pop(CHECKSUM_KEY, None)
        if recorded is None:
            _note(notes, unverified_note(f"checkpoint {path}"))
        else:
            verify_digest(recorded, tensors_digest(state), f"checkpoint {path}")
        if metadata.get("deployed") == "1":  # written by a vitmix run, and by nothing else
            for key, value in _EVAL_BEFORE_RECORDED.items():
                metadata.setdefault(key, value)
        return state, metadata
    ckpt = load_checkpoint(path, notes)
    weights = ckpt.get("final_weights", "model")
    state = ckpt["ema"] if weights == "ema" and ckpt.get("ema") is not None else ckpt["model"]
    metadata = {"model": ckpt["model_name"], "model_kwargs": json.dumps(ckpt.get("model_kwargs")
                                                                        or {}),
                "deployed": "0"}
    if ckpt.get("classes") is not None:
        metadata["classes"] = json.dumps(ckpt["classes"])
    if ckpt.get("schemify") is not None:  # a SCHEME form put into the named model
        metadata["schemify"] = json.dumps(check_schemify_spec(ckpt["schemify"],
                                                              f"checkpoint {path}"))
    if isinstance(ckpt.get("config"), dict):  # the run's TrainConfig
        for key, value in _EVAL_BEFORE_RECORDED.items():
            metadata[key] = str(ckpt["config"].get(key, value))
    return state, metadata


# The evaluation transform of the vitmix runs made before they recorded theirs.
_EVAL_BEFORE_RECORDED = {"eval_crop_pct": "1.0", "eval_interpolation": "bicubic"}


def saved_model_name(path: str | Path) -> str:
    """The timm model name a checkpoint was saved with (a run's files, and the .safetensors
    `vitmix import-weights` writes for SCHEME checkpoints); ValueError when it names none."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        try:  # the header alone: the weights are read once, later
            with safe_open(str(path), framework="pt") as f:
                name = (f.metadata() or {}).get("model")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"checkpoint {path} is damaged or not safetensors ({err})") from None
    else:
        name = load_weights(path)[1].get("model")
    if not name:
        raise ValueError(f"checkpoint {path} does not name its model; pass --model NAME")
    return name


def check_state_dict(model: nn.Module, state: dict, model_name: str, source: str | Path,
                     saved_name: str | None = None) -> None:
    """ValueError naming the difference when ``state`` does not fit ``model`` exactly."""
    if saved_name and saved_name != model_name:
        raise ValueError(f"checkpoint {source} holds a {saved_name!r} model, not {model_name!r}; "
                         f"pass --model {saved_name}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[0]})")
        raise ValueError(f"checkpoint {source} does not fit model {model_name!r}: "
                         + "; ".join(parts))


@dataclass
class SavedModel:
    """A vitmix weights file read back: the weights, and what rebuilds the model they fit."""

    path: Path
    name: str  # timm model name, checked against the one the file names
    kwargs: dict  # timm.create_model arguments saved with the weights; {} when the file has none
    deployed: bool  # the weights are the folded inference form (see vitmix.deploy)
    state: dict[str, torch.Tensor]
    classes: list[str] | None = None  # the class names, in output order, when the file has them
    # The evaluation transform the weights were validated with, when the file records it.
    eval_crop_pct: float | None = None
    eval_interpolation: str | None = None
    # vitmix.schemify's arguments when the weights are a SCHEME form of the named model (a
    # `vitmix compress` run); None for a model as timm builds it.
    schemify: dict | None = None

    def build(self, kwargs: dict | None = None) -> nn.Module:
        """A new model built with ``kwargs`` (default: the saved ones) holding these weights;
        ValueError naming the difference when they do not fit it."""
        model = build_model(self.name, self.kwargs if kwargs is None else kwargs)
        if self.schemify is not None:
            surgery.schemify(model, **schemify_arguments(self.schemify), measure_macs=False)
        if self.deployed:
            surgery.deploy(model)  # the same module structure as the saved weights
        check_state_dict(model, self.state, self.name, self.path)
        model.load_state_dict(self.state)
        return model


def read_model(path: str | Path, name: str) -> SavedModel:
    """The weights in ``path`` (a .safetensors file or a training checkpoint) for model ``name``.

    FileNotFoundError / ValueError for a missing or damaged file (its tensors not those it was
    written with, too), ValueError when the file says it holds another model, and when its model
    arguments leave the allowlist of :mod:`vitmix.model_arguments`: all before any model is
    built.
    """
    state, meta = load_weights(path)
    saved_name = meta.get("model")
    if saved_name and saved_name != name:
        raise ValueError(f"checkpoint {path} holds a {saved_name!r} model, not {name!r}; "
                         f"pass --model {saved_name}")
    kwargs = _metadata_json(path, meta, "model_kwargs", dict)
    if kwargs is not None:
        kwargs = check_model_kwargs(kwargs, f"checkpoint {path}")
    classes = _metadata_json(path, meta, "classes", list)
    _check_class_names(classes, path)
    spec = _metadata_json(path, meta, "schemify", dict)
    if spec is not None:
        spec = check_schemify_spec(spec, f"checkpoint {path}")
    return SavedModel(Path(path), name, kwargs or {}, meta.get("deployed") == "1", state,
                      classes, _metadata_crop(path, meta), meta.get("eval_interpolation") or None,
                      spec)


def _check_class_names(classes: object, path: str | Path) -> None:
    """ValueError unless ``classes`` is None or a list of 1 to MAX_CLASSES strings."""
    if classes is None:
        return
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"checkpoint {path} is damaged: its class names are not all strings")
    if not 1 <= len(classes) <= MAX_CLASSES:
        raise ValueError(f"checkpoint {path} is damaged: it names {len(classes)} classes, "
                         f"where a model has 1 to {MAX_CLASSES}")


def _metadata_crop(path: str | Path, meta: dict) -> float | None:
    """The recorded eval_crop_pct, None when absent; ValueError when it is no crop fraction."""
    text = meta.get("eval_crop_pct")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if not FRACTION.test(value):
        raise ValueError(f"checkpoint {path} is damaged: its eval_crop_pct metadata must be "
                         f"{FRACTION.allowed}, got {text!r}")
    return value


def _metadata_json(path: str | Path, meta: dict, key: str, kind: type):
    """The JSON value ``meta[key]`` of type ``kind``, None when absent; ValueError when damaged."""
    if not meta.get(key):
        return None
    try:
        value = load_json(meta[key], f"checkpoint {path}: its {key} metadata")
    except json.JSONDecodeError:
        value = None  # said below, as for a value of the wrong kind
    if not isinstance(value, kind):
        raise ValueError(f"checkpoint {path} is damaged: its {key} metadata is not a JSON "
                         f"{'object' if kind is dict else 'list'}")
    return value


def load_model(name: str, checkpoint: str | Path | None = None, img_size: int | None = None,
               in_chans: int | None = None, deploy: bool = False) -> tuple[nn.Module, dict]:
    """Model ``name`` with the weights and settings of a vitmix checkpoint, or fresh weights
    when ``checkpoint`` is None.

    ``img_size`` and ``in_chans``, when given, replace the saved ones (default 224 and 3).
    ``deploy=True`` gives the inference form: :func:`vitmix.deploy` applied, eval mode; it
    changes nothing in a model without SchemeMlp. Returns the model and the create_model
    arguments it was built with (num_classes too, when the checkpoint saved it).
    """
    check_model_name(name)
    saved = read_model(checkpoint, name) if checkpoint is not None else None
    kwargs = dict(saved.kwargs) if saved else {}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    kwargs.setdefault("img_size", DEFAULT_IMG_SIZE)
    kwargs.setdefault("in_chans", DEFAULT_IN_CHANS)
    model = saved.build(kwargs) if saved else build_model(name, kwargs)
    if deploy:
        surgery.deploy(model)
    return model, kwargs
