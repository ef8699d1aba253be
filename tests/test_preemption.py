"""Preemption: a stop signal saves a checkpoint at the next update and ends the run with exit 75;
the run resumed from the middle of its epoch ends with the weights of an uninterrupted run (with
any loader: in the training process, in persistent workers, from shards); a run resumes on
another number of processes."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import torch
from torch.utils.data import DataLoader

from test_data import make_fashion_root
from tiny_runs import PYTHON, child_env, make_shards, quiet_fit, tiny_args, tiny_config
from vitmix import exit_codes
from vitmix.checkpoints.io import load_checkpoint
from vitmix.data.shards import StreamPlan, load_shard_splits
from vitmix.data.skipping import SkippingSampler, worker_continuation
from vitmix.train import TrainingPreempted
from vitmix.train.preemption import StopSignals


def _stop_at(monkeypatch, call: int) -> None:
    """A stop signal that arrives just before the ``call``-th time the loop asks (after each
    update, and after each epoch's checkpoint)."""
    calls = []

    def requested(self, ctx):
        calls.append(1)
        if len(calls) == call:
            self.received = "SIGTERM"
        return self.received is not None

    monkeypatch.setattr(StopSignals, "requested", requested)


def _same_weights(a_dir, b_dir) -> None:
    a, b = load_checkpoint(a_dir / "last.pth"), load_checkpoint(b_dir / "last.pth")
    assert a["num_updates"] == b["num_updates"]
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def _fashion(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    make_fashion_root(root, n_train=40, n_test=8)
    return dict(data="fashion-mnist", data_dir=str(root), loader="tensor", val_split=8,
                in_chans=1)


@pytest.mark.parametrize("source,workers", [("tree", 0), ("tree", 2), ("shards", 2),
                                            ("fashion", 0)])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(
        image_tree, tmp_path, monkeypatch, source, workers):
    data = {"tree": lambda: dict(data=str(image_tree)),
            "shards": lambda: dict(data=str(make_shards(tmp_path / "shards"))),
            "fashion": lambda: _fashion(tmp_path)}[source]()
    settings = dict(data, workers=workers, batch_size=4, epochs=2, re_prob=0.5)
    straight = quiet_fit(tiny_config(image_tree, tmp_path / "straight", **settings))
    # Update 4 of 6 (tree), of 5 (shards: 24 samples, batch 4, whole batches per worker) or
    # of 8 (Fashion-MNIST: 32 training images): in the middle of the first epoch.
    _stop_at(monkeypatch, 4)
    with pytest.raises(TrainingPreempted, match=r"^SIGTERM received: stopped after update 4; "
                                                r"the last checkpoint, .*last.pth, holds update "
                                                r"4, part-way through epoch 1/2; continue with: "
                                                r"vitmix train --resume "):
        quiet_fit(tiny_config(image_tree, tmp_path / "stopped", **settings))
    ckpt = load_checkpoint(tmp_path / "stopped" / "last.pth")
    assert ckpt["epoch"] == 0 and ckpt["num_updates"] == 4
    assert ckpt["in_epoch"]["batches"] == 4 and ckpt["in_epoch"]["workers"] == workers
    assert not list((tmp_path / "stopped").glob("*.tmp"))
    monkeypatch.undo()
    resumed = quiet_fit(resume=tmp_path / "stopped")
    _same_weights(tmp_path / "straight", tmp_path / "stopped")
    assert resumed.top1 == straight.top1
    rows = [json.dumps(r, sort_keys=True) for r in _rows(tmp_path / "stopped")]
    want = [json.dumps(r, sort_keys=True) for r in _rows(tmp_path / "straight")]
    assert rows == want  # the losses too: the resumed epoch's sums carried over


def _rows(run_dir):
    """metrics.csv without the columns of time."""
    import csv

    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k and "_per_s" not in k
                 and "budget" not in k} for row in csv.DictReader(f)]


def test_a_stop_during_the_evaluations_ends_after_the_epoch_checkpoint(
        image_tree, tmp_path, monkeypatch):
    # 24 training images in batches of 8: 3 updates, then the epoch's question is the 4th.
    _stop_at(monkeypatch, 4)
    with pytest.raises(TrainingPreempted, match=r"stopped after epoch 1; the last checkpoint, "
                                                r".*holds epoch 1/2; continue with"):
        quiet_fit(tiny_config(image_tree, tmp_path / "run"))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["in_epoch"] is None


