"""The GPU training path's logic, tested where it lives, on the CPU: the precision --amp auto
picks, TF32 and cuDNN settings, loader settings, batches finished on the device, the loss kept
on the device and read only when reported, progress lines, and the settings a device refuses.
The same code on a GPU: tests/test_cuda.py and scripts/gpu_check.sh."""

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
from vitmix.data.seeding import EpochSeeded, ignore_stop_signals
from vitmix.data.tensor_loader import random_erase
from vitmix.train import cuda_math as cuda_math_module
from vitmix.train import engine as engine_module
from vitmix.train import precision as precision_module
from vitmix.train.config import TrainConfig
from vitmix.train.cuda_math import cuda_math
from vitmix.train.distributed import DistContext
from vitmix.train.precision import resolve_precision
from vitmix.train.progress import ProgressLog
from vitmix.train.running_loss import RunningLoss

CUDA = torch.device("cuda", 0)


# ---- --amp ------------------------------------------------------------------------------------

@pytest.mark.parametrize("capability,auto", [((7, 5), "fp16"), ((7, 0), "fp16"),
                                             ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_amp_auto_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, auto):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    # torch.cuda.is_bf16_supported() says yes on a T4 (emulated); the choice must not follow it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    chosen = resolve_precision("auto", CUDA)
    assert chosen.name == auto and chosen.device_type == "cuda"
    assert chosen.scales_gradients == (auto == "fp16")
    assert chosen.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[auto]
    explicit = resolve_precision("bf16", CUDA)
    assert explicit.name == "bf16"
    if auto == "fp16":
        assert explicit.note == (f"Some GPU (compute capability {capability[0]}.{capability[1]})"
                                 f" has no native bf16: it is emulated and slow; --amp fp16 "
                                 f"(or auto) uses its tensor cores")
    else:
        assert explicit.note is None
    assert resolve_precision("fp16", CUDA).scales_gradients
    assert resolve_precision("off", CUDA).dtype is None


def test_amp_on_the_cpu_is_float32_unless_asked():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "off"
    assert resolve_precision("bf16", cpu).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="amp must be one of 'auto', 'off', 'bf16', 'fp16', "
                                         "got 'fp8'"):
        resolve_precision("fp8", cpu)
    off = resolve_precision("off", cpu).autocast()
    with off():
        assert not torch.is_autocast_enabled("cpu")
    with resolve_precision("bf16", cpu).autocast()():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype is torch.bfloat16


def test_has_native_bf16_reads_the_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert precision_module.has_native_bf16(CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not precision_module.has_native_bf16(CUDA)


def test_fp16_with_a_gradient_scaler_trains_and_its_scaler_is_checkpointed(image_tree, tmp_path):
    from vitmix.checkpoints.io import load_checkpoint

    result = quiet_fit(tiny_config(image_tree, tmp_path / "fp16", amp="fp16", epochs=1))
    assert math.isfinite(result.top1)
    ckpt = load_checkpoint(tmp_path / "fp16" / "last.pth")
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    summary = json.loads((tmp_path / "fp16" / "summary.json").read_text())
    assert summary["amp"] == "fp16"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# ---- TF32 and cuDNN ---------------------------------------------------------------------------

def test_cuda_math_sets_tf32_and_the_autotuner_for_the_run_and_puts_them_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    for tf32, bench in ((True, True), (False, True), (True, False)):
        with cuda_math(CUDA, tf32, bench) as record:
            assert (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark) == (tf32, tf32, bench)
            assert record["tf32"] is tf32 and record["cudnn_benchmark"] is bench
            assert record["gpu"] == "NVIDIA H200" and record["capability"] == "9.0"
        assert (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark) == before
    with cuda_math(torch.device("cpu"), True, True) as record:
        assert record == {}
        assert (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark) == before
    assert cuda_math_module.__all__ == ["cuda_math"]


# ---- settings a device refuses, and the allocator -------------------------------------------

def test_lean_training_is_refused_on_a_gpu_and_sync_bn_on_cpu_ddp():
    gpu = DistContext(device=CUDA)
    config = TrainConfig(lean_training=True)
    with pytest.raises(ValueError, match=r"^lean_training \(--lean-training\) is a CPU path: "):
        engine_module._check_device_settings(config, gpu)
    engine_module._check_device_settings(config, DistContext())  # the CPU takes it
    ddp_cpu = DistContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"^sync_bn \(--sync-bn\) synchronises BatchNorm"):
        engine_module._check_device_settings(TrainConfig(sync_bn=True), ddp_cpu)
    engine_module._check_device_settings(TrainConfig(sync_bn=True), DistContext())
    assert TrainConfig().sync_bn is False  # off by default, as the GroupMixFormer authors train


