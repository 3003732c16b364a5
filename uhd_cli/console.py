"""Rendering of training events on the terminal: a rich progress bar, or plain lines when piped."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from uhd_core.engine.events import (
    DataPrepared,
    DecodeProgressed,
    EpochEnded,
    Event,
    EvalFinished,
    RunFailed,
    RunFinished,
    RunStarted,
    RunWarning,
    StepEnded,
    WeightsLoaded,
    format_event_line,
)


def stdout_is_interactive() -> bool:
    import os

    return sys.stdout.isatty() and not os.environ.get("CI")


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS``; ``--:--`` while unknown."""
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class PlainLinePrinter:
    """One line per logged step/eval/checkpoint: readable in CI logs and pipes.

    Step lines end with ``elapsed H:MM:SS ETA H:MM:SS``: the time since RunStarted and the time left
    at the run's average pace so far (steps, evaluations and checkpoints together), so a piped run
    says when it will be done as the terminal bar does.
    """

    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stdout
        self.clock = clock
        self._started: RunStarted | None = None
        self._t0 = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, DecodeProgressed):
            if event.done == event.total:
                print(f"decoded {event.total} images", file=self.stream, flush=True)
            return
        if isinstance(event, RunFailed):
            return  # the CLI prints the one-line error (or traceback) itself
        if isinstance(event, RunStarted):
            self._started, self._t0 = event, self.clock()
        line = format_event_line(event)
        if line is not None and isinstance(event, StepEnded):
            line += self._timing(event)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def _timing(self, step: StepEnded) -> str:
        run = self._started
        if run is None:
            return ""
        elapsed = max(0.0, self.clock() - self._t0)
        done = (step.epoch - run.start_epoch) * step.steps_per_epoch + step.step  # steps of this run so far
        total = (run.epochs - run.start_epoch + 1) * step.steps_per_epoch
        eta = elapsed / done * max(0, total - done) if done > 0 else None
        return f" elapsed {format_duration(elapsed)} ETA {format_duration(eta)}"


def weights_loaded_table(event: WeightsLoaded) -> Table:
    """--ckpt report: one row per category with its count and tensor names."""
    table = Table(title=f"initialised from {event.path}", title_justify="left")
    table.add_column("tensors")
    table.add_column("count", justify="right")
    table.add_column("names")
    table.add_row("loaded", f"{event.loaded}/{event.total}", "")
    for title, names in (("missing (start fresh)", event.missing), ("unexpected (ignored)", event.unexpected),
                         ("shape-mismatched (start fresh)", event.mismatched)):
        table.add_row(title, str(len(names)), "\n".join(names))
    return table


class RichProgressRenderer:
    """A live progress bar with the current loss terms and img/s; other events print above it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None
        self.started = False

    def _ensure_started(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def __call__(self, event: Event) -> None:
        if isinstance(event, DecodeProgressed):
            self._ensure_started()
            if self.task is None:
                self.task = self.progress.add_task("decode", total=event.total, info="")
            self.progress.update(self.task, completed=event.done)
            return
        if isinstance(event, DataPrepared):
            if self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            self.console.print(format_event_line(event))
            return
        if isinstance(event, RunStarted):
            self._ensure_started()
            self.console.print(format_event_line(event))
            self.task = self.progress.add_task(f"epoch {event.start_epoch}", total=event.steps_per_epoch, info="")
            return
        if isinstance(event, StepEnded):
            if self.task is None:
                return
            terms = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
            self.progress.update(self.task, description=f"epoch {event.epoch}", completed=event.step,
                                 total=event.steps_per_epoch, info=f"{terms} | {event.imgs_per_s:.0f} img/s")
            return
        if isinstance(event, (EpochEnded, EvalFinished, RunWarning)):
            self.console.print(format_event_line(event))
            return
        if isinstance(event, WeightsLoaded):
            self.console.print(weights_loaded_table(event))
            return
        if isinstance(event, (RunFinished, RunFailed)):
            if self.started:
                self.progress.stop()
                self.started = False
            if isinstance(event, RunFinished):
                self.console.print(format_event_line(event))
