"""Where the dashboard's events come from: a trainer running in a worker thread, or an events.jsonl.

Both are polled from the UI thread (``poll()`` returns the typed events, ``Stamped`` with their
time, that arrived since the last call), so the training thread never waits on the UI and the UI
applies a batch per refresh. A file's lines are parsed back into the same Event classes.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from uhd_core.engine.events import Event, Stamped, stamped_from_dict


class EventSource(Protocol):
    #: True when stop/save reach the training (a live run); False for a file that another process writes.
    controls_training: bool
    #: What the footer names as the source: the run dir or the followed events.jsonl.
    description: str

    def start(self) -> None: ...

    def poll(self) -> list[Stamped]: ...

    def stop(self) -> None: ...

    def save(self) -> None: ...


class LiveTrainingSource:
    """Runs ``trainer.run()`` in a worker thread and queues its events for the UI.

    After the thread ends, ``result`` holds the RunResult or ``error`` the exception it raised.
    """

    controls_training = True

    def __init__(self, trainer: Any, clock: Callable[[], float] = time.time) -> None:
        self.trainer = trainer
        self.clock = clock
        self.description = str(trainer.run_dir)
        self.result: Any = None
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[Stamped] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._train, name="uhd-train", daemon=True)
        trainer.bus.subscribe(self._enqueue)

    def _enqueue(self, event: Event) -> None:
        # Stamped like events.jsonl lines (rounded alike), so live and replayed runs look the same.
        self._queue.put(Stamped(round(self.clock(), 3), event))

    def _train(self) -> None:
        try:
            self.result = self.trainer.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the CLI after the UI closes
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def poll(self) -> list[Stamped]:
        events = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def stop(self) -> None:
        self.trainer.request_stop()

    def save(self) -> None:
        self.trainer.request_save()

    def close(self) -> None:
        """Stop a run the dashboard left while it was still training, and wait for its last checkpoint."""
        if self._thread.is_alive():
            self.trainer.request_stop()
            self._thread.join()


class EventsFileSource:
    """Tails an events.jsonl: everything written so far on the first poll, then appended lines.

    A line without its newline yet (being written, or torn by a crash) waits for the next poll;
    lines that are not JSON, or no event this version reads, are skipped (as read_events skips
    torn lines).
    """

    controls_training = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = str(self.path)
        self._offset = 0
        self._partial = b""

    def start(self) -> None:
        """Nothing to start: the file is written by another process, or not at all."""

    def poll(self) -> list[Stamped]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            stamped = stamped_from_dict(event) if isinstance(event, dict) else None
            if stamped is not None:
                events.append(stamped)
        return events

    def stop(self) -> None:
        """Another process trains: there is nothing here to stop."""

    def save(self) -> None:
        """Another process trains: there is nothing here to save."""
