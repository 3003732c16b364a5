"""Graceful stop on SIGINT/SIGTERM: finish the step, save last_*.pt, flush logs, exit 130/143.

A second signal does not wait: SIGINT raises KeyboardInterrupt, SIGTERM SystemExit(143), at once.
That cannot corrupt a checkpoint: every save goes to a temp file renamed into place (checkpoint.py),
so an interrupted save leaves only a stray temp file, which resume removes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


#: Seconds after the first signal before another one counts as "stop now".
SECOND_SIGNAL_AFTER_S = 1.0


@dataclass
class ReceivedSignal:
    number: int = 0  # the first SIGINT/SIGTERM received, 0 while none
    at: float = 0.0  # time.monotonic() when it came


@contextmanager
def stop_on_signals(target: Stoppable) -> Iterator[ReceivedSignal]:
    """While inside, SIGINT/SIGTERM call ``target.request_stop()``; the previous handlers come back after.

    Python only lets the main thread install handlers; from any other thread this is a no-op (the
    dashboard runs training in a worker thread and installs this from the main thread).
    """
    received = ReceivedSignal()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        now = time.monotonic()
        # A launcher (torchrun's agent) forwards the terminal's Ctrl-C to a process that got it too:
        # only a signal that comes a moment after the first is a second request.
        if received.number and now - received.at >= SECOND_SIGNAL_AFTER_S:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        if not received.number:
            received.number, received.at = signum, now
            target.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