def test_sigterm_saves_says_how_to_resume_and_exits_75(image_tree, tmp_path):
    out = tmp_path / "run"
    args = [*tiny_args(image_tree, out, epochs=2), "--batch-size", "2", "--progress-bar",
            "--log-interval", "1"]
    proc = subprocess.Popen([PYTHON, "-m", "vitmix", "train", *args], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # waits for the run to be training, not for a time
        if ": update 2/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == exit_codes.PREEMPTED == 75, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitmix train: preempted: SIGTERM received: "
                                                   "stopped after update ")
    assert lines[0].endswith(f"continue with: vitmix train --resume {out}")
    assert "\r" not in stdout + stderr
    assert not list(out.glob(".*")) and not list(out.glob("*.tmp"))  # no lock, no half file
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["in_epoch"] is not None or ckpt["epoch"] >= 1
    done = subprocess.run([PYTHON, "-m", "vitmix", "train", "--resume", str(out)],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {out} after " in done.stdout
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


def test_a_ddp_run_stopped_by_sigterm_resumes_on_one_process(image_tree, tmp_path):
    out = tmp_path / "ddp"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitmix", "train", *tiny_args(image_tree, out, epochs=1), "--device", "cpu",
           "--batch-size", "2", "--workers", "1", "--progress-bar", "--log-interval", "1"]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if ": update 2/" in line:
            proc.send_signal(signal.SIGTERM)  # to the launcher, which passes it on
            break
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert stderr.count("vitmix train: preempted: SIGTERM received: stopped after update") == 1
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["world_size"] == 2 and ckpt["in_epoch"] is not None
    assert len(ckpt["in_epoch"]["rng"]) == 2  # each process's generators
    stopped_at, seen = ckpt["num_updates"], ckpt["samples_seen"]
    assert seen == stopped_at * 4
    # One process now: 2 images per update instead of 4, on the same schedule by images.
    done = subprocess.run([PYTHON, "-m", "vitmix", "train", "--resume", str(out)],
                          env=child_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("note: the run started on 2 process(es) and continues on 1: 2 images per update "
            "instead of 4") in done.stdout
    final = load_checkpoint(out / "last.pth")
    # 24 training images: an epoch is 24 images whatever the processes.
    assert final["epoch"] == 1 and final["samples_seen"] == 24
    assert final["scheduler"]["t_initial"] == ckpt["scheduler"]["t_initial"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1


# ---- the loaders' part ------------------------------------------------------------------------

def test_skipping_sampler_skips_one_pass():
    sampler = SkippingSampler(list(range(10)))
    sampler.skip_next(4)
    assert list(sampler) == [4, 5, 6, 7, 8, 9]
    assert list(sampler) == list(range(10))
    with pytest.raises(ValueError, match="cannot skip -1 samples"):
        sampler.skip_next(-1)


def _simulate(batches: list[int]) -> list[tuple[int, int]]:
    """(worker, its batch) in the order a DataLoader over workers holding ``batches`` yields."""
    remaining, order, out = list(batches), list(range(len(batches))), []
    while any(remaining):
        for w in list(order):
            if remaining[w] == 0:
                order.remove(w)
                continue
            out.append((w, batches[w] - remaining[w]))
            remaining[w] -= 1
    return out


@pytest.mark.parametrize("batches", [[2, 3], [3, 3, 3], [1, 1, 3], [0, 2], [4, 1, 2, 2]])
def test_worker_continuation_resumes_the_loaders_order(batches):
    full = _simulate(batches)
    for taken in range(sum(batches) + 1):
        parts = worker_continuation(batches, taken)
        assert sorted(w for w, _ in parts) == list(range(len(batches)))
        # New workers taking these parts, in this order, yield the rest of ``full``.
        rest = _simulate([batches[w] - done for w, done in parts])
        assert [(parts[i][0], parts[i][1] + b) for i, b in rest] == full[taken:]
    with pytest.raises(ValueError, match="cannot have been taken"):
        worker_continuation(batches, sum(batches) + 1)


def _labels(stream, workers: int) -> list[list[int]]:
    """The batches a loader yields, each as its samples' labels (here one sample per label)."""
    loader = DataLoader(stream, batch_size=2, num_workers=workers)
    return [labels.tolist() for _, labels in loader]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
def test_shards_resume_an_epoch_where_its_loader_stopped(tmp_path):
    classes = [str(k) for k in range(30)]  # one sample each: a label names its sample
    root = make_shards(tmp_path / "shards", {"train": 1, "val": 1}, shard_size=7,
                       classes=classes)
    streams, _ = load_shard_splits(root, ("train",), "L", {"train": lambda image: 0})
    stream = streams["train"].planned(StreamPlan(batch_size=2, shuffle=True, seed=5))
    stream.set_epoch(3)
    full = _labels(stream, workers=3)
    assert sorted(sum(full, [])) == list(range(30))
    for taken in (0, 4, 13, len(full)):
        stream.resume_epoch(3, taken, workers=3)
        assert _labels(stream, workers=3) == full[taken:]  # the same batches, in order
        for other in (0, 2):
            stream.resume_epoch(3, taken, workers=3)
            rest = _labels(stream, workers=other)
            assert sorted(sum(rest, [])) == sorted(sum(full[taken:], []))  # each sample once
    stream.set_epoch(3)
    assert _labels(stream, workers=3) == full  # set_epoch reads from the start again


def test_a_budget_run_resumes_only_on_as_many_processes(image_tree, tmp_path):
    import yaml

    from vitmix.checkpoints.io import save_checkpoint

    out = tmp_path / "run"
    quiet_fit(tiny_config(image_tree, out, epochs=1))
    # As if it had been a run with a time budget on two processes.
    config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump(dict(config, time_budget=5.0)))
    ckpt = load_checkpoint(out / "last.pth")
    save_checkpoint(dict(ckpt, world_size=2), out / "last.pth")
    with pytest.raises(ValueError, match=r"^cannot resume: .*last.pth is a run with a time budget "
                                         r"on 2 process\(es\); it resumes on as many \(now 1\), "
                                         r"since its plan counts their updates$"):
        quiet_fit(resume=out)
