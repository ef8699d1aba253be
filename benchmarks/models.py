"""Whole-model throughput, SCHEMEformer vs its dense MetaFormer baseline (issue 5, item 3).

Both models deployed (eval mode, CCA folded away), float32, batch 32 at 224, inference mode,
each timed in both memory formats and kept at its faster one, all candidates interleaved.

Besides the registered dense baseline (timm's Mlp on 1x1 convolutions), the dense model is
also timed with its MLPs run through SchemeMlp's kernels at G=1 (same weights, same function),
so that the ratio that counts compares the architectures, not two implementations of the MLP.
Run from the repository root:

    python benchmarks/models.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys

import torch

from vitmix import deploy, schemify
from vitmix.bench.speed import median_ms, time_interleaved
from vitmix.checkpoints import load_model
from vitmix.complexity import count_macs

SCHEME = "schemeformer_ppaa_s12_e8_g4"
DENSE = "metaformer_ppaa_s12"
DENSE_FUSED = "metaformer_ppaa_s12 (MLPs as SchemeMlp G=1)"
LAYOUTS = {"channels_first": torch.contiguous_format, "channels_last": torch.channels_last}


def dense_through_scheme_kernels(dense: torch.nn.Module) -> torch.nn.Module:
    """The dense model with every timm Mlp replaced by a SchemeMlp(G=1) holding its weights."""
    twin = copy.deepcopy(dense)
    schemify(twin, groups=1, cca=False, init_from_dense=True, measure_macs=False)
    deploy(twin)
    return twin


def forward_call(model: torch.nn.Module, x: torch.Tensor):
    def call():
        with torch.inference_mode():
            return model(x)
    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    models = {SCHEME: load_model(SCHEME, img_size=args.img_size, deploy=True)[0],
              DENSE: load_model(DENSE, img_size=args.img_size, deploy=True)[0]}
    models[DENSE_FUSED] = dense_through_scheme_kernels(models[DENSE])
    macs = {name: count_macs(m, args.img_size) for name, m in models.items()}
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    with torch.inference_mode():  # the twin must compute the same function
        small = x[:2]
        err = (models[DENSE_FUSED](small) - models[DENSE](small)).abs().max().item()
    if err > 1e-3:
        raise SystemExit(f"the G=1 twin differs from the dense model by {err:.3g}")

    candidates = {}
    for name, model in models.items():
        for layout, fmt in LAYOUTS.items():
            laid_out = copy.deepcopy(model).to(memory_format=fmt)
            candidates[(name, layout)] = forward_call(laid_out, x.contiguous(memory_format=fmt))
    samples = time_interleaved(candidates, repeats=args.repeats, warmup=args.warmup)

    print(f"batch {args.batch} at {args.img_size}, float32, deployed, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__}; "
          f"median of {args.repeats} interleaved repeats")
    best = {}
    for name in models:
        per_layout = {lay: median_ms(samples[(name, lay)]) for lay in LAYOUTS}
        layout = min(per_layout, key=per_layout.get)
        best[name] = dict(latency_ms=per_layout[layout], layout=layout,
                          throughput=args.batch / (per_layout[layout] / 1e3),
                          per_layout_ms=per_layout, macs=macs[name])
        print(f"  {name:46s} {macs[name] / 1e9:.3f}G MACs  " + "  ".join(
            f"{lay} {ms:8.1f} ms" for lay, ms in per_layout.items())
            + f"  -> {best[name]['throughput']:6.1f} img/s ({layout})")

    # Per-repeat ratios show how much the machine's load moved the medians.
    def ratio_spread(dense_name: str) -> str:
        per_repeat = [d / s for d, s in zip(samples[(dense_name, best[dense_name]["layout"])],
                                            samples[(SCHEME, best[SCHEME]["layout"])], strict=True)]
        return f"per-repeat {min(per_repeat):.2f}-{max(per_repeat):.2f}, " \
               f"median {statistics.median(per_repeat):.2f}"

    macs_ratio = macs[DENSE] / macs[SCHEME]
    vs_registered = best[SCHEME]["throughput"] / best[DENSE]["throughput"]
    vs_fused = best[SCHEME]["throughput"] / best[DENSE_FUSED]["throughput"]
    strictest = min(vs_registered, vs_fused)
    print("ratios (throughput of deployed SCHEMEformer / dense, each at its best layout):")
    print(f"  MACs ratio dense / SCHEME                                  {macs_ratio:.3f}x")
    print(f"  vs {DENSE} as registered (timm Mlp, fused kernels) {vs_registered:.3f}x  "
          f"({ratio_spread(DENSE)})")
    print(f"  vs the dense model through the same fused kernels       {vs_fused:.3f}x  "
          f"({ratio_spread(DENSE_FUSED)})")
    print(f"  target >= 1.3 against the faster dense model: {strictest:.3f}x "
          f"{'met' if strictest >= 1.3 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "models": best,
                       "ratios": {"macs": macs_ratio, "vs_registered_dense": vs_registered,
                                  "vs_fused_dense": vs_fused}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
