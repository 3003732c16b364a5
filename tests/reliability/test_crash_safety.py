"""Crash safety of `uhd train`: signals, kill -9, non-finite losses, failed saves, worker errors.

Real training subprocesses on the tiny synthetic folder; a kill lands at a random moment (seeded).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import uhd_core.engine.data_prep as data_prep_module
import uhd_core.engine.run_dir as run_dir_module
import uhd_core.engine.saving as saving_module
from uhd_core.checkpoint import load_checkpoint
from uhd_core.engine.api import create_trainer, run_trainer, run_training
from uhd_core.engine.events import Event, StepEnded, read_events
from uhd_core.engine.signals import stop_on_signals
from uhd_core.errors import RunDirError, TrainingError
from uhd_core.heads.centernet import CenterNetHead

#: kill -9 cycles in test_kill_9_at_random_moments_loses_at_most_the_current_epoch
KILLS = 4
shutil_usage = shutil._ntuple_diskusage  # what shutil.disk_usage returns


def _flags(data: Path, runs: Path, **extra: Any) -> dict[str, Any]:
    return {"image_dir": str(data), "runs_dir": str(runs), "exp_name": "crash", "cnn_width": 8, "batch_size": 8,
            "num_workers": 0, "img_size": "64x64", "lr": 0.01, "log_interval": 1, "seed": 0, "device": "cpu",
            **extra}


def _cli_args(flags: dict[str, Any]) -> list[str]:
    args = []
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def _start_training(flags: dict[str, Any], log: Path) -> subprocess.Popen:
    # A session of its own, like a terminal's foreground job: killpg reaches the workers too.
    return subprocess.Popen([sys.executable, "-m", "uhd_cli", "train", *_cli_args(flags)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "CI": "1"})


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [e for e in read_events(path) if e["event"] == kind] if path.is_file() else []


def _assert_every_checkpoint_loads(run_dir: Path) -> int:
    checkpoints = sorted(run_dir.glob("*.pt"))
    for path in checkpoints:
        load_checkpoint(path)
    return len(checkpoints)


# ------------------------------------------------------------------------------------------------
# signals

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_saves_and_exits_with_its_code(tiny_yolo_dir, tmp_path, sig, code):
    flags = _flags(tiny_yolo_dir, tmp_path, epochs=200, num_workers=2)  # workers: Ctrl-C reaches them too
    run_dir = tmp_path / "crash"
    proc = _start_training(flags, tmp_path / "out.log")
    _wait_for(lambda: len(_events(run_dir, "EpochEnded")) >= 1)
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=120) == code, (tmp_path / "out.log").read_text()
    (finished,) = _events(run_dir, "RunFinished")
    assert finished["stopped_early"] and finished["last_checkpoint"]
    assert load_checkpoint(finished["last_checkpoint"])["epoch"] == finished["epochs_done"]
    assert "--resume" in (tmp_path / "out.log").read_text()
    assert "finished" in (run_dir / "train.log").read_text()  # the log was flushed to the end
    assert not list(run_dir.glob(".*.tmp"))


def test_first_signal_asks_to_stop_a_second_one_does_not_wait():
    class Target:
        stops = 0

        def request_stop(self) -> None:
            self.stops += 1

    target = Target()
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals(target) as received:
        signal.raise_signal(signal.SIGTERM)
        assert target.stops == 1 and received.number == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(SystemExit) as exit_info:
            signal.raise_signal(signal.SIGTERM)
        assert exit_info.value.code == 143
    assert target.stops == 1
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    # under a launcher (which forwards Ctrl-C at unpredictable moments), later signals only re-ask
    target = Target()
    with stop_on_signals(target, second_signal_exits=False) as received:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        assert target.stops == 1 and received.number == signal.SIGINT


# ------------------------------------------------------------------------------------------------
# kill -9

def test_kill_9_at_random_moments_loses_at_most_the_current_epoch(tiny_yolo_dir, tmp_path):
    rng = random.Random(0)
    epochs = 50  # far more than 4 short cycles can finish, so every kill lands mid-run
    run_dir = tmp_path / "crash"
    flags = _flags(tiny_yolo_dir, tmp_path, epochs=epochs)
    survived = 0
    for kill in range(KILLS):
        args = flags if kill == 0 else {**flags, "resume": str(run_dir)}
        proc = _start_training(args, tmp_path / f"out{kill}.log")
        # once this process trains (its first logged step), after a random delay of up to ~2 epochs
        target = len(_events(run_dir, "StepEnded")) + 1
        _wait_for(lambda: len(_events(run_dir, "StepEnded")) >= target or proc.poll() is not None)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / f"out{kill}.log").read_text()
        survived += 1
        assert _assert_every_checkpoint_loads(run_dir) >= 1
        finished_epochs = [e["epoch"] for e in _events(run_dir, "EpochEnded")]
        newest_last = max(load_checkpoint(p)["epoch"] for p in run_dir.glob("last_*.pt"))
        # EpochEnded is emitted before its checkpoint is written: at most that one epoch is lost
        assert newest_last >= max(finished_epochs) - 1
    assert survived == KILLS
    final = subprocess.run([sys.executable, "-m", "uhd_cli", "train", "--resume", str(run_dir)],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "1"})
    assert final.returncode == 0, final.stderr
    assert load_checkpoint(run_dir / f"last_{epochs:04d}.pt")["epoch"] == epochs
    _assert_every_checkpoint_loads(run_dir)
    assert not list(run_dir.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------
# non-finite losses

def _nan_on_steps(monkeypatch, bad_steps: set[int]) -> None:
    """Make CenterNetHead.loss return NaN on the given (1-based, global) calls."""
    real_loss = CenterNetHead.loss
    calls = {"n": 0}

    def loss(self, outputs, targets):
        calls["n"] += 1
        losses = real_loss(self, outputs, targets)
        if calls["n"] in bad_steps:
            losses = {**losses, "loss": losses["loss"] * float("nan")}
        return losses

    monkeypatch.setattr(CenterNetHead, "loss", loss)


def test_non_finite_steps_are_skipped_and_counted(tiny_yolo_dir, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, {2, 3})
    result = run_training(None, _flags(tiny_yolo_dir, tmp_path, epochs=2), tensorboard=False)
    epochs = _events(result.run_dir, "EpochEnded")
    assert [e["skipped_steps"] for e in epochs] == [2, 0]
    assert all(torch.isfinite(torch.tensor(list(e["losses"].values()))).all() for e in epochs)
    ckpt = load_checkpoint(result.last_checkpoint)
    steps_per_epoch = _events(result.run_dir, "RunStarted")[0]["steps_per_epoch"]
    assert ckpt["global_step"] == 2 * steps_per_epoch - 2  # no update was made for the skipped steps
    for tensor in ckpt["model"].values():
        assert torch.isfinite(tensor.float()).all()


def test_a_streak_of_non_finite_steps_stops_and_keeps_the_last_good_checkpoint(tiny_yolo_dir, tmp_path, monkeypatch):
    steps_per_epoch = 4  # 38 training images / batch 8 (drop_last); checked below
    # NaN from the 2nd step of epoch 2 on: epoch 2 ends after 3 skipped steps (weights untouched by them,
    # so last_0002.pt is still good); the 6th in a row, step 3 of epoch 3, stops the run.
    _nan_on_steps(monkeypatch, set(range(steps_per_epoch + 2, 1000)))
    flags = _flags(tiny_yolo_dir, tmp_path, epochs=5, max_nonfinite_steps=6)
    with pytest.raises(TrainingError, match=r"6 consecutive steps had a non-finite loss.*epoch 3 step 3.*--lr.*"
                                            r"--use-amp.*last_0002\.pt"):
        run_training(None, flags, tensorboard=False)
    run_dir = tmp_path / "crash"
    assert _events(run_dir, "RunStarted")[0]["steps_per_epoch"] == steps_per_epoch
    assert [e["skipped_steps"] for e in _events(run_dir, "EpochEnded")] == [0, 3]
    assert [p.name for p in sorted(run_dir.glob("last_*.pt"))] == ["last_0001.pt", "last_0002.pt"]
    for tensor in load_checkpoint(run_dir / "last_0002.pt")["model"].values():
        assert torch.isfinite(tensor.float()).all()
    assert "consecutive steps" in _events(run_dir, "RunFailed")[0]["error"]


# ------------------------------------------------------------------------------------------------
# disk and run dir

def test_an_unwritable_run_dir_is_refused_before_training(tiny_yolo_dir, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(RunDirError, match="not writable"):
        run_training(None, _flags(tiny_yolo_dir, not_a_dir, epochs=1), tensorboard=False)


def test_too_little_free_space_is_refused_before_training(tiny_yolo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_dir_module.shutil, "disk_usage", lambda _path: shutil_usage(total=10**6, used=999_000,
                                                                                      free=1000))
    with pytest.raises(RunDirError, match="MB free"):
        run_training(None, _flags(tiny_yolo_dir, tmp_path, epochs=1), tensorboard=False)
    assert not list((tmp_path / "crash").glob("*.pt"))


def test_a_failed_save_keeps_the_previous_checkpoints_and_stops(tiny_yolo_dir, tmp_path, monkeypatch):
    real_save = saving_module.save_checkpoint
    saves = {"n": 0}

    def disk_full_on_third_save(path, payload):
        saves["n"] += 1
        if saves["n"] == 3:  # epoch 1 writes a best and a last; the disk fills up in epoch 2
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, payload)

    monkeypatch.setattr(saving_module, "save_checkpoint", disk_full_on_third_save)
    with pytest.raises(TrainingError, match="No space left on device.*are kept.*--resume") as info:
        run_training(None, _flags(tiny_yolo_dir, tmp_path, epochs=3), tensorboard=False)
    assert info.value.exit_code == 1
    run_dir = tmp_path / "crash"
    assert _assert_every_checkpoint_loads(run_dir) == 2 and (run_dir / "last_0001.pt").is_file()


# ------------------------------------------------------------------------------------------------
# data-loader workers

def test_a_worker_error_names_the_image_and_the_original_error(tiny_yolo_dir, tmp_path, monkeypatch):
    seen: dict[str, Any] = {}
    real_dataset = data_prep_module.CachedDetectionDataset

    def fails_on_the_third_item(*args, **kwargs):
        dataset = real_dataset(*args, **kwargs)
        if kwargs.get("augment") is not None:
            seen["bad"] = kwargs["names"][2]

            def augment(image, boxes, labels, rng, source=None, _third=dataset.images[2]):
                if np.array_equal(image, _third):
                    raise ValueError("cannot rotate an image made of bees")
                return image, boxes, labels

            dataset.augment = augment
        return dataset

    monkeypatch.setattr(data_prep_module, "CachedDetectionDataset", fails_on_the_third_item)
    with pytest.raises(TrainingError) as info:
        run_training(None, _flags(tiny_yolo_dir, tmp_path, epochs=1, num_workers=1), tensorboard=False)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert seen["bad"] in message and "ValueError: cannot rotate an image made of bees" in message


# ------------------------------------------------------------------------------------------------
# "s": a checkpoint now

def test_request_save_writes_a_resumable_checkpoint_mid_epoch(tiny_yolo_dir, tmp_path):
    trainer, writers = create_trainer(None, _flags(tiny_yolo_dir, tmp_path, epochs=2), tensorboard=False)

    def save_at_step_2_of_epoch_2(event: Event) -> None:
        if isinstance(event, StepEnded) and event.epoch == 2 and event.step == 2:
            trainer.request_save()

    trainer.bus.subscribe(save_at_step_2_of_epoch_2)
    run_trainer(trainer, writers)
    (manual,) = sorted(trainer.run_dir.glob("manual_*.pt"))
    # asked when step 2 ended; taken up at step 3's sync (where every rank of a DDP job decides together)
    assert manual.name == "manual_0002_step_00003.pt"
    ckpt = load_checkpoint(manual)
    assert ckpt["epoch"] == 1  # resuming from it redoes epoch 2
    saved = [e for e in _events(trainer.run_dir, "CheckpointSaved") if e["kind"] == "manual"]
    assert saved and saved[0]["path"] == str(manual)
