"""Graceful stop on SIGINT/SIGTERM: finish the step, save last_*.pt, flush logs, exit 130/143.

A second signal does not wait: SIGINT raises KeyboardInterrupt, SIGTERM SystemExit(143), at once.
That cannot corrupt a checkpoint: every save goes to a temp file renamed into place (checkpoint.py),
so an interrupted save leaves only a stray temp file, which resume removes.

Under torch.distributed's launcher (torchrun, `uhd train --devices N`) the launcher forwards the
terminal's Ctrl-C to processes that already got it, at a moment no process can predict; there every
signal only asks to stop, and the launcher is the hard stop (it kills processes still running after
its grace period).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


@dataclass
class ReceivedSignal:
    number: int = 0  # the first SIGINT/SIGTERM received, 0 while none


@contextmanager
def stop_on_signals(target: Stoppable, second_signal_exits: bool = True) -> Iterator[ReceivedSignal]:
    """While inside, SIGINT/SIGTERM call ``target.request_stop()``; the previous handlers come back after.

    ``second_signal_exits`` False: later signals are ignored too (a process under a launcher).
    Python only lets the main thread install handlers; from any other thread this is a no-op (the
    dashboard runs training in a worker thread and installs this from the main thread).
    """
    received = ReceivedSignal()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        if not received.number:
            received.number = signum
            target.request_stop()
        elif second_signal_exits:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
