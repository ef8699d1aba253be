"""What a Hub-ready folder is written from: a vitmix run folder, one of its training checkpoints,
or a .safetensors file (`vitmix import-weights` output, or weights saved by anyone with the
model's name in their metadata), read into one :class:`ExportSource`.

Everything here reads; nothing builds a model. The numbers a model card shows are only those
measured on exactly the weights exported: summary.json describes a finished run's final weights
(``last.pth``), ``best.pth`` carries the validation top-1 it was chosen by, and `vitmix eval`
leaves ``<stem>_eval.json`` beside any checkpoint it scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints.io import SavedModel, load_checkpoint, read_model, saved_model_name

__all__ = ["ExportSource", "Result", "read_source"]

# The file of a run folder whose weights summary.json reports (the run's final weights).
RUN_WEIGHTS = "last.pth"


@dataclass(frozen=True)
class Result:
    """One measured accuracy of the exported weights, for the model card."""

    split: str  # what was evaluated, e.g. "test: /data/shapes/test, 120 images"
    weights: str  # "trained" or "deployed" (vitmix.deploy's form of the same weights)
    images: int | None
    top1: float
    top5: float | None


@dataclass
class ExportSource:
    """The weights to export and everything known about where they came from."""

    path: Path  # what the person gave: a run folder or a file
    weights_file: Path  # the file the weights are read from
    saved: SavedModel  # the weights, the model name and its arguments, classes, eval transform
    origin: str  # one sentence for the card: how the weights were made
    results: list[Result] = field(default_factory=list)
    config: dict | None = None  # the run's TrainConfig, as config.yaml holds it
    data: str | None = None  # the data the run trained on, as the run named it
    notes: list[str] = field(default_factory=list)  # sentences for the card's details


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is damaged or not JSON ({err})") from None
    return value if isinstance(value, dict) else None


def _result(split: str, weights: str, section: dict | None) -> Result | None:
    """A Result from an evaluation summary ({"top1", "top5", "count"}), None when absent."""
    if not isinstance(section, dict) or section.get("top1") is None:
        return None
    return Result(split, weights, section.get("count"), float(section["top1"]),
                  None if section.get("top5") is None else float(section["top5"]))


def _run_results(summary: dict) -> list[Result]:
    """The final numbers of a finished run: its test split, then its validation split."""
    results = []
    for key, title in (("test", "test"), ("val", "validation")):
        section = summary.get(key)
        if not isinstance(section, dict):
            continue
        split = f"{title}: {section.get('split', '?')}"
        if key == "val" and section.get("is_test"):
            split += " (the data's test split)"
        elif key == "val" and section.get("held_out"):
            split += " (held out of the training images)"
        for weights in ("trained", "deployed"):
            found = _result(split, weights, section.get(weights))
            if found:
                results.append(found)
    return results


def _eval_results(weights_file: Path) -> list[Result]:
    """What `vitmix eval` measured on this very file (it writes <stem>_eval.json beside it)."""
    found = _read_json(weights_file.with_name(f"{weights_file.stem}_eval.json"))
    if not found:
        return []
    result = _result(f"`vitmix eval`: {found.get('data', '?')}", "trained", found)
    return [result] if result else []


# The authors' releases `vitmix import-weights` converts, by its --arch.
_RELEASES = {"schemeformer": "the SCHEME authors' release (scheme_vit)",
             "groupmixformer": "the GroupMixFormer authors' release (AILab-CVC/GroupMixFormer)"}


def _check_not_deployed(saved: SavedModel) -> None:
    if saved.schemify is not None:
        # Its SchemeMlp weights fit no architecture timm can build by name and arguments.
        raise ValueError(
            f"{saved.path} holds a SCHEME form of {saved.name} (vitmix compress, schemify "
            f"{saved.schemify}), which timm.create_model({saved.name!r}) cannot build; load it "
            f"with vitmix (vitmix eval, vitmix.checkpoints.io.load_model) instead")
    if saved.deployed:
        raise ValueError(
            f"{saved.path} holds deployed weights (vitmix.deploy's form: CCA removed, the mixing "
            f"weight folded into fc2), which timm.create_model({saved.name!r}) cannot load; "
            f"give the run folder or its last.pth / best.pth, whose weights are the same before "
            f"deploy")


def _from_run_checkpoint(path: Path, weights_file: Path) -> ExportSource:
    ckpt = load_checkpoint(weights_file)
    saved = read_model(weights_file, ckpt["model_name"])
    _check_not_deployed(saved)  # a compress run's SCHEME form (a run never saves deployed .pth)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    run_dir = weights_file.parent
    summary = _read_json(run_dir / "summary.json")
    weights = "EMA" if ckpt.get("final_weights") == "ema" and ckpt.get("ema") is not None \
        else "trained"
    epochs = ckpt.get("epoch")
    source = ExportSource(path, weights_file, saved,
                          origin=f"trained with `vitmix train` ({weights} weights after "
                                 f"{epochs} epoch{'' if epochs == 1 else 's'}, from the run's "
                                 f"{weights_file.name})",
                          config=config, data=(config or {}).get("data"))
    if weights_file.name == RUN_WEIGHTS and summary is not None:
        source.results += _run_results(summary)
        source.data = str(summary.get("data", source.data))
    elif weights_file.name == RUN_WEIGHTS:
        source.notes.append("The run folder holds no summary.json: the run had not finished "
                            "when these weights were exported, and they have no final "
                            "evaluation.")
    best_metric, best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
    if weights_file.name == "best.pth" and best_metric is not None:
        source.results.append(Result("validation, at the epoch best.pth was chosen by "
                                     f"(epoch {best_epoch + 1})", "trained", None,
                                     float(best_metric), None))
    source.results += _eval_results(weights_file)
    return source


def _from_safetensors(path: Path, model: str | None) -> ExportSource:
    name = model or saved_model_name(path)
    saved = read_model(path, name)
    _check_not_deployed(saved)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    official = metadata.get("official_arch")
    if official:
        release = _RELEASES.get(official, f"the {official} authors' release")
        origin = (f"converted by `vitmix import-weights` from a checkpoint in the format of "
                  f"{release}")
    else:
        origin = f"read from {path.name}"
    source = ExportSource(path, path, saved, origin=origin)
    if metadata.get("release_model"):
        source.notes.append(f"The release checkpoint named its model "
                            f"`{metadata['release_model']}`.")
    if metadata.get("eval_function"):
        source.notes.append(f"Eval mode computes the release's eval function "
                            f"({metadata['eval_function']}).")
    if metadata.get("converted_entry"):
        source.notes.append(f"Converted from the release checkpoint's "
                            f"`{metadata['converted_entry']}` entry.")
    source.results += _eval_results(path)
    return source


def read_source(path: str | Path, model: str | None = None) -> ExportSource:
    """The weights at ``path`` and what is known of them.

    ``path``: a vitmix run folder (its final weights, ``last.pth``, whose numbers summary.json
    reports), a run's ``last.pth`` or ``best.pth``, or a ``.safetensors`` file that is not
    deployed. ``model``: the timm model name, needed only for a .safetensors file that does not
    name its model; a file that names another is refused.

    FileNotFoundError or ValueError, one line each, for what cannot be exported; nothing is
    built yet.
    """
    path = Path(path)
    if path.is_dir():
        weights_file = path / RUN_WEIGHTS
        if not weights_file.is_file():
            inside = sorted(p.name for p in path.iterdir())[:5]
            raise ValueError(f"{path} is a folder without {RUN_WEIGHTS}, so not a vitmix run "
                             f"folder (it holds {', '.join(inside) or 'nothing'}); give a run "
                             f"folder or a checkpoint file")
    elif not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    else:
        weights_file = path
    if weights_file.suffix in (".pth", ".pt"):
        source = _from_run_checkpoint(path, weights_file)
        if model is not None and model != source.saved.name:
            raise ValueError(f"{weights_file} holds a {source.saved.name!r} model, not "
                             f"{model!r}; leave --model out")
    elif weights_file.suffix == ".safetensors":
        source = _from_safetensors(weights_file, model)
    else:
        raise ValueError(f"{weights_file} is neither a run folder, a .pth checkpoint nor a "
                         f".safetensors file")
    return source
