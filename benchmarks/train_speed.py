"""Training cost of SCHEME against its dense twin: step time and memory, as ratios.

A training step is forward, backward and an AdamW update on random images and labels. Within a
setting every candidate model is timed interleaved in one process (each repeat runs every
candidate once, in turn) and summarised by its median; memory is measured for each candidate in
a fresh process: the peak resident memory of one forward and backward above what the model,
optimizer and inputs already held (on CUDA, the peak allocated memory above it), and the bytes
autograd kept for backward (the saved activations, parameters not counted).

Each model runs in two ways: "plain", the model as built (what a user of timm has), and
"lean" (or "accelerated"), after ``vitmix.accelerate``: the memory-lean training functions for
the MLPs, CCA and linear layers. A dense MetaFormer's MLPs are 1x1 convolutions, which
``accelerate`` leaves to oneDNN by default; "dense, MLPs lean" sends them through the same
functions as SCHEME's. Ratios are printed against the dense model as users have it (timm's Mlp)
and against the dense MLPs through the same path.

Like ``vitmix train``, the benchmark first sets glibc's malloc to keep freed memory
(vitmix.train.allocator); ``--allocator default`` leaves it as glibc starts, and memory probes
run in fresh processes with the same setting.

    python benchmarks/train_speed.py                     # every suite below
    python benchmarks/train_speed.py --suite s12 --batch 16 --amp none --repeats 7
    python benchmarks/train_speed.py --suite tiny --json out.json

Suites: ``s12`` (SCHEMEformer-S12 E8 G4 with CCA learned, cosine and off, against
MetaFormer-S12, 224x224, batches 16 and 32, float32 and bf16 autocast), ``tiny`` (the
Fashion-MNIST recipe's setting: 1 x 32 x 32 images, 10 classes, conv stem, batch 256, bf16,
eager and torch.compile), ``gmf`` (GroupMixFormer-T against its SCHEME variant, 224, batch 16).
On a CUDA machine it runs there (``--device cuda``, the default when one is present) and the
table names the device.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import timm
import torch
import torch.nn.functional as F

import vitmix  # noqa: F401  (registers the models)
from vitmix.accelerate import accelerate
from vitmix.bench.speed import time_interleaved
from vitmix.train.allocator import keep_freed_memory


@dataclass(frozen=True)
class Candidate:
    label: str
    model: str
    kwargs: dict = field(default_factory=dict)
    lean: bool = False  # vitmix.accelerate applied
    store_hidden: bool = False  # ... with the MLPs' hidden activation kept for backward
    lean_conv_mlp: bool = False  # ... with dense 1x1-conv MLPs through the lean functions too
    compiled: bool = False
    dense: bool = False  # the baseline the ratios divide by


@dataclass(frozen=True)
class Setting:
    suite: str
    img_size: int
    batch: int
    amp: str  # "none" or "bf16"
    in_chans: int = 3
    num_classes: int = 1000
    compile: bool = False


S12_DENSE, S12_SCHEME = "metaformer_ppaa_s12", "schemeformer_ppaa_s12_e8_g4"
T_DENSE = "metaformer_ppaa_t"
GMF_DENSE, GMF_SCHEME = "groupmixformer_t", "groupmixformer_t_scheme_e8_g4"


def candidates(setting: Setting) -> list[Candidate]:
    if setting.suite == "s12":
        return [
            Candidate("dense, plain", S12_DENSE, dense=True),
            Candidate("dense, accelerated", S12_DENSE, lean=True),
            Candidate("dense, MLPs lean", S12_DENSE, lean=True, lean_conv_mlp=True, dense=True),
            Candidate("E8G4 CCA learned, plain", S12_SCHEME),
            Candidate("E8G4 CCA learned, lean", S12_SCHEME, lean=True),
            Candidate("E8G4 CCA learned, lean, hidden stored", S12_SCHEME, lean=True,
                      store_hidden=True),
            Candidate("E8G4 CCA cosine, lean", S12_SCHEME, {"cca_schedule": "cosine"}, lean=True),
            Candidate("E8G4 no CCA, plain", S12_SCHEME, {"cca": False}),
            Candidate("E8G4 no CCA, lean", S12_SCHEME, {"cca": False}, lean=True),
        ]
    if setting.suite == "tiny":
        stem = {"stem": "conv"}
        if setting.compile:  # compiled models run the plain layers (inductor fuses them)
            return [Candidate("dense, compiled", T_DENSE, stem, compiled=True, dense=True),
                    Candidate("E8G2 CCA, compiled", "schemeformer_ppaa_t_e8_g2", stem,
                              compiled=True),
                    Candidate("E8G4 CCA, compiled", "schemeformer_ppaa_t_e8_g4", stem,
                              compiled=True)]
        return [
            Candidate("dense, plain", T_DENSE, stem, dense=True),
            Candidate("dense, accelerated", T_DENSE, stem, lean=True),
            Candidate("dense, MLPs lean", T_DENSE, stem, lean=True, lean_conv_mlp=True,
                      dense=True),
            Candidate("E8G2 CCA, plain", "schemeformer_ppaa_t_e8_g2", stem),
            Candidate("E8G2 CCA, lean", "schemeformer_ppaa_t_e8_g2", stem, lean=True),
            Candidate("E8G2 no CCA, lean", "schemeformer_ppaa_t_e8_g2", dict(stem, cca=False),
                      lean=True),
            Candidate("E8G4 CCA, plain", "schemeformer_ppaa_t_e8_g4", stem),
            Candidate("E8G4 CCA, lean", "schemeformer_ppaa_t_e8_g4", stem, lean=True),
        ]
    if setting.suite == "gmf":
        return [
            Candidate("dense, plain", GMF_DENSE, dense=True),
            Candidate("dense, lean", GMF_DENSE, lean=True, dense=True),
            Candidate("E8G4 CCA, plain", GMF_SCHEME),
            Candidate("E8G4 CCA, lean", GMF_SCHEME, lean=True),
        ]
    raise ValueError(f"unknown suite {setting.suite!r}")


def settings(suites: list[str], batches: list[int] | None, amps: list[str] | None
             ) -> list[Setting]:
    out = []
    for suite in suites:
        if suite == "s12":
            for batch in batches or [16, 32]:
                for amp in amps or ["none", "bf16"]:
                    out.append(Setting("s12", 224, batch, amp))
        elif suite == "tiny":
            for batch in batches or [256]:
                for amp in amps or ["bf16"]:
                    for compiled in (False, True):
                        out.append(Setting("tiny", 32, batch, amp, in_chans=1, num_classes=10,
                                           compile=compiled))
        elif suite == "gmf":
            for batch in batches or [16]:
                for amp in amps or ["none"]:
                    out.append(Setting("gmf", 224, batch, amp))
        else:
            raise SystemExit(f"unknown suite {suite!r}; expected s12, tiny or gmf")
    return out


# ---- one candidate --------------------------------------------------------------------------


def build(candidate: Candidate, setting: Setting, device: torch.device):
    torch.manual_seed(0)
    model = timm.create_model(candidate.model, num_classes=setting.num_classes,
                              in_chans=setting.in_chans, img_size=setting.img_size,
                              **candidate.kwargs)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    if candidate.lean:
        accelerate(model, store_hidden=candidate.store_hidden,
                   lean_conv_mlp=candidate.lean_conv_mlp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if candidate.compiled else model
    x = torch.randn(setting.batch, setting.in_chans, setting.img_size, setting.img_size,
                    device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, setting.num_classes, (setting.batch,), device=device)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16))
                if setting.amp == "bf16" else nullcontext)

    def forward_backward():
        with autocast():
            loss = F.cross_entropy(forward(x), y)
        loss.backward()

    def step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step, forward_backward


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_resident() -> None:
    # Linux: writing 5 to clear_refs resets the process's peak resident size (VmHWM).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def probe_memory(candidate: Candidate, setting: Setting, device: torch.device) -> dict:
    """Peak memory of one forward and backward above what was held before it, and the bytes
    autograd kept for backward (each storage once, parameters excluded)."""
    model, _, forward_backward = build(candidate, setting, device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _reset_peak_resident()
        base = _resident_bytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _peak_resident_bytes() - base
    return {"peak_bytes": peak, "saved_bytes": sum(saved.values())}


def memory_in_fresh_process(candidate: Candidate, setting: Setting, device: str,
                            allocator: str) -> dict:
    spec = json.dumps({"candidate": asdict(candidate), "setting": asdict(setting),
                       "device": device})
    done = subprocess.run([sys.executable, __file__, "--probe", spec, "--allocator", allocator],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory probe of {candidate.label} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- one setting ----------------------------------------------------------------------------


def run_setting(setting: Setting, device: torch.device, repeats: int, warmup: int,
                memory: bool, allocator: str = "keep-freed") -> dict:
    cands = candidates(setting)
    steps = {}
    for c in cands:
        steps[c.label] = build(c, setting, device)[1]
    samples = time_interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    ms = {label: statistics.median(s) * 1e3 for label, s in samples.items()}
    mem = {c.label: memory_in_fresh_process(c, setting, device.type, allocator)
           for c in cands} if memory else {}
    return {"setting": asdict(setting), "candidates": [asdict(c) for c in cands],
            "step_ms": ms, "samples_ms": {k: [v * 1e3 for v in s] for k, s in samples.items()},
            "memory": mem}


def report(result: dict) -> str:
    s = result["setting"]
    cands = [Candidate(**c) for c in result["candidates"]]
    dense = [c.label for c in cands if c.dense]
    ms, mem = result["step_ms"], result["memory"]
    mode = "torch.compile" if s["compile"] else "eager"
    amp = "bf16 autocast" if s["amp"] == "bf16" else "float32"
    lines = [f"\n{s['suite']}: batch {s['batch']} at {s['img_size']}x{s['img_size']} "
             f"({s['in_chans']} channels), {amp}, {mode}; train step = forward + backward + "
             f"AdamW, median of interleaved repeats"]
    head = "| candidate | step ms | " + " | ".join(f"speed vs {d}" for d in dense)
    if mem:
        head += " | peak MiB | saved MiB | " + " | ".join(f"peak vs {d}" for d in dense)
    head += " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cands:
        row = f"| {c.label} | {ms[c.label]:.1f} | " + " | ".join(
            f"{ms[d] / ms[c.label]:.2f}x" for d in dense)
        if mem:
            m = mem[c.label]
            row += (f" | {m['peak_bytes'] / 2**20:.0f} | {m['saved_bytes'] / 2**20:.0f} | "
                    + " | ".join(f"{m['peak_bytes'] / max(mem[d]['peak_bytes'], 1):.2f}x"
                                 for d in dense))
        lines.append(row + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", default=["s12", "tiny", "gmf"],
                        choices=["s12", "tiny", "gmf"])
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default per suite)")
    parser.add_argument("--amp", nargs="+", choices=["none", "bf16"],
                        help="precisions (default per suite)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--allocator", choices=["keep-freed", "default"], default="keep-freed",
                        help="glibc malloc as vitmix train sets it, or as glibc starts")
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.allocator == "keep-freed" and keep_freed_memory()
    if args.probe:
        spec = json.loads(args.probe)
        print(json.dumps(probe_memory(Candidate(**spec["candidate"]),
                                      Setting(**spec["setting"]), torch.device(spec["device"]))))
        return 0
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"device: {where}; torch {torch.__version__}; malloc keeps freed memory: {kept}")
    results = []
    for setting in settings(args.suite, args.batch, args.amp):
        result = run_setting(setting, device, args.repeats, args.warmup, not args.no_memory,
                             args.allocator)
        results.append(result)
        print(report(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "torch": torch.__version__,
                       "malloc_keeps_freed_memory": kept, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
