"""The run folder's life: one process writes it at a time, and a run that ``--overwrite``
replaces stays whole until the new run has started, and on disk until the new run has finished.

- :class:`RunLock`: an exclusive ``flock`` on ``RUN/.vitmix.lock``. A second process that would
  train or resume the same run is refused while the first lives; the kernel drops the lock when
  its holder dies (``kill -9`` too), so the next process takes it over without guessing whether
  a stale lock file's process is still alive.
- :class:`PreviousRun`: the files of the run ``--overwrite`` replaces, moved to ``RUN.previous``
  once the new run has started, moved back when it fails before its first checkpoint, and
  deleted when it finishes.
- :func:`check_out_dir`, :func:`holds_run`, :func:`remove_stale_temporaries`: the checks and the
  tidying that go with them.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
from pathlib import Path

from ..paths import check_output_folder

__all__ = ["LOCK_NAME", "RUN_FILES", "PreviousRun", "RunBusy", "RunLock", "check_out_dir",
           "holds_run", "remove_stale_temporaries"]

LOCK_NAME = ".vitmix.lock"
# What a training run writes into its folder (config.yaml comes with the first checkpoint).
RUN_FILES = ("config.yaml", "metrics.csv", "last.pth", "best.pth", "model_deployed.safetensors",
             "summary.json", "report.md", "loss.png", "accuracy.png", "cca_weights.png",
             "confusion.png")
# What `vitmix eval` writes beside a run's checkpoints: stale once the run is replaced.
_EVAL_OUTPUT = re.compile(r"^(last|best|model_deployed)_(eval\.json|confusion\.png)$")
# The temporary name checkpoints.io.atomic_write gives a file while writing it (with its pid).
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


class RunBusy(ValueError):
    """Another live process holds the run folder."""


def check_out_dir(run_dir: Path) -> None:
    """ValueError when ``run_dir`` cannot be a folder: it is a file, or lies under one."""
    check_output_folder(run_dir, "the run folder (--out)")


def _run_entries(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir()
                  if p.name in RUN_FILES or _EVAL_OUTPUT.match(p.name))


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any file of a training run."""
    return bool(_run_entries(run_dir))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the half-written temporary files of processes killed while saving.

    For the holder of the run's lock, so no other training writes them; a file whose writer is
    still alive (a `vitmix eval` writing its eval.json beside the checkpoints) is left alone.
    """
    stale = []
    for path in run_dir.iterdir():
        found = _TEMPORARY.match(path.name)
        if found and path.is_file() and not _alive(int(found.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return sorted(stale)


class RunLock:
    """The exclusive right to write one run folder (created when missing)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")  # held open while the run lives
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise RunBusy(f"{self.run_dir} is in use by {holder}: one process trains a "
                              f"run at a time; wait for it to end, or stop it first") from None
            # The holder before us may have removed the file between our open and our lock:
            # a lock on a file no longer at this path guards nothing.
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        # Removed while still held, so a process that opens it next makes a fresh file.
        self.path.unlink(missing_ok=True)
        self._file.close()  # closing drops the flock
        self._file = None


class PreviousRun:
    """The run that ``--overwrite`` replaces, kept in ``RUN.previous`` while the new one runs.

    Only the run's own files move (see RUN_FILES); anything else in the folder stays put.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.with_name(self.run_dir.name + ".previous")
        self.moved: list[str] = []

    def check_free(self) -> None:
        """ValueError when an earlier ``--overwrite`` left its set-aside run there."""
        if self.path.exists():
            raise ValueError(f"{self.path} holds a run that an earlier --overwrite of "
                             f"{self.run_dir} set aside; delete or move it, then run again")

    def move_aside(self) -> None:
        self.check_free()
        self.path.mkdir()
        try:
            for entry in _run_entries(self.run_dir):
                os.rename(entry, self.path / entry.name)
                self.moved.append(entry.name)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> bool:
        """Move the run back; False (nothing moved) when the new run has written a file of the
        same name, which then stays and the previous run with it in RUN.previous."""
        if any((self.run_dir / name).exists() for name in self.moved):
            return False
        for name in self.moved:
            os.rename(self.path / name, self.run_dir / name)
        self.moved = []
        self.path.rmdir()
        return True

    def discard(self) -> None:
        shutil.rmtree(self.path)
        self.moved = []
