"""The exit codes of every `vitmix` command, in one place (docs/errors.md lists them)."""

OK = 0
BAD_INPUT = 2  # an argument, config value, file or folder given was refused, before any work
DIVERGED = 3  # `vitmix train`: the loss stopped being finite
SYSTEM = 4  # the system refused a read or write: permissions, a full disk, a read-only folder
# `vitmix train`: a stop signal (SIGTERM, SIGUSR1) ended the run after it saved a checkpoint;
# resuming continues it. 75 is EX_TEMPFAIL of sysexits.h: a temporary failure, worth retrying.
PREEMPTED = 75
INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report 128 + SIGINT
