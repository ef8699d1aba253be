"""The training loop: one run folder per call of :func:`fit`.

A run is deterministic given its config: every epoch reseeds all generators from (seed, epoch,
rank) and the sampler shuffles from (seed, epoch), so a run resumed from the checkpoint of
epoch k continues exactly as the uninterrupted run would have. A run with a time budget
(:mod:`.budget`) is the exception: its schedules follow the measured speed of the machine.

Every choice (the best checkpoint) is made on the validation split; the test split, when the
data has one, is evaluated once, at the end (:mod:`vitmix.data.split` holds the validation
split out of the training images where the data ships none).

Everything a run is given is checked before its folder is touched (the config by its rules,
the model name, the data, the folder itself); one process at a time holds the folder (see
:mod:`.run_folder`), and a run that ``overwrite`` replaces is set aside only once the new run
has started.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..accelerate import accelerate
from ..checkpoints.io import (
    SavedModel,
    atomic_write_text,
    check_state_dict,
    load_checkpoint,
    read_model,
    save_checkpoint,
    save_weights,
)
from ..complexity import count_macs, count_params
from ..compression.distill import Distillation
from ..compression.spec import schemify_arguments
from ..compression.surgery import compress
from ..data import AugmentSettings, build_transforms, load_splits
from ..data.class_fingerprint import class_fingerprint
from ..data.device_batches import DeviceBatches
from ..data.fashion_mnist import FashionMNIST
from ..data.seeding import EpochSeeded, ignore_stop_signals
from ..data.shards import ShardStream, StreamPlan
from ..data.skipping import SkippingSampler
from ..data.split import hold_out_validation, resolve_val_split, unwrap_subset
from ..data.tensor_loader import TensorAugment, TensorBatchLoader
from ..data.transforms import default_norm
from ..factory import build_model, check_model_name
from ..layers.checks import check_bool
from ..layers.scheme import SchemeMlp
from ..limits import MAX_CLASSES
from ..paths import kind_of
from ..surgery import deploy, schemify
from .budget import TimeBudget
from .config import CPU_LOADER_WORKERS, MAX_GPU_LOADER_WORKERS, TrainConfig
from .cuda_math import cuda_math
from .distributed import (
    DistContext,
    ShardSampler,
    all_reduce_max,
    all_reduce_sum,
    init_distributed,
    same_on_every_rank,
)
from .evaluate import EvalResult, evaluate
from .precision import resolve_precision
from .preemption import StopSignals, TrainingPreempted
from .progress import ProgressLog
from .report import MetricsLog, plot_confusion, plot_curves, write_report
from .resume_checks import check_same_classes, check_same_images_per_class
from .run_folder import (
    PreviousRun,
    RunLock,
    check_out_dir,
    holds_run,
    remove_stale_temporaries,
)
from .running_loss import RunningLoss
from .schedule import build_scheduler, cosine_span, learning_rates
from .teacher import load_teacher

__all__ = ["FitResult", "TrainingDiverged", "TrainingInterrupted", "TrainingPreempted", "fit",
           "loader_workers", "scheme_layers"]


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the last checkpoint written before it is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; the message says what can be resumed, and how."""


# What a checkpoint must hold for a run to continue from it.
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "num_updates", "best_metric",
               "best_epoch")


@dataclass
class FitResult:
    """The final numbers: ``top1`` ... ``deployed_top5`` on ``final_split``, the test split
    ("test") or, where the data has none, the validation split ("val")."""

    run_dir: Path
    top1: float
    top5: float
    deployed_top1: float
    deployed_top5: float
    report: Path
    summary: dict
    final_split: str = "test"
    val_top1: float | None = None  # the final weights on the validation split


def scheme_layers(model: nn.Module) -> dict[str, SchemeMlp]:
    """Every SchemeMlp that still has its CCA branch, by module name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, SchemeMlp) and m.has_cca}


def model_kwargs_for(config: TrainConfig, num_classes: int, data: str = "the data") -> dict:
    """The create_model arguments of the run: its own settings, then config.model_kwargs, whose
    num_classes (when it sets one) must be the data's class count."""
    if num_classes > MAX_CLASSES:  # a classes.txt, ClassLabel or tree of that many names
        raise ValueError(f"the training data {data} has {num_classes:,} classes, more than the "
                         f"{MAX_CLASSES:,} a classifier may have")
    given = config.model_kwargs.get("num_classes", num_classes)
    if given != num_classes:
        raise ValueError(f"model_kwargs sets num_classes={given}, but the training data {data} "
                         f"has {num_classes} classes; drop num_classes from model_kwargs "
                         f"(--model-kwargs): a run takes it from its data")
    kwargs = dict(num_classes=num_classes, in_chans=config.in_chans, img_size=config.img_size,
                  drop_path_rate=config.drop_path)
    kwargs.update(config.model_kwargs)
    return kwargs


def _seed_all(seed: int, epoch: int, rank: int) -> None:
    # epoch -1 seeds the model's initial weights.
    state = np.random.SeedSequence([seed, epoch + 1, rank]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def _rng_state(device: torch.device) -> dict:
    # NumPy's key as a tensor: checkpoints are read with weights_only=True, which admits
    # tensors and plain values, not arrays.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        # This process's GPU only: a run resumed with fewer visible GPUs restores it too.
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    if isinstance(keys, torch.Tensor):  # an ndarray in checkpoints of vitmix 0.1
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, *rest))
    torch.set_rng_state(state["torch"])
    # Earlier checkpoints kept every visible GPU's state ("cuda"); nothing reads those: a run
    # resumed at an epoch's start reseeds every generator first.
    if "cuda_device" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


