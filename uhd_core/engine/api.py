"""One call per user-facing job; the CLI (or any other front end) only adds its own subscribers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uhd_core.engine.events import EventBus, JsonlEventWriter, LogFileWriter, Subscriber, TensorBoardWriter
from uhd_core.engine.trainer import RunResult, Trainer, make_run_config


def create_trainer(preset: str | None, overrides: dict[str, Any], subscribers: list[Subscriber] | None = None,
                   tensorboard: bool = True) -> tuple[Trainer, list[Any]]:
    """Build the config (checkpoint < preset < typed flags), the trainer and its file writers.

    Returns the trainer and the writers to close after ``trainer.run()``.
    """
    cfg, ckpt, ckpt_path = make_run_config(preset, overrides)
    bus = EventBus(subscribers)
    trainer = Trainer(cfg, bus, resume_checkpoint=ckpt, resume_path=ckpt_path)
    run_dir: Path = trainer.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    writers: list[Any] = [JsonlEventWriter(run_dir / "events.jsonl"), LogFileWriter(run_dir / "train.log")]
    if tensorboard:
        writers.append(TensorBoardWriter(run_dir / "tensorboard"))
    for writer in writers:
        bus.subscribe(writer)
    return trainer, writers


def run_training(preset: str | None, overrides: dict[str, Any], subscribers: list[Subscriber] | None = None,
                 tensorboard: bool = True) -> RunResult:
    trainer, writers = create_trainer(preset, overrides, subscribers, tensorboard)
    try:
        return trainer.run()
    finally:
        for writer in writers:
            writer.close()
