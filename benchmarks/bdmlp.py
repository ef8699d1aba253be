"""Block-diagonal MLP speed, side by side in one process (issue 5, item 2).

Batch 32 of 196 tokens with 320 channels (the widths of SCHEMEformer-S12's third stage at 224),
E = 8, float32, eval mode, no grad; the training step is forward and backward in train mode.
Every ratio is a ratio of medians over interleaved repeats. Run from the repository root:

    python benchmarks/bdmlp.py [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch
from timm.layers import Mlp
from torch import nn

from vitmix.accelerate import accelerate
from vitmix.bench.speed import median_ms, time_interleaved
from vitmix.layers import SchemeMlp


class GroupedConvMlp(nn.Module):
    """The BD-MLP as the authors build it: grouped 1x1 convolutions on (B, C, H, W) maps."""

    def __init__(self, dim: int, hidden: int, groups: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1, groups=groups)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def deployed_scheme_mlp(dim: int, hidden: int, groups: int, channels_first: bool) -> SchemeMlp:
    mlp = SchemeMlp(dim, hidden, groups=groups, cca=True, channels_first=channels_first)
    mlp.fuse_mixing()
    return accelerate(mlp.eval())  # the fused CPU kernels, as vitmix.deploy gives them


def eval_call(module: nn.Module, x: torch.Tensor):
    def call():
        with torch.inference_mode():
            return module(x)
    return call


def train_step_call(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def call():
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)
    return call


def check_same(name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    # The timed candidates must compute the same function, or their ratio means nothing.
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        err = (got - expected).abs().max().item()
        raise SystemExit(f"{name} does not match its reference (max abs error {err:.3g})")


def verdict(ratio: float, target: float, at_most: bool) -> str:
    met = ratio <= target if at_most else ratio >= target
    return f"target {'<=' if at_most else '>='} {target:g}: {'met' if met else 'NOT met'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=196, help="a square number (14x14 map)")
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    side = int(round(args.tokens ** 0.5))
    if side * side != args.tokens:
        parser.error(f"--tokens must be a square number, got {args.tokens}")

    torch.manual_seed(0)
    b, n, c, e, g = args.batch, args.tokens, args.dim, args.expansion, args.groups
    hidden = e * c
    tokens = torch.randn(b, n, c)
    maps = tokens.transpose(1, 2).reshape(b, c, side, side).contiguous()
    maps_cl = maps.contiguous(memory_format=torch.channels_last)

    dense = Mlp(c, hidden).eval()
    scheme = deployed_scheme_mlp(c, hidden, g, channels_first=False)
    scheme_dense = deployed_scheme_mlp(c, hidden, 1, channels_first=False)
    scheme_maps = deployed_scheme_mlp(c, hidden, g, channels_first=True)
    scheme_maps.load_state_dict(scheme.state_dict())
    conv = GroupedConvMlp(c, hidden, g).eval()
    with torch.no_grad():  # the same weights, so the outputs can be checked against each other
        conv.fc1.weight.copy_(scheme.fc1.weight.reshape(hidden, c // g, 1, 1))
        conv.fc1.bias.copy_(scheme.fc1.bias)
        conv.fc2.weight.copy_(scheme.fc2.weight.reshape(c, hidden // g, 1, 1))
        conv.fc2.bias.copy_(scheme.fc2.bias)
    conv_cl = GroupedConvMlp(c, hidden, g).eval().to(memory_format=torch.channels_last)
    conv_cl.load_state_dict(conv.state_dict())

    with torch.inference_mode():
        ref_tokens = scheme(tokens)
        ref_maps = ref_tokens.transpose(1, 2).reshape(b, c, side, side)
        check_same("grouped-conv MLP", conv(maps), ref_maps)
        check_same("grouped-conv MLP (channels_last)", conv_cl(maps_cl), ref_maps)
        check_same("SchemeMlp on maps", scheme_maps(maps), ref_maps)
        check_same("SchemeMlp on maps (channels_last)", scheme_maps(maps_cl), ref_maps)

    inference = {
        "dense timm Mlp (B,N,C)": eval_call(dense, tokens),
        "SchemeMlp G=1 deployed (B,N,C)": eval_call(scheme_dense, tokens),
        f"SchemeMlp G={g} deployed (B,N,C)": eval_call(scheme, tokens),
        f"grouped 1x1 conv G={g} (B,C,H,W)": eval_call(conv, maps),
        f"grouped 1x1 conv G={g} channels_last": eval_call(conv_cl, maps_cl),
        f"SchemeMlp G={g} deployed (B,C,H,W)": eval_call(scheme_maps, maps),
        f"SchemeMlp G={g} deployed channels_last": eval_call(scheme_maps, maps_cl),
    }
    train_cca = SchemeMlp(c, hidden, groups=g, cca=True).train()
    train_plain = SchemeMlp(c, hidden, groups=g, cca=False).train()
    train_plain.load_state_dict(train_cca.state_dict(), strict=False)
    grad = torch.randn(b, n, c)
    training = {
        f"train step G={g}, CCA on": train_step_call(train_cca, tokens, grad),
        f"train step G={g}, CCA off": train_step_call(train_plain, tokens, grad),
    }
    samples = time_interleaved({**inference, **training}, repeats=args.repeats,
                               warmup=args.warmup)
    ms = {name: median_ms(s) for name, s in samples.items()}

    print(f"BD-MLP, batch {b} x {n} tokens x {c} channels, E={e}, float32, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}; median of {args.repeats} interleaved repeats")
    for name, value in ms.items():
        print(f"  {name:40s} {value:9.2f} ms")

    best_conv = min(ms[f"grouped 1x1 conv G={g} (B,C,H,W)"],
                    ms[f"grouped 1x1 conv G={g} channels_last"])
    best_scheme_maps = min(ms[f"SchemeMlp G={g} deployed (B,C,H,W)"],
                           ms[f"SchemeMlp G={g} deployed channels_last"])
    ratios = {
        "scheme_vs_dense_time": ms[f"SchemeMlp G={g} deployed (B,N,C)"]
        / ms["dense timm Mlp (B,N,C)"],
        "conv_vs_scheme_speedup": best_conv / best_scheme_maps,
        "cca_on_vs_off_train_time": ms[f"train step G={g}, CCA on"]
        / ms[f"train step G={g}, CCA off"],
        "scheme_vs_scheme_dense_time": ms[f"SchemeMlp G={g} deployed (B,N,C)"]
        / ms["SchemeMlp G=1 deployed (B,N,C)"],
        "scheme_dense_vs_timm_dense_time": ms["SchemeMlp G=1 deployed (B,N,C)"]
        / ms["dense timm Mlp (B,N,C)"],
    }
    print("ratios:")
    print(f"  deployed SchemeMlp G={g} time / dense timm Mlp time      "
          f"{ratios['scheme_vs_dense_time']:.3f}x  "
          f"({verdict(ratios['scheme_vs_dense_time'], 0.40, True)}; ideal {1 / g:.2f}x + act)")
    print(f"  grouped-conv time / SchemeMlp time (each at its best)   "
          f"{ratios['conv_vs_scheme_speedup']:.3f}x  "
          f"({verdict(ratios['conv_vs_scheme_speedup'], 1.5, False)})")
    print(f"  train step time, CCA on / CCA off                      "
          f"{ratios['cca_on_vs_off_train_time']:.3f}x  "
          f"({verdict(ratios['cca_on_vs_off_train_time'], 1.5, True)}; "
          f"CCA adds {g / e:.2f}x the BD-MLP's MACs)")
    print(f"  for scale: G={g} / G=1 through the same SchemeMlp kernels  "
          f"{ratios['scheme_vs_scheme_dense_time']:.3f}x; SchemeMlp G=1 / timm Mlp "
          f"{ratios['scheme_dense_vs_timm_dense_time']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "threads": torch.get_num_threads(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "median_ms": ms, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
