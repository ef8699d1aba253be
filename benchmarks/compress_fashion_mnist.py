"""SCHEME as compression on Fashion-MNIST: dense models of 20-minute runs compressed to SCHEME
and fine-tuned for a few minutes, against the dense models and SCHEME trained from scratch.

    # the dense models: three 20-minute runs of vitmix train (DENSE_COMMAND), then
    python benchmarks/compress_fashion_mnist.py run --pair g2 0 5 --pair g2 1 5
    python benchmarks/compress_fashion_mnist.py record     # the dense and from-scratch runs
    python benchmarks/compress_fashion_mnist.py speed      # deployed throughput, one process
    python benchmarks/compress_fashion_mnist.py tables     # the table and the plot

`run` runs `vitmix compress runs/compress/dense_20min_seed{SEED}` once per (configuration, seed,
minutes), `--jobs` at once with `--threads` torch threads each (the dense runs ran two at a time
with one thread each, and so do these), in run folders under runs/compress/. The results go to
benchmarks/results/compress_fashion_mnist.json, the dense runs' summaries beside them.
"""

from __future__ import annotations

import argparse
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
OUT_JSON = RESULTS / "compress_fashion_mnist.json"
RUNS = Path("runs/compress")

# name -> vitmix compress flags. g2, g4 and e8g4 are the method (grouping search, distillation
# from the dense model, no CCA); the last two are g2 without one of its parts.
CONFIGS = {
    "g2": ["--groups", "2"],
    "g4": ["--groups", "4"],
    "e8g4": ["--groups", "4", "--expansion", "8"],
    "g2_diagonal": ["--groups", "2", "--grouping", "diagonal"],
    "g2_no_distill": ["--groups", "2", "--no-distill"],
}
# The dense runs' recipe; compress takes data, augmentation and precision from them.
DENSE_COMMAND = ("vitmix train --model metaformer_ppaa_t --model-kwargs '{\"stem\": \"conv\"}' "
                 "--data fashion-mnist --amp bf16 --time-budget 20 --seed SEED --threads 1 "
                 "--out runs/compress/dense_20min_seedSEED")


# SCHEME from scratch for the longest total time of a compressed model (20 + 5 minutes), in the
# compressed G=2 model's shape: E=4, G=2, no CCA.
SCRATCH_COMMAND = ("vitmix train --model schemeformer_ppaa_t_e4_g2 --model-kwargs '{\"stem\": "
                   "\"conv\", \"cca\": false}' --data fashion-mnist --amp bf16 --time-budget 25 "
                   "--seed SEED --threads 1 --out runs/compress/scratch_e4g2_25min_seedSEED")


def dense_dir(seed: int) -> Path:
    return RUNS / f"dense_20min_seed{seed}"


def scratch_dir(seed: int) -> Path:
    return RUNS / f"scratch_e4g2_25min_seed{seed}"


def run_one(name: str, seed: int, minutes: float, threads: int) -> dict:
    out = RUNS / f"{name}_{minutes:g}min_seed{seed}"
    args = [sys.executable, "-m", "vitmix", "compress", str(dense_dir(seed)), *CONFIGS[name],
            "--time-budget", str(minutes), "--threads", str(threads), "--no-progress-bar",
            "--out", str(out), "--overwrite"]
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed (exit {done.returncode}):\n{done.stderr}")
    return {"config": name, "seed": seed, "minutes": minutes, "threads": threads,
            "command": args[1:], "process_seconds": wall,
            "summary": _summary(out), "machine": platform.node()}


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    keep = ("val", "trained", "deployed", "epochs", "updates", "train_seconds", "macs",
            "params", "deployed_params", "compression", "schemify")
    return {k: summary.get(k) for k in keep}


