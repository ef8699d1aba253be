"""Benchmark results as JSON, a markdown table and charts (accuracy and throughput vs MACs)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints.io import atomic_write
from ..paths import check_input_file
from ..structured_text import load_json, read_bounded_text
from .reference import REFERENCE_FIGURES
from .speed import ModelSpeed

__all__ = [
    "Accuracy", "machine_description", "known_accuracies", "markdown_table", "parse_accuracy",
    "plot_accuracy_vs_macs", "plot_throughput_vs_macs", "results_json",
]


@dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    source: str  # "given" (by the user) or "published" (the authors' ImageNet-1K figure)


def parse_accuracy(text: str) -> tuple[str, float]:
    """'NAME=ACC' -> (NAME, ACC), ACC a top-1 in percent."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"accuracy {text!r} is not NAME=ACC (e.g. metaformer_ppaa_s12=81.0)")
    try:
        top1 = float(value)
    except ValueError:
        raise ValueError(f"accuracy {text!r}: {value!r} is not a number") from None
    if not 0.0 <= top1 <= 100.0:
        raise ValueError(f"accuracy {text!r}: top-1 must be a percentage in [0, 100]")
    return name, top1


def load_accuracy_json(path: str | os.PathLike) -> dict[str, float]:
    """A JSON object {model name: top-1 percent}."""
    path = check_input_file(path, "accuracy file")
    try:
        data = load_json(read_bounded_text(path, "accuracy file"), f"accuracy file {path}")
    except json.JSONDecodeError as err:
        raise ValueError(f"accuracy file {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"accuracy file {path} must hold an object {{model: top-1}}")
    return dict(parse_accuracy(f"{k}={v}") for k, v in data.items())


# The authors' ImageNet-1K figures hold for this input size only.
PUBLISHED_IMG_SIZE = 224


def known_accuracies(names: Sequence[str], given: Mapping[str, float] | None = None,
                     published: bool = True, img_size: int = PUBLISHED_IMG_SIZE
                     ) -> dict[str, Accuracy]:
    """Top-1 of each named model that has one: given values first, else published figures
    (for models benchmarked at the size they were published at)."""
    given = given or {}
    published = published and img_size == PUBLISHED_IMG_SIZE
    found = {}
    for name in names:
        if name in given:
            found[name] = Accuracy(given[name], "given")
        elif published and "top1" in REFERENCE_FIGURES.get(name, {}):
            found[name] = Accuracy(REFERENCE_FIGURES[name]["top1"], "published")
    return found


def machine_description(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return (f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def results_json(results: Sequence[ModelSpeed], settings: Mapping,
                 accuracies: Mapping[str, Accuracy]) -> dict:
    rows = []
    for r in results:
        row = r.to_dict()
        acc = accuracies.get(r.name)
        row["top1"] = None if acc is None else acc.top1
        row["top1_source"] = None if acc is None else acc.source
        rows.append(row)
    return {"settings": dict(settings), "models": rows}


def markdown_table(results: Sequence[ModelSpeed], accuracies: Mapping[str, Accuracy]
                   | None = None) -> str:
    accuracies = accuracies or {}
    batch_sizes = sorted({run.batch_size for r in results for run in r.runs})
    size = results[0].img_size if results else 224
    header = ["model", "params (M)", f"MACs @{size} (G)"]
    for b in batch_sizes:
        header += [f"img/s (batch {b})", f"latency ms (batch {b})"]
    header.append("layout")
    if accuracies:
        header.append("top-1 %")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.name, f"{r.params / 1e6:.2f}", f"{r.macs / 1e9:.3f}"]
        for b in batch_sizes:
            run = r.run(b)
            cells += ["", ""] if run is None else [f"{run.throughput:.1f}",
                                                   f"{run.latency_ms:.1f}"]
        cells.append(", ".join(sorted({run.memory_format for run in r.runs})))
        if accuracies:
            acc = accuracies.get(r.name)
            cells.append("" if acc is None else
                         f"{acc.top1:.1f}" + (" (published)" if acc.source == "published"
                                              else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scatter(points: Sequence[tuple[str, float, float]], xlabel: str, ylabel: str, title: str,
             out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, x, y in points:
        ax.scatter(x, y, s=36)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.35, y=0.12)  # room for the labels right of the points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    finally:
        plt.close(fig)
    return out


def plot_throughput_vs_macs(results: Sequence[ModelSpeed], batch_size: int, machine: str,
                            out: str | os.PathLike) -> Path:
    points = [(r.name, r.macs / 1e9, r.run(batch_size).throughput)
              for r in results if r.run(batch_size) is not None]
    if not points:
        raise ValueError(f"no model was timed at batch size {batch_size}")
    size = results[0].img_size
    return _scatter(points, f"MACs per image @{size} (G)", f"images/s (batch {batch_size})",
                    f"throughput vs MACs, deployed models\n{machine}", Path(out))


def plot_accuracy_vs_macs(results: Sequence[ModelSpeed], accuracies: Mapping[str, Accuracy],
                          out: str | os.PathLike) -> Path | None:
    """None when no model has a known accuracy."""
    points = [(r.name + (" (published)" if accuracies[r.name].source == "published" else ""),
               r.macs / 1e9, accuracies[r.name].top1) for r in results if r.name in accuracies]
    if not points:
        return None
    sources = {acc.source for acc in accuracies.values()}
    note = ("published: the authors' ImageNet-1K top-1, not measured here"
            if "published" in sources else "top-1 as given")
    size = results[0].img_size
    return _scatter(points, f"MACs per image @{size} (G)", "top-1 (%)",
                    f"accuracy vs MACs\n{note}", Path(out))
