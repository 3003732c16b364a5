"""End-to-end training on the tiny synthetic folder: outputs, checkpoints, resume, determinism, --ckpt.

A few seconds in all: a width-8 CNN, 64x64 inputs, ~2 steps per epoch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import uhd_core.engine.trainer as trainer_module
from uhd_core.config import RunConfig
from uhd_core.engine.api import create_trainer, run_training
from uhd_core.engine.events import EpochEnded, Event, RunStarted, read_events
from uhd_core.errors import CheckpointError, ConfigError, RunDirError


def _settings(tiny_yolo_dir: Path, runs_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "image_dir": str(tiny_yolo_dir), "runs_dir": str(runs_dir), "exp_name": "smoke",
        "cnn_width": 8, "batch_size": 16, "num_workers": 0, "img_size": "64x64", "eval_interval": 1,
        # a brisk lr so 6 steps visibly lower the loss; log every step to see global_step
        "lr": 0.02, "log_interval": 1, "seed": 0, "device": "cpu",
        **extra,
    }


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["event"] == kind]


@pytest.fixture(scope="module")
def trained(tiny_yolo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 3-epoch run shared by the checks below (treat its folder as read-only)."""
    root = tmp_path_factory.mktemp("smoke")
    overrides = _settings(tiny_yolo_dir, root / "runs", epochs=3, cache_dir=str(root / "cache"))
    result = run_training(None, overrides, tensorboard=False)
    return result, overrides


def test_run_result_and_files(trained):
    result, _ = trained
    run_dir = result.run_dir
    assert result.epochs_done == 3 and not result.stopped_early
    for name in ("events.jsonl", "train.log", "config.yaml", "split.json"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in run_dir.glob("last_*.pt")) == ["last_0001.pt", "last_0002.pt", "last_0003.pt"]
    assert result.last_checkpoint == run_dir / "last_0003.pt"
    bests = sorted(run_dir.glob("best_*.pt"))
    assert bests and result.best_checkpoint in bests
    assert 0.0 <= result.best_map50 <= 1.0
    assert RunConfig(**yaml.safe_load((run_dir / "config.yaml").read_text())).cnn_width == 8
    log = (run_dir / "train.log").read_text()
    assert "epoch 3 done" in log and "finished 3 epochs" in log


def test_training_loss_goes_down(trained):
    result, _ = trained
    losses = {e["epoch"]: e["losses"] for e in _events(result.run_dir, "EpochEnded")}
    assert sorted(losses) == [1, 2, 3]
    assert set(losses[1]) == {"loss", "hm", "off", "wh"}
    assert losses[3]["loss"] < losses[1]["loss"], losses


