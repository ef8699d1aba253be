"""`vitmix bench`: params, MACs, throughput and latency of deployed models, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BATCH_SIZES = [1, 32]  # latency, throughput


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="params, MACs, images/s and latency of deployed models",
        description="Time models in their deployed form (CCA folded away, eval mode, "
                    "inference mode), all candidates interleaved so that they share the "
                    "machine's load; latency is the median batch time after warm-up. Writes "
                    "bench.json and bench.md to --out, and charts with --plot.",
    )
    p.add_argument("--models", nargs="+", required=True, metavar="NAME",
                   help="timm model names (vitmix's or any other)")
    p.add_argument("--img-size", type=int, default=224, help="input size (default: %(default)s)")
    p.add_argument("--batch-size", type=int, nargs="+", default=BATCH_SIZES, metavar="B",
                   help=f"batch sizes to time (default: {' '.join(map(str, BATCH_SIZES))})")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="autocast dtype, bf16 on GPUs (default: %(default)s, float32)")
    p.add_argument("--memory-format", default="auto",
                   choices=["auto", "channels_first", "channels_last"],
                   help="auto times both and keeps each model's faster one (default: "
                        "%(default)s)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed runs per model and batch size (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed runs first (default: %(default)s)")
    p.add_argument("--out", default="runs/bench",
                   help="folder for bench.json, bench.md, PNGs (default: %(default)s)")
    p.add_argument("--plot", action="store_true",
                   help="draw throughput-vs-MACs and, when accuracies are known, "
                        "accuracy-vs-MACs charts")
    p.add_argument("--accuracy", nargs="*", default=[], metavar="NAME=ACC",
                   help="top-1 (%%) of a model, for the accuracy chart")
    p.add_argument("--accuracy-json", default=None,
                   help="a JSON object {model: top-1 %%}, for the accuracy chart")
    p.add_argument("--no-published", action="store_true",
                   help="do not fall back on the authors' published ImageNet top-1")
    p.set_defaults(func=run)


def _validate(args: argparse.Namespace) -> dict[str, float]:
    """Every check that needs no model built, so mistakes fail before minutes of timing."""
    import timm
    import torch

    import vitmix  # noqa: F401  (registers vitmix's models)

    from ..bench.report import load_accuracy_json, parse_accuracy
    from ..layers.checks import int_up_to
    from ..limits import MAX_BATCH_SIZE, MAX_COUNT, MAX_IMG_SIZE
    from ..paths import check_output_folder

    unknown = [n for n in args.models if not timm.is_model(n)]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: not registered with timm "
                         f"(`vitmix list` shows vitmix's models)")
    if len(set(args.models)) != len(args.models):
        raise ValueError(f"model names repeat in --models {args.models}")
    int_up_to(MAX_IMG_SIZE).check("--img-size", args.img_size)
    for size in args.batch_size:
        int_up_to(MAX_BATCH_SIZE).check("--batch-size", size)
    int_up_to(MAX_COUNT).check("--repeats", args.repeats)
    int_up_to(MAX_COUNT, low=0).check("--warmup", args.warmup)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    given = load_accuracy_json(args.accuracy_json) if args.accuracy_json else {}
    given.update(parse_accuracy(a) for a in args.accuracy)
    stray = sorted(set(given) - set(args.models))
    if stray:
        raise ValueError(f"accuracies given for models not benchmarked: {', '.join(stray)}")
    check_output_folder(args.out, "--out")
    return given


def run(args: argparse.Namespace) -> int:
    given = _validate(args)
    from ..bench.report import (
        known_accuracies,
        machine_description,
        markdown_table,
        plot_accuracy_vs_macs,
        plot_throughput_vs_macs,
        results_json,
    )
    from ..bench.speed import benchmark_models
    from ..checkpoints.io import atomic_write_text

    results = benchmark_models(
        args.models, img_size=args.img_size, batch_sizes=args.batch_size, device=args.device,
        amp=args.amp, memory_format=args.memory_format, repeats=args.repeats,
        warmup=args.warmup, progress=lambda msg: print(msg, flush=True),
    )
    accuracies = known_accuracies(args.models, given, published=not args.no_published,
                                  img_size=args.img_size)
    machine = machine_description(args.device)
    settings = dict(img_size=args.img_size, batch_sizes=args.batch_size, device=args.device,
                    amp=args.amp, memory_format=args.memory_format, repeats=args.repeats,
                    warmup=args.warmup, machine=machine)
    out = Path(args.out)
    atomic_write_text(out / "bench.json", json.dumps(results_json(results, settings, accuracies),
                                                     indent=2))
    table = markdown_table(results, accuracies)
    precision = "float32" if args.amp == "none" else f"{args.amp} autocast"
    caption = (f"Deployed models, {precision}, median of {args.repeats} interleaved runs after "
               f"{args.warmup} warm-up runs; {machine}.")
    atomic_write_text(out / "bench.md", f"{table}\n\n{caption}\n")
    print(table)
    print(caption)
    if any(a.source == "published" for a in accuracies.values()):
        print("top-1 marked (published): the authors' ImageNet-1K figure, not measured here.")
    if args.plot:
        largest = max(args.batch_size)
        speed_png = plot_throughput_vs_macs(results, largest, machine,
                                            out / "throughput_vs_macs.png")
        print(f"chart: {speed_png}")
        acc_png = plot_accuracy_vs_macs(results, accuracies, out / "accuracy_vs_macs.png")
        print(f"chart: {acc_png}" if acc_png else
              "no accuracy known for these models: pass --accuracy NAME=ACC for that chart")
    print(f"results: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0
