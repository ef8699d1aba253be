"""Time the models of two vitmix source trees side by side, in one process.

A change to the layers or models (for example the rewrite that made them scriptable and
traceable) must not make them slower. This script loads a second copy of vitmix, the "before"
tree (e.g. a ``git worktree`` of the commit before the change), under another package name,
builds each model from both trees with the same weights, and times them interleaved: eval
forward (no_grad) and a training step (forward, backward), the median of the repeats.

    git worktree add /tmp/before HEAD~1
    PYTHONPATH=src python benchmarks/before_after.py --before /tmp/before/src/vitmix

Prints one line per model and mode with both medians and the ratio after/before (under 1 is
faster). Models are built through their classes, not timm's registry: both trees register the
same names, and the one imported last would win.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

# name -> (family module, family class, builder of the constructor arguments, image size)
CASES = {
    "schemeformer_ppaa_t_e8_g4 @32": (
        "vitmix_metaformer", "MetaFormer",
        lambda m: m._ppaa("t", mlp_ratios=8, mlp_groups=4, cca=True, stem="conv"), 32),
    "schemeformer_ppaa_s12_e8_g4 @224": (
        "vitmix_metaformer", "MetaFormer",
        lambda m: m._ppaa("s12", mlp_ratios=8, mlp_groups=4, cca=True), 224),
    "metaformer_ppaa_s12 @224": (
        "vitmix_metaformer", "MetaFormer",
        lambda m: m._ppaa("s12", mlp_ratios=4, mlp_groups=1, cca=False), 224),
    "groupmixformer_t @224": (
        "vitmix_groupmixformer", "GroupMixFormer",
        lambda m: dict(m.MODEL_SPECS["groupmixformer_t"]), 224),
}


def load_tree(src: Path, package: str):
    """Import the vitmix package at ``src`` as ``package`` (its imports are relative)."""
    root = Path(tempfile.mkdtemp(prefix="before_after_"))
    shutil.copytree(src, root / package)
    sys.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm warns that the registered names are overwritten
        return importlib.import_module(package)


def build(package: str, case: tuple, num_classes: int = 1000) -> torch.nn.Module:
    module_name, class_name, args, _ = case
    module = importlib.import_module(f"{package}.models.{module_name}")
    return getattr(module, class_name)(num_classes=num_classes, **args(module))


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True,
                        help="the before tree's package folder (.../src/vitmix)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import vitmix  # noqa: F401  (the tree under test, from PYTHONPATH)

    load_tree(args.before, "vitmix_before")
    results = []
    for name in args.cases:
        case = CASES[name]
        torch.manual_seed(0)
        after = build("vitmix", case)
        before = build("vitmix_before", case)
        before.load_state_dict(after.state_dict())
        size = case[3]
        x = torch.randn(args.batch, 3, size, size)
        for mode in ("eval forward", "train step"):
            models = {"after": after, "before": before}

            def run(model, mode=mode, x=x):
                if mode == "eval forward":
                    model.eval()
                    with torch.no_grad():
                        model(x)
                else:
                    model.train()
                    model(x).sum().backward()

            for model in models.values():  # warm-up
                run(model)
                run(model)
            times = {"after": [], "before": []}
            for _ in range(args.repeats):
                for key, model in models.items():  # interleaved
                    times[key].append(time_once(lambda model=model: run(model)))
            med = {k: statistics.median(v) for k, v in times.items()}
            row = dict(model=name, mode=mode, batch=args.batch, before_s=med["before"],
                       after_s=med["after"], ratio=med["after"] / med["before"])
            results.append(row)
            print(f"{name:36s} {mode:13s} before {med['before'] * 1e3:8.1f} ms  "
                  f"after {med['after'] * 1e3:8.1f} ms  after/before {row['ratio']:.3f}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(threads=args.threads, torch=torch.__version__,
                                             results=results), indent=2) + "\n")


if __name__ == "__main__":
    main()
