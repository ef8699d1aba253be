"""Eval speed of Group-Mix Attention: impl="fast" against impl="reference", in one process.

The fast model is accelerated (vitmix.accelerate: fused CPU kernels, as vitmix.deploy gives
them); the reference model is the plain per-segment form, as export and FLOP counting see it.

Both models share the same weights; timings alternate between them (fast, reference, fast, ...)
so machine load hits both alike, and the ratio of the medians is printed.

    python benchmarks/gma_speed.py --model groupmixformer_t --batch-size 8 --img-size 224
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import vitmix  # noqa: F401  (registers the models)
from vitmix.accelerate import accelerate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="groupmixformer_t")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per implementation")
    parser.add_argument("--attn", default="factorized", choices=("factorized", "softmax"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args(argv)


@torch.no_grad()
def time_once(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fast = accelerate(timm.create_model(args.model, impl="fast", attn=args.attn).eval())
    reference = timm.create_model(args.model, impl="reference", attn=args.attn).eval()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    with torch.no_grad():
        diff = (fast(x) - reference(x)).abs().max().item()
    for _ in range(args.warmup):
        time_once(fast, x)
        time_once(reference, x)
    times = {"fast": [], "reference": []}
    for _ in range(args.repeats):
        times["fast"].append(time_once(fast, x))
        times["reference"].append(time_once(reference, x))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} attn={args.attn} eval, batch {args.batch_size} at {args.img_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    for name, values in times.items():
        print(f"  {name:9s} median {med[name] * 1e3:8.1f} ms  "
              f"(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})")
    # Each (fast, reference) pair ran back to back, so its ratio sees nearly the same load.
    paired = statistics.median(r / f for f, r in zip(times["fast"], times["reference"],
                                                     strict=True))
    print(f"  max |fast - reference| on the logits: {diff:.2e}")
    print(f"  speed-up fast vs reference: {med['reference'] / med['fast']:.2f}x (medians), "
          f"{paired:.2f}x (median of paired runs), "
          f"{min(times['reference']) / min(times['fast']):.2f}x (minima)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
