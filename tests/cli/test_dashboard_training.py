"""The dashboard over real tiny trainings in the worker thread, and `uhd train --tui` / `uhd dashboard`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import one_error_line
from textual.widgets import Static

import uhd_core.engine.trainer as trainer_module
from uhd_cli.dashboard import DashboardApp, LiveTrainingSource, make_dashboard
from uhd_cli.dashboard.system import SystemStats
from uhd_cli.main import app as cli
from uhd_core.checkpoint import load_checkpoint
from uhd_core.engine.api import create_trainer
from uhd_core.errors import DataError

TIMEOUT_S = 120


def _settings(tiny_yolo_dir: Path, runs_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"image_dir": str(tiny_yolo_dir), "runs_dir": str(runs_dir), "exp_name": "dash", "cnn_width": 8,
            "batch_size": 16, "num_workers": 0, "img_size": "64x64", "log_interval": 1, "device": "cpu",
            **extra}


def _stats(device: str) -> SystemStats:
    return SystemStats(0.0, 0, 1, "CPU only")


async def _until(pilot, condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def _status(app: DashboardApp) -> str:
    return app.query_one("#status", Static).render().plain


def _train_under_dashboard(overrides: dict[str, Any], script) -> LiveTrainingSource:
    trainer, writers = create_trainer(None, overrides, tensorboard=False)
    source = LiveTrainingSource(trainer)
    app = make_dashboard(source, system_stats=_stats, poll_interval=0.02)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await script(app, pilot)

    try:
        asyncio.run(main())
    finally:
        source.close()
        for writer in writers:
            writer.close()
    return source


def test_a_real_run_reaches_finished_and_leaves_checkpoints(tiny_yolo_dir, tmp_path):
    async def script(app, pilot) -> None:
        await _until(pilot, lambda: app.state.ended, "the end of the run")
        assert _status(app).startswith("finished after")
        assert app.state.loss_terms == ["loss", "hm", "off", "wh"] and app.state.evals
        await pilot.press("enter")
        assert not app.is_running

    source = _train_under_dashboard(_settings(tiny_yolo_dir, tmp_path / "runs", epochs=1), script)
    assert source.error is None and source.result.epochs_done == 1
    run_dir = tmp_path / "runs" / "dash"
    assert load_checkpoint(run_dir / "last_0001.pt")["epoch"] == 1


def test_s_saves_mid_run_and_q_then_y_stops_with_a_loadable_last_checkpoint(tiny_yolo_dir, tmp_path):
    async def script(app, pilot) -> None:
        await _until(pilot, lambda: app.state.global_step >= 1, "the first step")
        await pilot.press("s")
        await _until(pilot, lambda: any(run_dir.glob("manual_*.pt")), "the requested checkpoint")
        await pilot.press("q", "y")
        await _until(pilot, lambda: app.state.ended, "the stopped run")
        assert app.state.stopped_early and _status(app).startswith("stopped at epoch")

    run_dir = tmp_path / "runs" / "dash"
    source = _train_under_dashboard(_settings(tiny_yolo_dir, tmp_path / "runs", epochs=500), script)
    assert source.error is None and source.result.stopped_early and source.result.epochs_done < 500
    assert load_checkpoint(next(run_dir.glob("manual_*.pt")))["model"]
    checkpoint = load_checkpoint(source.result.last_checkpoint)
    assert checkpoint["global_step"] >= 1 and checkpoint["model"]


# -- the CLI ------------------------------------------------------------------------------------------

def _headless_run(seen: list[str]):
    """DashboardApp.run for CliRunner: headless, closes with a key once the run ended, records the status."""
    def run(self: DashboardApp) -> None:
        async def main() -> None:
            async with self.run_test(size=(120, 40)) as pilot:
                await _until(pilot, lambda: self.state.ended, "the end of the run")
                seen.append(_status(self))
                await pilot.press("enter")

        asyncio.run(main())

    return run


def test_train_tui_runs_in_the_dashboard_and_prints_the_final_lines(runner, monkeypatch, tiny_yolo_dir, tmp_path):
    seen: list[str] = []
    monkeypatch.setattr(DashboardApp, "run", _headless_run(seen))
    runs = tmp_path / "runs"
    result = runner.invoke(cli, ["train", "--tui", "--image-dir", str(tiny_yolo_dir), "--epochs", "1",
                                 "--cnn-width", "8", "--num-workers", "0", "--runs-dir", str(runs),
                                 "--exp-name", "tui"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1 and seen[0].startswith("finished")
    assert "best mAP@0.5: " in result.stdout and f"run dir: {runs / 'tui'}" in result.stdout
    assert (runs / "tui" / "last_0001.pt").is_file()


@pytest.mark.parametrize(("error", "code", "expect"), [
    (RuntimeError("boom in step 3"), 1, "RuntimeError: boom in step 3 (traceback in "),
    (DataError("--image-dir x: no training image could be decoded"), 2, "no training image could be decoded"),
])
def test_train_tui_failure_shows_it_then_exits_with_the_error_code(runner, monkeypatch, tiny_yolo_dir, tmp_path,
                                                                    error, code, expect):
    def failing_run(self):
        raise error

    seen: list[str] = []
    monkeypatch.setattr(trainer_module.Trainer, "_run", failing_run)
    monkeypatch.setattr(DashboardApp, "run", _headless_run(seen))
    result = runner.invoke(cli, ["train", "--tui", "--image-dir", str(tiny_yolo_dir),
                                 "--runs-dir", str(tmp_path / "runs"), "--exp-name", "fails"])
    assert result.exit_code == code
    assert seen[0].startswith(f"FAILED: {'RuntimeError: ' if code == 1 else ''}{error}")
    assert expect in one_error_line(result)
    assert str(error) in (tmp_path / "runs" / "fails" / "train.log").read_text()


def test_train_tui_setup_errors_stay_one_line_without_a_dashboard(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(DashboardApp, "run", lambda self: pytest.fail("the dashboard opened"))
    result = runner.invoke(cli, ["train", "--tui", "--image-dir", str(tmp_path / "missing"),
                                 "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "uhd dataset synth" in one_error_line(result)


def test_dashboard_command_needs_a_run_folder_with_events(runner, tmp_path):
    missing = runner.invoke(cli, ["dashboard", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such run folder" in one_error_line(missing)
    empty = runner.invoke(cli, ["dashboard", str(tmp_path)])
    assert empty.exit_code == 2 and "holds no events.jsonl" in one_error_line(empty)


def test_dashboard_command_replays_a_finished_run(runner, monkeypatch, tiny_yolo_dir, tmp_path):
    runs = tmp_path / "runs"
    trainer, writers = create_trainer(None, _settings(tiny_yolo_dir, runs, epochs=1), tensorboard=False)
    trainer.run()
    for writer in writers:
        writer.close()
    seen: list[str] = []
    monkeypatch.setattr(DashboardApp, "run", _headless_run(seen))
    result = runner.invoke(cli, ["dashboard", str(runs / "dash")])
    assert result.exit_code == 0, result.output
    assert seen[0].startswith("finished after")
