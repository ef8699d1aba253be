"""The SCHEME claim on Fashion-MNIST at equal wall-clock time, chosen on the validation split.

    python benchmarks/fashion_mnist_budget.py compare --minutes 20 --seeds 0
    python benchmarks/fashion_mnist_budget.py compare --configs e8g4_learned --seeds 0 1 2
    python benchmarks/fashion_mnist_budget.py compare --pair e8g4_cosine 0 --pair dense 1
    python benchmarks/fashion_mnist_budget.py tables

Each run is a plain `vitmix train --time-budget MINUTES` in its own process (run folders under
runs/fashion_mnist_budget/), `--jobs` of them at once with `--threads` torch threads each, so
that runs compared with each other share the machine's load. Every run validates on the 5000
held-out training images and is tested once at the end. The results (accuracies, wall times,
the validation curve against wall time and the CCA weights per epoch) are merged into
benchmarks/results/fashion_mnist_budget.json; `tables` writes the table and plots from it.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT_JSON = RESULTS / "fashion_mnist_budget.json"

CONV_STEM = {"stem": "conv"}
# name -> (model, model kwargs). E8G2 has the dense E=4 MLP's MACs; E8G4 half of them.
CONFIGS = {
    "dense": ("metaformer_ppaa_t", CONV_STEM),
    "e8g2_no_cca": ("schemeformer_ppaa_t_e8_g2", dict(CONV_STEM, cca=False)),
    "e8g2_learned": ("schemeformer_ppaa_t_e8_g2", CONV_STEM),
    "e8g2_cosine": ("schemeformer_ppaa_t_e8_g2", dict(CONV_STEM, cca_schedule="cosine")),
    "e8g4_learned": ("schemeformer_ppaa_t_e8_g4", CONV_STEM),
    "e8g4_cosine": ("schemeformer_ppaa_t_e8_g4", dict(CONV_STEM, cca_schedule="cosine")),
}
# The recipe: vitmix train's defaults (the light Fashion-MNIST recipe) under bf16 autocast,
# which pays on CPUs with native bf16 arithmetic such as this one.
RECIPE = ["--data", "fashion-mnist", "--amp", "bf16", "--no-progress-bar"]


def run_one(name: str, seed: int, minutes: float, threads: int, runs: Path) -> dict:
    model, kwargs = CONFIGS[name]
    out = runs / f"{name}_{minutes:g}min_seed{seed}"
    args = [sys.executable, "-m", "vitmix", "train", "--model", model,
            "--model-kwargs", json.dumps(kwargs), *RECIPE, "--time-budget", str(minutes),
            "--seed", str(seed), "--threads", str(threads), "--out", str(out), "--overwrite"]
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed (exit {done.returncode}):\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cca_columns = [c for c in (rows[0] if rows else {}) if c.startswith("cca/")]
    return {
        "config": name, "model": model, "model_kwargs": kwargs, "seed": seed,
        "minutes": minutes, "threads": threads, "command": args[1:],
        "summary": {k: summary[k] for k in ("val", "trained", "deployed", "epochs", "updates",
                                            "train_seconds", "budget", "macs", "params")},
        "process_seconds": wall,
        "curve": [{"seconds": float(r["budget_used_s"]), "val_top1": float(r["val_top1"]),
                   "ema_top1": float(r["ema_top1"]) if r.get("ema_top1") else None}
                  for r in rows],
        "cca_weights": {c[4:]: [float(r[c]) for r in rows] for c in cca_columns},
        "machine": {"node": platform.node(), "processor": platform.processor()},
    }


def compare(args: argparse.Namespace) -> None:
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, name, seed, args.minutes, args.threads, args.runs)
                   for name, seed in args.runs_of]
        for future in futures:
            result = future.result()
            _merge(result)
            print(f"{result['config']} seed {result['seed']}: {_line(result)}", flush=True)


def _merge(result: dict) -> None:
    """Add one run to the JSON, replacing an earlier run of the same configuration, seed and
    budget. Several invocations may run side by side: a lock file keeps their writes apart."""
    with open(OUT_JSON.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else []
        key = (result["config"], result["seed"], result["minutes"])
        results = [r for r in results if (r["config"], r["seed"], r["minutes"]) != key]
        OUT_JSON.write_text(json.dumps(results + [result], indent=1) + "\n")


def _line(r: dict) -> str:
    s = r["summary"]
    return (f"test top-1 {s['trained']['top1']:.2f}% (deployed {s['deployed']['top1']:.2f}%), "
            f"validation {s['val']['trained']['top1']:.2f}%, {s['epochs']} epochs, "
            f"{r['process_seconds']:.0f} s")


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def _table(results: list[dict]) -> list[str]:
    """One row per configuration: test top-1 as mean +/- sample standard deviation over seeds."""
    lines = ["| configuration | model | seeds | test top-1 (trained) | deployed | validation "
             "top-1 | epochs | wall time |", "|---|---|---|---|---|---|---|---|"]
    for name in CONFIGS:
        runs = sorted((r for r in results if r["config"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        test = [r["summary"]["trained"]["top1"] for r in runs]
        deployed = [r["summary"]["deployed"]["top1"] for r in runs]
        val = [r["summary"]["val"]["trained"]["top1"] for r in runs]
        walls = ", ".join(f"{r['process_seconds']:.0f} s" for r in runs)
        lines.append(
            f"| {name} | {runs[0]['model']} {json.dumps(runs[0]['model_kwargs'])} | "
            f"{', '.join(str(r['seed']) for r in runs)} | {_spread(test)} | {_spread(deployed)} "
            f"| {_spread(val)} | {', '.join(str(r['summary']['epochs']) for r in runs)} | "
            f"{walls} |")
    return lines


def tables(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(OUT_JSON.read_text())
    budgets = sorted({r["minutes"] for r in results})
    lines = []
    for minutes in budgets:
        lines += [f"### {minutes:g} minutes per run", "", *_table(
            [r for r in results if r["minutes"] == minutes]), ""]
    (RESULTS / "fashion_mnist_budget.md").write_text("\n".join(lines))
    print("\n".join(lines))

    # Validation accuracy against wall time: one panel per budget, one colour per configuration.
    colours = dict(zip(CONFIGS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, axes = plt.subplots(1, len(budgets), figsize=(7 * len(budgets), 4.5), squeeze=False)
    for ax, minutes in zip(axes[0], budgets, strict=True):
        labelled = set()
        for r in sorted(results, key=lambda r: (list(CONFIGS).index(r["config"]), r["seed"])):
            if r["minutes"] != minutes:
                continue
            xs = [p["seconds"] / 60 for p in r["curve"]]
            ys = [p["ema_top1"] if p["ema_top1"] is not None else p["val_top1"]
                  for p in r["curve"]]
            label = None if r["config"] in labelled else r["config"]
            labelled.add(r["config"])
            ax.plot(xs, ys, marker=".", color=colours[r["config"]], alpha=0.8, label=label)
        ax.set(xlabel="wall time (minutes)", ylabel="validation top-1 (EMA), %",
               title=f"Fashion-MNIST, {minutes:g} minutes per run (one line per seed)")
        ax.set_ylim(bottom=85)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "fashion_mnist_budget_accuracy.png", dpi=120)

    # The CCA weights per layer: one panel per configuration with CCA, every seed drawn.
    cca_configs = [c for c in CONFIGS if any(r["config"] == c and r["cca_weights"]
                                             for r in results)]
    if cca_configs:
        fig, axes = plt.subplots(1, len(cca_configs), figsize=(4.5 * len(cca_configs), 3.8),
                                 squeeze=False, sharey=True)
        for ax, name in zip(axes[0], cca_configs, strict=True):
            runs = [r for r in results if r["config"] == name and r["cca_weights"]]
            layers = list(runs[0]["cca_weights"])
            layer_colours = plt.get_cmap("viridis")([i / max(len(layers) - 1, 1)
                                                     for i in range(len(layers))])
            for i, r in enumerate(runs):
                xs = [p["seconds"] / 60 for p in r["curve"]]
                for layer, colour in zip(layers, layer_colours, strict=True):
                    short = layer.replace("stages.", "s").replace(".blocks.", ".b").replace(
                        ".mlp", "")
                    ax.plot(xs, r["cca_weights"][layer], color=colour, alpha=0.7, lw=1,
                            label=short if i == 0 else None)
            seeds = ", ".join(str(r["seed"]) for r in runs)
            ax.set(title=f"{name} (seeds {seeds})", xlabel="wall time (minutes)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("CCA weight 1 - a")
        axes[0][-1].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(RESULTS / "fashion_mnist_budget_cca_weights.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("compare", help="train configurations within the same budget")
    run.add_argument("--configs", nargs="+", default=list(CONFIGS)[:4], choices=list(CONFIGS))
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--minutes", type=float, default=20.0)
    run.add_argument("--jobs", type=int, default=2, help="runs at once")
    run.add_argument("--threads", type=int, default=1, help="torch threads per run")
    run.add_argument("--runs", type=Path, default=Path("runs/fashion_mnist_budget"))
    sub.add_parser("tables", help="the table and plots from the JSON")
    run.add_argument("--pair", nargs=2, action="append", metavar=("CONFIG", "SEED"),
                     help="one (configuration, seed) pair; repeatable, replaces --configs and "
                          "--seeds, e.g. --pair e8g4_cosine 0 --pair dense 1")
    args = parser.parse_args()
    if args.command == "compare":
        if args.pair:
            unknown = [c for c, _ in args.pair if c not in CONFIGS]
            if unknown:
                parser.error(f"unknown configuration {unknown[0]!r}; expected one of "
                             f"{', '.join(CONFIGS)}")
            args.runs_of = [(c, int(seed)) for c, seed in args.pair]
        else:
            args.runs_of = [(c, seed) for seed in args.seeds for c in args.configs]
        compare(args)
    else:
        tables(args)


if __name__ == "__main__":
    main()
