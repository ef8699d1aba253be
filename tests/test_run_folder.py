"""The run folder: nothing of an earlier run lost to --overwrite, one writer at a time, nothing
left behind by a failed or killed run, and one line (never a traceback) when the folder cannot
be used. The kill -9 and Ctrl-C cases run `vitmix train` in a child process that pauses at a
chosen point and says so on its stdout: the test acts on that line, never on a clock."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tiny_runs import PYTHON, child_env, quiet_fit, tiny_args, tiny_config
from vitmix import cli
from vitmix.checkpoints.io import load_checkpoint
from vitmix.train import TrainingInterrupted, engine
from vitmix.train.run_folder import remove_stale_temporaries

pytestmark = pytest.mark.filterwarnings("ignore:.*unreadable:UserWarning")

# `vitmix train` that pauses, printing "paused", either while writing the checkpoint of epoch N
# ("inside N": half the file written) or just after writing it ("after N"), until its stdin
# gives a line or a signal ends it.
PAUSING_TRAIN = r"""
import signal, sys
from vitmix import cli
from vitmix.checkpoints import io
from vitmix.train import engine

signal.signal(signal.SIGINT, signal.default_int_handler)
where, epoch = sys.argv[1], int(sys.argv[2])

def pause():
    print("paused", flush=True)
    sys.stdin.readline()

real_save, real_run_save = io.torch.save, engine._Run.save

def save(obj, f):
    if where == "inside" and isinstance(obj, dict) and obj.get("epoch") == epoch:
        f.write(b"half a checkpoint")
        f.flush()
        pause()
    real_save(obj, f)

def run_save(self, best):
    real_run_save(self, best)
    if where == "after" and self.epoch == epoch:
        pause()