def test_the_allocator_setting_applies_only_to_cpu_training(monkeypatch, tmp_path):
    from vitmix.commands import train as train_command

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not train_command._trains_on_cpu(TrainConfig(), None)  # auto: the GPU
    assert train_command._trains_on_cpu(TrainConfig(device="cpu"), None)
    TrainConfig(device="cpu").save(tmp_path / "config.yaml")
    assert train_command._trains_on_cpu(None, str(tmp_path))  # a resumed run: its config's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_command._trains_on_cpu(TrainConfig(), None)
    assert train_command._trains_on_cpu(None, str(tmp_path / "missing"))


# ---- loaders ----------------------------------------------------------------------------------

def test_loader_workers_default_to_two_on_a_cpu_and_to_the_cores_per_gpu(monkeypatch):
    cpu = torch.device("cpu")
    assert engine_module.loader_workers(None, cpu) == 2
    assert engine_module.loader_workers(5, CUDA) == 5
    monkeypatch.setattr(engine_module.os, "sched_getaffinity", lambda pid: set(range(16)),
                        raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert engine_module.loader_workers(None, CUDA) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert engine_module.loader_workers(None, CUDA) == 1
    monkeypatch.setattr(engine_module.os, "sched_getaffinity", lambda pid: set(range(96)),
                        raising=False)
    assert engine_module.loader_workers(None, CUDA) == 11
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert engine_module.loader_workers(None, CUDA) == 16


def test_training_loaders_keep_their_workers_and_move_uint8(image_tree, tmp_path):
    config = tiny_config(image_tree, tmp_path / "run", workers=2, val_split=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's broken PNG
        run = engine_module._Run(config, tmp_path / "run", DistContext())
    loader = run.train_loader.loader
    assert isinstance(run.train_loader, DeviceBatches)
    assert loader.persistent_workers and loader.num_workers == 2
    assert loader.worker_init_fn is ignore_stop_signals
    assert not loader.pin_memory  # pinned only for a GPU
    assert loader.generator is not None  # the workers' seeds leave the global generator alone
    assert isinstance(loader.dataset, EpochSeeded)
    assert run.val_loader.loader.persistent_workers
    assert not run.test_loader.loader.persistent_workers  # evaluated once
    images, _ = next(iter(loader))
    assert images.dtype == torch.uint8  # normalised on the device, not in the workers
    x, y = next(iter(run.train_loader))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    del run


def _uint8_batches(n_batches: int = 4, batch: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n_batches * batch, 3, 8, 10), np.uint8))
    targets = torch.arange(n_batches * batch)
    return images, targets, DataLoader(TensorDataset(images, targets), batch_size=batch)


def test_device_batches_normalise_as_the_float64_formula():
    images, targets, loader = _uint8_batches()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batches = DeviceBatches(loader, torch.device("cpu"), mean, std, channels_last=True)
    got = torch.cat([x for x, _ in batches])
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    want = (images.double() / 255 - m) / s
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.cat([y for _, y in batches]), targets)
    floats = DataLoader(TensorDataset(images.float(), targets), batch_size=6)
    with pytest.raises(ValueError, match="DeviceBatches takes uint8 images"):
        next(iter(DeviceBatches(floats, torch.device("cpu"), mean, std)))


