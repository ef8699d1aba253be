"""Input pipeline at scale: images/s per DataLoader worker for the SCHEME ImageNet recipe.

In the GPU training path DataLoader workers only decode and augment, returning uint8 CHW images
that timm's ``fast_collate`` batches; normalisation and random erasing run on the GPU (timm's
PrefetchLoader). This script measures what one worker process delivers on this CPU, stage by
stage, from an ImageFolder tree and from webdataset tar shards of the same JPEGs, and (with
``--device cuda``) what nvJPEG decoding on the GPU delivers against PIL on one CPU core.

The data are made here: synthetic but photo-like JPEGs (see ``natural_image``), ImageNet-sized
(mostly 500 px on the long side, 4:3, 3:2 or square, some portrait), saved by PIL at quality 90
with its default 4:2:0 chroma subsampling, written as ``folder/train/<class>/<n>.jpg`` and as
``shards/train-0000.tar ...`` (the same bytes) with a ``classes.txt``.

Stages, each a timm transform on the decoded PIL image, through a torch DataLoader:
  decode      PIL decoding to RGB as vitmix's readers do it; the image is then dropped
  decode_rrc  + RandomResizedCrop 224 (scale 0.08-1, interpolation 'random') + flip, uint8
  worker      + RandAugment rand-m9-mstd0.5-inc1, uint8: the GPU path's worker, timm's
              create_transform(..., use_prefetcher=True) with the recipe's arguments
  cpu_full    + to float, normalise and random erasing 0.25 (pixel) in the worker: today's path
              (batched by torch's default_collate, as timm does without the prefetcher)
RandAugment's posterize takes 0 bits as Pillow before 13 did (vitmix.data.transforms'
``keep_posterize_zero_bits``, which vitmix train applies too): Pillow 13 raises an error there.

Each measurement starts a fresh DataLoader iterator (a new epoch), takes ``--warmup`` batches
untimed (worker start-up, the first files) and counts the images of the next ``--batches``
batches over their wall time. Every repeat runs every case once, in turn, so a change in the
machine's load hits all cases alike; the median and the range over the repeats are reported.

    python benchmarks/input_pipeline.py --out results.json          # CPU, about 3 minutes
    python benchmarks/input_pipeline.py --workers 1 --stages worker --repeats 5
    python benchmarks/input_pipeline.py --device cuda --out gpu.json  # GPU decode, under 30 s

The CUDA mode needs torch, torchvision (with nvJPEG), numpy and Pillow only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

IMG_SIZE = 224
QUALITY = 90
RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
STAGES = ("decode", "decode_rrc", "worker", "cpu_full")
SOURCES = ("folder", "shards")
# ImageNet's photos were mostly scaled to 500 px on the long side; some were not.
LONG_SIDE, OTHER_LONG_SIDES = 500, (375, 640)
ASPECTS = ((3 / 4, 0.6), (2 / 3, 0.25), (1.0, 0.15))  # short / long side, probability
PORTRAIT = 0.2


# ---- the data ------------------------------------------------------------------------------


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of one image: the long side 500 px three times in four, else 375-640."""
    long = LONG_SIDE if rng.random() < 0.75 else int(rng.integers(*OTHER_LONG_SIDES,
                                                                   endpoint=True))
    aspect = rng.choice([a for a, _ in ASPECTS], p=[p for _, p in ASPECTS])
    short = round(long * aspect)
    return (short, long) if rng.random() < PORTRAIT else (long, short)