io.torch.save, engine._Run.save = save, run_save
sys.exit(cli.main(sys.argv[3:]))
"""


# Only against a child that hangs for good: the tests wait on its pipes, never on a clock.
STUCK = 600


def start_paused(where: str, epoch: int, args: list[str]) -> subprocess.Popen:
    """A child `vitmix train ARGS`, returned once it has paused."""
    proc = subprocess.Popen([PYTHON, "-c", PAUSING_TRAIN, where, str(epoch), "train", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    for line in proc.stdout:
        if line.strip() == "paused":
            return proc
    proc.wait()
    raise AssertionError(f"the child never paused (exit {proc.returncode}): "
                         f"{proc.stderr.read()[-3000:]}")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_overwrite_replaces_a_run_only_once_the_new_one_has_started(
        image_tree, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    quiet_fit(tiny_config(image_tree, run, epochs=1))
    (run / "notes.txt").write_text("the user's own file")
    before = files_of(run)
    assert {"last.pth", "metrics.csv", "report.md", "model_deployed.safetensors"} <= set(before)
    base = tiny_args(image_tree, run, epochs=2)

    # A typo in the model name, a missing data folder: refused before the folder is touched.
    for change, message in ((["--model", "no_such_model"], "unknown model 'no_such_model'"),
                            (["--data", str(tmp_path / "nowhere")], "is neither")):
        assert cli.main(["train", *base, *change, "--overwrite"]) == 2
        assert message in capsys.readouterr().err
        assert files_of(run) == before and not (tmp_path / "run.previous").exists()

    # A new run that fails in its first epoch, before any checkpoint: the old run comes back.
    class NaNLoss(engine.nn.Module):
        def forward(self, logits, target):
            return logits.sum() * float("nan")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "build_criterion", lambda config: NaNLoss())
        assert cli.main(["train", *base, "--overwrite"]) == 3
    assert f"the run that was in {run} is back in place" in capsys.readouterr().err
    assert files_of(run) == before and not (tmp_path / "run.previous").exists()

    # Without --overwrite: refused, with what to do.
    assert cli.main(["train", *base]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err

    # A run that starts and finishes replaces the old one; the user's file stays.
    assert cli.main(["train", *base, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert f"the run that was in {run} is now in {tmp_path / 'run.previous'}" in out
    assert load_checkpoint(run / "last.pth")["epoch"] == 2
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert not (tmp_path / "run.previous").exists()
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no lock, no temporaries

    # A run an earlier --overwrite set aside is not thrown away by the next one.
    (tmp_path / "run.previous").mkdir()
    assert cli.main(["train", *base, "--overwrite"]) == 2
    assert "run.previous holds a run that an earlier --overwrite" in capsys.readouterr().err


def test_a_run_that_stops_before_its_first_checkpoint_leaves_nothing(image_tree, tmp_path,
                                                                      monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine._Run, "train_one_epoch", interrupted)
    with pytest.raises(TrainingInterrupted, match="no checkpoint was written yet, so there "
                       "is nothing to resume"):
        quiet_fit(tiny_config(image_tree, tmp_path / "new"))
    assert not (tmp_path / "new").exists()  # made by the run, removed with it
    (tmp_path / "mine").mkdir()
    with pytest.raises(TrainingInterrupted):
        quiet_fit(tiny_config(image_tree, tmp_path / "mine"))
    assert list((tmp_path / "mine").iterdir()) == []  # the user's folder stays, empty
    monkeypatch.undo()
    with pytest.raises(ValueError, match="fewer than one batch"):
        quiet_fit(tiny_config(image_tree, tmp_path / "new", batch_size=64))
    assert not (tmp_path / "new").exists()  # no config.yaml of a run that never was


def test_ctrl_c_while_a_resume_starts_leaves_the_run_as_it_was(image_tree, tmp_path,
                                                                monkeypatch):
    run = tmp_path / "run"
    quiet_fit(tiny_config(image_tree, run, epochs=1))
    before = files_of(run)

    def interrupted(self, ckpt, source):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine._Run, "restore", interrupted)
    with pytest.raises(TrainingInterrupted, match=f"^continue with: vitmix train --resume {run}$"):
        quiet_fit(resume=run)
    assert files_of(run) == before


def test_out_must_be_a_folder_that_can_be_made(image_tree, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "file is a file; give a folder"),
                         (tmp_path / "file" / "run", "cannot be made: ")):
        assert cli.main(["train", *tiny_args(image_tree, out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "x"


def test_an_unwritable_folder_is_one_line_with_exit_code_4(image_tree, tmp_path, monkeypatch,
                                                           capsys):
    # Tests may run as root, whom permissions do not stop: the refusal is the file system's.
    real_mkdir = Path.mkdir
    locked = tmp_path / "locked"

    def mkdir(self, *args, **kwargs):
        if locked in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert cli.main(["train", *tiny_args(image_tree, locked / "run")]) == 4
    assert capsys.readouterr().err == (f"vitmix train: error: cannot read or write "
                                       f"{locked / 'run'}: Permission denied\n")


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(
        image_tree, tmp_path, monkeypatch, capsys):
    from vitmix.checkpoints import io

    real_save = io.torch.save

    def disk_full_in_epoch_two(obj, f):
        if obj.get("epoch") == 2:
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(io.torch, "save", disk_full_in_epoch_two)
    run = tmp_path / "run"
    assert cli.main(["train", *tiny_args(image_tree, run)]) == 4
    assert capsys.readouterr().err == (f"vitmix train: error: cannot read or write "
                                       f"{run / 'last.pth'}: No space left on device\n")
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "config.yaml", "last.pth",
                                                     "metrics.csv"]

    # Full at the first checkpoint: config.yaml was written, last.pth not; neither stays.
    monkeypatch.setattr(io.torch, "save", lambda obj, f: disk_full_in_epoch_two(
        dict(obj, epoch=obj["epoch"] + 1), f))
    assert cli.main(["train", *tiny_args(image_tree, tmp_path / "first")]) == 4
    assert "first/last.pth: No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "first").exists()


def test_one_process_holds_a_run_and_a_killed_ones_leftovers_go(image_tree, tmp_path, capsys):
    run = tmp_path / "run"
    child = start_paused("inside", 2, tiny_args(image_tree, run))
    try:
        temporaries = [p for p in run.iterdir() if p.name.endswith(".tmp")]
        assert len(temporaries) == 1  # half of epoch 2's checkpoint, being written
        busy = f"{run} is in use by process {child.pid} on "
        assert cli.main(["train", "--resume", str(run)]) == 2
        assert busy in capsys.readouterr().err
        assert cli.main(["train", *tiny_args(image_tree, run), "--overwrite"]) == 2
        assert busy in capsys.readouterr().err
        assert load_checkpoint(run / "last.pth")["epoch"] == 1  # untouched by either
    finally:
        child.kill()  # kill -9, while it writes
        child.communicate(timeout=STUCK)
    assert temporaries[0].exists()

    # The holder is dead: the next process takes the run over and clears what it left.
    assert cli.main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"removed {temporaries[0].name}, a file a killed process left half-written" in out
    assert "resuming" in out and load_checkpoint(run / "last.pth")["epoch"] == 2
    assert not any(p.name.startswith(".") for p in run.iterdir())


def test_ctrl_c_stops_with_exit_code_130_and_says_how_to_resume(image_tree, tmp_path):
    run = tmp_path / "run"
    child = start_paused("after", 1, tiny_args(image_tree, run, epochs=3))
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=STUCK)
    assert child.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"vitmix train: interrupted; the last checkpoint, {run / 'last.pth'}, holds epoch 1/3; "
        f"continue with: vitmix train --resume {run}")
    assert "Traceback" not in err
    assert not (run / ".vitmix.lock").exists()


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: its pid names no process
    dead = tmp_path / f".last.pth.{finished.pid}.0123abcd.tmp"
    alive = tmp_path / f".model_deployed_eval.json.{os.getpid()}.89abcdef.tmp"
    mine = tmp_path / ".notes.tmp"  # not a name vitmix writes
    for path in (dead, alive, mine):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, mine.name])
