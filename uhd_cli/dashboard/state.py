"""What the dashboard shows, as a plain reducer over typed events: testable without Textual.

A live run hands over the trainer's Event objects, a replay the ones ``stamped_from_dict`` parses
back from events.jsonl lines, each with its time (``Stamped``), so both feed the same
``DashboardState.apply(event, time)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from uhd_core.engine.events import (
    CheckpointSaved,
    DataPrepared,
    DecodeProgressed,
    EvalFinished,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    StepEnded,
    format_event_line,
)

#: Loss values kept per term for the plots; older steps scroll out of the sparkline.
HISTORY_STEPS = 2000


@dataclass
class EvalRow:
    epoch: int
    map50: float


@dataclass
class DashboardState:
    """Everything on screen, updated one event dict at a time by ``apply``."""

    # run header (RunStarted)
    exp_name: str = ""
    preset: str = ""
    arch: str = ""
    head: str = ""
    params: int = 0
    img_size: tuple[int, int] = (0, 0)
    device: str = ""
    num_train: int = 0
    num_val: int = 0
    batch_size: int = 0
    run_dir: str = ""
    resumed_from: str = ""
    machine: dict[str, Any] = field(default_factory=dict)  # RunStarted.machine: where the run trains
    # before the run starts
    decode_done: int = 0
    decode_total: int = 0
    data_line: str = ""
    # progress (StepEnded)
    epochs: int = 0
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    global_step: int = 0
    imgs_per_s: float = 0.0
    lr: float = 0.0
    loss_terms: list[str] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    history: dict[str, deque[float]] = field(default_factory=dict)
    # evaluation and files
    evals: list[EvalRow] = field(default_factory=list)
    best_map50: float | None = None
    best_epoch: int | None = None
    render_dir: str = ""
    latest_checkpoint: str = ""
    best_checkpoint: str = ""
    # lifecycle
    started: bool = False
    started_at: float | None = None
    ended_at: float | None = None
    finished: bool = False
    stopped_early: bool = False
    stop_requested: bool = False
    error: str = ""
    traceback: str = ""

    @property
    def ended(self) -> bool:
        return self.finished or bool(self.error)

    def apply(self, event: Event, time: float | None = None) -> None:
        """Update from one event; ``time``: when it was emitted (epoch seconds), None if unknown."""
        match event:
            case DecodeProgressed():
                self.decode_done, self.decode_total = event.done, event.total
            case DataPrepared():
                self.data_line = format_event_line(event) or ""
            case RunStarted():
                self._run_started(event, time)
            case StepEnded():
                self._step_ended(event)
            case EvalFinished():
                self.evals.append(EvalRow(event.epoch, event.map50))
                if self.best_map50 is None or event.map50 > self.best_map50:
                    self.best_map50, self.best_epoch = event.map50, event.epoch
                if event.render_dir:
                    self.render_dir = event.render_dir
            case CheckpointSaved():
                self.latest_checkpoint = event.path
                if event.kind == "best":
                    self.best_checkpoint = event.path
            case RunFinished():
                self.finished, self.stopped_early = True, event.stopped_early
                self.ended_at = time
                if self.started_at is not None and self.ended_at is None:
                    self.ended_at = self.started_at + event.seconds
            case RunFailed():
                self.error, self.traceback = event.error, event.traceback
                self.ended_at = time

    def _run_started(self, e: RunStarted, time: float | None) -> None:
        # A resumed run appends to the same events.jsonl: a new RunStarted reopens the run but keeps
        # the loss history and evals of the epochs before it.
        for name in ("exp_name", "preset", "arch", "head", "params", "device", "num_train", "num_val",
                     "batch_size", "run_dir", "resumed_from", "epochs", "steps_per_epoch"):
            setattr(self, name, getattr(e, name))
        self.img_size = tuple(e.img_size)
        self.machine = dict(e.machine or {})  # empty for events.jsonl of older uhd versions
        self.epoch, self.step = e.start_epoch, 0
        self.loss_terms = list(e.loss_terms)
        for name in self.loss_terms:
            self.history.setdefault(name, deque(maxlen=HISTORY_STEPS))
        self.started, self.started_at, self.ended_at = True, time, None
        self.finished = self.stopped_early = self.stop_requested = False
        self.error = self.traceback = ""

    def _step_ended(self, e: StepEnded) -> None:
        self.epoch, self.step, self.steps_per_epoch = e.epoch, e.step, e.steps_per_epoch
        self.global_step, self.lr, self.imgs_per_s = e.global_step, e.lr, e.imgs_per_s
        self.losses = dict(e.losses)
        for name, value in self.losses.items():
            if name not in self.loss_terms:  # a term RunStarted did not announce is still shown
                self.loss_terms.append(name)
            self.history.setdefault(name, deque(maxlen=HISTORY_STEPS)).append(value)

    # -- derived values ---------------------------------------------------------------------------
    def steps_remaining(self) -> int:
        if not self.steps_per_epoch:
            return 0
        return max(0, (self.epochs - self.epoch) * self.steps_per_epoch + self.steps_per_epoch - self.step)

    def eta_seconds(self) -> float | None:
        """Training time left at the latest img/s (evaluation time is not included)."""
        if self.ended or self.imgs_per_s <= 0 or not self.batch_size:
            return None
        return self.steps_remaining() * self.batch_size / self.imgs_per_s

    def elapsed_seconds(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.ended_at if self.ended_at is not None else now) - self.started_at)

    def epoch_progress(self) -> float:
        """Epochs done, fractional: 1.5 means halfway through the second epoch."""
        if not self.steps_per_epoch:
            return 0.0
        return self.epoch - 1 + self.step / self.steps_per_epoch
