"""Stopping cleanly when a cluster asks: SIGTERM (SLURM, Kubernetes, most schedulers send it
some seconds before they kill a job) and SIGUSR1 (SLURM's ``--signal=USR1@SECONDS``).

The handler only notes the signal; the training loop asks at every update boundary, saves a
checkpoint there (written atomically, as every checkpoint is), names the command that resumes
it, and the process exits with :data:`vitmix.exit_codes.PREEMPTED`. Under DDP the processes
agree first (a small collective on the host), so that all of them stop after the same update,
whichever received the signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .distributed import DistContext

__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingPreempted"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))


class TrainingPreempted(Exception):
    """A stop signal ended the run after a checkpoint; the message says how to resume."""


class StopSignals:
    """Notes the stop signals received while :meth:`caught` is active."""

    def __init__(self) -> None:
        self.received: str | None = None

    def _note(self, signum: int, frame) -> None:
        del frame
        if self.received is None:  # a second signal while stopping changes nothing
            self.received = signal.Signals(signum).name

    @contextlib.contextmanager
    def caught(self) -> Iterator[StopSignals]:
        """Within the block the stop signals are noted rather than fatal; the handlers in place
        before come back after it. Signals can only be caught in the main thread; elsewhere
        (a run started from a worker thread) they keep their effect."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def requested(self, ctx: DistContext) -> bool:
        """Whether any process has received a stop signal (a collective under DDP: every
        process asks at the same update)."""
        return ctx.any_rank(self.received is not None)
