"""The time budget on simulated machines: a clock that only the simulation moves, so a slow, a
fast, a slowing and an uneven machine run a 30-minute budget in milliseconds. Each must end
inside its budget with its final evaluations, spend most of it training, and bring the learning
rate to min_lr and the CCA progress to 1 at its last update."""

from __future__ import annotations

import json
import math

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from vitmix.train.budget import (
    REPORT_SECONDS,
    BudgetTooShort,
    TimeBudget,
    fit_updates,
)

LR, MIN_LR = 1e-3, 1e-6


class Machine:
    """Simulated time: an update costs ``update_s`` (times ``slowdown`` once ``slow_after``
    seconds have passed; ``uneven`` makes every third update that much longer and every third
    that much shorter), an evaluated image ``eval_image_s``, a checkpoint ``checkpoint_s``."""

    def __init__(self, update_s, eval_image_s=2e-4, checkpoint_s=0.5, loader_start_s=0.3,
                 slowdown=1.0, slow_after=math.inf, uneven=0.0):
        self.t = 0.0
        self.update_s, self.eval_image_s = update_s, eval_image_s
        self.checkpoint_s, self.loader_start_s = checkpoint_s, loader_start_s
        self.slowdown, self.slow_after, self.uneven = slowdown, slow_after, uneven
        self.updates = 0

    def clock(self) -> float:
        return self.t

    def update(self) -> None:
        self.updates += 1
        factor = self.slowdown if self.t >= self.slow_after else 1.0
        factor *= 1 + self.uneven * ((self.updates % 3) - 1)
        self.t += self.update_s * factor

    def evaluate(self, images: int) -> float:
        seconds = images * self.eval_image_s
        self.t += seconds
        return seconds


