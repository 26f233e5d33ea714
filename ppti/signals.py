"""Stopping on SIGINT / SIGTERM without losing the run.

A signal only sets a flag; the loop finishes the optimizer step in progress, then stops, and the trainer saves the
embedding (and a checkpoint) of that step before exiting. Killing mid-step would leave nothing to save: the rows
of a half-accumulated step are still those of the previous step, but the optimizer state would not match them.
A second signal restores Python's default behaviour, so a user who presses Ctrl-C twice really aborts (every file
is written atomically, so even then no half-written file remains).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator, Optional

log = logging.getLogger("ppti")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(BaseException):
    """The run stopped early on a signal; its embedding (and checkpoint) were saved. Carries the exit code.

    Like KeyboardInterrupt, not an `Exception`: handlers of errors (e.g. a rank reporting its failure to rank 0)
    must not treat a requested stop as one."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell convention: 130 for SIGINT, 143 for SIGTERM


class StopRequest:
    """Set by a stop signal; read by the loop once per optimizer step."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.agreed = False  # every rank knows of a signal (set once per optimizer step)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def request(self, signum: int) -> None:
        self.signum = signum

    def agree(self, signum_of_any_rank: int) -> None:
        """Take in the signal any rank had received when the step's values were exchanged (see
        distributed.agree_on_step, which carries it with the loss)."""
        self.agreed = bool(signum_of_any_rank)
        if self.signum is None and signum_of_any_rank:
            self.signum = signum_of_any_rank

    def stops_now(self, ctx) -> bool:
        """Whether to stop after this step. With several cards only what every rank agreed on counts: the launcher
        may signal the ranks at slightly different moments, and a rank that stopped alone would leave the others
        waiting forever in the all-reduce."""
        return self.agreed if ctx.enabled else self.requested


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While active, SIGINT/SIGTERM set the yielded StopRequest instead of killing the process.

    Outside the main thread (where Python cannot install handlers) it yields a request that is never set.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def handle(signum, frame) -> None:
        if stop.requested:  # second signal: give up on a clean stop
            signal.signal(signum, previous[signum])
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        stop.request(signum)
        log.warning(
            "%s received: stopping after the current step and saving (send it again to abort without saving)",
            signal.Signals(signum).name,
        )

    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