def _pink_noise_pair(rng: np.random.Generator, height: int, width: int):
    """Two independent fields with a 1/f amplitude spectrum (the real and imaginary parts of one
    inverse FFT), each scaled to unit standard deviation."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.fftfreq(width).astype(np.float32)[None, :]
    freq = np.hypot(fy, fx)
    freq[0, 0] = np.inf  # no constant term: the mean comes from the gradient and the shapes
    spectrum = (rng.standard_normal((height, width), dtype=np.float32)
                + 1j * rng.standard_normal((height, width), dtype=np.float32)) / freq
    field = np.fft.ifft2(spectrum)
    return [(part / part.std()).astype(np.float32) for part in (field.real, field.imag)]


def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An (height, width, 3) uint8 image that costs a JPEG decoder what a photo does.

    A JPEG's decoding time grows with its pixels and with its entropy-coded bytes, so the image
    needs a photo's mix of smooth areas, edges and fine texture: a colour gradient in a random
    direction, 4-11 flat shapes in random colours (ellipses, rectangles, polygons: edges), a
    texture of 1/f noise (natural photos' amplitude spectrum falls roughly as 1/f) whose strength
    varies from image to image, weaker colour noise, and per-pixel grain.
    """
    yy, xx = np.ogrid[:height, :width]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(angle) * xx + np.sin(angle) * yy) / max(width, height)).astype(np.float32)
    low, high = rng.uniform(30, 220, (2, 3)).astype(np.float32)
    base = low + (high - low) * ramp[..., None]
    canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(4, 12)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 2:
            corners = rng.uniform(0, 1, (int(rng.integers(3, 7)), 2)) * (width, height)
            draw.polygon([tuple(p) for p in corners], fill=colour)
            continue
        x0, y0 = rng.uniform(-0.2, 1, 2) * (width, height)
        side = rng.uniform(0.05, 0.5) * width
        box = [x0, y0, x0 + side * rng.uniform(0.5, 2), y0 + side * rng.uniform(0.5, 2)]
        (draw.ellipse if kind == 0 else draw.rectangle)(box, fill=colour)
    pixels = np.asarray(canvas, dtype=np.float32)
    texture, colour_noise = _pink_noise_pair(rng, height, width)
    strength = rng.uniform(15, 60)  # from a smooth photo to a busy one
    pixels += strength * texture[..., None] * rng.uniform(0.6, 1.4, 3).astype(np.float32)
    pixels += (strength / 3) * colour_noise[..., None] * np.array([1, -0.5, -0.5], np.float32)
    pixels += rng.normal(0, 3, pixels.shape).astype(np.float32)
    return pixels.clip(0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


@dataclass(frozen=True)
class Sample:
    jpeg: bytes
    label: int
    width: int
    height: int


def make_samples(count: int, classes: int = 10, seed: int = 0) -> list[Sample]:
    """``count`` JPEGs, their classes dealt round-robin, in random order."""
    if count < 1 or classes < 1:
        raise ValueError(f"need at least one image and one class, got {count} and {classes}")
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        width, height = image_size(rng)
        samples.append(Sample(encode_jpeg(natural_image(rng, width, height)), i % classes,
                              width, height))
    return [samples[i] for i in rng.permutation(count)]


def class_name(label: int) -> str:
    return f"c{label:03d}"


def write_dataset(root: Path, samples: list[Sample], classes: int,
                  shard_size: int = 256) -> dict:
    """The samples as ``root/folder/train/<class>/<n>.jpg`` and as ``root/shards/train-NNNN.tar``
    (``<key>.jpg`` and ``<key>.cls`` per sample, in the samples' order) with ``classes.txt``.
    Returns what was made, with the sizes measured."""
    folder, shards = Path(root) / "folder" / "train", Path(root) / "shards"
    for label in range(classes):
        (folder / class_name(label)).mkdir(parents=True, exist_ok=True)
    shards.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples):
        (folder / class_name(sample.label) / f"{i:06d}.jpg").write_bytes(sample.jpeg)
    shard_paths = []
    for first in range(0, len(samples), shard_size):
        path = shards / f"train-{first // shard_size:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(first, min(first + shard_size, len(samples))):
                for suffix, data in (("jpg", samples[i].jpeg),
                                     ("cls", str(samples[i].label).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shard_paths.append(path.name)
    (shards / "classes.txt").write_text("".join(f"{class_name(k)}\n" for k in range(classes)))
    return describe(samples) | {"classes": classes, "shards": shard_paths,
                                "shard_size": shard_size, "root": str(root)}


def describe(samples: list[Sample]) -> dict:
    widths = [s.width for s in samples]
    heights = [s.height for s in samples]
    sizes = [len(s.jpeg) for s in samples]
    pixels = [s.width * s.height for s in samples]
    return {
        "images": len(samples), "jpeg_quality": QUALITY, "chroma_subsampling": "4:2:0",
        "width": [min(widths), statistics.mean(widths), max(widths)],
        "height": [min(heights), statistics.mean(heights), max(heights)],
        "portrait": sum(h > w for w, h in zip(widths, heights, strict=True)),
        "jpeg_kb": [min(sizes) / 1e3, statistics.mean(sizes) / 1e3, max(sizes) / 1e3],
        "bits_per_pixel": 8 * sum(sizes) / sum(pixels),
        "content": "colour gradient + 4-11 flat shapes + 1/f noise texture (strength varies "
                   "per image) + colour noise + grain",
    }


# ---- the CPU workers -----------------------------------------------------------------------


class DropImage:
    """Stands for "no transform" after decoding: a 1-pixel placeholder keeps fast_collate's
    uint8 batch, so the decode stage runs through the same DataLoader as the others."""

    def __call__(self, image):
        return torch.zeros((3, 1, 1), dtype=torch.uint8)

    def __repr__(self) -> str:
        return "DropImage()"


def recipe_transform(stage: str):
    """The SCHEME authors' ImageNet training transform, cut at ``stage``."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    if stage == "decode":
        return DropImage()
    recipe = dict(input_size=IMG_SIZE, is_training=True, scale=(0.08, 1.0), hflip=0.5,
                  interpolation="random", color_jitter=0.4, auto_augment=RAND_AUGMENT,
                  re_prob=0.25, re_mode="pixel", re_count=1, mean=IMAGENET_DEFAULT_MEAN,
                  std=IMAGENET_DEFAULT_STD)
    if stage == "decode_rrc":
        recipe.update(auto_augment=None, color_jitter=None)
    elif stage not in ("worker", "cpu_full"):
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    # With use_prefetcher=True timm leaves the image uint8 and normalisation and erasing to the
    # prefetcher (on the GPU); without it they run here, in the worker.
    transform = create_transform(**recipe, use_prefetcher=stage != "cpu_full")
    from vitmix.data.transforms import keep_posterize_zero_bits  # as vitmix train does

    return keep_posterize_zero_bits(transform)


def dataset(root: Path, source: str, transform, batch_size: int, epoch: int):
    """The training split of ``root``'s folder or shards, read as vitmix trains on it."""
    if source == "folder":
        from vitmix.data.image_folder import SafeImageFolder

        # verify="none": as for an ImageNet-sized tree, nothing is decoded up front.
        return SafeImageFolder(Path(root) / "folder" / "train", transform=transform,
                               verify="none")
    if source == "shards":
        from vitmix.data.shards import StreamPlan, load_shard_splits

        streams, _ = load_shard_splits(Path(root) / "shards", ("train",), "RGB",
                                       {"train": transform})
        stream = streams["train"].planned(StreamPlan(batch_size=batch_size, shuffle=True,
                                                     seed=0))
        stream.set_epoch(epoch)
        return stream
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


@contextmanager
def one_thread():
    """torch on one thread, as in a DataLoader worker: a "per core" number is then one core's,
    and no parallel region waits for a second thread the machine's other jobs hold (on the
    shared 2-core machine a 5 MB torch.stack took 0.15 ms on one thread, and now and then
    380 ms on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Case:
    source: str
    stage: str
    workers: int


@dataclass(frozen=True)
class Timing:
    images: int
    seconds: float
    cpu_seconds: float | None  # of the processes doing the work; None where /proc cannot say
    batch_shape: tuple[int, ...]
    batch_dtype: str


def _children_cpu_seconds() -> float | None:
    """User and system CPU seconds used so far by this process's live children (the DataLoader
    workers), from /proc; None where the kernel does not list children."""
    total = 0
    try:
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            for pid in (task / "children").read_text().split():
                # Fields 14 and 15 of stat, counted after the command name's closing bracket.
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def _work_cpu_seconds(workers: int) -> float | None:
    return time.process_time() if workers == 0 else _children_cpu_seconds()


def time_case(root: Path, case: Case, batch_size: int, warmup: int, batches: int,
              epoch: int = 0) -> Timing:
    """Images over wall time for ``batches`` batches of a fresh DataLoader, after ``warmup``,
    and the CPU time the workers (with 0 workers, this process) spent meanwhile."""
    from timm.data.loader import fast_collate
    from torch.utils.data import DataLoader, default_collate

    data = dataset(root, case.source, recipe_transform(case.stage), batch_size, epoch)
    if (warmup + batches) * batch_size > len(data):
        raise ValueError(f"{warmup} + {batches} batches of {batch_size} need "
                         f"{(warmup + batches) * batch_size} images; the data hold {len(data)}")
    loader = DataLoader(
        data, batch_size=batch_size, num_workers=case.workers, drop_last=True,
        shuffle=case.source == "folder",
        generator=torch.Generator().manual_seed(epoch),
        collate_fn=default_collate if case.stage == "cpu_full" else fast_collate)
    with one_thread():  # for 0 workers; a worker process sets one thread itself
        iterator = iter(loader)
        for _ in range(warmup):
            next(iterator)
        images = 0
        cpu_start, start = _work_cpu_seconds(case.workers), time.perf_counter()
        for _ in range(batches):
            batch, _ = next(iterator)
            images += batch.shape[0]
        seconds = time.perf_counter() - start
        cpu_end = _work_cpu_seconds(case.workers)
        del iterator  # stops its workers before the next case starts its own
    cpu = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
    return Timing(images, seconds, cpu, tuple(batch.shape),
                  str(batch.dtype).removeprefix("torch."))


def spread(values: list[float]) -> dict:
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread_pct": 100 * (max(values) - min(values)) / median, "samples": values}


def measure(root: Path, cases: list[Case], batch_size: int = 32, warmup: int = 4,
            batches: int = 16, repeats: int = 3, log=None) -> list[dict]:
    """Every case ``repeats`` times, interleaved: images/s in total and per worker process (wall
    time), and images per CPU-second of the workers.

    On a machine others share, a worker waits for a core, and the wall-time rates fall with the
    load; the CPU-time rate is what a worker delivers on a core of its own (in the steady state
    the workers do, during the timed batches, the work of the batches timed)."""
    if batches < 1 or repeats < 1:
        raise ValueError(f"need at least one timed batch and one repeat, got {batches} and "
                         f"{repeats}")
    for case in cases:
        if batches % max(case.workers, 1):
            # DataLoader hands out batches round-robin: a whole number of rounds starts and ends
            # the timing at the same point of the workers' cycle.
            raise ValueError(f"--batches {batches} is not a multiple of {case.workers} workers")
    timings: dict[Case, list[Timing]] = {case: [] for case in cases}
    for repeat in range(repeats):
        for case in cases:
            timing = time_case(root, case, batch_size, warmup, batches, epoch=repeat)
            timings[case].append(timing)
            if log:
                cpu = (f", {timing.images / timing.cpu_seconds:7.1f} per CPU-second"
                       if timing.cpu_seconds else "")
                log(f"  repeat {repeat + 1}/{repeats} {case.source:6s} {case.stage:10s} "
                    f"{case.workers} workers: {timing.images / timing.seconds:7.1f} images/s"
                    f"{cpu}")
    results = []
    for case, runs in timings.items():
        rates = [t.images / t.seconds for t in runs]
        processes = max(case.workers, 1)  # 0 workers: the main process does the work
        cpu = [t.images / t.cpu_seconds for t in runs if t.cpu_seconds]
        results.append(asdict(case) | {
            "batch_size": batch_size, "warmup_batches": warmup, "timed_batches": batches,
            "images_per_s": spread(rates),
            "images_per_s_per_worker": spread([r / processes for r in rates]),
            "images_per_cpu_s": spread(cpu) if len(cpu) == len(runs) else None,
            "batch": {"shape": list(runs[-1].batch_shape), "dtype": runs[-1].batch_dtype},
        })
    return results


def stage_costs(results: list[dict]) -> list[dict]:
    """CPU milliseconds per image that each stage adds, with one worker (from the medians of
    images per CPU-second; of wall-time images/s where the CPU time is unknown)."""
    out = []
    for source in SOURCES:
        one = {r["stage"]: (r["images_per_cpu_s"] or r["images_per_s_per_worker"])["median"]
               for r in results if r["source"] == source and r["workers"] == 1}
        if not one:
            continue
        previous = 0.0
        row = {"source": source}
        for stage in STAGES:
            if stage in one:
                ms = 1e3 / one[stage]
                row[stage] = {"ms_per_image": ms, "added_ms": ms - previous}
                previous = ms
        out.append(row)
    return out


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor())
    import PIL
    from PIL import features

    info = {"cpu": f"{platform.machine()} {model}", "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": features.version_feature("libjpeg_turbo")}
    for name in ("torchvision", "timm"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def table(results: list[dict]) -> str:
    lines = ["| stage | source | workers | images/s (median) | min-max | per worker | "
             "per worker CPU-second (median) | min-max |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate, per, cpu = r["images_per_s"], r["images_per_s_per_worker"], r["images_per_cpu_s"]
        cpu_cells = f"{cpu['median']:.1f} | {cpu['min']:.1f}-{cpu['max']:.1f}" if cpu else "- | -"
        lines.append(f"| {r['stage']} | {r['source']} | {r['workers']} | {rate['median']:.1f} "
                     f"| {rate['min']:.1f}-{rate['max']:.1f} | {per['median']:.1f} "
                     f"| {cpu_cells} |")
    return "\n".join(lines)


def cost_table(costs: list[dict]) -> str:
    lines = ["| source | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for row in costs:
        cells = [f"{row[s]['ms_per_image']:.2f} ms (+{row[s]['added_ms']:.2f})" if s in row
                 else "-" for s in STAGES]
        lines.append(f"| {row['source']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_cpu(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="vitmix_input_pipeline_") as scratch:
        root = Path(args.data) if args.data else Path(scratch)
        start = time.perf_counter()
        samples = make_samples(args.images, args.classes, args.seed)
        made = write_dataset(root, samples, args.classes, args.shard_size)
        print(f"made {made['images']} JPEGs in {time.perf_counter() - start:.0f} s under {root}: "
              f"{made['width'][1]:.0f} x {made['height'][1]:.0f} px on average, "
              f"{made['jpeg_kb'][1]:.0f} kB ({made['bits_per_pixel']:.2f} bits/pixel)",
              flush=True)
        cases = [Case(source, stage, workers) for workers in args.workers
                 for source in args.sources for stage in args.stages]
        load_before = os.getloadavg()
        results = measure(root, cases, args.batch_size, args.warmup, args.batches,
                          args.repeats, log=lambda line: print(line, flush=True))
        load_after = os.getloadavg()
    costs = stage_costs(results)
    ratios = {}
    for source in args.sources:
        for workers in args.workers:
            here = {r["stage"]: r for r in results
                    if r["source"] == source and r["workers"] == workers}
            if "worker" in here and "cpu_full" in here:
                gpu_path, cpu_path = here["worker"], here["cpu_full"]
                ratios[f"{source}, {workers} workers"] = {
                    "wall": (gpu_path["images_per_s"]["median"]
                             / cpu_path["images_per_s"]["median"]),
                    "cpu_time": (gpu_path["images_per_cpu_s"]["median"]
                                 / cpu_path["images_per_cpu_s"]["median"]
                                 if gpu_path["images_per_cpu_s"] and cpu_path["images_per_cpu_s"]
                                 else None)}
    return {"mode": "cpu", "machine": machine(), "load_average_before": load_before,
            "load_average_after": load_after, "data": made,
            "transforms": {stage: repr(recipe_transform(stage)) for stage in args.stages},
            "results": results, "stage_costs_one_worker": costs,
            "worker_over_cpu_full": ratios}


def print_cpu(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cpus_usable']} usable CPUs; torch {m['torch']}, timm {m['timm']}, "
          f"Pillow {m['pillow']} (libjpeg-turbo {m['libjpeg_turbo']}); load average "
          f"{report['load_average_before'][0]:.2f} before, "
          f"{report['load_average_after'][0]:.2f} after")
    r0 = report["results"][0]
    repeats = len(r0["images_per_s"]["samples"])
    print(f"{IMG_SIZE} px, batch {r0['batch_size']}, {r0['timed_batches']} timed batches after "
          f"{r0['warmup_batches']} warm-up, median and range of {repeats} repeats\n")
    print(table(report["results"]))
    if report["stage_costs_one_worker"]:
        print("\nCPU time per image (1 worker; in brackets what the stage adds):\n")
        print(cost_table(report["stage_costs_one_worker"]))
    print()
    for key, ratio in report["worker_over_cpu_full"].items():
        cpu = f", per CPU-second {ratio['cpu_time']:.2f}x" if ratio["cpu_time"] else ""
        print(f"images/s of the GPU path's worker over today's full CPU transform, {key}: "
              f"{ratio['wall']:.2f}x{cpu}")


# ---- the GPU --------------------------------------------------------------------------------


def _decode_quietly(batch, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image decoders deprecated (in favour of TorchCodec).
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(batch, mode=ImageReadMode.RGB, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_benchmark(samples: list[Sample], device: str | torch.device, batch_size: int = 64,
                     repeats: int = 3, seed: int = 0) -> dict:
    """images/s of torchvision's decode_jpeg on ``device`` (a batched list of encoded JPEGs) and
    of decoding plus RandomResizedCrop 224 and flip there, against PIL on one CPU core.

    Times are wall time between two synchronisations: nvJPEG's batched decoder does part of its
    work (parsing, Huffman decoding) on the host, and the crops are launched from a Python loop,
    so the wall time is what a training loop waits for; CUDA events would time the GPU's queue
    only. One untimed pass over every batch (nvJPEG's start, the allocator's first blocks) comes
    first; then every repeat times each of the four in turn.
    """
    from torchvision.transforms import v2

    device = torch.device(device)
    torch.manual_seed(seed)  # the crops' random parameters
    encoded = [torch.frombuffer(bytearray(s.jpeg), dtype=torch.uint8) for s in samples]
    batches = [encoded[i:i + batch_size] for i in range(0, len(encoded), batch_size)]
    # Bilinear with antialiasing: timm's 'random' interpolation picks bilinear or bicubic.
    crop_flip = v2.Compose([v2.RandomResizedCrop(IMG_SIZE, scale=(0.08, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(0.5)])

    def device_decode(batch):
        return _decode_quietly(batch, device)

    def device_decode_crop(batch):
        return torch.stack([crop_flip(image) for image in _decode_quietly(batch, device)])

    def pil_decode(batch):
        return [Image.open(io.BytesIO(t.numpy().tobytes())).convert("RGB") for t in batch]

    def pil_decode_crop(batch):
        return torch.stack([v2.functional.pil_to_tensor(crop_flip(image))
                            for image in pil_decode(batch)])

    # The names stay the same on every device; "device" says where the first two ran.
    runs = {"device_decode": device_decode, "device_decode_rrc_flip": device_decode_crop,
            "pil_decode_1_core": pil_decode, "pil_decode_rrc_flip_1_core": pil_decode_crop}

    def one_pass(fn):
        _sync(device)
        start = time.perf_counter()
        for batch in batches:
            out = fn(batch)
        _sync(device)
        return time.perf_counter() - start, out

    last_batch = {}
    rates = {name: [] for name in runs}
    with one_thread():
        for name, fn in runs.items():
            _, out = one_pass(fn)
            if isinstance(out, torch.Tensor):
                last_batch[name] = {"shape": list(out.shape), "device": str(out.device),
                                    "dtype": str(out.dtype).removeprefix("torch.")}
        for _ in range(repeats):
            for name, fn in runs.items():
                seconds, _ = one_pass(fn)
                rates[name].append(len(encoded) / seconds)
    result = {name: spread(values) for name, values in rates.items()}
    return {"device": str(device), "batch_size": batch_size, "images": len(encoded),
            "repeats": repeats, "images_per_s": result, "last_batch": last_batch,
            "decode_over_one_pil_core": (result["device_decode"]["median"]
                                         / result["pil_decode_1_core"]["median"]),
            "decode_rrc_over_one_pil_core": (result["device_decode_rrc_flip"]["median"]
                                             / result["pil_decode_rrc_flip_1_core"]["median"])}


def run_device(args) -> dict:
    start = time.perf_counter()
    samples = make_samples(args.images, args.classes, args.seed)
    made_s = time.perf_counter() - start
    info = machine()
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    report = device_benchmark(samples, args.device, args.gpu_batch_size, args.repeats, args.seed)
    return {"mode": args.device, "machine": info, "data": describe(samples),
            "data_seconds": made_s, "seconds": time.perf_counter() - start} | report


def print_device(report: dict) -> None:
    m = report["machine"]
    print(f"{m.get('gpu', m['cpu'])}; host {m['cpu']}; torch {m['torch']}, torchvision "
          f"{m['torchvision']}; {report['images']} JPEGs in batches of {report['batch_size']}, "
          f"median and range of {report['repeats']} repeats\n")
    print("| what | images/s (median) | min-max |\n|---|---|---|")
    for name, rate in report["images_per_s"].items():
        print(f"| {name} | {rate['median']:.1f} | {rate['min']:.1f}-{rate['max']:.1f} |")
    print(f"\ndecode: {report['decode_over_one_pil_core']:.1f} PIL cores' worth; decode + crop + "
          f"flip: {report['decode_rrc_over_one_pil_core']:.1f}; {report['seconds']:.1f} s in all")


# ---- the command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: the DataLoader workers; cuda: nvJPEG decoding on the GPU")
    parser.add_argument("--images", type=int, help="JPEGs to make (default: 1024 for cpu, "
                                                   "192 for cuda)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=256, help="samples per tar shard")
    parser.add_argument("--data", help="folder to write the data to and keep (default: a "
                                       "temporary folder, removed at the end)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2],
                        help="DataLoader worker counts (0: in the main process)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches per measurement")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per measurement")
    parser.add_argument("--gpu-batch-size", type=int, default=64,
                        help="JPEGs per decode_jpeg call (--device cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write every number to this JSON file")
    args = parser.parse_args(argv)
    for name in ("classes", "shard_size", "batch_size", "batches", "gpu_batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got "
                         f"{getattr(args, name)}")
    if args.warmup < 0 or min(args.workers) < 0:
        parser.error("--warmup and --workers cannot be negative")
    if args.images is None:
        args.images = 192 if args.device == "cuda" else 1024
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(f"--device cuda: no CUDA device is available (torch {torch.__version__}, "
                  f"torch.cuda.is_available() is False)", file=sys.stderr)
            return 2
        report = run_device(args)
        print_device(report)
    else:
        report = run_cpu(args)
        print_cpu(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
