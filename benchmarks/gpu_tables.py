"""SCHEMEformer-S12 (E8 G4) against MetaFormer-S12 on a GPU: training step time and peak memory,
and inference throughput of the deployed models, as ratios taken in one process.

Every candidate of a table is timed interleaved (each repeat runs every candidate once, in turn;
the median of each is kept), in bf16 autocast with channels-last images, eager and through
torch.compile. A training step is forward, backward and a fused AdamW update on random images
and labels; its peak memory is the most the CUDA allocator held during one step above what it
held before it (the model, the optimizer state and the inputs). Deployed models are
``vitmix.deploy``'s inference form without the CPU kernels.

Candidates: the dense MetaFormer-S12 (E4); SCHEMEformer-S12 E8 G4 with CCA learned (the paper's
training form), with the cosine CCA schedule at its end (CCA still computed, at weight 0), and
without CCA; and, to measure what ``--lean-training`` would cost on a GPU, SCHEME with CCA
through vitmix.accelerate's memory-lean functions.

    python benchmarks/gpu_tables.py --json gpu_tables.json              # on a GPU machine
    python benchmarks/gpu_tables.py --smoke                             # the CPU smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import timm
import torch
import torch.nn.functional as F

import vitmix  # noqa: F401  (registers the models)
from vitmix import deploy
from vitmix.accelerate import accelerate
from vitmix.bench.speed import time_interleaved
from vitmix.complexity import count_macs
from vitmix.layers.scheme import SchemeMlp


@dataclass(frozen=True)
class Candidate:
    label: str
    model: str
    kwargs: dict = field(default_factory=dict)
    cca_at_zero: bool = False  # the cosine schedule at its end: CCA computed, weighted 0
    lean: bool = False  # vitmix.accelerate's memory-lean training functions
    dense: bool = False  # the baseline the ratios divide by


def train_candidates(size: str, compiled: bool) -> list[Candidate]:
    dense, scheme = f"metaformer_ppaa_{size}", f"schemeformer_ppaa_{size}_e8_g4"
    out = [Candidate("dense E4", dense, dense=True),
           Candidate("E8G4, CCA learned", scheme),
           Candidate("E8G4, no CCA", scheme, {"cca": False})]
    if not compiled:  # compiling costs a minute a model: the rows that decide come first
        out.insert(2, Candidate("E8G4, CCA at weight 0", scheme, {"cca_schedule": "cosine"},
                                cca_at_zero=True))
    return out


def lean_candidates(size: str) -> list[Candidate]:
    scheme = f"schemeformer_ppaa_{size}_e8_g4"
    return [Candidate("E8G4, CCA learned, plain layers", scheme, dense=True),
            Candidate("E8G4, CCA learned, --lean-training functions", scheme, lean=True)]


def build(candidate: Candidate, img_size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(candidate.model, num_classes=1000, img_size=img_size,
                              **candidate.kwargs)
    if candidate.cca_at_zero:
        for layer in model.modules():
            if isinstance(layer, SchemeMlp):
                layer.set_progress(1.0)
    model = model.to(device).to(memory_format=torch.channels_last)
    if candidate.lean:
        accelerate(model)
    return model


def _inputs(batch: int, img_size: int, device: torch.device):
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    return x.contiguous(memory_format=torch.channels_last), y


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model, batch: int, img_size: int, device: torch.device, backend: str | None):
    model.train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    forward = torch.compile(model, backend=backend) if backend else model
    x, y = _inputs(batch, img_size, device)

    def step():
        with _autocast(device):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference(model, batch: int, img_size: int, device: torch.device, backend: str | None):
    model.eval()
    forward = torch.compile(model, backend=backend) if backend else model
    x, _ = _inputs(batch, img_size, device)

    def run():
        with torch.inference_mode(), _autocast(device):
            forward(x)

    return run


def peak_bytes(step, device: torch.device) -> int | None:
    """The most the CUDA allocator held during one call of ``step`` above what it held before
    (None on a CPU, where the allocator keeps no such count)."""
    if device.type != "cuda":
        step()
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def table(kind: str, cands: list[Candidate], batch: int, img_size: int, device: torch.device,
          backend: str | None, repeats: int, warmup: int) -> dict:
    """One table: every candidate timed interleaved (and its memory, for training)."""
    start = time.perf_counter()
    fns, memory = {}, {}
    for c in cands:
        model = build(c, img_size, device)
        if kind == "inference":
            model = copy.deepcopy(model)
            deploy(model, accelerate=False)
            fns[c.label] = inference(model, batch, img_size, device, backend)
        else:
            fns[c.label] = train_step(model, batch, img_size, device, backend)
    samples = time_interleaved(fns, repeats=repeats, warmup=warmup, device=device)
    if kind != "inference":
        for c in cands:  # after the warm-up: optimizer state made, compiled graphs ready
            memory[c.label] = peak_bytes(fns[c.label], device)
    ms = {label: statistics.median(s) * 1e3 for label, s in samples.items()}
    spread = {label: (min(s) * 1e3, max(s) * 1e3) for label, s in samples.items()}
    base = next(c.label for c in cands if c.dense)
    rows = []
    for c in cands:
        row = {"candidate": c.label, "ms": ms[c.label], "min_ms": spread[c.label][0],
               "max_ms": spread[c.label][1], "images_per_s": batch / ms[c.label] * 1e3,
               "speed_vs_dense": ms[base] / ms[c.label]}
        if memory.get(c.label) is not None:
            row["peak_mib"] = memory[c.label] / 2**20
            row["peak_vs_dense"] = memory[c.label] / max(memory[base], 1)
        rows.append(row)
    del fns
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"kind": kind, "batch": batch, "img_size": img_size,
            "mode": f"torch.compile ({backend})" if backend else "eager",
            "baseline": base, "repeats": repeats, "rows": rows,
            "seconds": time.perf_counter() - start}


def markdown(result: dict) -> str:
    what = {"train": "training step (forward, backward, fused AdamW)",
            "lean": "training step, plain layers against --lean-training's functions",
            "inference": "inference of the deployed models"}[result["kind"]]
    lines = [f"\n{what}: batch {result['batch']} at {result['img_size']}, bf16 autocast, "
             f"channels-last, {result['mode']}; median of {result['repeats']} interleaved "
             f"repeats",
             "| candidate | ms (min-max) | images/s | speed vs baseline | peak MiB | "
             "peak vs baseline |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        peak = (f"{r['peak_mib']:.0f} | {r['peak_vs_dense']:.2f}x" if "peak_mib" in r
                else "- | -")
        lines.append(f"| {r['candidate']} | {r['ms']:.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f})"
                     f" | {r['images_per_s']:.0f} | {r['speed_vs_dense']:.2f}x | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--compiled-batches", type=int, nargs="*", default=[128],
                        help="batches timed compiled too (each model compiles once per batch)")
    parser.add_argument("--parts", nargs="+", default=["eager", "lean", "compiled"],
                        choices=["eager", "lean", "compiled"])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models at 32x32, batch 2, compile backend 'eager' (a test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size, img_size = ("t", 32) if args.smoke else ("s12", 224)
    if args.smoke:
        args.batches, args.compiled_batches, args.backend = [2], [2], "eager"
        args.repeats, args.warmup = 1, 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    else:
        where = "CPU"
    macs = {name: count_macs(timm.create_model(name, img_size=img_size), img_size, 3)
            for name in (f"metaformer_ppaa_{size}", f"schemeformer_ppaa_{size}_e8_g4")}
    print(f"device: {where}; torch {torch.__version__}; MACs at {img_size}: "
          + ", ".join(f"{k} {v / 1e9:.3f}G" for k, v in macs.items()), flush=True)
    results = []

    def record(result: dict) -> None:
        results.append(result)
        print(markdown(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": where, "torch": torch.__version__, "macs": macs,
                           "results": results}, f, indent=1)

    for batch in args.batches if "eager" in args.parts else []:
        record(table("train", train_candidates(size, False), batch, img_size, device, None,
                     args.repeats, args.warmup))
        record(table("inference", train_candidates(size, False)[:2], batch, img_size, device,
                     None, args.repeats, args.warmup))
    if "lean" in args.parts:
        record(table("lean", lean_candidates(size), args.batches[0], img_size, device, None,
                     max(args.repeats // 3, 2), 1))
    for batch in args.compiled_batches if "compiled" in args.parts else []:
        record(table("train", train_candidates(size, True), batch, img_size, device,
                     args.backend, args.repeats, args.warmup))
        record(table("inference", train_candidates(size, True)[:2], batch, img_size, device,
                     args.backend, args.repeats, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