def test_every_checkpoint_loads_with_weights_only(trained):
    result, overrides = trained
    for path in sorted(result.run_dir.glob("*.pt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["format"] == 1
        assert RunConfig(**ckpt["config"]).cnn_width == overrides["cnn_width"]
        assert {"model", "optimizer", "scheduler", "epoch", "global_step", "rng"} <= set(ckpt)
        assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())


def test_best_epochs_have_render_folders(trained):
    result, _ = trained
    evals = _events(result.run_dir, "EvalFinished")
    assert [e["epoch"] for e in evals] == [1, 2, 3]
    best = [e for e in evals if e["is_best"]]
    assert best and best[0]["epoch"] == 1  # the first evaluation is always a new best
    split = yaml.safe_load((result.run_dir / "split.json").read_text())
    for e in best:
        folder = result.run_dir / f"{e['epoch']:04d}"
        assert e["render_dir"] == str(folder) and folder.is_dir()
        assert len(list(folder.glob("val_*.png"))) == min(10, len(split["val"]))
    assert {p.name for p in result.run_dir.iterdir() if p.is_dir()} == {f"{e['epoch']:04d}" for e in best}


def test_events_describe_the_run(trained):
    result, overrides = trained
    (data,) = _events(result.run_dir, "DataPrepared")
    (started,) = _events(result.run_dir, "RunStarted")
    (finished,) = _events(result.run_dir, "RunFinished")
    split = yaml.safe_load((result.run_dir / "split.json").read_text())
    assert data["num_train"] == len(split["train"]) == started["num_train"]
    assert data["num_val"] == len(split["val"]) == started["num_val"]
    assert data["num_images"] + data["num_without_targets"] == 48
    assert started["start_epoch"] == 1 and started["epochs"] == 3
    steps = _events(result.run_dir, "StepEnded")
    assert [s["global_step"] for s in steps] == list(range(1, 3 * started["steps_per_epoch"] + 1))
    assert finished["epochs_done"] == 3 and finished["best_checkpoint"] == str(result.best_checkpoint)


def test_second_run_reuses_the_decode_cache(trained, tmp_path):
    _, overrides = trained
    result = run_training(None, {**overrides, "runs_dir": str(tmp_path), "epochs": 1}, tensorboard=False)
    (data,) = _events(result.run_dir, "DataPrepared")
    assert data["from_cache"] is True


def test_existing_run_dir_is_refused_without_exist_ok(trained):
    _, overrides = trained
    with pytest.raises(RunDirError, match="--exist-ok"):
        create_trainer(None, overrides, tensorboard=False)


# ------------------------------------------------------------------------------------------------
# resume

class _Spy:
    """Records the optimizer and model the trainer builds, and their state when RunStarted fires
    (after any checkpoint was loaded, before the first step)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.models: list[torch.nn.Module] = []
        self.at_start: dict[str, Any] = {}
        spy = self

        class RecordingAdamW(torch.optim.AdamW):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                spy.optimizers.append(self)

        build = trainer_module.build_detector

        def recording_build(cfg):
            model = build(cfg)
            spy.models.append(model)
            return model

        monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
        monkeypatch.setattr(trainer_module, "build_detector", recording_build)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.at_start = {
                "optimizer": _clone(self.optimizers[-1].state_dict()),
                "model": _clone(self.models[-1].state_dict()),
            }


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _assert_same_state(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_continues_where_the_checkpoint_left_off(trained, tmp_path, monkeypatch):
    result, _ = trained
    run_dir = tmp_path / "resumed"
    shutil.copytree(result.run_dir, run_dir)
    last = run_dir / "last_0003.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    spy = _Spy(monkeypatch)

    resumed = run_training(None, {"resume": str(last), "epochs": 4}, subscribers=[spy], tensorboard=False)

    assert resumed.run_dir == run_dir.resolve()
    started = _events(run_dir, "RunStarted")
    assert len(started) == 2 and started[-1]["start_epoch"] == 4 and started[-1]["resumed_from"] == str(last)
    # the exact state that was saved is what training continues from
    _assert_same_state(spy.at_start["optimizer"], ckpt["optimizer"], "optimizer")
    _assert_same_state(spy.at_start["model"], ckpt["model"], "model")
    steps = _events(run_dir, "StepEnded")
    new_steps = steps[len(steps) - started[-1]["steps_per_epoch"]:]
    assert new_steps[0]["epoch"] == 4 and new_steps[0]["global_step"] == ckpt["global_step"] + 1
    assert [e["epoch"] for e in _events(run_dir, "EpochEnded")] == [1, 2, 3, 4]
    new = torch.load(run_dir / "last_0004.pt", map_location="cpu", weights_only=True)
    assert new["epoch"] == 4 and new["global_step"] == ckpt["global_step"] + started[-1]["steps_per_epoch"]
    assert RunConfig(**new["config"]).epochs == 4
    # --resume keeps the run's split instead of drawing a new one
    assert (run_dir / "split.json").read_text() == (result.run_dir / "split.json").read_text()


def test_resume_of_a_finished_run_needs_more_epochs(trained, tmp_path):
    result, _ = trained
    run_dir = tmp_path / "again"
    shutil.copytree(result.run_dir, run_dir)
    with pytest.raises(ConfigError, match="--epochs"):
        run_training(None, {"resume": str(run_dir), "epochs": 3}, tensorboard=False)


def test_stop_and_resume_matches_an_uninterrupted_run(tiny_yolo_dir, tmp_path):
    """A run stopped after epoch 2 and resumed reaches bit-identical weights and losses."""
    settings = _settings(tiny_yolo_dir, tmp_path / "straight", epochs=3, use_ema=True, ema_decay=0.9)
    straight = run_training(None, settings, tensorboard=False)

    stopped_settings = {**settings, "runs_dir": str(tmp_path / "stopped")}
    trainer, writers = create_trainer(None, stopped_settings, tensorboard=False)

    def stop_after_epoch_2(event: Event) -> None:
        if isinstance(event, EpochEnded) and event.epoch == 2:
            trainer.request_stop()

    trainer.bus.subscribe(stop_after_epoch_2)
    try:
        first = trainer.run()
    finally:
        for w in writers:
            w.close()
    assert first.stopped_early and first.epochs_done == 2
    resumed = run_training(None, {"resume": str(first.run_dir)}, tensorboard=False)
    assert resumed.epochs_done == 3

    a = torch.load(straight.run_dir / "last_0003.pt", map_location="cpu", weights_only=True)
    b = torch.load(resumed.run_dir / "last_0003.pt", map_location="cpu", weights_only=True)
    for key in ("model", "ema", "optimizer", "scheduler", "global_step"):
        _assert_same_state(a[key], b[key], key)
    loss_a = [e["losses"] for e in _events(straight.run_dir, "EpochEnded")]
    loss_b = [e["losses"] for e in _events(resumed.run_dir, "EpochEnded")]
    assert loss_b == loss_a


# ------------------------------------------------------------------------------------------------
# determinism and --ckpt

def test_same_seed_gives_identical_losses(tiny_yolo_dir, tmp_path):
    def losses(runs: str, seed: int) -> list[dict[str, float]]:
        result = run_training(None, _settings(tiny_yolo_dir, tmp_path / runs, epochs=1, seed=seed), tensorboard=False)
        return [e["losses"] for e in _events(result.run_dir, "StepEnded")]

    a, b = losses("a", 0), losses("b", 0)
    assert len(a) >= 2 and a == b
    assert losses("c", 1) != a  # the seed is actually used


def test_ckpt_initialises_weights_only(trained, tmp_path, monkeypatch):
    result, overrides = trained
    source = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    spy = _Spy(monkeypatch)
    run = run_training(None, {**overrides, "runs_dir": str(tmp_path), "epochs": 1, "ckpt": str(result.last_checkpoint)},
                       subscribers=[spy], tensorboard=False)
    _assert_same_state(spy.at_start["model"], source["model"], "model")
    # weights only: a fresh optimizer and schedule from epoch 1, in a new run dir
    assert spy.at_start["optimizer"]["state"] == {}
    (started,) = _events(run.run_dir, "RunStarted")
    assert started["start_epoch"] == 1 and started["resumed_from"] == ""
    assert _events(run.run_dir, "StepEnded")[0]["global_step"] == 1


def test_ckpt_of_another_shape_needs_non_strict(trained, tmp_path):
    result, overrides = trained
    wider = {**overrides, "runs_dir": str(tmp_path), "epochs": 1, "cnn_width": 12, "ckpt": str(result.last_checkpoint)}
    with pytest.raises(CheckpointError, match="--ckpt-non-strict"):
        run_training(None, wider, tensorboard=False)
    run = run_training(None, {**wider, "ckpt_non_strict": True, "exp_name": "non_strict"}, tensorboard=False)
    assert run.epochs_done == 1


def test_ckpt_that_is_not_a_checkpoint_is_a_clear_error(trained, tmp_path):
    _, overrides = trained
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        run_training(None, {**overrides, "runs_dir": str(tmp_path), "epochs": 1, "ckpt": str(bogus)}, tensorboard=False)


def test_amp_on_cpu_trains_with_finite_losses(tiny_yolo_dir: Path, tmp_path: Path):
    """--use-amp on a CPU runs the step under bf16 autocast; losses (computed in fp32) stay finite."""
    overrides = _settings(tiny_yolo_dir, tmp_path / "runs", epochs=1, use_amp=True, exp_name="amp")
    result = run_training(None, overrides, tensorboard=False)
    losses = [e["losses"]["loss"] for e in _events(result.run_dir, "StepEnded")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert ckpt["config"]["use_amp"] is True and ckpt["scaler"] is None  # GradScaler is CUDA-only
