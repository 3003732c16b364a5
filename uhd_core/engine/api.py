"""One call per user-facing job; the CLI (or any other front end) only adds its own subscribers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uhd_core.engine.distributed import DistContext, close_process_group, init_process_group, launch_local_processes
from uhd_core.engine.events import EventBus, JsonlEventWriter, LogFileWriter, RunWarning, Subscriber, TensorBoardWriter
from uhd_core.engine.signals import stop_on_signals
from uhd_core.engine.run_setup import RunSetup, prepare_run
from uhd_core.engine.trainer import RunResult, Trainer
from uhd_core.errors import RunDirError
from uhd_core.outputs import describe_os_error, native_path_ok


def create_trainer(preset: str | None, overrides: dict[str, Any], subscribers: list[Subscriber] | None = None,
                   tensorboard: bool = True, dist: DistContext | None = None, setup: RunSetup | None = None
                   ) -> tuple[Trainer, list[Any]]:
    """Build the config (checkpoint < preset < typed flags), the trainer and its file writers.

    Returns the trainer and the writers to close after ``trainer.run()``. In a DDP job (``dist``) only
    rank 0 gets writers and ``subscribers``. ``setup``: prepare_run(preset, overrides) when the caller
    already made it (the config and a --resume checkpoint are then not built or read again).
    """
    setup = setup or prepare_run(preset, overrides)
    dist = dist or DistContext()
    bus = EventBus(subscribers if dist.is_main else None)
    trainer = Trainer(setup.cfg, bus, resume_checkpoint=setup.resume_checkpoint, resume_path=setup.resume_path,
                      dist=dist)
    if not dist.is_main:
        return trainer, []
    run_dir: Path = trainer.run_dir
    writers: list[Any] = []
    # TensorBoard's writer encodes its path as UTF-8 and fails on a run dir whose name is not (a
    # Shift-JIS folder name): the scalars are optional, the run is not.
    skip_tensorboard = tensorboard and not native_path_ok(run_dir)
    try:
        writers += [JsonlEventWriter(run_dir / "events.jsonl"), LogFileWriter(run_dir / "train.log")]
        if tensorboard and not skip_tensorboard:
            writers.append(TensorBoardWriter(run_dir / "tensorboard"))
    except OSError as exc:
        for writer in writers:
            writer.close()
        trainer.close()
        raise RunDirError(f"{describe_os_error(exc, exc.filename or run_dir)} (run dir {run_dir})") from None
    for writer in writers:
        bus.subscribe(writer)
    if skip_tensorboard:
        bus.emit(RunWarning("no TensorBoard scalars for this run: TensorBoard needs a run dir path that is valid "
                            "UTF-8; events.jsonl and train.log have everything"))
    return trainer, writers


def run_trainer(trainer: Trainer, writers: list[Any], second_signal_exits: bool = True) -> RunResult:
    """Run with SIGINT/SIGTERM meaning "stop gracefully" (RunResult.stop_signal says which came), then
    close the writers whatever happened. ``second_signal_exits``: see stop_on_signals."""
    try:
        with stop_on_signals(trainer, second_signal_exits) as received:
            result = trainer.run()
        return dataclasses.replace(result, stop_signal=received.number)
    finally:
        for writer in writers:
            writer.close()


def run_training(preset: str | None, overrides: dict[str, Any], subscribers: list[Subscriber] | None = None,
                 tensorboard: bool = True, setup: RunSetup | None = None) -> RunResult:
    return run_trainer(*create_trainer(preset, overrides, subscribers, tensorboard, setup=setup))


def run_training_process(preset: str | None, overrides: dict[str, Any], subscribers: list[Subscriber] | None = None,
                         tensorboard: bool = True) -> RunResult:
    """One process of a DDP job (started by torchrun or launch_local_processes; its place in the job
    comes from the launcher's environment): join the process group, train, leave."""
    dist = DistContext.from_env()
    trainer, writers = create_trainer(preset, overrides, subscribers, tensorboard, dist=dist)
    init_process_group(dist, trainer.device.type)
    try:
        result = run_trainer(trainer, writers, second_signal_exits=False)  # the launcher is the hard stop
    except BaseException:
        close_process_group(synchronize=False)
        raise
    close_process_group()
    return result


def launch_local_training(preset: str | None, overrides: dict[str, Any], process_entrypoint: Callable[..., Any],
                          setup: RunSetup | None = None) -> RunResult:
    """--devices N on this machine: check the run once here (one-line errors before any process starts),
    then start N processes, each calling ``process_entrypoint(preset, overrides)`` (which should call
    run_training_process). Returns rank 0's RunResult; a failed process raises ChildFailedError.
    ``setup``: as in create_trainer (each process still makes its own)."""
    setup = setup or prepare_run(preset, overrides)
    cfg = setup.cfg
    # The check takes the run dir's lock (a run still training there is refused now); rank 0 of the job
    # takes it again, so this process lets go before starting them.
    Trainer(cfg, resume_checkpoint=setup.resume_checkpoint, resume_path=setup.resume_path,
            dist=DistContext(world_size=cfg.devices)).close()
    return launch_local_processes(cfg.devices, process_entrypoint, preset, overrides)[0]