def run(args: argparse.Namespace) -> None:
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, name, int(seed), float(minutes), args.threads)
                   for name, seed, minutes in args.pair]
        for future in futures:
            result = future.result()
            _merge(result)
            s = result["summary"]
            print(f"{result['config']} seed {result['seed']} {result['minutes']:g} min: test "
                  f"{s['trained']['top1']:.2f}% (deployed {s['deployed']['top1']:.2f}%), "
                  f"validation {s['val']['trained']['top1']:.2f}%, {s['updates']} updates",
                  flush=True)


def _merge(result: dict) -> None:
    """Add one run, replacing an earlier one of the same configuration, seed and minutes
    (invocations side by side are kept apart by a lock)."""
    with open(OUT_JSON.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"runs": []}
        key = (result["config"], result["seed"], result["minutes"])
        data["runs"] = [r for r in data["runs"]
                        if (r["config"], r["seed"], r["minutes"]) != key] + [result]
        OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")


def record(args: argparse.Namespace) -> None:
    """Record the summaries of the dense runs and of the from-scratch runs (they ran as
    DENSE_COMMAND and SCRATCH_COMMAND)."""
    with open(OUT_JSON.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"runs": []}
        data["dense"] = [{"seed": seed, "command": DENSE_COMMAND.replace("SEED", str(seed)),
                          "summary": _summary(dense_dir(seed))} for seed in args.seeds]
        data["scratch"] = [{"seed": seed, "command": SCRATCH_COMMAND.replace("SEED", str(seed)),
                            "summary": _summary(scratch_dir(seed))}
                           for seed in args.seeds if (scratch_dir(seed) / "summary.json").exists()]
        OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")


def speed(args: argparse.Namespace) -> None:
    """Deployed inference throughput of each compressed form against the dense model, taken
    in one process, interleaved, at each thread count (the weights do not change the time)."""
    import timm
    import torch

    import vitmix
    from vitmix.bench.speed import time_interleaved
    from vitmix.complexity import count_macs

    def model(flags: list[str] | None):
        torch.manual_seed(0)
        m = timm.create_model("metaformer_ppaa_t", stem="conv", num_classes=10, img_size=32,
                              in_chans=1)
        if flags is not None:
            groups = int(flags[flags.index("--groups") + 1])
            expansion = (float(flags[flags.index("--expansion") + 1])
                         if "--expansion" in flags else None)
            vitmix.compress(m, groups=groups, expansion=expansion, channels_bound=False,
                            measure_macs=False)
        vitmix.deploy(m)
        return m.to(memory_format=torch.channels_last)

    models = {"dense": model(None), **{name: model(CONFIGS[name]) for name in ("g2", "g4",
                                                                             "e8g4")}}
    macs = {name: count_macs(m, 32, 1) for name, m in models.items()}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        x = torch.randn(args.batch, 1, 32, 32).contiguous(memory_format=torch.channels_last)

        samples = time_interleaved({n: _forward(m, x) for n, m in models.items()},
                                   repeats=args.repeats, warmup=3)
        medians = {n: statistics.median(s) for n, s in samples.items()}
        for name in models:
            rows.append({"model": name, "threads": threads, "batch": args.batch,
                         "median_s": medians[name], "images_per_s": args.batch / medians[name],
                         "speedup": medians["dense"] / medians[name], "macs": macs[name]})
            print(f"{threads} thread(s) {name}: {args.batch / medians[name]:.0f} img/s, "
                  f"{medians['dense'] / medians[name]:.2f}x dense, {macs[name] / 1e6:.2f}M MACs")
    with open(OUT_JSON.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"runs": []}
        data["speed"] = {"rows": rows, "torch": torch.__version__, "repeats": args.repeats,
                         "machine": platform.node(), "processor": platform.processor()}
        OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")


