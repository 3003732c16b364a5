"""Events the training loop emits; UIs and log writers subscribe (DESIGN.md rule 5).

Every event is a small frozen dataclass of JSON-safe values, so it can be written to
events.jsonl and replayed by the dashboard exactly as it was seen live.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Event:
    def to_dict(self) -> dict[str, Any]:
        return {"event": type(self).__name__, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class DataPrepared(Event):
    """The dataset was scanned and decoded; skipped files/lines are reported once, here."""

    image_dir: str
    num_images: int
    num_train: int
    num_val: int
    num_without_targets: int
    num_label_issues: int
    num_decode_failures: int
    from_cache: bool
    examples: list[str] = field(default_factory=list)  # first few problems, "file:line: reason"
    #: one per --extra-train-dir: {"image_dir", "num_images", "num_train", "num_without_targets",
    #: "num_label_issues", "num_decode_failures"} (every image of such a folder is a training image)
    extra_dirs: list[dict[str, Any]] = field(default_factory=list)
    min_box_px: float = 0.0
    num_small_boxes_dropped: int = 0  # training boxes under --min-box-px (all folders)
    num_small_images_dropped: int = 0  # training images left without a box by it


@dataclass(frozen=True)
class DecodeProgressed(Event):
    done: int
    total: int


def machine_facts() -> dict[str, Any]:
    """The machine this process runs on, for RunStarted (a replay shows the run's machine, not today's).

    ``{"host": str, "cpu": str (model name), "cores": int (usable by this process), "ram_bytes": int,
    "threads": int (torch intra-op threads; 0 before torch is imported), "gpu": str (the current CUDA
    device's name once torch has initialised CUDA, else "")}``. Every lookup is best-effort.
    """
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))  # a container or taskset may allow fewer than cpu_count
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    try:
        import psutil

        ram = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - a fact for display only
        ram = 0
    torch = sys.modules.get("torch")  # never imported here: the trainer has, when it emits RunStarted
    threads, gpu = 0, ""
    if torch is not None:
        try:
            threads = torch.get_num_threads()
            if torch.cuda.is_initialized():
                gpu = torch.cuda.get_device_name(torch.cuda.current_device())
        except Exception:  # noqa: BLE001 - a fact for display only
            pass
    return {"host": platform.node(), "cpu": cpu or "unknown", "cores": cores, "ram_bytes": ram,
            "threads": threads, "gpu": gpu}


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    exp_name: str
    preset: str
    arch: str
    head: str
    params: int
    img_size: list[int]
    device: str
    num_train: int
    num_val: int
    epochs: int
    start_epoch: int
    steps_per_epoch: int
    batch_size: int
    loss_terms: list[str]
    resumed_from: str = ""
    world_size: int = 1  # processes training together (DDP); batch_size is per process
    # machine_facts() of the process that builds the event, i.e. the training process (rank 0)
    machine: dict[str, Any] = field(default_factory=machine_facts)


@dataclass(frozen=True)
class RunWarning(Event):
    """Something the user should know that does not stop the run."""

    message: str


@dataclass(frozen=True)
class WeightsLoaded(Event):
    """--ckpt initialised the model: which tensors came from the checkpoint and which did not."""

    path: str
    strict: bool
    loaded: int  # tensors copied from the checkpoint
    total: int  # tensors in the model's state_dict
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint (start fresh)
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model (ignored)
    mismatched: list[str] = field(default_factory=list)  # "name: ckpt (shape) vs model (shape)" (start fresh)


@dataclass(frozen=True)
class StepEnded(Event):
    epoch: int
    step: int  # 1-based within the epoch
    steps_per_epoch: int
    global_step: int
    losses: dict[str, float]
    lr: float
    imgs_per_s: float


@dataclass(frozen=True)
class EpochEnded(Event):
    epoch: int
    losses: dict[str, float]  # means over the epoch's finite steps
    seconds: float
    imgs_per_s: float
    skipped_steps: int = 0  # steps whose loss was NaN/inf (no update was made)
    steps_done: int = 0  # steps this epoch ran; fewer than steps_per_epoch: interrupted (resume redoes it)
    steps_per_epoch: int = 0  # 0 in events.jsonl of older runs: read as a finished epoch

    @property
    def interrupted(self) -> bool:
        return 0 < self.steps_per_epoch and self.steps_done < self.steps_per_epoch


@dataclass(frozen=True)
class EvalFinished(Event):
    epoch: int
    map50: float
    per_class: dict[str, float]
    best_map50: float
    is_best: bool
    seconds: float
    render_dir: str = ""


@dataclass(frozen=True)
class CheckpointSaved(Event):
    epoch: int
    path: str
    kind: str  # "last" | "best" | "manual" (asked for mid-epoch)


@dataclass(frozen=True)
class RunFinished(Event):
    run_dir: str
    best_map50: float
    best_checkpoint: str
    last_checkpoint: str
    epochs_done: int
    seconds: float
    stopped_early: bool = False
    evaluated: bool = True  # False: no evaluation ran (best_map50 is then no measurement)


@dataclass(frozen=True)
class RunFailed(Event):
    error: str
    traceback: str = ""


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self, subscribers: list[Subscriber] | None = None) -> None:
        self.subscribers: list[Subscriber] = list(subscribers or [])

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self.subscribers:
            subscriber(event)


class JsonlEventWriter:
    """events.jsonl: one JSON object per event, flushed per line so a crash keeps what happened."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._fh = open(path, "a", encoding="utf-8", errors="backslashreplace")

    def __call__(self, event: Event) -> None:
        if isinstance(event, DecodeProgressed):
            return  # UI-only progress; not worth a line per image
        self._fh.write(json.dumps({"time": round(self.clock(), 3), **event.to_dict()}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        close_quietly(self._fh)


def close_quietly(fh: Any) -> None:
    """Close a log file whose last flush may fail (a full disk): the write that failed first already
    raised and was reported; failing again here would replace that one-line error with this one."""
    try:
        fh.close()
    except OSError:
        pass  # CPython closes the descriptor even when the final flush fails


@dataclass(frozen=True)
class Stamped:
    """An event and when it was emitted (epoch seconds; events.jsonl's ``"time"``; None: not known)."""

    time: float | None
    event: Event


def event_types() -> dict[str, type[Event]]:
    """Event class name (events.jsonl's ``"event"``) -> class, for every Event defined in this module."""
    return {cls.__name__: cls for cls in globals().values()
            if isinstance(cls, type) and issubclass(cls, Event) and cls is not Event}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """The typed Event of an ``Event.to_dict()`` (an events.jsonl line); None for a line this version
    cannot read (unknown event, a required field missing). Keys it does not know are ignored and
    missing fields with defaults take them, so lines of older and newer runs replay."""
    cls = event_types().get(str(data.get("event", "")))
    if cls is None:
        return None
    values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
    if cls is RunStarted:
        values.setdefault("machine", {})  # an older run's line: not the facts of the machine replaying it
    try:
        return cls(**values)
    except TypeError:
        return None


def stamped_from_dict(data: dict[str, Any]) -> Stamped | None:
    """An events.jsonl line -> Stamped(time, typed event), or None (see event_from_dict)."""
    event = event_from_dict(data)
    time_ = data.get("time")
    return None if event is None else Stamped(time_ if isinstance(time_, (int, float)) else None, event)


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line after a crash
    return events


def format_event_line(event: Event) -> str | None:
    """One plain log line per event worth logging (train.log and non-terminal stdout)."""
    if isinstance(event, DataPrepared):
        line = (f"data: {event.num_images} images with targets in {event.image_dir} -> train {event.num_train}, "
                f"val {event.num_val}; skipped {event.num_without_targets} without targets, "
                f"{event.num_decode_failures} undecodable, {event.num_label_issues} bad label lines"
                f"{' (decoded images from cache)' if event.from_cache else ''}")
        for extra in event.extra_dirs:
            line += (f"; + train {extra['num_train']} of {extra['num_images']} in {extra['image_dir']} "
                     f"({extra['num_without_targets']} without targets, {extra['num_decode_failures']} undecodable, "
                     f"{extra['num_label_issues']} bad label lines)")
        if event.min_box_px > 0:
            line += (f"; --min-box-px {event.min_box_px:g} dropped {event.num_small_boxes_dropped} training boxes "
                     f"and {event.num_small_images_dropped} images left without one")
        if event.examples:
            line += "\n" + "\n".join(f"  skipped {e}" for e in event.examples)
        return line
    if isinstance(event, RunStarted):
        return (f"run {event.exp_name}: {event.arch}/{event.head}, {event.params:,} params, "
                f"{event.img_size[0]}x{event.img_size[1]}, device {event.device}, epochs "
                f"{event.start_epoch}..{event.epochs}, {event.steps_per_epoch} steps/epoch, run dir {event.run_dir}"
                + (f", {event.world_size} processes x batch {event.batch_size}" if event.world_size > 1 else "")
                + (f", resumed from {event.resumed_from}" if event.resumed_from else ""))
    if isinstance(event, RunWarning):
        return f"warning: {event.message}"
    if isinstance(event, WeightsLoaded):
        lines = [f"initialised from {event.path}: {event.loaded}/{event.total} tensors loaded, "
                 f"{len(event.missing)} missing, {len(event.unexpected)} unexpected, "
                 f"{len(event.mismatched)} shape-mismatched"]
        for title, names in (("missing (fresh)", event.missing), ("unexpected (ignored)", event.unexpected),
                             ("shape-mismatched (fresh)", event.mismatched)):
            lines += [f"  {title}: {name}" for name in names]
        return "\n".join(lines)
    if isinstance(event, StepEnded):
        terms = " ".join(f"{k}={v:.4f}" for k, v in event.losses.items())
        return (f"epoch {event.epoch} step {event.step}/{event.steps_per_epoch} {terms} "
                f"lr={event.lr:.2e} {event.imgs_per_s:.0f} img/s")
    if isinstance(event, EpochEnded):
        terms = " ".join(f"{k}={v:.4f}" for k, v in event.losses.items())
        skipped = f" ({event.skipped_steps} steps skipped: non-finite loss)" if event.skipped_steps else ""
        status = (f"interrupted at step {event.steps_done}/{event.steps_per_epoch} (not finished: resume redoes it) "
                  f"after" if event.interrupted else "done in")
        return f"epoch {event.epoch} {status} {event.seconds:.1f}s ({event.imgs_per_s:.0f} img/s) {terms}{skipped}"
    if isinstance(event, EvalFinished):
        return (f"eval epoch {event.epoch}: mAP@0.5 {event.map50:.5f} (best {event.best_map50:.5f})"
                + (" new best" if event.is_best else ""))
    if isinstance(event, CheckpointSaved):
        return f"saved {event.kind} checkpoint {event.path}"
    if isinstance(event, RunFinished):
        best = (f"best mAP@0.5 {event.best_map50:.5f} ({event.best_checkpoint or 'no best checkpoint'})"
                if event.evaluated else "no evaluation ran yet")
        return f"finished {event.epochs_done} epochs in {event.seconds:.1f}s: {best}; run dir {event.run_dir}"
    if isinstance(event, RunFailed):
        return f"failed: {event.error}"
    return None


class LogFileWriter:
    """train.log: the plain lines of format_event_line, timestamped."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._fh = open(path, "a", encoding="utf-8", errors="backslashreplace")

    def __call__(self, event: Event) -> None:
        line = format_event_line(event)
        if line is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock()))
        self._fh.write(f"{stamp} {line}\n")
        if isinstance(event, RunFailed) and event.traceback:
            self._fh.write(event.traceback + "\n")
        self._fh.flush()

    def close(self) -> None:
        close_quietly(self._fh)


class TensorBoardWriter:
    """Scalars for TensorBoard: loss terms per logged step, mAP per eval, lr."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

        self._writer = SummaryWriter(str(log_dir))

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepEnded):
            for name, value in event.losses.items():
                self._writer.add_scalar(f"train/{name}", value, event.global_step)
            self._writer.add_scalar("train/lr", event.lr, event.global_step)
        elif isinstance(event, EvalFinished):
            self._writer.add_scalar("val/map50", event.map50, event.epoch)
        elif isinstance(event, (RunFinished, RunFailed)):
            self._writer.flush()

    def close(self) -> None:
        self._writer.close()
