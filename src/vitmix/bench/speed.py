"""Throughput and latency of models in their deployed (inference) form.

Timings on a shared machine drift with its load, so candidates are timed interleaved: every
repeat runs each candidate once, in turn, and each is summarised by its median. Ratios of
medians taken that way are what this project reports; absolute times only with the machine.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .._deprecated import warn_moved
from ..checkpoints.io import load_model
from ..complexity import count_macs, count_params
from ..layers.checks import NON_NEGATIVE_INT, POSITIVE_INT

__all__ = [
    "AMP_DTYPES", "MEMORY_FORMATS", "ModelSpeed", "SpeedRun", "benchmark_models", "median_ms",
    "synchronize", "time_interleaved",
]

AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}
# "auto" times both layouts and keeps the faster one, so every model is measured at its best.
MEMORY_FORMATS = ("auto", "channels_first", "channels_last")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(candidates: Mapping[str, Callable[[], object]], repeats: int = 10,
                     warmup: int = 2, device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each candidate, ``repeats`` samples each, taken round-robin.

    Each candidate is first called ``warmup`` times (allocator, caches, lazy initialisation).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {warmup}")
    device = torch.device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return samples


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1e3


def build_deployed(name: str, img_size: int | None = None, checkpoint: str | None = None,
                   in_chans: int | None = None) -> tuple[nn.Module, dict]:
    """Deprecated: ``vitmix.checkpoints.load_model(name, checkpoint, img_size, in_chans,
    deploy=True)``, which evaluation shares; this name goes in vitmix 0.2."""
    warn_moved("vitmix.bench.speed.build_deployed",
               "vitmix.checkpoints.load_model(..., deploy=True)")
    return load_model(name, checkpoint, img_size=img_size, in_chans=in_chans, deploy=True)


@dataclass
class SpeedRun:
    batch_size: int
    latency_ms: float  # median time of one batch
    throughput: float  # images per second at that median
    memory_format: str
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class ModelSpeed:
    name: str
    params: int
    macs: int  # one image at img_size, deployed form
    img_size: int
    runs: list[SpeedRun] = field(default_factory=list)

    def run(self, batch_size: int) -> SpeedRun | None:
        return next((r for r in self.runs if r.batch_size == batch_size), None)

    def to_dict(self) -> dict:
        return asdict(self)


def _forward_fn(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> Callable[[], object]:
    device_type = x.device.type
    amp_ctx = (lambda: torch.autocast(device_type, dtype=amp)) if amp else nullcontext

    def forward() -> object:
        with torch.inference_mode(), amp_ctx():
            return model(x)

    return forward


def _layouts(memory_format: str) -> list[str]:
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    if memory_format == "auto":
        return ["channels_first", "channels_last"]
    return [memory_format]


def _as_layout(tensor_or_model, layout: str):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    if isinstance(tensor_or_model, torch.Tensor):
        return tensor_or_model.contiguous(memory_format=fmt)
    return tensor_or_model.to(memory_format=fmt)


def benchmark_models(names: Sequence[str], img_size: int = 224,
                     batch_sizes: Sequence[int] = (1, 32), device: str = "cpu",
                     amp: str = "none", memory_format: str = "auto", repeats: int = 10,
                     warmup: int = 2, in_chans: int = 3,
                     progress: Callable[[str], None] | None = None) -> list[ModelSpeed]:
    """Params, MACs and speed of each model in deployed form, all timed interleaved.

    For each batch size every (model, layout) candidate is timed in one round-robin, so the
    models see the same machine load; with ``memory_format="auto"`` each model keeps its faster
    layout. Inputs are random images (speed does not depend on the values).
    """
    if not names:
        raise ValueError("give at least one model name")
    POSITIVE_INT.check("img_size", img_size)
    POSITIVE_INT.check("in_chans", in_chans)
    POSITIVE_INT.check("repeats", repeats)
    NON_NEGATIVE_INT.check("warmup", warmup)
    if not batch_sizes:
        raise ValueError("give at least one batch size")
    for i, b in enumerate(batch_sizes):
        POSITIVE_INT.check(f"batch_sizes[{i}]", b)
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    layouts = _layouts(memory_format)
    say = progress or (lambda _msg: None)

    results, models = [], {}
    for name in names:
        model, _ = load_model(name, img_size=img_size, in_chans=in_chans, deploy=True)
        # Counted on the CPU in float32, batch 1: what the MAC column of every table means.
        results.append(ModelSpeed(name=name, params=count_params(model),
                                  macs=count_macs(model, img_size, in_chans), img_size=img_size))
        for layout in layouts:
            candidate = model if layout == layouts[-1] else copy.deepcopy(model)
            models[(name, layout)] = _as_layout(candidate.to(dev), layout)
        say(f"built {name}: {results[-1].params / 1e6:.2f}M params, "
            f"{results[-1].macs / 1e9:.3f}G MACs")

    amp_dtype = AMP_DTYPES[amp]
    for batch in batch_sizes:
        x = torch.randn(batch, in_chans, img_size, img_size, device=dev)
        candidates = {
            key: _forward_fn(model, _as_layout(x, key[1]), amp_dtype)
            for key, model in models.items()
        }
        say(f"timing batch {batch}: {len(candidates)} candidates x {repeats} repeats")
        samples = time_interleaved(candidates, repeats=repeats, warmup=warmup, device=dev)
        for speed in results:
            best = min(layouts, key=lambda lay: statistics.median(samples[(speed.name, lay)]))
            secs = samples[(speed.name, best)]
            latency = median_ms(secs)
            speed.runs.append(SpeedRun(
                batch_size=batch, latency_ms=latency, throughput=batch / (latency / 1e3),
                memory_format=best, samples_ms=[s * 1e3 for s in secs],
            ))
    return results