def loader_workers(requested: int | None, device: torch.device) -> int:
    """Loader worker processes per training process: ``requested``, or else 2 on a CPU (whose
    cores train) and on a GPU the cores this process may use, less one for itself, shared with
    the other processes of its machine (at most 16)."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return CPU_LOADER_WORKERS
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    per_process = cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(per_process - 1, MAX_GPU_LOADER_WORKERS))


class _Run:
    """State of one training run; its methods are the phases of :func:`fit`."""

    def __init__(self, config: TrainConfig, run_dir: Path, ctx: DistContext,
                 clock: Callable[[], float] | None = None, cuda_settings: dict | None = None,
                 resuming: bool = False):
        self.config, self.run_dir, self.ctx = config, run_dir, ctx
        self.device = ctx.device
        self.cuda_settings = cuda_settings or {}
        if config.threads:
            torch.set_num_threads(config.threads)
        self.workers = loader_workers(config.workers, self.device)
        augment = AugmentSettings(auto_augment=config.auto_augment, re_prob=config.re_prob,
                                  scale=config.crop_scale, hflip=config.hflip,
                                  color_jitter=config.color_jitter,
                                  interpolation=config.train_interpolation)
        # The workers stop at uint8: normalising and erasing happen on the device.
        train_tf, eval_tf = build_transforms(config.img_size, config.in_chans, augment,
                                             eval_crop_pct=config.eval_crop_pct,
                                             eval_interpolation=config.eval_interpolation,
                                             uint8_output=True)
        self.norm = default_norm(config.in_chans)
        val_split = resolve_val_split(config.val_split, config.data)
        loaded = load_splits(config.data, config.in_chans, train_tf, eval_tf,
                             verify=config.verify_images, data_dir=config.data_dir,
                             image_key=config.data_image_key, label_key=config.data_label_key,
                             require_val=val_split == 0)
        self.data = hold_out_validation(loaded, val_split, eval_tf, asked=config.val_split)
        self._check_split_on_every_rank()
        self.num_classes = len(self.data.classes)
        # A num_classes in model_kwargs that is not the data's: refused before any other work.
        self.model_kwargs = model_kwargs_for(config, self.num_classes, self.data.name)
        # Which images each class holds, kept in the checkpoints for a resumed run to compare.
        self.class_fingerprint = class_fingerprint(unwrap_subset(self.data.train)[0])

        # The same initial weights on every rank (DDP also broadcasts rank 0's).
        _seed_all(config.seed, -1, 0)
        model = build_model(config.model, self.model_kwargs)
        # The dense weights a new compress run starts from (read once: often its teacher too),
        # and what they kept in their SCHEME form, for the report.
        dense = (read_model(config.init_from, config.model)
                 if config.init_from is not None and not resuming else None)
        self.compression: dict | None = None
        if config.schemify is not None:
            self.compression = scheme_form(model, config, self.data.classes, dense)
        self.params = count_params(model)
        self.macs = count_macs(model, config.img_size, config.in_chans)
        if config.sync_bn and ctx.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.accelerate:
            accelerate(self.model, lean_training=config.lean_training)
        self.ema = (ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=config.ema_warmup)
                    if config.ema else None)
        # The layers whose CCA weight follows the run's progress (the cosine schedule), found
        # once: the loop sets their progress after every update. Learned weights need nothing.
        self.scheduled_layers = [layer for model in (self.model, self.ema and self.ema.module)
                                 if model is not None for layer in scheme_layers(model).values()
                                 if layer.cca_schedule != "learned"]
        self.train_model = (DistributedDataParallel(self.model, device_ids=None if
                                                    self.device.type == "cpu" else [self.device])
                            if ctx.enabled else self.model)
        if config.compile:
            # Only the training forward is compiled: evaluation, EMA and checkpoints use the
            # eager module, whose parameters the compiled one shares.
            self.train_model = torch.compile(self.train_model, backend=config.compile)

        self.precision = resolve_precision(config.amp, self.device)
        self.autocast = self.precision.autocast()
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.precision.scales_gradients else None)
        self.effective_batch = config.batch_size * config.accum_steps * ctx.world_size
        self.rates = learning_rates(config, self.effective_batch)
        self.lr = self.rates.peak
        # On a GPU the fused AdamW: one kernel for all parameters, and a GradScaler passes it
        # the overflow flag without reading it on the host.
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=self.lr,
                                             weight_decay=config.weight_decay,
                                             filter_bias_and_bn=True, **fused)
        self._build_loaders()
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / config.accum_steps)
        self.budget = None
        if config.time_budget is None:
            cosine = config.epochs * self.updates_per_epoch  # then the cooldown at min_lr
            self.total_updates = config.run_epochs * self.updates_per_epoch
            warmup = min(round(config.warmup_epochs * self.updates_per_epoch), cosine - 1)
        else:
            self.budget = self._start_budget(clock)
            self.total_updates = self.budget.planned
            # The warm-up is what was asked for, but no more than half the run (half the first
            # plan here, half the progress in the budget): a warm-up the budget cannot hold
            # would leave no cosine at all.
            warmup = min(round(config.warmup_epochs * self.updates_per_epoch),
                         self.total_updates // 2)
            self.budget.set_warmup(warmup)
            cosine = self.total_updates
        self.scheduler = build_scheduler(self.optimizer, config, self.rates, cosine, warmup)
        self.mixup = None
        if config.mixup > 0 or config.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
                               label_smoothing=config.label_smoothing,
                               num_classes=self.num_classes)
        self.criterion = build_criterion(config)
        self.distillation = None
        if config.teacher is not None:
            teacher = load_teacher(config.teacher, self.data.classes, self.device,
                                   config.channels_last,
                                   dense if config.teacher == config.init_from else None)
            self.distillation = Distillation(teacher, config.distill_weight,
                                             config.distill_temperature)
        self.metrics = MetricsLog(run_dir / "metrics.csv")  # the rows of this run only
        self.progress_log = ProgressLog(config.progress_bar and ctx.is_main)
        self.config_saved = False  # config.yaml comes with the first checkpoint
        self.saved_epoch = 0  # epochs held by the checkpoint on disk (0: none yet)
        self.saved_update = 0  # updates held by it
        self.saved_mid_epoch = False  # whether it holds part of the epoch after saved_epoch
        self.epoch = 0
        self.num_updates = 0
        # Training images of all processes so far: the learning-rate schedule's clock, which
        # stays right when a run resumes on another number of processes (a schedule counted in
        # updates would then run at another pace). ``schedule_batch`` is the update size the
        # schedule was planned in: the run's effective batch when it started.
        self.samples_seen = 0
        self.schedule_batch = self.effective_batch
        self.best_metric, self.best_epoch = -1.0, -1
        self.last_eval: dict[str, EvalResult] = {}
        self.seconds = 0.0
        self.updates_in_epoch = 0
        self.in_epoch: dict | None = None  # where a run resumed mid-epoch continues
        self.stop = StopSignals()

    def _check_split_on_every_rank(self) -> None:
        """Every process must validate on the same images, or the images one process trains on
        validate another (the same draw from different data: a damaged file on one host)."""
        held = self.data.held_out
        if held is not None and not same_on_every_rank(int(held.digest[:15], 16), self.ctx):
            raise ValueError(f"the processes hold out different validation images of "
                             f"{self.data.name} (rank {self.ctx.rank}: split {held.digest}); "
                             f"every process must read the same training images")

    # The time budget ---------------------------------------------------------------------------
    def _start_budget(self, clock: Callable[[], float] | None) -> TimeBudget:
        """Start the clock, time an evaluation forward, and make the first plan (an error when
        the budget cannot hold one evaluation and the final ones)."""
        c, world = self.config, self.ctx.world_size
        per_epoch = math.ceil(len(self.data.val) / world)  # this process's part
        if c.max_val_batches is not None:
            per_epoch = min(per_epoch, c.max_val_batches * self.val_loader.batch_size)
        if c.ema and c.eval_ema_each_epoch:
            per_epoch *= 2
        val = math.ceil(len(self.data.val) / world)
        final = 0 if self._final_val_reused() else val
        final += 2 * math.ceil(len(self.data.test) / world) if self.data.test is not None else val
        budget = TimeBudget(c.time_budget, self.updates_per_epoch, c.batch_size * c.accum_steps,
                            per_epoch, final, clock=clock,
                            reduce_max=lambda values: all_reduce_max(values, self.ctx))
        budget.start()
        budget.probe(self._probe_evaluation(budget.clock))
        budget.plan(0, 0)
        return budget

    def _probe_evaluation(self, clock: Callable[[], float]) -> float:
        """Seconds per evaluated image: the faster of two timed forwards of an evaluation batch
        of zeros, after an untimed one that pays the one-time costs (no generator is drawn
        from, so the run's random state is untouched)."""
        c = self.config
        batch = self.val_loader.batch_size
        x = torch.zeros(batch, c.in_chans, c.img_size, c.img_size, device=self.device)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        was_training = self.model.training
        self.model.eval()
        times = []
        with torch.no_grad(), self.autocast():
            for _ in range(3):
                self._synchronize()
                start = clock()
                self.model(x)
                self._synchronize()
                times.append(clock() - start)
        self.model.train(was_training)
        return max(min(times[1:]), 0.0) / batch

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _final_val_reused(self) -> bool:
        """Whether the last epoch's validation of the final weights is their final one."""
        c = self.config
        return c.max_val_batches is None and (c.final_weights == "model"
                                              or c.eval_ema_each_epoch)

    def progress(self) -> float:
        """How far the run is, for the CCA schedule: updates done of all, or under a budget the
        progress it keeps (the same while its plan holds)."""
        if self.budget is None:
            return self.schedule_position() / self.total_updates
        return self.budget.progress

    def keep_training(self) -> bool:
        if self.budget is None:
            return self.epoch < self.config.run_epochs
        return not self.budget.finished(self.num_updates)

    def epochs_label(self) -> str:
        """The epochs of the run for people: planned ones are an estimate under a budget."""
        if self.budget is None:
            return str(self.config.run_epochs)
        return f"~{max(self.epoch, math.ceil(self.total_updates / self.updates_per_epoch))}"

    def _build_loaders(self) -> None:
        c, ctx = self.config, self.ctx
        if len(self.data.train) < c.batch_size * ctx.world_size:
            raise ValueError(f"the training set has {len(self.data.train)} images, fewer than "
                             f"one batch of {c.batch_size} per process")
        self.val_loader = self._eval_loader(self.data.val, persistent=True)
        self.test_loader = (self._eval_loader(self.data.test, persistent=False)
                            if self.data.test is not None else None)
        if isinstance(self.data.train, ShardStream):
            self._build_stream_loader()
            return
        self.sampler = SkippingSampler(DistributedSampler(
            self.data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
            seed=c.seed, drop_last=True))
        if c.loader == "tensor":
            self.train_loader = self._tensor_loader()
            self.epoch_seeded = None
        else:
            self.epoch_seeded = EpochSeeded(self.data.train, c.seed)
            loader = self._data_loader(self.epoch_seeded, c.batch_size, persistent=True,
                                       sampler=self.sampler, drop_last=True)
            self.train_loader = self._on_device(loader, erase_prob=c.re_prob)
        batches = len(self.train_loader)
        self.batches_per_epoch = min(batches, c.max_train_batches or batches)

    def _data_loader(self, dataset, batch_size: int, persistent: bool, **kwargs) -> DataLoader:
        """A loader of uint8 batches. Its workers live as long as it does (``persistent``): a
        dozen processes that import torch are not started again every epoch."""
        workers = self.workers
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=persistent and workers > 0,
                          worker_init_fn=ignore_stop_signals if workers > 0 else None,
                          # Its own generator: drawing the workers' base seed must not move
                          # the training process's generator (a resumed run draws the same).
                          generator=torch.Generator(), **kwargs)

    def _on_device(self, loader, erase_prob: float = 0.0) -> DeviceBatches:
        c = self.config
        mean, std = self.norm
        return DeviceBatches(loader, self.device, mean, std, channels_last=c.channels_last,
                             erase_prob=erase_prob, seed=c.seed, rank=self.ctx.rank)

    def _eval_loader(self, dataset, persistent: bool) -> DeviceBatches:
        """Each process evaluates its part; every image counts once over all processes (a
        stream of webdataset shards plans its own parts, see vitmix.data.shards)."""
        c, ctx = self.config, self.ctx
        if isinstance(dataset, ShardStream):
            loader = self._data_loader(dataset.planned(StreamPlan(ctx.rank, ctx.world_size)),
                                       c.batch_size * 2, persistent)
        else:
            loader = self._data_loader(dataset, c.batch_size * 2, persistent,
                                       sampler=ShardSampler(len(dataset), ctx.rank,
                                                            ctx.world_size))
        return self._on_device(loader)

    def _build_stream_loader(self) -> None:
        """Webdataset shards: each rank and worker reads its own part of every epoch (see
        vitmix.data.shards), the same whole number of batches on every rank."""
        c, ctx = self.config, self.ctx
        if c.loader == "tensor":
            raise ValueError(f"loader='tensor' needs an in-memory dataset (fashion-mnist), got "
                             f"{c.data!r}; use the default loader for webdataset shards")
        train = self.data.train.planned(StreamPlan(ctx.rank, ctx.world_size, c.batch_size,
                                                   shuffle=True, seed=c.seed))
        self.sampler = train  # what set_epoch orders each epoch, as a DistributedSampler does
        self.epoch_seeded = None  # the stream seeds its samples itself
        # Each worker yields whole batches of its own range: nothing to drop at the end.
        self.train_loader = self._on_device(self._data_loader(train, c.batch_size, True),
                                            erase_prob=c.re_prob)
        batches = train.batches_per_rank()
        self.batches_per_epoch = min(batches, c.max_train_batches or batches)

    def _tensor_loader(self) -> TensorBatchLoader:
        c = self.config
        train, index = unwrap_subset(self.data.train)  # the training part of a held-out split
        if not isinstance(train, FashionMNIST):
            raise ValueError(f"loader='tensor' needs an in-memory dataset (fashion-mnist), got "
                             f"{c.data!r}; use the default loader for image folders")
        images, labels = ((train.images, train.labels) if index is None
                          else (train.images[index], train.labels[index]))
        # Grey images for an RGB model: the channel repeated, as the PIL path does. On a GPU
        # the whole set lives there (47 MB) and is augmented there.
        images = torch.from_numpy(images).unsqueeze(1).expand(-1, c.in_chans, -1, -1)
        mean, std = self.norm
        augment = TensorAugment(c.img_size, scale=c.crop_scale, hflip=c.hflip,
                                re_prob=c.re_prob, mean=mean, std=std)
        return TensorBatchLoader(images.to(self.device), torch.from_numpy(labels).to(self.device),
                                 c.batch_size, self.sampler, augment)

    def close_loaders(self) -> None:
        """Stop the loaders' worker processes now, whoever still holds the run.

        Persistent workers otherwise stop when their loader is collected; a run object kept
        alive past the end of the process (by a reference cycle) would leave them to
        multiprocessing's exit handler, whose SIGTERM they ignore (see
        vitmix.data.seeding.ignore_stop_signals), and the process would wait for them forever.
        """
        for batches in (self.train_loader, self.val_loader, self.test_loader):
            loader = getattr(batches, "loader", None)
            iterator = getattr(loader, "_iterator", None)  # a DataLoader's live workers
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def start_epoch(self, skip_batches: int = 0, skipped_by_workers: int = 0) -> None:
        """Order the loaders for the current epoch, from its batch ``skip_batches`` on (the
        batches that a loader with ``skipped_by_workers`` workers had yielded)."""
        c = self.config
        self.sampler.set_epoch(self.epoch)
        if self.epoch_seeded is not None:
            self.epoch_seeded.set_epoch(self.epoch)
        if isinstance(self.train_loader, DeviceBatches):
            self.train_loader.set_epoch(self.epoch, skip_batches)
        if skip_batches:
            if isinstance(self.sampler, ShardStream):
                self.sampler.resume_epoch(self.epoch, skip_batches, skipped_by_workers)
            else:
                self.sampler.skip_next(skip_batches * c.batch_size)

    # Checkpoints -------------------------------------------------------------------------------
    def state(self, in_epoch: dict | None = None) -> dict:
        """The run's state after ``self.epoch`` whole epochs, or, with ``in_epoch``, part-way
        through the next one (a preempted run: ``in_epoch`` says where)."""
        return {
            "model_name": self.config.model, "model_kwargs": self.model_kwargs,
            "schemify": self.config.schemify, "compression": self.compression,
            "config": self.config.to_dict(), "epoch": self.epoch,
            "num_updates": self.num_updates, "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": _rng_state(self.device), "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "final_weights": self.config.final_weights, "classes": self.data.classes,
            "class_fingerprint": self.class_fingerprint,
            "seconds": self.seconds,
            "val_split_digest": self.data.held_out.digest if self.data.held_out else None,
            "budget": self.budget.state_dict() if self.budget else None,
            "world_size": self.ctx.world_size, "samples_seen": self.samples_seen,
            "schedule_batch": self.schedule_batch, "schedule_total": self.total_updates,
            "in_epoch": in_epoch,
        }

    def restore(self, ckpt: dict, source: Path) -> list[str]:
        """Continue from ``ckpt``; returns notes for the person resuming (none when the run
        continues exactly as it would have)."""
        missing = [key for key in RESUME_KEYS if key not in ckpt]
        if missing:
            raise ValueError(f"cannot resume from {source}: it lacks {', '.join(missing)}, so "
                             f"it is not the training checkpoint of a vitmix run")
        saved_name = ckpt.get("model_name")
        if saved_name != self.config.model:
            # Not "pass --model": --resume takes no flags. The folder itself is inconsistent.
            raise ValueError(f"cannot resume: {source} holds a {saved_name!r} model, but "
                             f"{self.run_dir / 'config.yaml'} trains {self.config.model!r}; "
                             f"the folder mixes two runs (start a new run with --out instead)")
        check_same_classes(ckpt.get("classes"), self.data.classes, self.data.name, str(source))
        check_same_images_per_class(ckpt.get("class_fingerprint"), self.class_fingerprint,
                                    self.data.name, str(source))
        check_state_dict(self.model, ckpt["model"], self.config.model, source)
        digest = self.data.held_out.digest if self.data.held_out else None
        if ckpt.get("val_split_digest", digest) != digest:
            raise ValueError(f"cannot resume: the validation split held out of "
                             f"{self.data.name} is not the one the run started with (split "
                             f"{ckpt['val_split_digest']} then, {digest} now): its training "
                             f"images changed, and some would now train that validated before")
        world, saved_world = self.ctx.world_size, ckpt.get("world_size", self.ctx.world_size)
        if saved_world != world and self.budget is not None:
            raise ValueError(f"cannot resume: {source} is a run with a time budget on "
                             f"{saved_world} process(es); it resumes on as many (now {world}), "
                             f"since its plan counts their updates")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.compression = ckpt.get("compression")
        self.epoch, self.num_updates = ckpt["epoch"], ckpt["num_updates"]
        self.best_metric, self.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        self.seconds = ckpt.get("seconds", 0.0)
        # Checkpoints before these keys come from runs that never changed their process count.
        self.schedule_batch = ckpt.get("schedule_batch", self.effective_batch)
        self.samples_seen = ckpt.get("samples_seen", self.num_updates * self.effective_batch)
        self.metrics = MetricsLog.read(self.run_dir / "metrics.csv")
        self.metrics.truncate(self.epoch)
        self.config_saved = True
        self.saved_epoch, self.saved_update = self.epoch, self.num_updates
        self.saved_mid_epoch = False
        if self.budget is not None and ckpt.get("budget") is not None:
            self.budget.resume(ckpt["budget"], self.num_updates)
            self.total_updates = self.budget.planned
        elif self.budget is None:
            self.total_updates = ckpt.get("schedule_total", self.total_updates)
        notes = []
        if saved_world != world:
            notes.append(
                f"the run started on {saved_world} process(es) and continues on {world}: "
                f"{self.effective_batch} images per update instead of "
                f"{ckpt.get('schedule_batch', self.effective_batch)}, at the learning rates "
                f"of its schedule, which runs on by images trained")
        in_epoch = ckpt.get("in_epoch")
        if in_epoch is None:
            _set_rng_state(ckpt["rng"], self.device)  # the next epoch reseeds them anyway
            return notes
        self.in_epoch = dict(in_epoch)
        if saved_world == world:
            _set_rng_state(in_epoch["rng"][self.ctx.rank], self.device)
        else:
            # The images the processes had trained on, as whole batches of the new size.
            done = in_epoch["batches"] * saved_world // world
            self.in_epoch["batches"] = done
            _seed_all(self.config.seed, self.epoch, self.ctx.rank)
            notes.append(f"the rest of epoch {self.epoch + 1} reads its images in another "
                         f"order than an uninterrupted run")
        self.saved_mid_epoch = True
        return notes

    def save(self, best: bool, in_epoch: dict | None = None) -> None:
        """last.pth (and best.pth when ``best``); every process calls it."""
        if in_epoch is not None:
            # Each process's generators, so that each continues its own draws.
            in_epoch = dict(in_epoch, rng=self.ctx.gather(_rng_state(self.device)))
        if self.ctx.is_main:
            if not self.config_saved:
                # With the first checkpoint, not before: a run that fails before it has nothing
                # to resume and leaves no config.yaml claiming otherwise.
                self.config.save(self.run_dir / "config.yaml")
                self.config_saved = True
            state = self.state(in_epoch)
            save_checkpoint(state, self.run_dir / "last.pth")
            if best:
                save_checkpoint(state, self.run_dir / "best.pth")
            self.metrics.write()
        self.saved_epoch, self.saved_update = self.epoch, self.num_updates
        self.saved_mid_epoch = in_epoch is not None
        # Nothing ends before the file is whole: under torchrun a process that exits first
        # (a preempted run) can get the others killed.
        self.ctx.barrier()

    def resume_hint(self) -> str:
        """What a run stopped after its first checkpoint continues from, and how."""
        held = f"epoch {self.saved_epoch}/{self.epochs_label()}"
        if self.saved_mid_epoch:
            held = (f"update {self.saved_update}, part-way through epoch {self.saved_epoch + 1}"
                    f"/{self.epochs_label()}")
        return (f"the last checkpoint, {self.run_dir / 'last.pth'}, holds {held}; continue "
                f"with: vitmix train --resume {self.run_dir}")

    def divergence_advice(self) -> str:
        c = self.config
        advice = f"Start again with a lower learning rate (--base-lr, now {c.base_lr:g})"
        if c.clip_grad is None:
            advice += " and gradient clipping on (--clip-grad 5)"
        elif c.amp == "fp16":
            advice += " or with --amp bf16, whose range fp16 lacks"
        return advice

    # Training ----------------------------------------------------------------------------------
    def set_progress(self, progress: float) -> None:
        progress = min(max(progress, 0.0), 1.0)
        for layer in self.scheduled_layers:
            layer.set_progress(progress)

    def schedule_position(self) -> float:
        """Where the learning-rate schedule is, in updates of the size it was planned in."""
        return self.samples_seen / self.schedule_batch

    def train_one_epoch(self) -> dict:
        c, ctx = self.config, self.ctx
        resumed, self.in_epoch = self.in_epoch, None
        skip = resumed["batches"] if resumed else 0
        if resumed is None:
            _seed_all(c.seed, self.epoch, ctx.rank)  # a resumed epoch restored its generators
        self.start_epoch(skip, resumed["workers"] if resumed else 0)
        if self.scheduled_layers:  # where a resumed run left off, too
            self.set_progress(self.progress())
        self.train_model.train()
        n_batches = self.batches_per_epoch
        per_batch = c.batch_size * ctx.world_size
        progress = self.progress_log.epoch(f"epoch {self.epoch + 1}/{self.epochs_label()}",
                                           n_batches * per_batch, skip * per_batch,
                                           math.ceil(n_batches / c.accum_steps))
        carried = (resumed["loss_total"], resumed["loss_count"]) if resumed else (0.0, 0)
        losses = RunningLoss(self.device, carried, holds_carried=ctx.is_main)
        self.updates_in_epoch = resumed["updates"] if resumed else 0
        seconds_before = resumed["seconds"] if resumed else 0.0
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        done = skip
        try:
            for i, (images, targets) in enumerate(self.train_loader, start=skip):
                if i >= n_batches:
                    break
                if (self.budget is not None and i % c.accum_steps == 0
                        and self.budget.finished(self.num_updates)):
                    break  # the budget's last update: this epoch ends here
                if c.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if self.mixup is not None:
                    images, targets = self.mixup(images, targets)
                last_micro = (i + 1) % c.accum_steps == 0 or i + 1 == n_batches
                sync = (self.train_model.no_sync() if ctx.enabled and not last_micro
                        else contextlib.nullcontext())
                with sync:
                    with self.autocast():
                        logits = self.train_model(images)
                        loss = self.criterion(logits, targets)
                        if self.distillation is not None:
                            loss = self.distillation(loss, logits, images)
                    losses.add(loss, self.num_updates)
                    scaled = loss / c.accum_steps
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                done += 1
                progress.images(per_batch)
                if not last_micro:
                    continue
                self._optimizer_step()
                if self.updates_in_epoch % c.log_interval == 0:
                    reading = self._checked_loss(losses)
                    progress.report(self.updates_in_epoch, reading.interval_mean,
                                    self.optimizer.param_groups[0]["lr"])
                if self.stop.requested(ctx):
                    seconds = seconds_before + time.perf_counter() - start
                    self._preempt(done, self._checked_loss(losses), seconds)
        finally:
            progress.close()
        reading = self._checked_loss(losses)
        seconds = seconds_before + time.perf_counter() - start
        return {"train_loss": reading.epoch_mean, "train_seconds": seconds,
                "train_images_per_s": done * per_batch / seconds}

    def _checked_loss(self, losses: RunningLoss):
        """The losses so far (a collective); a non-finite one stops the run, naming the update
        it came at, before anything is saved."""
        reading = losses.read(self.ctx)
        if reading.first_bad_update is not None:
            kept = ("no checkpoint was written before it" if self.saved_epoch == 0
                    and not self.saved_mid_epoch else
                    f"the last good checkpoint is {self.run_dir / 'last.pth'} ("
                    + (f"update {self.saved_update}" if self.saved_mid_epoch
                       else f"epoch {self.saved_epoch}") + ")")
            value = reading.epoch_mean if not math.isfinite(reading.epoch_mean) else math.nan
            raise TrainingDiverged(
                f"the loss became {value} at epoch {self.epoch + 1}, update "
                f"{reading.first_bad_update}; training stopped, {kept}. "
                f"{self.divergence_advice()}")
        return reading

    def _preempt(self, batches: int, reading, seconds: float) -> None:
        """Save where the epoch stands after ``batches`` micro-batches and end the run."""
        self.save(best=False, in_epoch={
            "batches": batches, "updates": self.updates_in_epoch,
            "loss_total": reading.epoch_total, "loss_count": reading.epoch_count,
            "seconds": seconds, "workers": self.workers})
        raise TrainingPreempted(f"{self._stop_reason()}: stopped after update "
                                f"{self.num_updates}; {self.resume_hint()}")

    def _stop_reason(self) -> str:
        return f"{self.stop.received or 'a stop signal'} received" + (
            "" if self.stop.received else " by another process")

    def _optimizer_step(self) -> None:
        c = self.config
        if c.sched_on == "epoch":
            # The epoch's rate, before each of its updates: what timm 0.6's train script set at
            # the end of the epoch before (and what a resumed run must set again).
            self.scheduler.step(self.epoch)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if c.clip_grad:
            dispatch_clip_grad(self.model.parameters(), c.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        self.updates_in_epoch += 1
        self.samples_seen += self.effective_batch
        if self.budget is not None:  # per update (config: a budget refuses sched_on=epoch)
            self.budget.after_update(self.num_updates, self.updates_in_epoch)
            self.total_updates = self.budget.planned
            s = self.scheduler
            self.scheduler.step_update(self.budget.lr_position(self.num_updates, s.warmup_t,
                                                               cosine_span(s)))
        elif c.sched_on == "update":
            self.scheduler.step_update(self.schedule_position())
        if self.scheduled_layers:
            self.set_progress(self.progress())
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)

    def evaluate(self, model: nn.Module, desc: str, full: bool = False,
                 split: str = "val") -> EvalResult:
        """Evaluate on the validation split (``max_val_batches`` caps it unless ``full``), or
        on the whole test split."""
        c = self.config
        loader, dataset = ((self.val_loader, self.data.val) if split == "val"
                           else (self.test_loader, self.data.test))
        limit = None if full or split != "val" else c.max_val_batches
        total = len(dataset) if limit is None else None
        with self.progress_log.evaluation_bar(desc, total) as bar:
            return evaluate(model, loader, self.num_classes, self.ctx, self.autocast,
                            limit, bar, channels_last=c.channels_last)

    def run_epoch(self) -> dict:
        start = time.perf_counter()
        row = {"epoch": self.epoch}
        row.update(self.train_one_epoch())
        row["lr"] = self.optimizer.param_groups[0]["lr"]  # where the epoch ended
        result = self._validate(self.model, "validation")
        self.last_eval["model"] = result
        row.update(val_loss=result.loss, val_top1=result.top1, val_top5=result.top5)
        metric = result.top1
        if self.ema is not None and self.config.eval_ema_each_epoch:
            ema_result = self._validate(self.ema.module, "validation (EMA)")
            self.last_eval["ema"] = ema_result
            row.update(ema_loss=ema_result.loss, ema_top1=ema_result.top1,
                       ema_top5=ema_result.top5)
            if self.config.final_weights == "ema":
                metric = ema_result.top1
        row["skipped_images"] = self.skipped_images()  # all ranks: it sums over them
        for name, layer in scheme_layers(self.model).items():
            row[f"cca/{name}"] = layer.cca_weight()
        epoch_seconds = time.perf_counter() - start
        self.seconds += epoch_seconds
        row["epoch_seconds"] = epoch_seconds
        if self.budget is not None:
            row.update(updates=self.num_updates, planned_updates=self.total_updates,
                       budget_used_s=self.budget.used())
        self.metrics.append(row)
        self.epoch += 1
        best = metric > self.best_metric
        if best:
            self.best_metric, self.best_epoch = metric, self.epoch - 1
        self.save(best)
        if self.budget is not None:
            self.budget.epoch_ended(self.num_updates)
            self.total_updates = self.budget.planned
        if self.stop.requested(self.ctx):  # received during the evaluations: saved just now
            raise TrainingPreempted(f"{self._stop_reason()}: stopped after epoch {self.epoch}; "
                                    f"{self.resume_hint()}")
        return row

    def _validate(self, model: nn.Module, desc: str) -> EvalResult:
        """The per-epoch validation; a budget learns from it what an evaluated image costs."""
        if self.budget is None:
            return self.evaluate(model, desc)
        start = self.budget.clock()
        result = self.evaluate(model, desc)
        self.budget.note_evaluation(self.budget.clock() - start,
                                    result.count / self.ctx.world_size)
        return result

    # The end -----------------------------------------------------------------------------------
    def skipped_images(self) -> int:
        """Unreadable images so far: left out when the data was read, and met while loading."""
        return self.data.skipped_up_front + self.skipped_at_load()

    def skipped_at_load(self) -> int:
        """Images found unreadable while loading, by any process and worker, each counted once."""
        counts = 0
        for dataset in self.data.sources():
            failed = getattr(dataset, "failed_at_load", None)
            if failed is not None:
                failed = failed.to(self.device, torch.int32)
                all_reduce_sum(failed, self.ctx)
                counts += int(failed.count_nonzero())
        return counts

    def finish(self) -> FitResult:
        """The final evaluations: the final weights on the whole validation split, then, once,
        on the test split with their deployed form (on the validation split where the data
        has no test split); the deployed weights, summary.json and report.md."""
        c, data = self.config, self.data
        start = time.perf_counter()
        final = self.ema.module if c.final_weights == "ema" else self.model
        val = self.last_eval.get(c.final_weights) if self._final_val_reused() else None
        if val is None:
            val = self.evaluate(final, "validation", full=True)
        deployed = copy.deepcopy(final)
        deploy_report = deploy(deployed)
        if data.test is not None:
            test = self.evaluate(final, "test", split="test")
            deployed_result = self.evaluate(deployed, "test (deployed)", split="test")
        else:
            test = None
            deployed_result = self.evaluate(deployed, "validation (deployed)", full=True)
        # The numbers a run is known by: the test split's, where there is one.
        final_result = test or val
        final_split = "test" if test is not None or data.val_is_test else "val"
        self.seconds += time.perf_counter() - start
        at_load = self.skipped_at_load()
        at_build = data.skipped_up_front
        held = data.held_out
        val_section = {
            "split": data.val_name, "images": len(data.val), "is_test": data.val_is_test,
            "held_out": None if held is None else {"images": len(held.indices),
                                                   "of": len(held.source), "seed": held.seed,
                                                   "digest": held.digest},
            "trained": val.summary(), "per_class_top1": val.per_class,
            "best_epoch": self.best_epoch, "best_metric": self.best_metric,
        }
        test_section = None
        if test is None:
            val_section["deployed"] = deployed_result.summary()
        else:
            test_section = {"split": data.test_name, "images": len(data.test),
                            "trained": test.summary(), "deployed": deployed_result.summary(),
                            "per_class_top1": test.per_class}
        summary = {
            "model": c.model, "data": data.name, "epochs": self.epoch,
            "updates": self.num_updates, "final_weights": c.final_weights,
            "val": val_section, "test": test_section,
            # The final numbers again, where scripts of earlier versions read them: the test
            # split's, or the validation split's where the data has no test split.
            "final_split": final_split, "trained": final_result.summary(),
            "deployed": deployed_result.summary(), "per_class_top1": final_result.per_class,
            "classes": data.classes, "params": self.params,
            "deployed_params": count_params(deployed), "macs": self.macs,
            "max_cca_weight_dropped": deploy_report.max_cca_weight,
            "cca_weights_dropped": deploy_report.cca_weights,
            "train_seconds": self.seconds, "device": str(self.device),
            "amp": self.precision.name, "cuda": self.cuda_settings or None,
            "loader_workers": self.workers,
            "world_size": self.ctx.world_size, "effective_batch": self.effective_batch,
            "lr": self.lr, "skipped_images": at_build + at_load, "skipped_at_load": at_load,
            "best_epoch": self.best_epoch, "best_metric": self.best_metric, "budget": None,
            "schemify": c.schemify, "compression": self.compression,
            "teacher": c.teacher,
        }
        report_path = self.run_dir / "report.md"
        if self.ctx.is_main:
            meta = {"model": c.model, "model_kwargs": json.dumps(self.model_kwargs),
                    "deployed": "1", "classes": json.dumps(data.classes),
                    **({"schemify": json.dumps(c.schemify)} if c.schemify else {}),
                    "eval_crop_pct": repr(c.eval_crop_pct),
                    "eval_interpolation": c.eval_interpolation}
            save_weights(deployed.state_dict(), self.run_dir / "model_deployed.safetensors", meta)
            plots = plot_curves(self.metrics.rows, self.run_dir)
            split_name = "test split" if final_split == "test" else "validation split"
            plots["confusion"] = plot_confusion(final_result.confusion, data.classes,
                                                self.run_dir / "confusion.png",
                                                f"{c.model}: confusion matrix, {split_name}")
        if self.budget is not None:
            # Up to here: writing the two text files below is all that is left.
            summary["budget"] = self.budget.summary(self.num_updates)
        if self.ctx.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            write_report(report_path, c.to_dict(), summary, self.metrics.rows, plots,
                         data.classes, final_result.per_class)
        self.ctx.barrier()
        return FitResult(self.run_dir, final_result.top1, final_result.top5,
                         deployed_result.top1, deployed_result.top5, report_path, summary,
                         final_split=final_split, val_top1=val.top1)