def test_erasing_on_the_device_depends_on_the_batch_alone():
    _, _, loader = _uint8_batches()
    norm = ((0.5,) * 3, (0.25,) * 3)
    batches = DeviceBatches(loader, torch.device("cpu"), *norm, erase_prob=0.5, seed=7)
    batches.set_epoch(3)
    whole = [x for x, _ in batches]
    erased = [not torch.equal(x, DeviceBatches(loader, torch.device("cpu"), *norm).finish(
        *b, i)[0]) for i, (x, b) in enumerate(zip(whole, loader, strict=True))]
    assert any(erased)  # some images were erased (24 images at p 0.5)
    # A pass that starts at batch 2 (a resumed epoch) erases batches 2 and 3 as the whole did.
    rest = DataLoader(TensorDataset(*[t[12:] for t in loader.dataset.tensors]), batch_size=6)
    later = DeviceBatches(rest, torch.device("cpu"), *norm, erase_prob=0.5, seed=7)
    later.set_epoch(3, first_batch=2)
    assert all(torch.equal(a, b) for a, b in zip([x for x, _ in later], whole[2:], strict=True))
    later.set_epoch(4, first_batch=2)
    assert not all(torch.equal(a, b) for a, b in zip([x for x, _ in later], whole[2:],
                                                      strict=True))
    with pytest.raises(ValueError, match=r"erase_prob must lie in \[0, 1\], got 1.5"):
        DeviceBatches(loader, torch.device("cpu"), *norm, erase_prob=1.5)


