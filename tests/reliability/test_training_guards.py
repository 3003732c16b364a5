"""Guards of `uhd train` (issue 16): the run dir stays inside --runs-dir, one run per run dir,
hyperparameters and weights stay finite, a full disk is one line, and the end of a run says what
happened and what to do next.

Tiny runs on the shared synthetic folder (a width-8 CNN at 64x64, 4 steps per epoch).
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import uhd_core.engine.data_prep as data_prep_module
import uhd_core.engine.finite as finite_module
import uhd_core.engine.run_dir as run_dir_module
import uhd_core.engine.saving as saving_module
import uhd_core.engine.train_state as train_state_module
import uhd_core.engine.trainer as trainer_module
from uhd_core.checkpoint import load_checkpoint, save_checkpoint
from uhd_core.config import RunConfig, build_config
from uhd_core.engine.api import create_trainer, run_trainer, run_training
from uhd_core.engine.distributed import DistContext
from uhd_core.engine.events import EpochEnded, Event, StepEnded, read_events
from uhd_core.engine.run_lock import LOCK_NAME, RunDirLock
from uhd_core.errors import ConfigError, RunDirError, TrainingError

from uhd_runner import assert_one_error_line, run_uhd

shutil_usage = __import__("shutil")._ntuple_diskusage
REPO = Path(__file__).resolve().parents[2]


def _flags(data: Path, runs: Path, **extra: Any) -> dict[str, Any]:
    return {"image_dir": str(data), "runs_dir": str(runs), "exp_name": "guard", "cnn_width": 8, "batch_size": 8,
            "num_workers": 0, "img_size": "64x64", "lr": 0.01, "log_interval": 1, "seed": 0, "device": "cpu",
            "epochs": 1, **extra}


def _args(flags: dict[str, Any]) -> list[str]:
    args = ["train", "--no-tui"]
    for name, value in flags.items():
        flag = f"--{name.replace('_', '-')}"
        args += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return args


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _all_checkpoint_tensors_finite(run_dir: Path) -> int:
    """Load every checkpoint of ``run_dir``; assert no floating tensor in it holds NaN/inf; return the count."""
    paths = sorted(run_dir.glob("*.pt"))
    for path in paths:
        assert finite_module.nonfinite_entries(load_checkpoint(path)) == [], path
    return len(paths)


# ------------------------------------------------------------------------------------------------
# finding 3: --exp-name is one folder name

@pytest.mark.parametrize("name", ["..", "../x", "a/b", "ABS", ".", "", "a\\b"])
def test_exp_name_that_leaves_runs_dir_is_one_line_and_writes_nothing(tiny_yolo_dir, tmp_path, monkeypatch, name):
    # With `--exp-name ..` the run dir used to be --runs-dir's parent: its config.yaml was overwritten.
    (tmp_path / "config.yaml").write_text("mine: true\n")
    name = str(tmp_path / "elsewhere") if name == "ABS" else name
    before = _tree(tmp_path)
    code, _out, err = run_uhd(_args(_flags(tiny_yolo_dir, tmp_path / "runs", exp_name=name)), monkeypatch)
    assert code == 2, err
    assert_one_error_line(err, "--exp-name")
    assert _tree(tmp_path) == before and not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("name", ["a\0b", "x" * 256, "../../etc"])
def test_exp_name_rule_holds_for_presets_and_overrides(tmp_path, name):
    with pytest.raises(ConfigError, match="--exp-name"):
        build_config(None, {"exp_name": name})
    preset = tmp_path / "p.yaml"
    preset.write_text(f"exp_name: {name!r}\n".replace("\0", "\\0").replace("'", '"'))
    with pytest.raises(ConfigError, match="--exp-name"):
        build_config(str(preset))


def test_ordinary_exp_names_are_accepted():
    for name in ("default", "person cnn", "run-1.v2", "人物", "x" * 255):
        assert build_config(None, {"exp_name": name}).exp_name == name


def test_a_resumed_checkpoint_with_an_escaping_exp_name_is_refused(tiny_yolo_dir, tmp_path, monkeypatch):
    result = run_training(None, _flags(tiny_yolo_dir, tmp_path / "runs"), tensorboard=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    ckpt["config"]["exp_name"] = ".."
    forged = tmp_path / "forged.pt"
    save_checkpoint(forged, {k: v for k, v in ckpt.items() if k not in ("format", "uhd_version")})
    code, _out, err = run_uhd(["train", "--no-tui", "--resume", str(forged)], monkeypatch)
    assert code == 2
    assert_one_error_line(err, "--exp-name")


# ------------------------------------------------------------------------------------------------
# finding 4: one run per run dir

_HOLD_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from uhd_core.engine.run_lock import RunDirLock
    lock = RunDirLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes stdin or kills us
""")


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """A second process that takes the run dir's lock exactly as a training run does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_dir_held_by_another_process_is_refused_writing_nothing(tiny_yolo_dir, tmp_path, monkeypatch):
    flags = _flags(tiny_yolo_dir, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "guard"
    assert run_uhd(_args(flags), monkeypatch)[0] == 0  # a finished run: checkpoints, logs, events
    holder = _hold_lock(run_dir)
    try:
        before = _tree(run_dir)
        for extra in ({"exist_ok": True}, {"resume": str(run_dir), "epochs": 2},
                      {"resume": str(run_dir / "last_0001.pt"), "epochs": 2}):
            args = _args({**flags, **extra})
            if "resume" in extra:  # a resume takes its config from the checkpoint
                args = ["train", "--no-tui", "--resume", extra["resume"], "--epochs", "2"]
            code, _out, err = run_uhd(args, monkeypatch)
            assert code == 2, err
            line = assert_one_error_line(err, str(run_dir))
            assert f"process {holder.pid}" in line and "in use" in line
            assert _tree(run_dir) == before  # not a byte appended to train.log or events.jsonl
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # A lock of a dead process is no lock: kill -9 released it, the resume goes on.
    code, _out, err = run_uhd(["train", "--no-tui", "--resume", str(run_dir), "--epochs", "2"], monkeypatch)
    assert code == 0, err
    assert (run_dir / "last_0002.pt").is_file() and not (run_dir / LOCK_NAME).exists()


def test_a_resume_of_a_run_that_is_still_training_is_refused(tiny_yolo_dir, tmp_path, monkeypatch):
    flags = _flags(tiny_yolo_dir, tmp_path / "runs", epochs=500)
    run_dir = tmp_path / "runs" / "guard"
    log = open(tmp_path / "out.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "uhd_cli", *_args(flags)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "CI": "1", "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while not list(run_dir.glob("last_*.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "out.log").read_text()
            time.sleep(0.05)
        for args in (["train", "--no-tui", "--resume", str(run_dir)], _args({**flags, "exist_ok": True})):
            code, _out, err = run_uhd(args, monkeypatch)
            assert code == 2, err
            assert f"process {proc.pid}" in assert_one_error_line(err, str(run_dir))
        assert len([e for e in read_events(run_dir / "events.jsonl") if e["event"] == "RunStarted"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
    assert proc.returncode == 143


def test_only_rank_0_of_a_ddp_job_locks_the_run_dir(tiny_yolo_dir, tmp_path):
    cfg = build_config(None, _flags(tiny_yolo_dir, tmp_path / "runs"))
    (tmp_path / "runs" / "guard").mkdir(parents=True)
    with RunDirLock(tmp_path / "runs" / "guard"):
        trainer_module.Trainer(cfg, dist=DistContext(rank=1, world_size=2))  # rank 1 writes nothing: no lock
        with pytest.raises(RunDirError, match="in use by process"):
            trainer_module.Trainer(cfg, dist=DistContext(rank=0, world_size=2))


def test_devices_n_is_refused_by_its_launcher_on_a_held_run_dir(tiny_yolo_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "guard"
    holder = _hold_lock(run_dir)
    try:
        code, _out, err = run_uhd([*_args(_flags(tiny_yolo_dir, tmp_path / "runs")), "--devices", "2"], monkeypatch)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert code == 2  # before any training process started
    assert f"process {holder.pid}" in assert_one_error_line(err, str(run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]


def test_the_lock_is_released_when_the_run_ends_and_a_refused_setup_releases_it(tiny_yolo_dir, tmp_path):
    flags = _flags(tiny_yolo_dir, tmp_path / "runs")
    trainer, writers = create_trainer(None, flags, tensorboard=False)
    with pytest.raises(RunDirError):
        RunDirLock(trainer.run_dir).acquire()  # held while it trains ...
    run_trainer(trainer, writers)
    RunDirLock(trainer.run_dir).acquire().release()  # ... and free after


# ------------------------------------------------------------------------------------------------
# finding 6: finite hyperparameters, finite weights, finite checkpoints

FLOAT_FIELDS = [name for name, field in RunConfig.model_fields.items() if field.annotation is float]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "inf", "nan"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_hyperparameter_must_be_finite(name, value):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')}: .*finite"):
        build_config(None, {name: value})


def test_float_fields_are_the_ones_expected():
    # the parametrization above is generated; make sure it covers the optimisation knobs
    assert {"lr", "weight_decay", "grad_clip_norm", "ema_decay", "detr_l1_weight", "distill_feat"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "inf"),
                                         ("--grad-clip-norm", "nan"), ("--anchors", "nan,0.1")])
def test_a_non_finite_flag_is_one_line(tiny_yolo_dir, tmp_path, monkeypatch, flag, value):
    code, _out, err = run_uhd([*_args(_flags(tiny_yolo_dir, tmp_path / "runs")), flag, value], monkeypatch)
    assert code == 2
    assert_one_error_line(err, flag)
    assert not (tmp_path / "runs").exists()


def _poison_step(monkeypatch, at_step: int) -> None:
    """Make the optimizer write NaN into one weight on its ``at_step``-th step (1-based, global)."""
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_step:
            with torch.no_grad():
                weight = self.param_groups[0]["params"][0]
                weight[(0,) * weight.dim()] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_a_step_that_makes_a_weight_nan_stops_and_keeps_the_last_finite_checkpoint(tiny_yolo_dir, tmp_path,
                                                                                     monkeypatch):
    # Before: the NaN weight made every later loss NaN, those steps were skipped (below the stop
    # threshold), and the run exited 0 having saved NaN checkpoints.
    _poison_step(monkeypatch, at_step=6)  # epoch 2, step 2 (4 steps per epoch)
    code, _out, err = run_uhd(_args(_flags(tiny_yolo_dir, tmp_path / "runs", epochs=3)), monkeypatch)
    assert code == 1, err
    line = assert_one_error_line(err, "epoch 2 step 2")
    for cause in ("non-finite", "--lr", "--use-amp", "--grad-clip-norm", "last_0001.pt"):
        assert cause in line, cause
    run_dir = tmp_path / "runs" / "guard"
    assert _all_checkpoint_tensors_finite(run_dir) >= 1
    assert sorted(p.name for p in run_dir.glob("last_*.pt")) == ["last_0001.pt"]
    failed = [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "RunFailed"]
    assert failed and "non-finite" in failed[0]["error"]


def test_a_huge_finite_lr_stops_with_exit_1_and_no_nan_checkpoint(tiny_yolo_dir, tmp_path, monkeypatch):
    code, _out, err = run_uhd(_args(_flags(tiny_yolo_dir, tmp_path / "runs", lr=1e30, epochs=3, use_ema=True)),
                              monkeypatch)
    assert code == 1, err
    line = assert_one_error_line(err, "non-finite")
    assert "--lr too high (now 1e+30)" in line
    _all_checkpoint_tensors_finite(tmp_path / "runs" / "guard")


def test_the_save_path_refuses_non_finite_weights(tiny_yolo_dir, tmp_path):
    trainer, writers = create_trainer(None, _flags(tiny_yolo_dir, tmp_path / "runs", epochs=2, use_ema=True),
                                      tensorboard=False)
    ema_of: dict[str, Any] = {}
    real_ema = train_state_module.ModelEMA

    def remember_ema(*args, **kwargs):
        ema_of["ema"] = real_ema(*args, **kwargs)
        return ema_of["ema"]

    def poison_ema_after_epoch_2(event: Event) -> None:
        # after the epoch's last step check, before its saves: only the save path can stop it now
        if isinstance(event, EpochEnded) and event.epoch == 2:
            with torch.no_grad():
                weight = next(ema_of["ema"].module.parameters())
                weight[(0,) * weight.dim()] = float("inf")

    trainer.bus.subscribe(poison_ema_after_epoch_2)
    train_state_module.ModelEMA = remember_ema
    try:
        with pytest.raises(TrainingError, match=r"refusing to write checkpoint .*NaN/inf in ema\.module\..*--lr"):
            run_trainer(trainer, writers)
    finally:
        train_state_module.ModelEMA = real_ema
    assert _all_checkpoint_tensors_finite(trainer.run_dir) >= 1
    assert not list(trainer.run_dir.glob("*_0002*.pt"))


def test_a_checkpoint_with_nan_weights_is_not_resumed(tiny_yolo_dir, tmp_path, monkeypatch):
    result = run_training(None, _flags(tiny_yolo_dir, tmp_path / "runs"), tensorboard=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    weight = next(iter(ckpt["model"].values()))
    weight[(0,) * weight.dim()] = float("nan")  # what an earlier UHD could save
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, {k: v for k, v in ckpt.items() if k not in ("format", "uhd_version")})
    code, _out, err = run_uhd(["train", "--no-tui", "--resume", str(bad), "--epochs", "2"], monkeypatch)
    assert code == 2
    assert_one_error_line(err, "NaN/inf weights")
    assert not list(tmp_path.glob("*.yaml")) and not (tmp_path / "events.jsonl").exists()  # refused before writing
    code, _out, err = run_uhd([*_args(_flags(tiny_yolo_dir, tmp_path / "runs2")), "--ckpt", str(bad)], monkeypatch)
    assert code == 2
    assert_one_error_line(err, "NaN/inf weights")
    assert not (tmp_path / "runs2").exists()


def test_the_weight_check_is_a_small_part_of_a_step(tiny_yolo_dir, tmp_path):
    """Sanity bound only (the measured numbers are in the closing note): the check on the quickstart
    model costs far less than the step it guards."""
    from uhd_core.models.detector import build_detector

    cfg = build_config("quickstart", {"image_dir": str(tiny_yolo_dir)})
    model = build_detector(cfg).to(memory_format=torch.channels_last)
    watch = finite_module.FiniteWatch([*model.named_parameters(), *model.named_buffers()])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(cfg.batch_size, 3, *cfg.img_size).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        outputs, _ = model.forward_with_features(x)
        loss = sum(v.float().mean() for v in outputs.values()) if isinstance(outputs, dict) else outputs.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def timed(fn, n: int) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n

    assert watch.all_finite()
    assert timed(watch.all_finite, 50) < 0.25 * timed(step, 5)


# ------------------------------------------------------------------------------------------------
# finding 11: a full disk

def test_a_full_disk_is_refused_before_anything_is_created(tiny_yolo_dir, tmp_path, monkeypatch):
    # Before: the run dir, an empty train.log and events.jsonl and split.json were made first.
    monkeypatch.setattr(run_dir_module.shutil, "disk_usage", lambda _p: shutil_usage(total=10**9, used=10**9, free=0))
    code, _out, err = run_uhd(_args(_flags(tiny_yolo_dir, tmp_path / "runs")), monkeypatch)
    assert code == 2
    line = assert_one_error_line(err, str(tmp_path / "runs" / "guard"))
    assert "free some space" in line
    assert not (tmp_path / "runs").exists()  # no half-made run dir


def _disk_full_on(monkeypatch, target: str) -> None:
    if target == "split.json":
        real = data_prep_module.atomic_write_text

        def atomic_write_text(path, text):
            if Path(path).name == "split.json":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real(path, text)

        monkeypatch.setattr(data_prep_module, "atomic_write_text", atomic_write_text)
    else:  # a real ENOSPC on every write of events.jsonl: its flushes and its final close fail too
        from uhd_core.engine import events

        real_init = events.JsonlEventWriter.__init__

        def init(self, path, *args, **kwargs):
            real_init(self, path, *args, **kwargs)
            self._fh.close()
            self._fh = open("/dev/full", "a", encoding="utf-8")  # writes fail with ENOSPC, as on a full disk

        monkeypatch.setattr(events.JsonlEventWriter, "__init__", init)


@pytest.mark.parametrize("target", ["split.json", "events.jsonl"])
def test_a_disk_that_fills_up_during_setup_is_one_line_and_a_rerun_is_not_refused(tiny_yolo_dir, tmp_path,
                                                                                   monkeypatch, target):
    flags = _flags(tiny_yolo_dir, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "guard"
    with monkeypatch.context() as patch:
        _disk_full_on(patch, target)
        code, _out, err = run_uhd(_args(flags), monkeypatch)
    assert code == 1
    line = assert_one_error_line(err, str(run_dir))
    assert "unexpected" not in line and "no space left" in line
    assert "run the same command again" in line  # no checkpoint yet: --resume would not work
    code, _out, err = run_uhd(_args(flags), monkeypatch)  # the same command, after "freeing space"
    assert code == 0, err


def test_resume_takes_a_run_dir_that_holds_only_a_best_checkpoint(tiny_yolo_dir, tmp_path, monkeypatch):
    # The disk filled up right after epoch 1's best checkpoint: its last_ never got written.
    real_save = saving_module.save_checkpoint
    saves = {"n": 0}

    def disk_full_on_second_save(path, payload):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, payload)

    flags = _flags(tiny_yolo_dir, tmp_path / "runs", epochs=2)
    run_dir = tmp_path / "runs" / "guard"
    with monkeypatch.context() as patch:
        patch.setattr(saving_module, "save_checkpoint", disk_full_on_second_save)
        code, _out, err = run_uhd(_args(flags), monkeypatch)
    assert code == 1
    line = assert_one_error_line(err, f"uhd train --resume {run_dir}")
    assert [p.name for p in run_dir.glob("*.pt")] == ["best_cnn_0001_map_0.00000.pt"] or \
        [p.name[:14] for p in run_dir.glob("*.pt")] == ["best_cnn_0001_"], line
    # the advice, exactly as printed
    code, out, err = run_uhd(["train", "--no-tui", "--resume", str(run_dir)], monkeypatch)
    assert code == 0, err
    assert "resumed from" in out and "best_cnn_0001_" in out
    assert load_checkpoint(run_dir / "last_0002.pt")["epoch"] == 2


def test_resume_picks_the_newest_checkpoint_of_any_kind(tmp_path):
    for name in ("last_0003.pt", "best_cnn_0004_map_0.10000.pt", "manual_0005_step_00002.pt",
                 "best_cnn_0003_map_0.2.pt", "notes.pt"):
        (tmp_path / name).write_bytes(b"")
    # by the last finished epoch (manual_0005 was saved during epoch 5: epoch 4 finished), then last > best > manual
    assert [p.name for p in saving_module.resumable_checkpoints(tmp_path)] == [
        "best_cnn_0004_map_0.10000.pt", "manual_0005_step_00002.pt", "last_0003.pt", "best_cnn_0003_map_0.2.pt"]
    (tmp_path / "last_0004.pt").write_bytes(b"")  # same epoch as the best: the last one was written after it
    assert saving_module.resumable_checkpoints(tmp_path)[0].name == "last_0004.pt"


# ------------------------------------------------------------------------------------------------
# finding 13: what the end of a run says

def test_a_stop_in_epoch_1_says_no_evaluation_ran_and_logs_the_epoch_as_interrupted(tiny_yolo_dir, tmp_path, capsys):
    from uhd_cli.commands.train import print_run_summary

    trainer, writers = create_trainer(None, _flags(tiny_yolo_dir, tmp_path / "runs", epochs=3), tensorboard=False)

    def stop_at_step_2(event: Event) -> None:
        if isinstance(event, StepEnded) and event.step == 2:
            trainer.request_stop()

    trainer.bus.subscribe(stop_at_step_2)
    result = run_trainer(trainer, writers)
    assert result.stopped_early and not result.evaluated
    print_run_summary(result)
    out = capsys.readouterr().out
    assert "best mAP@0.5: no evaluation ran yet" in out and "0.00000" not in out
    log = (trainer.run_dir / "train.log").read_text()
    assert "epoch 1 interrupted at step 3/4" in log and "epoch 1 done" not in log
    assert "no evaluation ran yet" in log


def test_a_short_run_at_map_0_gets_a_hint_and_every_finished_run_the_next_step(tiny_yolo_dir, tmp_path, monkeypatch):
    # `make demo`'s preset, cut to 1 epoch; --conf-thresh 1 keeps every detection out: mAP 0 for sure
    code, out, err = run_uhd(["train", "--no-tui", "--preset", "quickstart", "--image-dir", str(tiny_yolo_dir),
                              "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--device", "cpu",
                              "--conf-thresh", "1.0", "--batch-size", "16"], monkeypatch)
    assert code == 0, err
    assert "best mAP@0.5: 0.00000" in out
    assert "hint: mAP 0 after 1 epochs: the preset quickstart usually needs ~40 epochs; try --epochs 40" in out
    (best,) = (tmp_path / "runs" / "quickstart").glob("best_*.pt")
    assert f"next: uhd export {best}" in out and "uhd eval" in out
