"""Terminal rendering of events: tables (the --ckpt report) and the piped step lines' elapsed/ETA."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from uhd_runner import run_uhd

from uhd_cli.console import PlainLinePrinter, RichProgressRenderer
from uhd_core.engine.events import RunStarted, StepEnded, WeightsLoaded

REPORT = WeightsLoaded("runs/a/best.pt", strict=False, loaded=160, total=190,
                       missing=["backbone.encoder.3.norm1.weight", "backbone.decoder.3.ffn.0.bias"],
                       unexpected=["old.head.weight"], mismatched=["head.class_embed.weight: checkpoint (3, 64) vs model (2, 64)"])


def test_rich_renderer_prints_a_table_with_every_category():
    out = io.StringIO()
    RichProgressRenderer(Console(file=out, width=200, color_system=None))(REPORT)
    text = out.getvalue()
    assert "160/190" in text
    for name in (*REPORT.missing, *REPORT.unexpected, REPORT.mismatched[0]):
        assert name in text
    assert "missing (start fresh)" in text and "unexpected (ignored)" in text


def test_plain_printer_lists_the_keys_one_per_line():
    out = io.StringIO()
    PlainLinePrinter(out)(REPORT)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("initialised from runs/a/best.pt: 160/190 tensors loaded, 2 missing, 1 unexpected")
    assert "  missing (fresh): backbone.encoder.3.norm1.weight" in lines


def _run_started(start_epoch: int = 1) -> RunStarted:
    return RunStarted(run_dir="runs/a", exp_name="a", preset="", arch="cnn", head="centernet", params=1,
                      img_size=[64, 64], device="cpu", num_train=160, num_val=16, epochs=3, start_epoch=start_epoch,
                      steps_per_epoch=10, batch_size=16, loss_terms=["loss"])


def _step(epoch: int, step: int) -> StepEnded:
    return StepEnded(epoch=epoch, step=step, steps_per_epoch=10, global_step=(epoch - 1) * 10 + step,
                     losses={"loss": 1.0}, lr=1e-3, imgs_per_s=320.0)


@pytest.mark.parametrize(("start_epoch", "epoch", "step", "expect"), [
    (1, 1, 5, "elapsed 0:00:10 ETA 0:00:50"),  # 5 of 30 steps in 10 s: 25 left at 2 s each
    (1, 3, 10, "elapsed 0:00:10 ETA 0:00:00"),
    (2, 2, 10, "elapsed 0:00:10 ETA 0:00:10"),  # resumed at epoch 2: 10 of this run's 20 steps done
])
def test_piped_step_lines_end_with_elapsed_and_eta(start_epoch, epoch, step, expect):
    now = [100.0]
    out = io.StringIO()
    printer = PlainLinePrinter(out, clock=lambda: now[0])
    printer(_run_started(start_epoch))
    now[0] += 10.0
    printer(_step(epoch, step))
    line = out.getvalue().splitlines()[-1]
    assert line.startswith(f"epoch {epoch} step {step}/10 loss=1.0000") and line.endswith(expect)


def test_piped_uhd_train_prints_eta_on_its_step_lines(monkeypatch, tiny_yolo_dir, tmp_path):
    code, out, err = run_uhd(["train", "--image-dir", tiny_yolo_dir, "--epochs", "2", "--cnn-width", "8",
                              "--num-workers", "0", "--img-size", "64x64", "--log-interval", "1",
                              "--runs-dir", tmp_path / "runs", "--exp-name", "piped"], monkeypatch)
    assert code == 0, err
    steps = [line for line in out.splitlines() if line.startswith("epoch ") and " step " in line]
    assert steps and all(re.search(r" elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d$", line) for line in steps), steps
