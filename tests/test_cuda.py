"""The GPU training path on a GPU: skipped without CUDA, run by scripts/gpu_check.sh
(``pytest -m cuda``). What it checks on the CPU is in tests/test_gpu_path.py."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tiny_runs import quiet_fit, tiny_config
from vitmix.data.device_batches import DeviceBatches
from vitmix.data.tensor_loader import TensorAugment
from vitmix.train import engine as engine_module
from vitmix.train.distributed import DistContext
from vitmix.train.precision import has_native_bf16, resolve_precision
from vitmix.train.running_loss import RunningLoss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]
GPU = torch.device("cuda", 0)


def test_amp_auto_on_this_gpu():
    chosen = resolve_precision("auto", GPU)
    major, _ = torch.cuda.get_device_capability(GPU)
    assert chosen.name == ("bf16" if major >= 8 else "fp16")
    assert has_native_bf16(GPU) == (major >= 8)


def test_device_batches_on_the_gpu_normalise_as_on_the_cpu():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (24, 3, 16, 16), np.uint8))
    loader = DataLoader(TensorDataset(images, torch.arange(24)), batch_size=6, pin_memory=True)
    norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    on_gpu = [(x.cpu(), y.cpu()) for x, y in DeviceBatches(loader, GPU, *norm,
                                                           channels_last=True)]
    on_cpu = list(DeviceBatches(loader, torch.device("cpu"), *norm, channels_last=True))
    assert len(on_gpu) == len(on_cpu) == 4
    for (a, ya), (b, yb) in zip(on_gpu, on_cpu, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert torch.equal(ya, yb)
    erasing = DeviceBatches(loader, GPU, *norm, erase_prob=0.5, seed=1)
    first = [x.cpu() for x, _ in erasing]
    again = [x.cpu() for x, _ in erasing]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_tensor_loader_augments_on_the_gpu_as_on_the_cpu():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (8, 1, 28, 28), np.uint8))
    augment = TensorAugment(32, scale=(0.5, 1.0), mean=(0.3,), std=(0.35,))
    torch.manual_seed(0)
    on_cpu = augment(images)
    torch.manual_seed(0)
    on_gpu = augment(images.to(GPU))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


def test_a_training_epoch_does_not_wait_for_the_gpu_each_step(image_tree, tmp_path, monkeypatch):
    """Under CUDA's sync debug mode every host synchronisation warns: an epoch of 4 updates and
    one of 12 must warn equally often (the reads at the end), not once per step."""
    counts = {}
    original = RunningLoss.read

    def read_without_debug(self, ctx):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return original(self, ctx)
        finally:
            torch.cuda.set_sync_debug_mode("warn")

    monkeypatch.setattr(RunningLoss, "read", read_without_debug)
    for batches in (4, 12):
        config = tiny_config(image_tree, tmp_path / f"r{batches}", device="cuda", batch_size=2,
                             amp="bf16", max_train_batches=batches, log_interval=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = engine_module._Run(config, tmp_path / f"r{batches}", DistContext(device=GPU))
            run.train_one_epoch()  # the first epoch: kernels loaded, allocator warm
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run.epoch += 1
                run.train_one_epoch()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts[batches] = sum("synchroniz" in str(w.message) for w in caught)
    assert counts[4] == counts[12], counts


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_tiny_runs_train_on_the_gpu(image_tree, tmp_path, amp):
    out = tmp_path / amp
    result = quiet_fit(tiny_config(image_tree, out, device="cuda", amp=amp, workers=2,
                                   val_split=6))
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(result.top1)
    assert summary["device"] == "cuda:0" and summary["cuda"]["tf32"] is True
    assert summary["amp"] == ("fp16" if amp == "fp16" else resolve_precision("auto", GPU).name)
    assert summary["deployed"]["top1"] == pytest.approx(summary["trained"]["top1"], abs=1e-6)
