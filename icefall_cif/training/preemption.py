"""Preemption: stop at the next batch boundary when the cluster asks, with a checkpoint to resume.

Schedulers announce the end of a job with SIGTERM (SLURM can also send SIGUSR1 ahead of the time
limit, `--signal=USR1@120`). The handler only raises a flag; the training loop checks it once per
batch, in the same all-reduce that checks the loss, so every rank stops after the same batch:
rank 0 writes `checkpoint-<batch>.pt` (atomically, like every checkpoint), all ranks exit with
status 0, and `--start-batch -1` continues exactly where the run stopped.
"""
import logging
import signal
from typing import Optional

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is written; `run` ends cleanly on it."""


class PreemptionFlag:
    """Records the first preemption signal this process receives."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "PreemptionFlag":
        """Handle SIGTERM and SIGUSR1 in this process until the `with` block ends."""
        for signum in PREEMPTION_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._receive)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _receive(self, signum: int, frame) -> None:
        if self.signal is None:
            self.signal = signum
            # Logging from a signal handler can deadlock on the handler's own lock; the loop
            # logs the signal when it acts on it.

    @property
    def raised(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "none"


def ignore_in_launcher() -> None:
    """In the process that spawns the ranks: leave the signals to the ranks.

    The ranks install their own handlers; the launcher must neither die (its death would orphan
    them) nor forward a second signal. Ignored signals stay ignored in the spawned children until
    they install their handlers, so a signal that arrives during start-up is lost, not fatal.
    """
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    logging.debug("launcher: SIGTERM/SIGUSR1 are handled by the training processes")
