"""What the dashboard shows, as a plain reducer over event dicts: testable without Textual.

Event dicts are ``Event.to_dict()`` plus a ``"time"`` stamp, the shape of one events.jsonl line, so a
live run and a replayed file feed the same ``DashboardState.apply``.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from uhd_core.engine import events as event_types
from uhd_core.engine.events import Event, format_event_line

#: Loss values kept per term for the plots; older steps scroll out of the sparkline.
HISTORY_STEPS = 2000

_EVENT_CLASSES: dict[str, type[Event]] = {
    cls.__name__: cls for cls in vars(event_types).values()
    if isinstance(cls, type) and issubclass(cls, Event) and cls is not Event
}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """The Event a dict (or events.jsonl line) describes; None for unknown or incomplete ones."""
    cls = _EVENT_CLASSES.get(data.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a line written by another version of uhd
        return None


def log_line(data: dict[str, Any]) -> str | None:
    """The plain train.log line of an event dict (format_event_line), for the log pane."""
    event = event_from_dict(data)
    return format_event_line(event) if event is not None else None


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

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_DecodeProgressed(self, e: dict[str, Any]) -> None:
        self.decode_done, self.decode_total = e["done"], e["total"]

    def _on_DataPrepared(self, e: dict[str, Any]) -> None:
        self.data_line = log_line(e) or ""

    def _on_RunStarted(self, e: dict[str, Any]) -> None:
        # A resumed run appends to the same events.jsonl: a new RunStarted reopens the run but keeps
        # the loss history and evals of the epochs before it.
        for name in ("exp_name", "preset", "arch", "head", "params", "device", "num_train", "num_val",
                     "batch_size", "run_dir", "resumed_from", "epochs", "steps_per_epoch"):
            setattr(self, name, e[name])
        self.img_size = tuple(e["img_size"])
        self.machine = dict(e.get("machine") or {})  # absent in events.jsonl of older uhd versions
        self.epoch, self.step = e["start_epoch"], 0
        self.loss_terms = list(e["loss_terms"])
        for name in self.loss_terms:
            self.history.setdefault(name, deque(maxlen=HISTORY_STEPS))
        self.started, self.started_at, self.ended_at = True, e.get("time"), None
        self.finished = self.stopped_early = self.stop_requested = False
        self.error = self.traceback = ""

    def _on_StepEnded(self, e: dict[str, Any]) -> None:
        self.epoch, self.step, self.steps_per_epoch = e["epoch"], e["step"], e["steps_per_epoch"]
        self.global_step, self.lr, self.imgs_per_s = e["global_step"], e["lr"], e["imgs_per_s"]
        self.losses = dict(e["losses"])
        for name, value in self.losses.items():
            if name not in self.loss_terms:  # a term RunStarted did not announce is still shown
                self.loss_terms.append(name)
            self.history.setdefault(name, deque(maxlen=HISTORY_STEPS)).append(value)

    def _on_EvalFinished(self, e: dict[str, Any]) -> None:
        self.evals.append(EvalRow(e["epoch"], e["map50"]))
        if self.best_map50 is None or e["map50"] > self.best_map50:
            self.best_map50, self.best_epoch = e["map50"], e["epoch"]
        if e.get("render_dir"):
            self.render_dir = e["render_dir"]

    def _on_CheckpointSaved(self, e: dict[str, Any]) -> None:
        self.latest_checkpoint = e["path"]
        if e["kind"] == "best":
            self.best_checkpoint = e["path"]

    def _on_RunFinished(self, e: dict[str, Any]) -> None:
        self.finished, self.stopped_early = True, e.get("stopped_early", False)
        self.ended_at = e.get("time")
        if self.started_at is not None and self.ended_at is None:
            self.ended_at = self.started_at + e["seconds"]

    def _on_RunFailed(self, e: dict[str, Any]) -> None:
        self.error, self.traceback = e["error"], e.get("traceback", "")
        self.ended_at = e.get("time")

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
