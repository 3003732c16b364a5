"""One call per user-facing job; the CLI (or any other front end) only adds its own subscribers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from uhd_core.engine.events import EventBus, JsonlEventWriter, LogFileWriter, Subscriber, TensorBoardWriter
from uhd_core.engine.signals import stop_on_signals
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
    writers: list[Any] = [JsonlEventWriter(run_dir / "events.jsonl"), LogFileWriter(run_dir / "train.log")]
    if tensorboard:
        writers.append(TensorBoardWriter(run_dir / "tensorboard"))
    for writer in writers:
        bus.subscribe(writer)
    return trainer, writers


def run_trainer(trainer: Trainer, writers: list[Any]) -> RunResult:
    """Run with SIGINT/SIGTERM meaning "stop gracefully" (RunResult.stop_signal says which came), then
    close the writers whatever happened."""
    try:
        with stop_on_signals(trainer) as received:
            result = trainer.run()
        return dataclasses.replace(result, stop_signal=received.number)
    finally:
        for writer in writers:
            writer.close()


def run_training(preset: str | None, overrides: dict[str, Any], subscribers: list[Subscriber] | None = None,
                 tensorboard: bool = True) -> RunResult:
    return run_trainer(*create_trainer(preset, overrides, subscribers, tensorboard))
