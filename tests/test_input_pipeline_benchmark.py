"""benchmarks/input_pipeline.py: the JPEGs it makes are read by vitmix's own readers in both
layouts, its measurements come back well formed, and the GPU path's worker batch is uint8
(B, 3, 224, 224). Nothing here depends on how fast the machine is."""

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitmix.data.image_folder import SafeImageFolder
from vitmix.data.shards import load_shard_splits

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "input_pipeline.py"


def _load():
    spec = importlib.util.spec_from_file_location("input_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Six images of three classes, in shards of four (two shards, the last one short)."""
    root = tmp_path_factory.mktemp("pipeline")
    samples = bench.make_samples(6, classes=3, seed=0)
    info = bench.write_dataset(root, samples, classes=3, shard_size=4)
    return root, samples, info


def _within_stated_sizes(width: int, height: int) -> bool:
    long, short = max(width, height), min(width, height)
    low, high = bench.OTHER_LONG_SIDES
    aspects = [a for a, _ in bench.ASPECTS]
    return (long == bench.LONG_SIDE or low <= long <= high) and any(
        short == round(long * a) for a in aspects)


def test_image_sizes_are_the_stated_ones():
    import numpy as np

    rng = np.random.default_rng(1)
    sizes = [bench.image_size(rng) for _ in range(400)]
    assert all(_within_stated_sizes(w, h) for w, h in sizes)
    assert 0.6 < sum(max(w, h) == bench.LONG_SIDE for w, h in sizes) / len(sizes) < 0.9
    assert any(h > w for w, h in sizes) and any(w > h for w, h in sizes)


def test_the_jpegs_decode_to_their_stated_sizes(made):
    _, samples, info = made
    for s in samples:
        with Image.open(io.BytesIO(s.jpeg)) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == (s.width, s.height)
        assert _within_stated_sizes(s.width, s.height)
    assert info["images"] == 6 and info["shards"] == ["train-0000.tar", "train-0001.tar"]
    assert info["width"][0] == min(s.width for s in samples)
    assert info["bits_per_pixel"] > 0


def test_vitmix_reads_the_folder_and_the_shards_alike(made):
    root, samples, _ = made
    folder = SafeImageFolder(root / "folder" / "train", verify="decode")
    assert folder.skipped == 0 and len(folder) == 6
    assert folder.classes == ["c000", "c001", "c002"]
    streams, classes = load_shard_splits(root / "shards", ("train",), "RGB", {})
    assert classes == folder.classes and len(streams["train"]) == 6
    from_shards = sorted((img.size, label) for img, label in streams["train"])
    from_folder = sorted((img.size, label) for img, label in map(folder.__getitem__,
                                                                 range(len(folder))))
    assert from_shards == from_folder == sorted(((s.width, s.height), s.label) for s in samples)


@pytest.mark.parametrize("workers", [0, 1])
def test_measure_returns_well_formed_results(made, workers):
    root, _, _ = made
    cases = [bench.Case(source, stage, workers) for source in bench.SOURCES
             for stage in ("worker", "cpu_full")]
    results = bench.measure(root, cases, batch_size=2, warmup=1, batches=2, repeats=2)
    assert [(r["source"], r["stage"], r["workers"]) for r in results] == [
        (c.source, c.stage, c.workers) for c in cases]
    for r in results:
        # CPU time comes in clock ticks, which a run this short may not reach: None then.
        for key in ("images_per_s", "images_per_s_per_worker", "images_per_cpu_s"):
            rate = r[key]
            if rate is None and key == "images_per_cpu_s":
                continue
            assert len(rate["samples"]) == 2 and rate["min"] <= rate["median"] <= rate["max"]
            assert all(v > 0 for v in rate["samples"])
        # The GPU path's worker hands over uint8 images; today's path normalised floats.
        dtype = "uint8" if r["stage"] == "worker" else "float32"
        assert r["batch"] == {"shape": [2, 3, 224, 224], "dtype": dtype}
    json.dumps(results)


def test_each_stage_builds_and_the_worker_transform_leaves_uint8():
    image = Image.new("RGB", (500, 375), (120, 60, 30))
    for stage in bench.STAGES:
        out = bench.recipe_transform(stage)(image)
        assert out.dtype == (torch.float32 if stage == "cpu_full" else torch.uint8)
        assert tuple(out.shape) == ((3, 1, 1) if stage == "decode" else (3, 224, 224))
    text = repr(bench.recipe_transform("worker"))
    assert "RandAugment" in text and "RandomErasing" not in text and "Normalize" not in text
    with pytest.raises(ValueError, match="unknown stage"):
        bench.recipe_transform("resize")


def test_the_recipe_transform_takes_posterize_at_zero_bits():
    from timm.data.auto_augment import RandAugment

    from vitmix.data import transforms

    steps = bench.recipe_transform("worker").transforms
    ops = [op for step in steps if isinstance(step, RandAugment) for op in step.ops
           if op.name == "PosterizeIncreasing"]
    assert len(ops) == 1 and ops[0].aug_fn is transforms._posterize


def test_too_few_images_for_the_batches_is_one_clear_error(made):
    root, _, _ = made
    with pytest.raises(ValueError, match="need 8 images; the data hold 6"):
        bench.time_case(root, bench.Case("folder", "decode", 0), 2, 2, 2)


def test_the_device_benchmark_runs_on_the_cpu(made):
    _, samples, _ = made
    report = bench.device_benchmark(samples, "cpu", batch_size=4, repeats=2)
    assert set(report["images_per_s"]) == {"device_decode", "device_decode_rrc_flip",
                                           "pil_decode_1_core", "pil_decode_rrc_flip_1_core"}
    assert all(len(r["samples"]) == 2 and r["median"] > 0
               for r in report["images_per_s"].values())
    # The last batch of 6 in fours holds 2 images, cropped to the recipe's size.
    assert report["last_batch"]["device_decode_rrc_flip"] == {
        "shape": [2, 3, 224, 224], "device": "cpu", "dtype": "uint8"}
    assert report["decode_over_one_pil_core"] > 0
    json.dumps(report)


def test_cuda_mode_without_cuda_says_so_and_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
    assert not out.exists()