def zero(args: argparse.Namespace) -> None:
    """Test top-1 of the compressed models before any fine-tuning: the grouping search against
    the plain diagonal copy, from each dense model."""
    import tempfile

    import torch

    from vitmix import compress
    from vitmix.checkpoints.io import load_model, read_model, save_weights
    from vitmix.train.evaluation_job import evaluate_checkpoint

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            dense_file = dense_dir(seed) / "last.pth"
            saved = read_model(dense_file, "metaformer_ppaa_t")
            for name in ("g2", "g4", "e8g4"):
                flags = CONFIGS[name]
                groups = int(flags[flags.index("--groups") + 1])
                expansion = (float(flags[flags.index("--expansion") + 1])
                             if "--expansion" in flags else None)
                for grouping in ("search", "diagonal"):
                    model, kwargs = load_model("metaformer_ppaa_t", dense_file)
                    spec = {"groups": groups, "expansion": expansion, "cca": False}
                    _, report = compress(model, **spec, grouping=grouping, measure_macs=False)
                    path = Path(tmp) / f"{name}_{grouping}_{seed}.safetensors"
                    save_weights(model.state_dict(), path, {
                        "model": "metaformer_ppaa_t", "model_kwargs": json.dumps(kwargs),
                        "schemify": json.dumps(spec), "classes": json.dumps(saved.classes),
                        "deployed": "0", "eval_crop_pct": "1.0",
                        "eval_interpolation": "bicubic"})  # what the runs evaluate with
                    result = evaluate_checkpoint("metaformer_ppaa_t", path, workers=0,
                                                 out_dir=Path(tmp) / "eval")
                    rows.append({"config": name, "grouping": grouping, "seed": seed,
                                 "kept": report.kept, "top1": result["top1"]})
                    print(f"seed {seed} {name} {grouping}: kept {100 * report.kept:.1f}%, test "
                          f"top-1 {result['top1']:.2f}% before fine-tuning", flush=True)
    with open(OUT_JSON.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"runs": []}
        data["before_fine_tuning"] = rows
        OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")