def simulate(machine: Machine, minutes=30.0, updates_per_epoch=200, batch=256,
             val_images=5000, final_images=25000, warmup_updates=200, kill_at=None,
             state=None):
    """The engine's calls, in the engine's order, around a timm scheduler and an optimizer."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=LR)
    budget = TimeBudget(minutes, updates_per_epoch, batch, val_images, final_images,
                        clock=machine.clock)
    budget.start()
    machine.t += 1.0  # the probe's untimed forward and everything else before the timed one
    start = machine.t
    machine.evaluate(2 * batch)
    budget.probe((machine.t - start) / (2 * batch))
    budget.plan(0, 0)
    warmup = min(warmup_updates, budget.planned // 2)
    budget.set_warmup(warmup)
    scheduler = CosineLRScheduler(optimizer, t_initial=budget.planned - warmup, lr_min=MIN_LR,
                                  warmup_t=warmup, warmup_lr_init=LR * 1e-3,
                                  warmup_prefix=True, t_in_epochs=False)
    updates, trace = 0, []  # trace: (seconds, progress, lr) after every update
    if state is not None:
        updates = state.pop("updates")
        scheduler.load_state_dict(state.pop("scheduler"))
        budget.resume(state, updates)
    while not budget.finished(updates):
        machine.t += machine.loader_start_s
        in_epoch = 0
        while in_epoch < updates_per_epoch and not budget.finished(updates):
            machine.update()
            updates += 1
            in_epoch += 1
            budget.after_update(updates, in_epoch)
            scheduler.step_update(budget.lr_position(updates, scheduler.warmup_t,
                                                     scheduler.t_initial))
            trace.append((machine.t, budget.progress, optimizer.param_groups[0]["lr"]))
        budget.note_evaluation(machine.evaluate(val_images), val_images)
        machine.t += machine.checkpoint_s
        if kill_at is not None and machine.t >= kill_at:
            return dict(budget.state_dict(), updates=updates, scheduler=scheduler.state_dict())
        budget.epoch_ended(updates)
    stopped = machine.t
    machine.evaluate(final_images)  # the final evaluations
    machine.t += REPORT_SECONDS / 2  # plots and report
    return dict(budget=budget, trace=trace, stopped=stopped, end=budget.used(),
                updates=updates, lr=optimizer.param_groups[0]["lr"], warmup=warmup)


MACHINES = {
    "fast": Machine(update_s=0.02),
    "slow": Machine(update_s=1.5, eval_image_s=2e-3, checkpoint_s=3.0),
    "slowing down by half, half-way": Machine(update_s=0.1, slowdown=1.5, slow_after=900),
    "uneven": Machine(update_s=0.1, uneven=0.4),
}


@pytest.mark.parametrize("name", list(MACHINES))
def test_a_run_spans_its_budget_and_ends_inside_it(name):
    machine = MACHINES[name]
    machine.t, machine.updates = 0.0, 0
    run = simulate(machine)
    budget, trace = run["budget"], run["trace"]
    seconds = 30 * 60
    # Inside the budget, final evaluations included, and most of it spent on the run.
    assert run["end"] <= seconds
    assert run["end"] >= 0.97 * seconds, run["end"]
    # The final evaluations had their time kept free when training stopped.
    assert seconds - run["stopped"] >= 25000 * machine.eval_image_s
    # The schedules end with the last update: CCA progress 1, the learning rate at min_lr.
    assert run["updates"] == budget.planned
    assert trace[-1][1] == 1.0
    assert run["lr"] == pytest.approx(MIN_LR)
    # They span the run: progress grows with time, never goes back, and is half-way about
    # half-way through the training time; the learning rate falls from its peak after the
    # warm-up and never rises again.
    progress = [p for _, p, _ in trace]
    assert all(b >= a for a, b in zip(progress, progress[1:], strict=False))
    middle = next(p for t, p, _ in trace if t >= run["stopped"] / 2)
    assert 0.4 < middle < 0.6, middle
    lrs = [lr for _, _, lr in trace[run["warmup"]:]]
    assert lrs[0] == pytest.approx(LR, rel=1e-3)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:], strict=False))
    # The plans are recorded, and they settle: the last few differ by little.
    plans = [planned for _, _, planned in budget.history]
    assert len(plans) > 5 and plans[-1] == budget.planned
    assert max(plans[-5:]) <= 1.05 * min(plans[-5:])


def test_while_the_plan_holds_the_schedules_are_those_of_a_run_without_a_budget():
    planned, warmup = 300, 40
    budget = TimeBudget(10, 100, 128, 100, 100, clock=lambda: 0.0)
    budget.start()
    budget.planned, budget.measured, budget.next_plan_at = planned, True, 10**9
    budget.set_warmup(warmup)

    def scheduler():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        return optimizer, CosineLRScheduler(optimizer, t_initial=planned - warmup, lr_min=MIN_LR,
                                            warmup_t=warmup, warmup_lr_init=LR * 1e-3,
                                            warmup_prefix=True, t_in_epochs=False)

    (opt_a, by_budget), (opt_b, by_count) = scheduler(), scheduler()
    for n in range(1, planned + 1):
        budget.after_update(n, n % 100 or 100)
        by_budget.step_update(budget.lr_position(n, warmup, planned - warmup))
        by_count.step_update(n)
        assert budget.progress == pytest.approx(n / planned, rel=1e-12, abs=1e-12)
        assert opt_a.param_groups[0]["lr"] == pytest.approx(opt_b.param_groups[0]["lr"],
                                                            rel=1e-9), n
    assert budget.finished(planned) and opt_a.param_groups[0]["lr"] == pytest.approx(MIN_LR)


def test_a_warm_up_longer_than_half_the_run_ends_half_way():
    # The probe guesses updates 13x too fast: the warm-up of 1000 updates, half the first
    # plan at most, turns out longer than the ~880 updates that fit.
    run = simulate(Machine(update_s=2.0), warmup_updates=1000)
    assert run["warmup"] == 1000 and run["updates"] < 1000
    lrs = [lr for _, _, lr in run["trace"]]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(LR) and run["trace"][peak][1] == pytest.approx(0.5, abs=0.01)
    assert all(b >= a for a, b in zip(lrs[:peak], lrs[1:peak + 1], strict=True))
    assert all(b <= a for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))
    assert run["lr"] == pytest.approx(MIN_LR) and run["end"] <= 1800


def test_a_slower_machine_makes_fewer_updates_in_the_same_budget():
    fast = simulate(Machine(update_s=0.05))["updates"]
    slow = simulate(Machine(update_s=0.2))["updates"]
    assert 3.5 < fast / slow < 4.5


def test_a_resumed_run_continues_with_what_is_left_of_its_budget():
    machine = Machine(update_s=0.1)
    state = simulate(machine, kill_at=600)
    used = state["used"]
    assert 600 <= used < 700
    # The time between the kill and the resume is not counted; a new process starts its clock.
    machine.t = 10_000.0
    run = simulate(machine, state=state)
    assert run["end"] <= 1800 and run["end"] >= 0.97 * 1800
    assert run["lr"] == pytest.approx(MIN_LR) and run["trace"][-1][1] == 1.0
    assert run["budget"].history[0][2] == state["history"][0][2]  # the history goes on


def test_every_process_plans_from_the_slowest():
    # Two processes: the other one measures updates twice as slow; both plan by it.
    machine = Machine(update_s=0.1)
    budget = TimeBudget(10, 100, 128, 1000, 2000, clock=machine.clock,
                        reduce_max=lambda values: [v * 2 for v in values])
    budget.start()
    budget.probe(1e-4)
    assert budget.eval_image_s == 2e-4
    alone = TimeBudget(10, 100, 128, 1000, 2000, clock=machine.clock)
    for b in (budget, alone):
        b.start()
        b.probe(1e-4)
        b.plan(0, 0)
        for n in range(1, 40):
            machine.update()
            b.after_update(n, n)
    assert budget.planned < 0.6 * alone.planned


def test_the_first_plan_is_a_guess_that_ends_nothing():
    machine = Machine(update_s=0.1)
    budget = TimeBudget(0.5, 100, 128, 100, 100, clock=machine.clock)
    budget.start()
    budget.probe(0.05)  # a probe that guesses 19.2 s per update: none would fit in 30 s
    assert budget.plan(0, 0) == budget.next_plan_at + 1
    assert not budget.finished(0) and budget.planned > budget.next_plan_at
    for n in range(1, budget.next_plan_at + 1):
        machine.update()
        budget.after_update(n, n)
    assert budget.measured and budget.update_s == pytest.approx(0.1)
    # Measured, the updates are fast after all: the rest of the first epoch fits (in 19.7 s
    # left after the reserve, 6 s of them for the epoch's end); a second epoch end would not.
    assert budget.planned == 100


def test_a_run_at_the_end_of_its_schedules_stays_there():
    machine = Machine(update_s=0.1)
    budget = TimeBudget(2, 500, 128, 100, 100, clock=machine.clock)
    budget.start()
    budget.probe(1e-4)
    budget.plan(0, 0)
    n = 0
    while not budget.finished(n):
        machine.update()
        n += 1
        budget.after_update(n, n % 500 or 500)
    assert budget.progress == 1.0 and n == budget.planned and budget.ended
    # The epoch it ended in is validated and saved; a plan made then, though it would find
    # time for more (here: five minutes given back), ends the run all the same.
    machine.t -= 300
    budget.epoch_ended(n)
    assert budget.finished(n) and budget.planned == n


def test_a_budget_too_short_for_one_evaluation_is_refused_in_one_line():
    budget = TimeBudget(0.05, 100, 128, epoch_eval_images=5000, final_eval_images=25000)
    with pytest.raises(BudgetTooShort, match=(
            r"^time_budget must hold at least one evaluation and the final evaluations, about "
            r"80\.0 s here \(30000 images at 500 images/s, and a checkpoint\); give at least "
            r"1\.4 minutes, got 0\.05$")):
        budget.probe(2e-3)


@pytest.mark.parametrize("seconds,update_s,epoch_end_s,per_epoch,in_epoch", [
    (100.0, 0.1, 5.0, 50, 0), (100.0, 0.1, 5.0, 50, 20), (3.0, 0.5, 1.0, 4, 3),
    (1.0, 0.5, 2.0, 10, 0), (1000.0, 0.01, 0.0, 7, 6), (0.0, 0.1, 1.0, 10, 0),
    (57.3, 0.37, 2.9, 13, 5),
])
def test_fit_updates_is_the_most_that_fit(seconds, update_s, epoch_end_s, per_epoch, in_epoch):
    def cost(x):  # the slow, obvious way: each update, and each epoch end it passes
        ends = math.ceil((in_epoch + x) / per_epoch) if x or in_epoch else 0
        return x * update_s + ends * epoch_end_s

    best = max((x for x in range(0, 200_001) if cost(x) <= seconds + 1e-9), default=0)
    assert fit_updates(seconds, update_s, epoch_end_s, per_epoch, in_epoch) == best


# The engine on a simulated machine ----------------------------------------------------------
class SimulatedModelTime:
    """A clock that the model's forward passes move: ``train_batch_s`` a training forward (the
    whole update, backward included), ``eval_image_s`` an evaluated image. Everything else
    (checkpoints, plots) takes no time on it."""

    def __init__(self, train_batch_s: float, eval_image_s: float = 0.01):
        self.t = 0.0
        self.train_batch_s, self.eval_image_s = train_batch_s, eval_image_s
        self.training_forwards = 0

    def clock(self) -> float:
        return self.t

    def hook(self, module, args) -> None:
        if module.training:
            self.t += self.train_batch_s
            self.training_forwards += 1
        else:
            self.t += self.eval_image_s * args[0].shape[0]

    def install(self, monkeypatch) -> None:
        """Every model the engine builds (its EMA and deployed copies too) moves this clock."""
        from vitmix.train import engine

        build = engine.build_model

        def build_timed(name, kwargs):
            model = build(name, kwargs)
            model.register_forward_pre_hook(self.hook)
            return model

        monkeypatch.setattr(engine, "build_model", build_timed)


@pytest.fixture(scope="module")
def bigger_tree(tmp_path_factory):
    """16 training images a class (6 updates an epoch at batch 8) and 4 validation images."""
    from tiny_runs import make_image_tree

    return make_image_tree(tmp_path_factory.mktemp("budget_tree"), {"train": 16, "val": 4})


@pytest.mark.parametrize("train_batch_s", [1.0, 3.0], ids=["fast", "slow"])
def test_a_budget_run_ends_inside_its_budget_with_its_schedules_at_their_end(
        bigger_tree, tmp_path, monkeypatch, train_batch_s):
    from tiny_runs import TINY, quiet_fit, tiny_config
    from vitmix.checkpoints.io import load_checkpoint

    machine = SimulatedModelTime(train_batch_s)
    machine.install(monkeypatch)
    run = tmp_path / "run"
    config = tiny_config(bigger_tree, run, time_budget=1.0, epochs=1, warmup_epochs=1,
                         model_kwargs=dict(TINY, cca_schedule="cosine"))
    result = quiet_fit(config, clock=machine.clock)
    summary = result.summary
    budget = summary["budget"]
    # Inside the minute, the final evaluations included, and most of it trained; the epochs
    # (1 in the config) are what fitted. (The clock started after counting MACs, one image.)
    assert budget["seconds_used"] == pytest.approx(machine.t - 0.01) and machine.t <= 60.0
    assert budget["seconds_used"] >= 0.85 * 60.0
    assert summary["updates"] == budget["updates"] == budget["planned_updates"]
    assert summary["updates"] == machine.training_forwards
    expected = (60 * 0.99 - budget["final_reserve_s"]) / train_batch_s
    assert 0.8 * expected < summary["updates"] <= expected
    assert summary["epochs"] == math.ceil(summary["updates"] / 6) > 1
    # The learning rate ended at min_lr, the CCA cosine at 0 (deploy dropped nothing).
    last = load_checkpoint(run / "last.pth")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(config.min_lr)
    assert last["budget"]["progress"] == 1.0
    assert summary["max_cca_weight_dropped"] == 0.0
    assert result.deployed_top1 == pytest.approx(result.top1)
    # What the run folder records: the budget in config.yaml, the plan per epoch in
    # metrics.csv, the time used and the estimates in summary.json and report.md.
    assert "time_budget: 1.0" in (run / "config.yaml").read_text()
    rows = list(__import__("csv").DictReader((run / "metrics.csv").open()))
    assert [int(r["updates"]) for r in rows][-1] == summary["updates"]
    assert all(0 < float(r["budget_used_s"]) <= 60 for r in rows)
    assert budget["history"][0][0] == 0 and len(budget["history"]) > 2
    assert budget["seconds_per_update"] == pytest.approx(train_batch_s)
    report = (run / "report.md").read_text()
    assert (f"- time budget: 1 min; used {budget['seconds_used'] / 60:.2f} min" in report
            and f"{summary['updates']} updates made of {summary['updates']} planned" in report)


def test_vitmix_train_with_a_time_budget_end_to_end(bigger_tree, tmp_path, monkeypatch, capsys):
    from tiny_runs import tiny_args
    from vitmix import cli
    from vitmix.train import budget as budget_module

    machine = SimulatedModelTime(1.0)
    machine.install(monkeypatch)
    monkeypatch.setattr(budget_module, "wall_clock", machine.clock)
    run = tmp_path / "run"
    code = cli.main(["train", *tiny_args(bigger_tree, run), "--time-budget", "0.5",
                     "--val-split", "6"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    line = out.strip().splitlines()[-2]
    assert line.startswith("test top-1 ") and "validation top-1 " in line
    assert line.endswith(f"; wall time {summary['budget']['seconds_used']:.0f} s of a "
                         f"0.5-minute budget")
    assert out.strip().splitlines()[-1] == f"report: {run / 'report.md'}"
    assert "time budget 0.5 min: " in out and " min)" in out
    assert summary["budget"]["seconds_used"] <= 30
    assert summary["val"]["images"] == 6 and summary["test"]["images"] == 12


def test_a_budget_too_short_is_refused_before_training(bigger_tree, tmp_path, monkeypatch,
                                                       capsys):
    from tiny_runs import tiny_args
    from vitmix import cli
    from vitmix.train import budget as budget_module

    machine = SimulatedModelTime(1.0, eval_image_s=0.5)  # 12 validation images: 6 s each time
    machine.install(monkeypatch)
    monkeypatch.setattr(budget_module, "wall_clock", machine.clock)
    run = tmp_path / "run"
    assert cli.main(["train", *tiny_args(bigger_tree, run), "--time-budget", "0.2"]) == 2
    err = capsys.readouterr().err
    # 12 validation images for the model and its EMA per epoch, 12 for the deployed model at
    # the end; a checkpoint (1 s) and the report (3 s); with a margin of 1.25.
    assert err == ("vitmix train: error: time_budget must hold at least one evaluation and the "
                   "final evaluations, about 27.5 s here (36 images at 2 images/s, and a "
                   "checkpoint); give at least 0.5 minutes, got 0.2\n")
    assert not run.exists() and machine.training_forwards == 0


def test_a_budget_run_resumes_with_what_is_left(bigger_tree, tmp_path, monkeypatch):
    from tiny_runs import quiet_fit, tiny_config
    from vitmix.checkpoints.io import load_checkpoint

    machine = SimulatedModelTime(1.0)
    machine.install(monkeypatch)
    run = tmp_path / "run"

    class Killed(Exception):
        pass

    def kill_after_third_epoch(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        quiet_fit(tiny_config(bigger_tree, run, time_budget=1.0), clock=machine.clock,
                  on_epoch_end=kill_after_third_epoch)
    saved = load_checkpoint(run / "last.pth")["budget"]
    assert 18 < saved["used"] < 30  # three epochs of six updates, a second each, and more
    machine.t += 1000.0  # the time between the kill and the resume is not counted
    result = quiet_fit(resume=run, clock=machine.clock)
    budget = result.summary["budget"]
    assert saved["used"] < budget["seconds_used"] <= 60 and budget["seconds_used"] >= 50
    assert budget["history"][:len(saved["history"])] == saved["history"]
    assert budget["updates"] == budget["planned_updates"]
    last = load_checkpoint(run / "last.pth")
    assert last["budget"]["progress"] == 1.0
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-6)
