"""A run's learning rate: how it scales with the batch, and its schedule (timm's cosine).

Two releases, two conventions, both expressible by a TrainConfig:

- the SCHEME release (timm 0.6's train script): lr = 1e-3 per 1024 images of effective batch,
  warm-up from an absolute 1e-6 and a floor of an absolute 1e-5, the rate set once per epoch,
  and ``cooldown_epochs`` at the floor after the cosine;
- GroupMixFormer's: 5e-4 per 512 images, its warm-up start and floor scaled by the batch too,
  the rate set after every update.

In both the cosine counts from the first step with the warm-up overlaid on its start (timm's
``warmup_prefix=False``); vitmix's own default starts the cosine where the warm-up ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.scheduler import CosineLRScheduler
from torch.optim import Optimizer

from .config import TrainConfig

__all__ = ["LearningRates", "build_scheduler", "cosine_span", "learning_rates"]


@dataclass(frozen=True)
class LearningRates:
    """The rates of a run after scaling: its peak, where its warm-up starts, its floor."""

    peak: float
    warmup_start: float
    floor: float


def learning_rates(config: TrainConfig, effective_batch: int) -> LearningRates:
    """``config``'s rates for ``effective_batch`` images per update (batch x accumulation x
    processes): the peak is base_lr scaled linearly from lr_base_size images."""
    scale = effective_batch / config.lr_base_size
    peak = config.base_lr * scale
    bound_scale = scale if config.scale_warmup_and_min_lr else 1.0
    warmup_start = (peak * 1e-3 if config.warmup_lr is None
                    else config.warmup_lr * bound_scale)
    return LearningRates(peak, warmup_start, config.min_lr * bound_scale)


def build_scheduler(optimizer: Optimizer, config: TrainConfig, rates: LearningRates,
                    cosine_updates: int, warmup_updates: int) -> CosineLRScheduler:
    """timm's cosine schedule for ``optimizer`` (whose learning rate is ``rates.peak``).

    Per update (``config.sched_on == "update"``), the cosine spans ``cosine_updates`` and the
    warm-up ``warmup_updates``; the engine calls ``step_update(updates done)`` after each
    update. Per epoch, they are ``config.epochs`` and ``config.warmup_epochs``, and the engine
    calls ``step(epoch)`` before each update of an epoch (the rate timm 0.6's train script set
    at the end of the epoch before). Past the cosine the rate stays at the floor: that is the
    cooldown.
    """
    per_epoch = config.sched_on == "epoch"
    cosine = config.epochs if per_epoch else cosine_updates
    warmup = int(config.warmup_epochs) if per_epoch else warmup_updates
    return CosineLRScheduler(
        optimizer, t_initial=cosine - warmup if config.warmup_prefix else cosine,
        lr_min=rates.floor, warmup_t=warmup, warmup_lr_init=rates.warmup_start,
        warmup_prefix=config.warmup_prefix, t_in_epochs=per_epoch,
    )


def cosine_span(scheduler: CosineLRScheduler) -> int:
    """The steps from the warm-up's end to the cosine's (what a time budget maps its progress
    onto, see TimeBudget.lr_position)."""
    if scheduler.warmup_prefix:
        return scheduler.t_initial
    return scheduler.t_initial - scheduler.warmup_t