def test_random_erase_fills_one_box_of_noise_per_chosen_image():
    generator = torch.Generator().manual_seed(0)
    x = torch.full((64, 2, 12, 16), 7.0)
    out = random_erase(x, 0.5, generator=generator)
    changed = out != 7.0
    per_image = changed.flatten(1).any(1)
    assert 16 < int(per_image.sum()) < 48  # about half of them
    for img in changed[per_image]:
        rows = img[0].any(1).nonzero().flatten()
        cols = img[0].any(0).nonzero().flatten()
        box = img[0][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.float().mean() > 0.99  # one rectangle (noise equal to 7.0 has measure zero)
        assert torch.equal(img[0], img[1])  # the same box on every channel
        area = len(rows) * len(cols) / (12 * 16)
        assert 0.01 < area < 0.5


# ---- the loss on the device -------------------------------------------------------------------

def test_running_loss_matches_a_float64_sum_and_names_the_first_bad_update():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 0.5, size=40)
    losses = RunningLoss(torch.device("cpu"))
    for i, v in enumerate(values[:25]):
        losses.add(torch.tensor(v, dtype=torch.float32), update=i // 2)
    first = losses.read(DistContext())
    want = values[:25].astype(np.float32).astype(np.float64)
    assert first.epoch_mean == pytest.approx(want.mean(), rel=1e-12)
    assert first.interval_mean == pytest.approx(want.mean(), rel=1e-12)
    assert first.epoch_count == 25 and first.first_bad_update is None
    for i, v in enumerate(values[25:], start=25):
        losses.add(torch.tensor(float("inf") if i in (31, 35) else v), update=i // 2)
    second = losses.read(DistContext())
    assert losses.read(DistContext()) is second  # nothing added: the same reading, no collective
    assert second.first_bad_update == 15  # micro-batch 31 came before update 15
    assert not math.isfinite(second.epoch_mean)
    # A resumed epoch: what was carried counts once, and the next interval starts after it.
    resumed = RunningLoss(torch.device("cpu"), carried=(10.0, 4))
    resumed.add(torch.tensor(3.0), update=0)
    reading = resumed.read(DistContext())
    assert (reading.epoch_total, reading.epoch_count, reading.interval_mean) == (13.0, 5, 3.0)
    other = RunningLoss(torch.device("cpu"), carried=(10.0, 4), holds_carried=False)
    other.add(torch.tensor(3.0), update=0)
    assert other.read(DistContext()).epoch_total == 3.0  # another process's share


def test_the_loss_reaches_the_host_only_at_reports(image_tree, tmp_path, monkeypatch):
    reads = []
    original = RunningLoss.read

    def counted(self, ctx):
        reads.append(self.count)
        return original(self, ctx)

    monkeypatch.setattr(RunningLoss, "read", counted)
    # 24 readable training images, batch 2, accumulation 2: 12 micro-batches, 6 updates.
    quiet_fit(tiny_config(image_tree, tmp_path / "run", batch_size=2, accum_steps=2, epochs=1,
                          log_interval=2))
    # At updates 2, 4 and 6 (after micro-batches 4, 8 and 12) and at the end of the epoch:
    # never per step.
    assert reads == [4, 8, 12, 12]


# ---- progress ---------------------------------------------------------------------------------

class _Log:
    def __init__(self, terminal: bool):
        self.text, self.terminal = "", terminal

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return self.terminal


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(capsys):
    log = _Log(terminal=False)
    epoch = ProgressLog(True, stream=log).epoch("epoch 1/3", 800, 0, 8)
    for update in range(1, 9):
        epoch.images(100)
        if update % 4 == 0:
            epoch.report(update, 1.5, 2e-3)
    epoch.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and log.text == ""  # nothing drawn, one line per report
    assert lines[0].startswith("epoch 1/3: update 4/8 (50%), loss 1.5000, lr 2.00e-03, ")
    assert lines[1].startswith("epoch 1/3: update 8/8 (100%), loss 1.5000, lr 2.00e-03, ")
    terminal = _Log(terminal=True)
    epoch = ProgressLog(True, stream=terminal).epoch("epoch 1/3", 800, 0, 8)
    epoch.images(100)
    epoch.report(1, 1.5, 2e-3)
    epoch.close()
    assert capsys.readouterr().out == "" and "\r" in terminal.text
    quiet = _Log(terminal=False)
    epoch = ProgressLog(False, stream=quiet).epoch("epoch 1/3", 800, 0, 8)
    epoch.report(1, 1.5, 2e-3)
    assert capsys.readouterr().out == "" and quiet.text == ""


def test_a_run_logged_to_a_file_prints_lines_not_carriage_returns(image_tree, tmp_path, capfd):
    quiet_fit(tiny_config(image_tree, tmp_path / "run", batch_size=2, epochs=2, log_interval=3,
                          progress_bar=True))
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    # 24 readable images in batches of 2: 12 updates per epoch, a line every 3.
    assert [line.split(",")[0] for line in out.splitlines() if ": update " in line] == [
        f"epoch {e}/2: update {u}/12 ({25 * u // 3}%)" for e in (1, 2) for u in (3, 6, 9, 12)]


def test_a_run_stops_its_loader_workers_when_it_ends(image_tree, tmp_path, monkeypatch):
    """A run object that outlives fit() (held here, as a reference cycle would hold it) must not
    keep its persistent workers: they ignore SIGTERM, so multiprocessing's exit handler would
    wait for them forever."""
    import gc
    import multiprocessing

    held = []
    finish = engine_module._Run.finish

    def finish_and_hold(self):
        held.append(self)
        return finish(self)

    monkeypatch.setattr(engine_module._Run, "finish", finish_and_hold)
    try:
        quiet_fit(tiny_config(image_tree, tmp_path / "run", workers=2, val_split=6, epochs=1))
        assert held and multiprocessing.active_children() == []
    finally:  # a failure here must not leave the test session waiting for them at its exit:
        held.clear()  # the collected loaders stop their workers themselves
        gc.collect()