def scheme_form(model: nn.Module, config: TrainConfig, classes: list[str],
                saved: SavedModel | None) -> dict | None:
    """Put config.schemify's SCHEME form into ``model``, in place. A new run with init_from
    starts from that dense checkpoint's weights (``saved``), copied through the grouping
    (vitmix.compress); returns what they kept, or None when nothing was copied (``saved`` None:
    random SCHEME weights, or a resumed run, whose checkpoint holds its weights)."""
    arguments = schemify_arguments(config.schemify)
    if saved is None:
        schemify(model, **arguments, measure_macs=False)
        return None
    if saved.schemify is not None:
        raise ValueError(f"init_from {config.init_from} holds a SCHEME form already "
                         f"({saved.schemify}); compress starts from a dense model's weights")
    if saved.classes is not None and list(saved.classes) != list(classes):
        raise ValueError(f"init_from {config.init_from} was trained on other classes than the "
                         f"run's data ({len(saved.classes)} against {len(classes)}, or in "
                         f"another order); its head cannot be reused")
    check_state_dict(model, saved.state, config.model, config.init_from)
    model.load_state_dict(saved.state)
    _, report = compress(model, **arguments, grouping=config.grouping, channels_bound=True,
                         measure_macs=False)
    return report.as_dict()


def build_criterion(config: TrainConfig) -> nn.Module:
    if config.mixup > 0 or config.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup already smoothed the targets
    if config.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.label_smoothing)
    return nn.CrossEntropyLoss()


