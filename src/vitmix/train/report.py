"""metrics.csv, plots and report.md of a run folder, each written atomically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..checkpoints.io import atomic_write, atomic_write_text  # noqa: E402

__all__ = ["MetricsLog", "format_top1", "plot_confusion", "plot_curves", "save_figure",
           "write_report"]


class MetricsLog:
    """Rows of per-epoch metrics in a CSV; columns may grow (new CCA layers never appear mid-run,
    but a resumed run re-reads what was written before, see :meth:`read`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    @classmethod
    def read(cls, path: str | Path) -> MetricsLog:
        """The rows already in ``path`` (none when it is missing)."""
        log = cls(path)
        if log.path.is_file():
            with log.path.open(newline="") as f:
                log.rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return log

    def truncate(self, epochs_done: int) -> None:
        """Forget rows beyond the checkpoint a run resumes from."""
        self.rows = [r for r in self.rows if int(r["epoch"]) < epochs_done]

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))

    def write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)

        # A run killed while writing must keep the rows that resuming it reads back.
        atomic_write(self.path, write_csv)


def _number(text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    return Path(path)


def plot_curves(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    """loss.png, accuracy.png and (when the model has CCA branches) cca_weights.png."""
    out_dir = Path(out_dir)
    epochs = [r["epoch"] + 1 for r in rows]
    paths = {}

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train (mixed targets)")
    ax.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax.legend()
    fig.tight_layout()
    paths["loss"] = save_figure(fig, out_dir / "loss.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [r["val_top1"] for r in rows], marker="o", label="validation top-1")
    if any(r.get("ema_top1") is not None for r in rows):
        ax.plot(epochs, [r.get("ema_top1") for r in rows], marker="o",
                label="validation top-1 (EMA)")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax.legend()
    fig.tight_layout()
    paths["accuracy"] = save_figure(fig, out_dir / "accuracy.png")

    cca_cols = [k for k in rows[0] if k.startswith("cca/")] if rows else []
    if cca_cols:
        fig, ax = plt.subplots(figsize=(6, 4))
        cmap = plt.get_cmap("viridis")
        for i, col in enumerate(cca_cols):
            ax.plot(epochs, [r[col] for r in rows], color=cmap(i / max(1, len(cca_cols) - 1)),
                    label=col[4:].replace("stages.", "s").replace(".blocks.", ".b"))
        ax.set(xlabel="epoch", ylabel="CCA weight 1 - a", title="CCA weight per layer",
               ylim=(0, None))
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        paths["cca"] = save_figure(fig, out_dir / "cca_weights.png")
    return paths


def plot_confusion(confusion, classes: list[str], path: Path, title: str = "") -> Path:
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(classes)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    fig.tight_layout()
    return save_figure(fig, path)


def _results_table(summary: dict) -> list[str]:
    """One row per split and model: validation first, then the test split."""
    trained = f"trained model ({summary['final_weights']} weights)"
    lines = ["| split | model | top-1 (%) | top-5 (%) | images | images/s |",
             "|---|---|---|---|---|---|"]
    for key, label in (("val", "validation"), ("test", "test")):
        section = summary.get(key)
        if not section:
            continue
        for part, model in (("trained", trained), ("deployed", "deployed model (vitmix.deploy)")):
            if part in section:
                r = section[part]
                lines.append(f"| {label}: {section['split']} | {model} | {r['top1']:.2f} | "
                             f"{r['top5']:.2f} | {r['count']} | {r['images_per_s']:.0f} |")
    return lines


def _splits_note(summary: dict) -> str:
    val, test = summary["val"], summary.get("test")
    best = f"the best checkpoint, best.pth, is epoch {val['best_epoch'] + 1}"
    if val.get("is_test"):
        return (f"No held-out validation split: the epochs were validated on the test images "
                f"and {best} by them, so the test numbers are optimistic.")
    if test is None:
        return (f"Every choice was made on the validation split ({best}); the data has no "
                f"split left for a test, so these are validation numbers.")
    return (f"Every choice was made on the validation split ({best}); the test split was "
            f"evaluated once, after training.")


def _budget_lines(budget: dict | None) -> list[str]:
    if not budget:
        return []
    return [f"- time budget: {budget['minutes']:g} min; used {budget['seconds_used'] / 60:.2f} "
            f"min ({budget['seconds_used']:.0f} s, from the probe before training to the "
            f"report); {budget['updates']} updates made of {budget['planned_updates']} planned "
            f"(first estimate {budget['first_planned_updates']}); "
            f"{budget['seconds_per_update']:.3g} s per update, "
            f"{budget['seconds_per_epoch_end']:.3g} s per epoch end, "
            f"{budget['final_reserve_s']:.3g} s kept for the final evaluations and the report"]


def write_report(path: Path, config: dict, summary: dict, rows: list[dict],
                 plots: dict[str, Path], classes: list[str],
                 per_class: list[float | None]) -> None:
    """report.md; ``per_class`` is the top-1 per class of the final split (the test split's,
    else the validation split's)."""
    lines = [f"# Training report: {config['model']} on {config['data']}", ""]
    lines += _results_table(summary)
    lines += ["", _splits_note(summary), ""]
    lines += [f"- epochs: {summary['epochs']} ({summary['updates']} updates), wall time: "
              f"{summary['train_seconds']:.0f} s training + evaluation, device: "
              f"{summary['device']}, processes: {summary['world_size']}",
              *_budget_lines(summary.get("budget")),
              f"- parameters: {summary['params'] / 1e6:.3f}M (deployed "
              f"{summary['deployed_params'] / 1e6:.3f}M), MACs @{config['img_size']}: "
              f"{summary['macs'] / 1e6:.1f}M",
              f"- effective batch {summary['effective_batch']}, peak lr {summary['lr']:.3g}",
              f"- largest CCA weight dropped by deploy: {summary['max_cca_weight_dropped']:.3g}",
              f"- images skipped as unreadable: {summary['skipped_images']} "
              f"({summary.get('skipped_at_load', 0)} of them found damaged while loading)", ""]
    lines += _compression_lines(config, summary)
    for key, title in (("loss", "Loss"), ("accuracy", "Accuracy"), ("cca", "CCA weight"),
                       ("confusion", "Confusion matrix")):
        if key in plots:
            lines += [f"![{title}]({Path(plots[key]).name})", ""]
    split = "test" if summary.get("final_split", "test") == "test" else "validation"
    lines += [f"## Per-class top-1 (%), {split} split", "", "| class | top-1 |", "|---|---|"]
    lines += [f"| {c} | {format_top1(a)} |" for c, a in zip(classes, per_class, strict=True)]
    lines += ["", "## Per-epoch metrics", "", "See metrics.csv. Last epoch:", ""]
    if rows:
        last = rows[-1]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in last.items()]
    lines += ["", "## Config", "", "```yaml"]
    lines += [yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    atomic_write_text(path, "\n".join(lines))


def _compression_lines(config: dict, summary: dict) -> list[str]:
    """The SCHEME form of a compress run: what each MLP kept of the dense weights, and the
    teacher; nothing for other runs."""
    spec = summary.get("schemify")
    if not spec:
        return []
    lines = ["## Compression", "",
             f"- SCHEME form (vitmix.schemify): {json.dumps(spec)}",
             f"- teacher (knowledge distillation): {summary.get('teacher') or 'none'}"
             + (f", weight {config['distill_weight']:g}, temperature "
                f"{config['distill_temperature']:g}" if summary.get("teacher") else "")]
    compression = summary.get("compression")
    if not compression:
        return [*lines, "- weights: random (no dense checkpoint to start from)", ""]
    lines += [f"- started from {config.get('init_from')}, {compression['grouping']} grouping: "
              f"{100 * compression['kept']:.1f}% of the dense MLPs' squared weights kept on "
              f"average", "",
              "| MLP | kept | fc1 | fc2 | diagonal copy | channels regrouped too (not applied) |",
              "|---|---|---|---|---|---|"]
    for layer in compression["layers"]:
        bound = layer.get("channels_bound")
        lines.append(f"| {layer['name']} | {100 * layer['kept']:.1f}% | "
                     f"{100 * layer['kept_fc1']:.1f}% | {100 * layer['kept_fc2']:.1f}% | "
                     f"{100 * layer['diagonal']:.1f}% | "
                     f"{'-' if bound is None else f'{100 * bound:.1f}%'} |")
    return [*lines, ""]


def format_top1(accuracy: float | None, digits: int = 1) -> str:
    """A per-class top-1 for people: "no images" for a class the split has none of."""
    return "no images" if accuracy is None else f"{accuracy:.{digits}f}"