def _forward(model, x):
    import torch

    def forward():
        with torch.inference_mode():
            model(x)

    return forward


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def tables(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(OUT_JSON.read_text())
    runs, dense_runs = data["runs"], data.get("dense", [])
    speedups = {(r["model"], r["threads"]): r["speedup"] for r in data.get("speed", {}).get(
        "rows", [])}
    dense_test = [d["summary"]["trained"]["top1"] for d in dense_runs]
    lines = ["| model | fine-tune | seeds | test top-1 | validation top-1 | MACs @32 | "
             "deployed throughput vs dense (1 / 2 threads) | MLP weight kept |",
             "|---|---|---|---|---|---|---|---|"]
    if dense_runs:
        lines.append(
            f"| dense `metaformer_ppaa_t` (20-minute runs) | - | "
            f"{', '.join(str(d['seed']) for d in dense_runs)} | **{_spread(dense_test)}** | "
            f"{_spread([d['summary']['val']['trained']['top1'] for d in dense_runs])} | "
            f"{dense_runs[0]['summary']['macs'] / 1e6:.2f}M | 1.00x / 1.00x | 100% |")
    for row in data.get("scratch", [])[:1]:
        scratch = data["scratch"]
        lines.append(
            f"| E4G2 from scratch, no CCA (25-minute runs) | - | "
            f"{', '.join(str(d['seed']) for d in scratch)} | "
            f"{_spread([d['summary']['trained']['top1'] for d in scratch])} | "
            f"{_spread([d['summary']['val']['trained']['top1'] for d in scratch])} | "
            f"{row['summary']['macs'] / 1e6:.2f}M | as g2 | - |")
    for label, (test, macs) in recorded_scratch().items():
        lines.append(f"| {label} | - | 0, 1, 2 | {_spread(test)} | | {macs / 1e6:.2f}M | | - |")
    for name in CONFIGS:
        for minutes in sorted({r["minutes"] for r in runs if r["config"] == name}):
            group = sorted((r for r in runs if r["config"] == name and r["minutes"] == minutes),
                           key=lambda r: r["seed"])
            test = [r["summary"]["trained"]["top1"] for r in group]
            val = [r["summary"]["val"]["trained"]["top1"] for r in group]
            kept = statistics.mean(r["summary"]["compression"]["kept"] for r in group)
            base = name.split("_")[0]
            speed = " / ".join(f"{speedups[(base, t)]:.2f}x" if (base, t) in speedups else "-"
                               for t in (1, 2))
            lines.append(f"| {name} | {minutes:g} min | {', '.join(str(r['seed']) for r in group)}"
                         f" | {_spread(test)} | {_spread(val)} | "
                         f"{group[0]['summary']['macs'] / 1e6:.2f}M | {speed} | "
                         f"{100 * kept:.1f}% |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "compress_fashion_mnist.md").write_text(text)
    print(text)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in CONFIGS:
        points = sorted({r["minutes"] for r in runs if r["config"] == name})
        if not points:
            continue
        means, stds = [], []
        for minutes in points:
            test = [r["summary"]["trained"]["top1"] for r in runs
                    if r["config"] == name and r["minutes"] == minutes]
            means.append(statistics.mean(test))
            stds.append(statistics.stdev(test) if len(test) > 1 else 0.0)
        ax.errorbar(points, means, yerr=stds, marker="o", capsize=3, label=name)
    if dense_test:
        ax.axhline(statistics.mean(dense_test), color="black", ls="--",
                   label="dense model (20 min)")
        ax.axhline(statistics.mean(dense_test) - 0.5, color="grey", ls=":",
                   label="dense - 0.5 points (target)")
    if data.get("scratch"):
        test = [d["summary"]["trained"]["top1"] for d in data["scratch"]]
        ax.plot([5], [statistics.mean(test)], marker="*", ms=12, ls="none", color="tab:red",
                label=f"E4G2 from scratch, 25 min ({len(test)} seeds)")
    for (label, (test, _)), colour in zip(recorded_scratch().items(), ("tab:pink", "tab:brown"),
                                          strict=False):
        ax.axhline(statistics.mean(test), ls="-.", lw=1, color=colour, label=label)
    ax.set(xlabel="fine-tune minutes (after the dense model's 20)", ylabel="test top-1, %",
           title="Fashion-MNIST: dense model compressed to SCHEME (mean ± std, 3 seeds)")
    ax.set_xticks([1, 2, 5])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "compress_fashion_mnist_accuracy.png", dpi=120)


def recorded_scratch() -> dict[str, tuple[list[float], int]]:
    """SCHEME trained from scratch for 20 minutes in the same recipe on an earlier day (the
    2026-12-02 record, fashion_mnist_budget.json): label -> (test top-1 per seed, MACs)."""
    path = RESULTS / "fashion_mnist_budget.json"
    if not path.exists():
        return {}
    runs = json.loads(path.read_text())
    labels = {"e8g2_no_cca": "E8G2 from scratch, no CCA, 20 min (12-02 record)",
              "e8g4_cosine": "E8G4 from scratch, CCA cosine, 20 min (12-02 record)"}
    found = {}
    for config, label in labels.items():
        chosen = [r for r in runs if r["config"] == config and r["minutes"] == 20]
        if chosen:
            found[label] = ([r["summary"]["trained"]["top1"] for r in chosen],
                            chosen[0]["summary"]["macs"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="compress and fine-tune")
    p.add_argument("--pair", nargs=3, action="append", required=True,
                   metavar=("CONFIG", "SEED", "MINUTES"), help="repeatable")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("record", help="record the dense and from-scratch runs' summaries")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p = sub.add_parser("speed", help="deployed throughput against the dense model")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p = sub.add_parser("zero", help="test top-1 of the compressed models before fine-tuning")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    sub.add_parser("tables", help="the table and the plot from the JSON")
    args = parser.parse_args()
    if args.command == "run":
        unknown = [c for c, _, _ in args.pair if c not in CONFIGS]
        if unknown:
            parser.error(f"unknown configuration {unknown[0]!r}; one of {', '.join(CONFIGS)}")
    commands = {"run": run, "record": record, "zero": zero, "speed": speed, "tables": tables}
    commands[args.command](args)


if __name__ == "__main__":
    main()