def _check_resumable(run_dir: Path) -> TrainConfig:
    """The config of the run in ``run_dir``, after checking that there is one to continue."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"cannot resume: {run_dir} is {kind_of(run_dir)}, not a run folder")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: the run folder {run_dir} does not exist")
    if not (run_dir / "last.pth").is_file():
        raise FileNotFoundError(f"cannot resume: {run_dir / 'last.pth'} does not exist (a run "
                                f"writes it at the end of its first epoch)")
    saved = TrainConfig.read_values(run_dir / "config.yaml")
    config = TrainConfig.from_dict(saved)
    if "val_split" not in saved:
        # A run of vitmix before held-out validation splits validated on the data's own second
        # split: it continues so, not on a split that takes images out of its training set.
        config = dataclasses.replace(config, val_split=0)
    return config


def _check_new_run(run_dir: Path, overwrite: bool) -> PreviousRun | None:
    """The run ``overwrite`` will replace (None when there is none), after checking that the
    folder can take a new run."""
    check_out_dir(run_dir)
    if not holds_run(run_dir):
        return None
    if not overwrite:
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                         f"replace it with --overwrite, or choose another --out")
    previous = PreviousRun(run_dir)
    previous.check_free()
    return previous


def fit(config: TrainConfig | None = None, resume: str | Path | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        overwrite: bool = False, clock: Callable[[], float] | None = None) -> FitResult:
    """Train ``config`` (or continue the run in folder ``resume``) and return its results.

    The run folder (config.out_dir, or ``resume``) receives config.yaml, metrics.csv, last.pth
    and best.pth, model_deployed.safetensors, summary.json, report.md and its plots.
    ``on_epoch_end(row)`` is called on every rank after each epoch's checkpoint is written.

    ``overwrite=True`` replaces an earlier run in the same folder instead of refusing: once the
    new run has started (data read, model built), the earlier run's files move to
    ``<folder>.previous``; they move back if the new run stops before its first checkpoint,
    and are deleted when it finishes. A folder in use by another live process is refused.

    ``clock`` (a function returning seconds; ``time.monotonic`` by default) is what a
    ``time_budget`` is counted on.
    """
    check_bool("overwrite", overwrite)
    if resume is not None:
        run_dir = Path(resume)
        saved = _check_resumable(run_dir)
        if config is not None and config.to_dict() != saved.to_dict():
            raise ValueError(f"--resume continues the run in {run_dir} with its own "
                             f"config.yaml; do not pass another config")
        config, previous = saved, None
    elif config is None:
        raise ValueError("fit() needs a config or a run folder to resume")
    else:
        run_dir = Path(config.out_dir)
        previous = _check_new_run(run_dir, overwrite)
    check_model_name(config.model)
    ctx = init_distributed(config.device)
    try:
        _check_device_settings(config, ctx)
    except ValueError:
        ctx.close()
        raise
    log = print if ctx.is_main else (lambda *a, **k: None)
    lock = RunLock(run_dir) if ctx.is_main else None
    created = not run_dir.exists()
    run = None
    moved_aside = False
    finished = False
    stop = StopSignals()
    try:
        with stop.caught(), cuda_math(ctx.device, config.tf32,
                                      config.cudnn_benchmark) as cuda_settings:
            if lock is not None:
                lock.acquire()
                for path in remove_stale_temporaries(run_dir):
                    log(f"removed {path.name}, a file a killed process left half-written")
            ctx.barrier()
            run = _Run(config, run_dir, ctx, clock, cuda_settings, resuming=resume is not None)
            run.stop = stop
            if resume is not None:
                # Notes on the file (no checksum: an earlier vitmix's) come first.
                notes: list[str] = []
                ckpt = load_checkpoint(run_dir / "last.pth", notes)
                notes += run.restore(ckpt, run_dir / "last.pth")
                where = (f"update {run.num_updates}, part-way through epoch {run.epoch + 1}"
                         if run.in_epoch else f"epoch {run.epoch}")
                log(f"resuming {run_dir} after {where}/{run.epochs_label()}")
                for note in notes:
                    log(f"note: {note}")
            elif previous is not None and ctx.is_main:
                previous.move_aside()
                moved_aside = True
                log(f"the run that was in {run_dir} is now in {previous.path}; it is deleted "
                    f"when this run finishes")
            ctx.barrier()
            result = _train_to_the_end(run, log, on_epoch_end)
        if moved_aside:
            previous.discard()
            moved_aside = False
        finished = True
        return result
    except KeyboardInterrupt:
        if run is not None and (run.saved_epoch > 0 or run.saved_mid_epoch):
            hint = run.resume_hint()
        elif resume is not None:  # stopped before this process trained: the run is as it was
            hint = f"continue with: vitmix train --resume {run_dir}"
        else:
            hint = "no checkpoint was written yet, so there is nothing to resume"
        raise TrainingInterrupted(hint) from None
    finally:
        if run is not None:
            run.close_loaders()
        if lock is not None:
            if not finished:
                _tidy_after_failure(run_dir, previous if moved_aside else None,
                                    wrote_config=resume is None and run is not None
                                    and run.config_saved)
            lock.release()
            if created and not finished:
                with contextlib.suppress(OSError):  # only when nothing is left in it
                    run_dir.rmdir()
        ctx.close()


def _check_device_settings(config: TrainConfig, ctx: DistContext) -> None:
    """Settings that the device the run got cannot honour, refused before any data is read."""
    if config.lean_training and ctx.device.type == "cuda":
        raise ValueError("lean_training (--lean-training) is a CPU path: on a GPU its "
                         "memory-lean functions ran SCHEMEformer-S12 2.5x slower than the plain "
                         "layers (H200, batch 64, bf16); train there with the plain layers "
                         "(and --compile inductor)")
    if config.sync_bn and ctx.enabled and ctx.device.type != "cuda":
        raise ValueError("sync_bn (--sync-bn) synchronises BatchNorm statistics across GPUs; "
                         "PyTorch's SyncBatchNorm does not run on CPUs (drop --sync-bn)")


def _train_to_the_end(run: _Run, log: Callable[[str], None],
                      on_epoch_end: Callable[[dict], None] | None) -> FitResult:
    config, ctx, data = run.config, run.ctx, run.data
    test_text = f" / {len(data.test)} test" if data.test is not None else ""
    log(f"{config.model}: {run.params / 1e6:.3f}M params, {run.macs / 1e6:.1f}M MACs "
        f"@{config.img_size}; {len(data.train)} train / {len(data.val)} validation{test_text} "
        f"images{f', {data.skipped} unreadable skipped' if data.skipped else ''}; "
        f"{ctx.world_size} process(es) on {ctx.device}; lr {run.lr:.3g}")
    log(f"device: {_device_line(run)}")
    if run.precision.note:
        log(f"note: {run.precision.note}")
    log(f"validation: {data.val_name}; test: {data.test_name or 'none (no split left for it)'}")
    if run.budget is not None:
        log(f"time budget {config.time_budget:g} min: {run.total_updates} updates planned "
            f"(a first estimate; planned again as the run goes), "
            f"{run.budget.used():.0f} s used")
    while run.keep_training():
        row = run.run_epoch()
        cca = [v for k, v in row.items() if k.startswith("cca/")]
        cca_text = f" cca max {max(cca):.3f}" if cca else ""
        ema_text = f" ema {row['ema_top1']:.2f}" if "ema_top1" in row else ""
        budget_text = ""
        if run.budget is not None:
            budget_text = (f", update {run.num_updates}/{run.total_updates}, "
                           f"{row['budget_used_s'] / 60:.1f}/{config.time_budget:g} min")
        log(f"epoch {run.epoch}/{run.epochs_label()}: loss {row['train_loss']:.4f} "
            f"val top-1 {row['val_top1']:.2f}{ema_text}{cca_text} "
            f"({row['epoch_seconds']:.0f}s, {row['train_images_per_s']:.0f} img/s"
            f"{budget_text})")
        if on_epoch_end is not None:
            on_epoch_end(row)
    result = run.finish()
    if result.summary["skipped_at_load"]:
        log(_skipped_at_load_note(run, result.summary["skipped_at_load"]))
    return result


def _device_line(run: _Run) -> str:
    """The device and what the run does with it, for the log."""
    amp = {"off": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with gradient "
           "scaling"}[run.precision.name]
    parts = [str(run.device), amp, f"{run.workers} loader worker(s) per process"]
    cuda = run.cuda_settings
    if cuda:
        parts[0] += f" ({cuda['gpu']}, compute capability {cuda['capability']})"
        parts.append(f"TF32 {'on' if cuda['tf32'] else 'off'}, cudnn.benchmark "
                     f"{'on' if cuda['cudnn_benchmark'] else 'off'}")
    if run.config.compile:
        parts.append(f"compiled with {run.config.compile}")
    if run.ctx.enabled:
        parts.append(f"DDP over {torch.distributed.get_backend()}")
    return ", ".join(parts)


def _skipped_at_load_note(run: _Run, count: int) -> str:
    checked = getattr(unwrap_subset(run.data.train)[0], "verify", None)
    passed = {"header": "passed the header check but ",
              "decode": "passed the check at the start but "}.get(checked, "")
    streamed = isinstance(run.data.train, ShardStream)
    instead = ("each was replaced by the next sample in training and left out of evaluation"
               if streamed else "each was replaced by the next image")
    return f"{count} images {passed}could not be read while loading; {instead}"


def _tidy_after_failure(run_dir: Path, previous: PreviousRun | None, wrote_config: bool) -> None:
    """A run that stopped before its first checkpoint gives the folder back as it found it."""
    if wrote_config and not (run_dir / "last.pth").exists():
        # Its first save failed half-way: no config.yaml may claim a run that cannot resume.
        (run_dir / "config.yaml").unlink(missing_ok=True)
    if previous is None:
        return
    if not (run_dir / "last.pth").exists() and previous.restore():
        note = f"the run that was in {run_dir} is back in place"
    else:
        note = f"the run this one replaced is kept in {previous.path}"
    print(f"vitmix train: {note}", file=sys.stderr)
