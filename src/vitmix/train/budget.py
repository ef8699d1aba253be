"""A wall-clock budget for a training run: how many updates fit, planned from the measured speed
and planned again as the run goes, so that the schedules end as the budget does.

A run given ``time_budget`` minutes trains as many updates as fit, with the learning-rate cosine,
the CCA cosine's progress and the warm-up spread over them, on a slow machine or a fast one.
The number is a plan: before the first update it comes from a probe (one timed forward of an
evaluation batch), and every few seconds of training after that from what was measured:

- seconds per update (the mean of each stretch of updates between two plans, smoothed);
- seconds per epoch end: the per-epoch evaluation, the checkpoint, and the start of the next
  epoch's loader, measured as the gap between the last update of an epoch and the first of the
  next, less one update;
- seconds per evaluated image, from the per-epoch evaluations, for the final evaluations.

The plan keeps free the final evaluations (the validation and test splits, the trained and the
deployed model) with a margin, a fixed few seconds for the report, and a small share of the
budget; then it fits the updates and the epoch ends they bring into what is left. The run stops
when it has made the planned updates, mid-epoch if need be, and the epoch it stops in is
evaluated and saved as any other. Every process of a DDP run plans at the same updates from
the largest of the processes' measurements, so all stop together.

The schedules follow the run's *progress*, which each update advances by an equal share of
what is left of it over the updates left in the plan: (1 - p) / (planned - done). With a plan
that never changes this is done / planned exactly, as in a run without a budget; when the plan
changes, the pace changes from there on, so progress never jumps and never goes back, and it
reaches 1 with the last planned update. The CCA cosine takes it as it is. The learning rate
warms up over the updates asked for, or until the progress is 1/2 if that comes first (a plan
that shrank below twice the warm-up), then its cosine takes the progress made since, as a
position on a timm CosineLRScheduler made once, so timm's schedule is used unchanged. With a
plan that never changes, all of this is exactly what the scheduler does without a budget.

What the clock counts: from the probe on, everything (the first updates' one-time costs such as
compilation, data loading, evaluations, checkpoints, the final evaluations, the deployed model
and the plots); reading the data and building the model before it are not counted. The clock
is a function returning seconds (``time.monotonic`` unless another is given), so tests run a
simulated machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["BudgetTooShort", "TimeBudget", "fit_updates", "wall_clock"]

# About this much training between two plans (in updates, the same count on every process).
REPLAN_SECONDS = 10.0
MAX_REPLAN_UPDATES = 500
# The first plan from measured speed comes this many updates after the first one, whose time
# holds one-time costs (compilation, the loader's start) and is never taken as a speed.
FIRST_REPLAN_UPDATES = 8
# Weight of the older estimate when a new measurement comes (per stretch of updates).
SMOOTHING = 0.6
# Before anything is measured: a training update costs about three forward passes per image
# (forward and backward), and a checkpoint about a second.
TRAIN_PER_EVAL = 3.0
CHECKPOINT_GUESS_S = 1.0
# What is kept free: the final evaluations times this margin, the plots and report, and this
# share of the budget for the unforeseen (a machine that slows down between two plans).
RESERVE_MARGIN = 1.25
REPORT_SECONDS = 3.0
SAFETY_SHARE = 0.01
MIN_UPDATE_S = 1e-6


def wall_clock() -> float:
    """Seconds on a monotonic clock: what a budget counts unless it is given another clock."""
    return time.monotonic()


class BudgetTooShort(ValueError):
    """The budget cannot hold even one evaluation and the final evaluations."""


def fit_updates(seconds: float, update_s: float, epoch_end_s: float, updates_per_epoch: int,
                in_epoch: int) -> int:
    """The most updates that fit in ``seconds`` with the epoch ends they bring.

    ``in_epoch`` updates of the current epoch are done. Making x more updates passes
    m = ceil((in_epoch + x) / updates_per_epoch) epoch ends, the one that ends the run included,
    so x fits when x * update_s + m * epoch_end_s <= seconds. For m epoch ends x is at most
    min(m * updates_per_epoch - in_epoch, (seconds - m * epoch_end_s) / update_s): one bound
    grows with m, the other falls, so the best m lies where they cross.
    """
    if seconds <= 0 or update_s <= 0:
        return 0
    crossing = (seconds / update_s + in_epoch) / (updates_per_epoch + epoch_end_s / update_s)
    best = 0
    for m in {max(1, math.floor(crossing)), max(1, math.ceil(crossing))}:
        x = min(m * updates_per_epoch - in_epoch,
                math.floor((seconds - m * epoch_end_s) / update_s))
        best = max(best, x)
    return best


class TimeBudget:
    """The plan of a budget run: ``planned`` updates in all, re-planned as the run goes.

    The engine calls :meth:`start` when the clock starts, :meth:`probe` with the probe's
    timing, :meth:`after_update` after every optimizer update (then reads ``progress`` and
    :meth:`lr_position`), :meth:`note_evaluation` after each per-epoch evaluation and
    :meth:`epoch_ended` after each epoch's checkpoint. ``reduce_max`` takes a list of floats
    and returns the largest of each over all processes (DDP); one process needs none.
    """

    def __init__(self, minutes: float, updates_per_epoch: int, images_per_update: int,
                 epoch_eval_images: int, final_eval_images: int,
                 clock: Callable[[], float] | None = None,
                 reduce_max: Callable[[list[float]], list[float]] | None = None):
        self.minutes = minutes
        self.seconds = 60.0 * minutes
        self.updates_per_epoch = updates_per_epoch
        self.images_per_update = images_per_update
        self.epoch_eval_images = epoch_eval_images
        self.final_eval_images = final_eval_images
        self.clock = clock if clock is not None else wall_clock
        self.reduce_max = reduce_max or (lambda values: values)
        self.used_before = 0.0  # seconds earlier processes of this run used (resume)
        self.update_s: float | None = None
        self.epoch_end_s: float | None = None
        self.eval_image_s: float | None = None
        self.planned = 0
        self.measured = False  # whether a plan came from measured update times yet
        self.ended = False  # the planned updates are made: the schedules are at their end
        self.epoch_ends_measured = 0
        self.next_plan_at = FIRST_REPLAN_UPDATES
        self.history: list[list[float]] = []  # [updates done, seconds used, planned updates]
        self.progress = 0.0  # of the whole run, in [0, 1]
        self.warmup_updates = 0
        self.warmup_progress: float | None = 0.0  # the progress where the warm-up ended
        self._started: float | None = None
        self._last_update: float | None = None
        self._gap = "start"  # what the next interval between updates holds besides an update
        self._window_s, self._window_n = 0.0, 0

    def set_warmup(self, updates: int) -> None:
        """The learning rate's warm-up: this many updates (none: the cosine from the start)."""
        self.warmup_updates = updates
        self.warmup_progress = 0.0 if updates == 0 else None

    # The clock ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or, in a resumed run, restart) counting."""
        self._started = self.clock()
        self._last_update, self._gap = None, "start"
        self._window_s, self._window_n = 0.0, 0

    def used(self) -> float:
        """Seconds of the budget used so far, by this process and those before it."""
        return self.used_before + (self.clock() - self._started)

    # Measurements ---------------------------------------------------------------------------
    def probe(self, eval_image_s: float) -> None:
        """The first estimates, from seconds per evaluated image (a timed forward pass);
        BudgetTooShort when the budget cannot hold one epoch end and the final evaluations."""
        (self.eval_image_s,) = self.reduce_max([eval_image_s])
        self.update_s = TRAIN_PER_EVAL * self.eval_image_s * self.images_per_update
        self.epoch_end_s = self.epoch_eval_images * self.eval_image_s + CHECKPOINT_GUESS_S
        needed = RESERVE_MARGIN * (self.epoch_end_s + self.final_reserve())
        if needed > self.seconds:
            rate = 1 / self.eval_image_s
            rate = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
            raise BudgetTooShort(
                f"time_budget must hold at least one evaluation and the final evaluations, "
                f"about {needed:.1f} s here ({self.epoch_eval_images + self.final_eval_images} "
                f"images at {rate} images/s, and a checkpoint); give at least "
                f"{math.ceil(needed / 6) / 10:g} minutes, got {self.minutes:g}")

    def final_reserve(self) -> float:
        """Seconds kept for the final evaluations and the report (without the margin)."""
        return self.final_eval_images * self.eval_image_s + REPORT_SECONDS

    def note_evaluation(self, seconds: float, images: int) -> None:
        """A per-epoch evaluation of ``images`` images (this process's) took ``seconds``."""
        if images > 0 and seconds > 0:
            self.eval_image_s = self._smooth(self.eval_image_s, seconds / images, 0.5)

    def after_update(self, num_updates: int, in_epoch: int) -> None:
        """Update ``num_updates`` is done, the ``in_epoch``-th of its epoch: measure, plan
        again when it is time, and advance the progress."""
        now = self.clock()
        if self._last_update is not None:
            interval = now - self._last_update
            if self._gap is None:
                self._window_s += interval
                self._window_n += 1
            elif self._gap == "epoch":
                gap = max(0.0, interval - (self.update_s or 0.0))
                # The first measurement replaces the probe's guess.
                self.epoch_end_s = self._smooth(self.epoch_end_s if self.epoch_ends_measured
                                                else None, gap, 0.5)
                self.epoch_ends_measured += 1
        self._last_update, self._gap = now, None
        if num_updates >= self.next_plan_at:
            self.plan(num_updates, in_epoch)
        # An equal share of the progress left for each update left in the plan.
        self.progress += (1.0 - self.progress) / max(1, self.planned - num_updates + 1)
        if self.warmup_progress is None and self._warmup_done(num_updates) >= 1:
            self.warmup_progress = self.progress
        # Once the schedules are at their end the run is over, whatever a later plan says.
        self.ended = self.measured and num_updates >= self.planned

    def _warmup_done(self, num_updates: int) -> float:
        """How much of the warm-up is done: its updates, or half the run if that is further."""
        return min(1.0, max(num_updates / self.warmup_updates, 2 * self.progress))

    def epoch_ended(self, num_updates: int) -> None:
        """An epoch's evaluation and checkpoint are done: plan again."""
        self._gap = "epoch" if self._last_update is not None else self._gap
        self.plan(num_updates, 0)

    def lr_position(self, num_updates: int, warmup_t: int, t_initial: int) -> float:
        """Where a timm CosineLRScheduler made with ``warmup_t`` (the budget's warm-up, see
        :meth:`set_warmup`) and ``t_initial``, warm-up prefix, stands after ``num_updates``:
        in the warm-up, then the cosine by the progress made since the warm-up's end
        (``t_initial`` at the end of the plan, where the learning rate is min_lr)."""
        if self.warmup_progress is None:
            return warmup_t * self._warmup_done(num_updates)
        share = (self.progress - self.warmup_progress) / max(1e-12, 1 - self.warmup_progress)
        return warmup_t + min(1.0, share) * t_initial

    # The plan -------------------------------------------------------------------------------
    def plan(self, num_updates: int, in_epoch: int) -> int:
        """Plan the updates of the whole run, ``num_updates`` of them done, from the estimates
        (the largest over all processes, so that every process plans the same)."""
        if self._window_n:
            weight = SMOOTHING ** (self._window_n / FIRST_REPLAN_UPDATES)
            # A clock too coarse to see an update is no reason to plan none.
            mean = max(self._window_s / self._window_n, MIN_UPDATE_S)
            self.update_s = mean if not self.measured else (
                weight * self.update_s + (1 - weight) * mean)
            self.measured = True
            self._window_s, self._window_n = 0.0, 0
        used, self.update_s, self.epoch_end_s, self.eval_image_s = self.reduce_max(
            [self.used(), self.update_s, self.epoch_end_s, self.eval_image_s])
        free = (self.seconds * (1 - SAFETY_SHARE) - used
                - RESERVE_MARGIN * self.final_reserve())
        more = fit_updates(free, self.update_s, self.epoch_end_s, self.updates_per_epoch,
                           in_epoch)
        step = max(1, min(MAX_REPLAN_UPDATES, round(REPLAN_SECONDS / self.update_s)))
        self.next_plan_at = num_updates + (step if self.measured else FIRST_REPLAN_UPDATES)
        self.planned = num_updates if self.ended else num_updates + more
        if not self.measured:
            # A guess: it must not end the schedules before the first measured plan.
            self.planned = max(self.planned, self.next_plan_at + 1)
        self.history.append([num_updates, round(used, 3), self.planned])
        return self.planned

    def finished(self, num_updates: int) -> bool:
        """Whether the run has made its planned updates (only a measured plan ends a run)."""
        return self.ended or (self.measured and num_updates >= self.planned)

    @staticmethod
    def _smooth(old: float | None, new: float, weight: float) -> float:
        return new if old is None else weight * old + (1 - weight) * new

    # Checkpoints and the record -------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"used": self.used(), "update_s": self.update_s, "epoch_end_s": self.epoch_end_s,
                "eval_image_s": self.eval_image_s, "planned": self.planned,
                "measured": self.measured, "ended": self.ended,
                "next_plan_at": self.next_plan_at,
                "epoch_ends_measured": self.epoch_ends_measured, "progress": self.progress,
                "warmup_updates": self.warmup_updates, "warmup_progress": self.warmup_progress,
                "history": [list(h) for h in self.history]}

    def resume(self, state: dict, num_updates: int) -> None:
        """Continue a run with what is left of its budget: the clock starts again at the
        seconds ``state`` had used, and the rest is planned at once."""
        self.used_before = float(state["used"])
        self.update_s, self.epoch_end_s = state["update_s"], state["epoch_end_s"]
        self.eval_image_s, self.planned = state["eval_image_s"], int(state["planned"])
        self.measured, self.next_plan_at = bool(state["measured"]), int(state["next_plan_at"])
        self.ended = bool(state["ended"])
        self.epoch_ends_measured = int(state["epoch_ends_measured"])
        self.progress, self.warmup_progress = state["progress"], state["warmup_progress"]
        self.warmup_updates = int(state["warmup_updates"])
        self.history = [list(h) for h in state["history"]]
        self.start()
        self.plan(num_updates, 0)

    def summary(self, num_updates: int) -> dict:
        """What summary.json records of the budget."""
        return {"minutes": self.minutes, "seconds": self.seconds,
                "seconds_used": round(self.used(), 3), "updates": num_updates,
                "planned_updates": self.planned,
                "first_planned_updates": self.history[0][2] if self.history else None,
                "seconds_per_update": self.update_s, "seconds_per_epoch_end": self.epoch_end_s,
                "eval_seconds_per_image": self.eval_image_s,
                "final_reserve_s": RESERVE_MARGIN * self.final_reserve(),
                "history": self.history}
